"""Imitation of the route-following expert on stable-baselines3 policies: behaviour cloning and
DAgger (``mirage train agent=bc`` / ``agent=dagger``; MirageDrive-v0).

- :func:`record_demonstrations`: the expert drives episodes in the env; every observation is
  stored with the expert's action (``Demonstrations``, saved as ``.npz``).
- :func:`behaviour_cloning`: fits an SB3 ``ActorCriticPolicy`` (the PPO policy) to the expert's
  actions: the Gaussian's mean by squared error, its spread by likelihood around the (fixed)
  mean, so the spread settles at the policy's remaining error instead of collapsing (it is the
  exploration noise if PPO fine-tunes the policy). Fitting both by likelihood alone scales the
  mean's gradient by 1 / spread^2 and diverges once the spread shrinks. The policy is saved in
  a PPO checkpoint, so ``mirage eval`` drives it and ``mirage train agent=ppo init_from=...``
  fine-tunes it.
- :func:`dagger_rollouts` + :func:`train` with ``agent=dagger``: DAgger (Ross et al., 2011).
  Round ``i`` drives with the learner, executing the expert's action instead with probability
  ``beta^i``; the expert labels every state visited, the labelled states join the dataset and
  the policy is retrained on all of it. The learner so sees, and learns to recover from, the
  states its own mistakes lead to, which behaviour cloning never shows it.

Written directly on SB3 policies (the ``imitation`` library does not support our Gymnasium and
SB3 versions). The expert acts from the car's state and the planned route, never from pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from tqdm.auto import tqdm

from agents.common import env_settings, make_env
from agents.policies import ExpertPolicy, Policy, SB3Policy


@dataclass
class Demonstrations:
    """Observations with the expert's actions: ``observations`` maps each observation key to
    (N, ...) arrays (key ``""`` for a plain image observation), ``actions`` (N, A) float32 and
    ``episodes`` (N,) int64, the episode each sample comes from."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    episodes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.actions)
        if self.actions.ndim != 2 or self.episodes.shape != (n,):
            raise ValueError(f"need actions (N, A) and episodes (N,), got {self.actions.shape}, {self.episodes.shape}")
        bad = {key: value.shape for key, value in self.observations.items() if len(value) != n}
        if bad:
            raise ValueError(f"observations must have {n} samples like the actions, got {bad}")

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def episode_count(self) -> int:
        return len(np.unique(self.episodes))

    def select(self, mask: np.ndarray) -> Demonstrations:
        return Demonstrations({k: v[mask] for k, v in self.observations.items()}, self.actions[mask],
                              self.episodes[mask])

    def __add__(self, other: Demonstrations) -> Demonstrations:
        """Both datasets; ``other``'s episodes are renumbered after this one's."""
        if set(self.observations) != set(other.observations):
            raise ValueError("cannot join demonstrations with different observation keys")
        offset = int(self.episodes.max()) + 1 if len(self) else 0
        return Demonstrations({k: np.concatenate([v, other.observations[k]]) for k, v in self.observations.items()},
                              np.concatenate([self.actions, other.actions]),
                              np.concatenate([self.episodes, other.episodes + offset]))

    def split(self, validation_fraction: float) -> tuple[Demonstrations, Demonstrations]:
        """``(training, validation)`` by whole episodes: the last ``validation_fraction`` of
        them (at least one, when there are two or more) are held out."""
        ids = np.unique(self.episodes)
        held = min(max(round(validation_fraction * len(ids)), 1 if len(ids) > 1 else 0), len(ids) - 1)
        validation = np.isin(self.episodes, ids[len(ids) - held:])
        return self.select(~validation), self.select(validation)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"obs/{k}": v for k, v in self.observations.items()}
        np.savez_compressed(path, actions=self.actions, episodes=self.episodes, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Demonstrations:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"demonstrations file not found: {path}")
        with np.load(path) as data:
            observations = {k[len("obs/"):]: data[k] for k in data.files if k.startswith("obs/")}
            return cls(observations, data["actions"], data["episodes"])


class _Recorder:
    """Collects (observation, action) samples episode by episode."""

    def __init__(self) -> None:
        self.observations: list[Any] = []
        self.actions: list[np.ndarray] = []
        self.episodes: list[int] = []

    def add(self, observation: Any, action: np.ndarray, episode: int) -> None:
        self.observations.append(observation)
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.episodes.append(episode)

    def demonstrations(self) -> Demonstrations:
        if not self.actions:
            raise ValueError("no samples recorded")
        first = self.observations[0]
        keys = list(first) if isinstance(first, dict) else [""]
        observations = {k: np.stack([o[k] if k else o for o in self.observations]) for k in keys}
        return Demonstrations(observations, np.stack(self.actions), np.array(self.episodes, dtype=np.int64))


def record_demonstrations(env: gym.Env, episodes: int, seed: int = 0, progress: bool = True) -> Demonstrations:
    """The expert drives ``episodes`` episodes (seeds ``seed``, ``seed + 1``, ...) of ``env``
    (MirageDrive-v0); every observation is stored with the expert's action."""
    expert, recorder = ExpertPolicy(), _Recorder()
    for episode in tqdm(range(episodes), desc="expert demonstrations", unit="episode", disable=not progress):
        observation, _ = env.reset(seed=seed + episode)
        expert.reset(env)
        while True:
            action = expert(observation)
            recorder.add(observation, action, episode)
            observation, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return recorder.demonstrations()


def dagger_rollouts(env: gym.Env, learner: Policy, episodes: int, beta: float, seed: int,
                    rng: np.random.Generator, progress: bool = True) -> tuple[Demonstrations, list[float]]:
    """Drive ``episodes`` episodes executing the learner's action (the expert's with
    probability ``beta``); every visited state is labelled with the expert's action. Returns
    the labelled states and each episode's route completion [%]."""
    expert, recorder, completions = ExpertPolicy(), _Recorder(), []
    for episode in tqdm(range(episodes), desc=f"DAgger rollouts (beta {beta:.2f})", unit="episode",
                        disable=not progress):
        observation, info = env.reset(seed=seed + episode)
        expert.reset(env)
        if hasattr(learner, "reset"):
            learner.reset(env)
        while True:
            label = expert(observation)  # also keeps the expert's progress along the route current
            recorder.add(observation, label, episode)
            action = label if rng.random() < beta else np.clip(learner(observation), -1.0, 1.0)
            observation, _, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
            if terminated or truncated:
                break
        completions.append(float(info["route_completion"]))
    return recorder.demonstrations(), completions


def _policy_batch(policy: ActorCriticPolicy, demos: Demonstrations, index: np.ndarray) -> Any:
    """The observations at ``index`` as the policy's tensors (images transposed to CHW)."""
    observations = demos.observations
    batch = observations[""][index] if list(observations) == [""] else {k: v[index] for k, v in observations.items()}
    return policy.obs_to_tensor(batch)[0]


def action_error(policy: ActorCriticPolicy, demos: Demonstrations, batch_size: int = 256) -> float:
    """Mean squared error between the policy's deterministic actions (clipped to [-1, 1]) and
    the expert's on ``demos``."""
    policy.set_training_mode(False)
    errors = []
    with torch.no_grad():
        for start in range(0, len(demos), batch_size):
            index = np.arange(start, min(start + batch_size, len(demos)))
            mean = policy.get_distribution(_policy_batch(policy, demos, index)).mode().clamp(-1.0, 1.0)
            errors.append(((mean - torch.as_tensor(demos.actions[index], device=mean.device)) ** 2).sum().item())
    return sum(errors) / (len(demos) * demos.actions.shape[1])


def behaviour_cloning(policy: ActorCriticPolicy, demos: Demonstrations, epochs: int = 10, batch_size: int = 64,
                      learning_rate: float = 1e-3, validation: Demonstrations | None = None, seed: int = 0,
                      progress: bool = True) -> list[dict[str, float]]:
    """Fit ``policy`` to the expert's actions in ``demos`` (in place; see the module docstring).
    Returns per epoch the mean squared action error in training and, with ``validation``, the
    action error there."""
    if not isinstance(policy, ActorCriticPolicy) or not isinstance(policy.action_dist, DiagGaussianDistribution):
        raise TypeError("behaviour cloning trains an SB3 ActorCriticPolicy with Gaussian actions (PPO's on a Box "
                        f"action space), got {type(policy).__name__}")
    if len(demos) == 0:
        raise ValueError("no demonstrations to learn from")
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in tqdm(range(epochs), desc="behaviour cloning", unit="epoch", disable=not progress):
        policy.set_training_mode(True)
        losses = []
        order = rng.permutation(len(demos))
        for start in range(0, len(demos), batch_size):
            index = order[start:start + batch_size]
            actions = torch.as_tensor(demos.actions[index], device=policy.device)
            gaussian = policy.get_distribution(_policy_batch(policy, demos, index)).distribution
            mean_error = ((gaussian.mean - actions) ** 2).mean()
            spread_nll = -torch.distributions.Normal(gaussian.mean.detach(), gaussian.stddev).log_prob(actions).mean()
            optimizer.zero_grad()
            (mean_error + spread_nll).backward()
            optimizer.step()
            losses.append(mean_error.item())
        record = {"epoch": epoch + 1, "train_action_mse": float(np.mean(losses))}
        if validation is not None and len(validation):
            record["validation_action_mse"] = action_error(policy, validation)
        history.append(record)
    policy.set_training_mode(False)
    return history


def train(cfg: DictConfig) -> dict:
    """``mirage train agent=bc`` / ``agent=dagger``: see the module docstring. Writes
    ``out_dir/model.zip`` (a PPO checkpoint), the demonstrations, ``history.json`` and
    ``summary.json``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    agent = cfg.agent
    if cfg.env != "MirageDrive-v0":
        raise SystemExit(f"mirage train agent={agent.name}: the expert drives MirageDrive-v0, not {cfg.env}")
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(cfg.env, torch_threads=0, **env_settings(cfg))
    # A PPO model only to build, save and load its policy; no PPO step is taken here.
    model = PPO(agent.policy, DummyVecEnv([lambda: env]), seed=cfg.seed, device=cfg.device)
    policy = model.policy

    if agent.demos:
        demos = Demonstrations.load(agent.demos)
    else:
        demos = record_demonstrations(env, agent.demo_episodes, seed=cfg.seed, progress=cfg.progress_bar)
        demos.save(run_dir / "demonstrations.npz")
    train_set, validation = demos.split(agent.validation_fraction)
    untrained_error = action_error(policy, validation) if len(validation) else None

    def clone(data: Demonstrations) -> list[dict]:
        return behaviour_cloning(policy, data, epochs=agent.epochs, batch_size=agent.batch_size,
                                 learning_rate=agent.learning_rate, validation=validation, seed=cfg.seed,
                                 progress=cfg.progress_bar)

    history: list[dict] = [{"round": 0, "dataset": len(train_set), "epochs": clone(train_set)}]
    if agent.name == "dagger":
        rng = np.random.default_rng(cfg.seed)
        learner = SB3Policy(model, source="DAgger learner")
        aggregate = train_set
        for round_ in range(1, agent.iterations + 1):
            beta = agent.beta ** round_
            # Rollout seeds never repeat the demonstrations' or an earlier round's.
            seed = cfg.seed + 10_000 * round_
            visited, completions = dagger_rollouts(env, learner, agent.episodes_per_iteration, beta, seed, rng,
                                                   progress=cfg.progress_bar)
            aggregate = aggregate + visited
            history.append({"round": round_, "beta": beta, "dataset": len(aggregate),
                            "learner_route_completion": float(np.mean(completions)), "epochs": clone(aggregate)})
        aggregate.save(run_dir / "dagger_dataset.npz")

    model.save(run_dir / "model.zip")
    env.close()
    final = history[-1]["epochs"][-1]
    summary = {
        "agent": agent.name,
        "env": cfg.env,
        "map": cfg.map,
        "demonstrations": len(demos),
        "demo_episodes": demos.episode_count,
        "dataset": history[-1]["dataset"],
        "validation_samples": len(validation),
        "validation_action_mse_untrained": untrained_error,
        "validation_action_mse": final.get("validation_action_mse"),
        "rounds": [{k: v for k, v in h.items() if k != "epochs"} for h in history],
        "model": str(run_dir / "model.zip"),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    print(json.dumps(summary, indent=2))
    return summary
