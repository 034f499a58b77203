"""Mirage Env: Gymnasium environments rendered by a video world model."""
