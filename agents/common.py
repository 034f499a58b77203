"""What the training scripts share: building envs from a ``mirage train`` config, vectorising
them for stable-baselines3, finding the checkpoint to resume from, and logging driving
metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

VEC_ENVS = {"subproc": SubprocVecEnv, "dummy": DummyVecEnv}


def make_env(env_id: str = "MirageDrive-v0", torch_threads: int = 1, **settings: Any) -> gym.Env:
    """One Mirage env; ``torch_threads`` limits torch's CPU threads in the process that renders
    (vector workers each render their own frames, so one thread each avoids oversubscription)."""
    import torch

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    return gym.make(f"mirage_env:{env_id}", **settings)  # the module prefix registers the ids in workers


def env_settings(cfg: DictConfig) -> dict[str, Any]:
    """The env settings of a ``mirage train`` config (``env_settings`` holds any others)."""
    extra = OmegaConf.to_container(cfg.env_settings, resolve=True) if cfg.get("env_settings") else {}
    return {"map": cfg.map, "renderer": cfg.renderer, "world_model_path": cfg.world_model_path,
            "width": cfg.width, "height": cfg.height, "max_steps": cfg.max_steps, "device": cfg.device, **extra}


def make_vec_envs(cfg: DictConfig, n_envs: int, seed: int, vec_env: str | None = None) -> VecEnv:
    """``n_envs`` envs of ``cfg`` in a stable-baselines3 VecEnv (each wrapped in ``Monitor``,
    env ``i`` seeded ``seed + i``). ``vec_env``: ``subproc`` (one process per env) or ``dummy``
    (all in this process); default ``cfg.vec_env``, and always ``dummy`` for a single env."""
    kind = vec_env or cfg.vec_env
    if kind not in VEC_ENVS:
        raise ValueError(f"`vec_env` must be one of {', '.join(VEC_ENVS)}, got {kind!r}")
    if n_envs == 1:
        kind = "dummy"
    return make_vec_env(make_env, n_envs=n_envs, seed=seed, vec_env_cls=VEC_ENVS[kind],
                        env_kwargs={"env_id": cfg.env, "torch_threads": 1, **env_settings(cfg)})


CHECKPOINT_PATTERN = re.compile(r"_(\d+)_steps\.zip$")


def latest_checkpoint(folder: str | Path, prefix: str) -> Path | None:
    """The checkpoint ``<prefix>_<steps>_steps.zip`` in ``folder`` with the most steps, or None."""
    found = []
    for path in Path(folder).glob(f"{prefix}_*_steps.zip"):
        match = CHECKPOINT_PATTERN.search(path.name)
        if match and path.name == f"{prefix}_{match.group(1)}_steps.zip":
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


class DrivingMetricsCallback(BaseCallback):
    """Logs the Leaderboard scores of finished training episodes to tensorboard
    (``rollout/route_completion``, ``rollout/driving_score``), counts episodes and, given
    ``path``, appends one JSON line per episode there (timesteps, return, length, scores)."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.episodes = 0
        self.path = None if path is None else Path(path)

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done and "route_completion" in info:
                self.episodes += 1
                self.logger.record_mean("rollout/route_completion", info["route_completion"])
                self.logger.record_mean("rollout/driving_score", info["driving_score"])
                if self.path is not None:
                    episode = info.get("episode", {})  # from SB3's Monitor wrapper
                    record = {"timesteps": int(self.num_timesteps), "return": float(episode.get("r", float("nan"))),
                              "length": int(episode.get("l", 0)),
                              "route_completion": float(info["route_completion"]),
                              "driving_score": float(info["driving_score"])}
                    with self.path.open("a") as file:
                        file.write(json.dumps(record) + "\n")
        return True


def plain(mapping: Mapping | DictConfig) -> dict:
    """A DictConfig (or mapping) as plain Python containers."""
    return OmegaConf.to_container(mapping, resolve=True) if isinstance(mapping, DictConfig) else dict(mapping)
