"""Agents: experts, stable-baselines3 training, imitation and closed-loop evaluation."""
