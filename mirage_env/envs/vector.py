"""A batched vector env: N Mirage envs whose frames come from one frame-source call per step.

``gym.make_vec("MirageDrive-v0", num_envs=16, vectorization_mode="vector_entry_point")`` builds
it. All envs share one frame source with a slot each, so a step moves every env, renders all
N new poses in one renderer (or world-model) call, and scores each frame: the batch is what
makes the world model fast per env. ``reset(seed=s)`` seeds env ``i`` with ``s + i``.

Autoreset (``autoreset_mode``) follows Gymnasium's modes:

- ``"next_step"`` (the default, Gymnasium's): an env that ended is reset by the following
  ``step``, which returns its first observation with reward 0;
- ``"same_step"``: an env that ends is reset in the same ``step``, which returns its new first
  observation, with the last one and its info in ``infos["final_obs"]`` and
  ``infos["final_info"]`` (as Gymnasium's ``SyncVectorEnv``). stable-baselines3 expects this
  (:class:`agents.common.BatchedVecEnv` adapts it).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from mirage_env.envs.base import MirageEnv
from mirage_env.envs.frame_source import make_frame_source
from mirage_env.envs.traffic import with_traffic


class MirageVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` envs of ``env_class`` (configured by ``overrides``) with a shared frame source."""

    def __init__(self, env_class: type[MirageEnv], num_envs: int, render_mode: str | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, **overrides: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        overrides.pop("max_episode_steps", None)  # the envs truncate at their own `max_steps`
        config = env_class.config_class().updated(overrides)
        source = with_traffic(make_frame_source(config, slots=num_envs), config)
        self.envs = [env_class(render_mode=render_mode, config=config, frame_source=source, slot=i)
                     for i in range(num_envs)]
        self.frames = source
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {**self.envs[0].metadata, "autoreset_mode": self.autoreset_mode}
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._observations = create_empty_array(self.single_observation_space, num_envs)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        seeds = [None] * self.num_envs if seed is None else (
            [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"`seed` must be an int or {self.num_envs} seeds, got {len(seeds)}")
        results = self.reset_each(seeds, [options] * self.num_envs)
        infos: dict[str, Any] = {}
        for i, (_, info) in enumerate(results):
            infos = self._add_info(infos, info, i)
        return self.batch_observations([observation for observation, _ in results]), infos

    def reset_each(self, seeds: list[int | None], options: list[dict[str, Any] | None]) -> list[tuple[Any, dict]]:
        """``reset`` unbatched, with a seed and options per env: each env's ``(observation, info)``."""
        if len(seeds) != self.num_envs or len(options) != self.num_envs:
            raise ValueError(f"give {self.num_envs} seeds and options, got {len(seeds)} and {len(options)}")
        self._needs_reset[:] = False
        return [env.reset(seed=env_seed, options=env_options)
                for env, env_seed, env_options in zip(self.envs, seeds, options)]

    def step(self, actions: np.ndarray):
        results = self.step_each(actions)
        infos: dict[str, Any] = {}
        for i, (*_, info) in enumerate(results):
            infos = self._add_info(infos, info, i)
        rewards = np.array([result[1] for result in results], dtype=np.float64)
        terminations = np.array([result[2] for result in results], dtype=bool)
        truncations = np.array([result[3] for result in results], dtype=bool)
        return self.batch_observations([result[0] for result in results]), rewards, terminations, truncations, infos

    def step_each(self, actions: np.ndarray) -> list[tuple[Any, float, bool, bool, dict[str, Any]]]:
        """``step`` unbatched: each env's ``(observation, reward, terminated, truncated, info)``,
        autoreset applied (in ``"same_step"`` mode an env that ended has its last observation
        and info in ``info["final_obs"]`` and ``info["final_info"]``)."""
        actions = np.asarray(actions)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"actions must have shape {self.action_space.shape}, got {actions.shape}")
        moving = [i for i in range(self.num_envs) if not self._needs_reset[i]]
        results: list[tuple | None] = [None] * self.num_envs
        if moving:
            poses = torch.stack([self.envs[i].move(actions[i]) for i in moving])
            K = torch.stack([self.envs[i].K for i in moving])
            frames = self.frames.render(moving, poses, K)
            for i, frame in zip(moving, frames):
                results[i] = self.envs[i].finish_step(frame)
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP
        for i, env in enumerate(self.envs):
            if results[i] is None:  # ended last step: reset now (next-step autoreset)
                observation, info = env.reset()
                results[i] = (observation, 0.0, False, False, info)
                self._needs_reset[i] = False
            elif results[i][2] or results[i][3]:
                if same_step:
                    observation, reward, terminated, truncated, info = results[i]
                    first, reset_info = env.reset()
                    results[i] = (first, reward, terminated, truncated,
                                  {**reset_info, "final_obs": observation, "final_info": info})
                else:
                    self._needs_reset[i] = True
        return results

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            return None
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    def batch_observations(self, observations: list) -> Any:
        """Per-env observations as one batched observation (in a buffer refilled on every call)."""
        self._observations = concatenate(self.single_observation_space, observations, self._observations)
        return self._observations


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """``mode`` as an :class:`AutoresetMode`: next-step or same-step, given as the enum or its
    name (``"next_step"``, ``"same_step"``)."""
    supported = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
    if isinstance(mode, AutoresetMode) and mode in supported:
        return mode
    if isinstance(mode, str) and mode.upper() in ("NEXT_STEP", "SAME_STEP"):
        return AutoresetMode[mode.upper()]
    raise ValueError(f"autoreset_mode must be 'next_step' or 'same_step' (or gymnasium.vector.AutoresetMode."
                     f"NEXT_STEP / SAME_STEP), got {mode!r}")


def make_drive_vector(num_envs: int = 1, render_mode: str | None = None,
                      autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                      **overrides: Any) -> MirageVectorEnv:
    """``vector_entry_point`` of MirageDrive-v0."""
    from mirage_env.envs.drive import MirageDriveEnv

    return MirageVectorEnv(MirageDriveEnv, num_envs, render_mode, autoreset_mode, **overrides)


def make_world_vector(num_envs: int = 1, render_mode: str | None = None,
                      autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                      **overrides: Any) -> MirageVectorEnv:
    """``vector_entry_point`` of MirageWorld-v0."""
    from mirage_env.envs.world import MirageWorldEnv

    return MirageVectorEnv(MirageWorldEnv, num_envs, render_mode, autoreset_mode, **overrides)
