"""What the training scripts share: building envs from a ``mirage train`` config, vectorising
them for stable-baselines3 (one process per env, all in this process, or batched: all envs
rendered in one call per step), finding the checkpoint to resume from, and logging driving
metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

VEC_ENVS = ("subproc", "dummy", "batched")  # see make_vec_envs


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
    """``n_envs`` envs of ``cfg`` in a stable-baselines3 VecEnv with episode statistics (SB3's
    ``Monitor`` or ``VecMonitor``), env ``i`` seeded ``seed + i``. ``vec_env``: ``subproc`` (one
    process per env, rendering on one torch thread each), ``dummy`` (all in this process, one
    at a time, on this process's torch threads) or ``batched`` (all in this process, every step
    rendered in one call: :class:`BatchedVecEnv`); default ``cfg.vec_env``, and always
    ``dummy`` for a single env."""
    kind = vec_env or cfg.vec_env
    if kind not in VEC_ENVS:
        raise ValueError(f"`vec_env` must be one of {', '.join(VEC_ENVS)}, got {kind!r}")
    if n_envs == 1:
        kind = "dummy"
    if kind == "batched":
        vector = gym.make_vec(f"mirage_env:{cfg.env}", num_envs=n_envs, vectorization_mode="vector_entry_point",
                              autoreset_mode=AutoresetMode.SAME_STEP, **env_settings(cfg))
        envs = VecMonitor(BatchedVecEnv(vector))
        envs.seed(seed)
        return envs
    # Workers render on one torch thread each; envs in this process leave its threads alone.
    subproc = kind == "subproc"
    return make_vec_env(make_env, n_envs=n_envs, seed=seed, vec_env_cls=SubprocVecEnv if subproc else DummyVecEnv,
                        env_kwargs={"env_id": cfg.env, "torch_threads": 1 if subproc else 0, **env_settings(cfg)})


class BatchedVecEnv(VecEnv):
    """stable-baselines3's ``VecEnv`` over the batched Mirage vector env (``gym.make_vec(id,
    num_envs, vectorization_mode="vector_entry_point", autoreset_mode="same_step")``): every
    step moves all envs and renders their frames in one frame-source call, in this process, so
    the world model runs at batch ``num_envs`` instead of once per env. Steps follow SB3's
    conventions: an env that ends is reset at once, its info is the episode's last one with
    ``terminal_observation`` and ``TimeLimit.truncated`` added, and the reset's info goes to
    ``reset_infos``. Wrap it in ``VecMonitor`` for episode statistics (``make_vec_envs`` does)."""

    def __init__(self, vector):
        from mirage_env.envs.vector import MirageVectorEnv

        if not isinstance(vector.unwrapped, MirageVectorEnv):
            raise TypeError(f"BatchedVecEnv wraps a Mirage vector env (vectorization_mode='vector_entry_point'), "
                            f"got {type(vector.unwrapped).__name__}")
        if vector.unwrapped.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError("BatchedVecEnv needs the vector env made with autoreset_mode='same_step' "
                             "(stable-baselines3 resets an env in the step that ends it)")
        self.vector = vector.unwrapped
        self.envs = self.vector.envs
        super().__init__(self.vector.num_envs, self.vector.single_observation_space, self.vector.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self):
        results = self.vector.reset_each(list(self._seeds), [options or None for options in self._options])
        self.reset_infos = [info for _, info in results]
        self._reset_seeds()
        self._reset_options()
        return _copied(self.vector.batch_observations([observation for observation, _ in results]))

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        results = self.vector.step_each(self._actions)
        self._actions = None
        infos = []
        for i, (_, _, terminated, truncated, info) in enumerate(results):
            if terminated or truncated:
                final_obs, final_info = info.pop("final_obs"), info.pop("final_info")
                self.reset_infos[i] = info
                info = {**final_info, "terminal_observation": final_obs}
            infos.append({**info, "TimeLimit.truncated": bool(truncated and not terminated)})
        observations = self.vector.batch_observations([result[0] for result in results])
        rewards = np.array([result[1] for result in results], dtype=np.float32)
        dones = np.array([result[2] or result[3] for result in results], dtype=bool)
        return _copied(observations), rewards, dones, infos

    def close(self) -> None:
        self.vector.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [env.render() for env in self.envs]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.envs[i], method_name)(*method_args, **method_kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]  # the envs of a vector env are unwrapped


def _copied(observations):
    """A copy of batched observations (the vector env refills its buffers on every step)."""
    if isinstance(observations, dict):
        return {key: value.copy() for key, value in observations.items()}
    return observations.copy()


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
