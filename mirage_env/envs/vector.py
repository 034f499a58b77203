"""A batched vector env: N Mirage envs whose frames come from one frame-source call per step.

``gym.make_vec("MirageDrive-v0", num_envs=16, vectorization_mode="vector_entry_point")`` builds
it. All envs share one frame source with a slot each, so a step moves every env, renders all
N new poses in one renderer (or world-model) call, and scores each frame: the batch is what
makes the world model fast per env. Autoreset follows Gymnasium's default (next step): an env
that ended is reset by the following ``step``, which returns its first observation with reward
0. ``reset(seed=s)`` seeds env ``i`` with ``s + i``.
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

    def __init__(self, env_class: type[MirageEnv], num_envs: int, render_mode: str | None = None, **overrides: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        overrides.pop("max_episode_steps", None)  # the envs truncate at their own `max_steps`
        config = env_class.config_class().updated(overrides)
        source = with_traffic(make_frame_source(config, slots=num_envs), config)
        self.envs = [env_class(render_mode=render_mode, config=config, frame_source=source, slot=i)
                     for i in range(num_envs)]
        self.frames = source
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {**self.envs[0].metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._observations = create_empty_array(self.single_observation_space, num_envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        seeds = [None] * self.num_envs if seed is None else (
            [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"`seed` must be an int or {self.num_envs} seeds, got {len(seeds)}")
        infos: dict[str, Any] = {}
        observations = []
        for i, (env, env_seed) in enumerate(zip(self.envs, seeds)):
            observation, info = env.reset(seed=env_seed, options=options)
            observations.append(observation)
            infos = self._add_info(infos, info, i)
        self._needs_reset[:] = False
        return self._batch(observations), infos

    def step(self, actions: np.ndarray):
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
        infos: dict[str, Any] = {}
        observations = []
        rewards = np.zeros(self.num_envs)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            if results[i] is None:  # ended last step: reset now (next-step autoreset)
                observation, info = env.reset()
                self._needs_reset[i] = False
            else:
                observation, rewards[i], terminations[i], truncations[i], info = results[i]
                self._needs_reset[i] = terminations[i] or truncations[i]
            observations.append(observation)
            infos = self._add_info(infos, info, i)
        return self._batch(observations), rewards, terminations, truncations, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            return None
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    def _batch(self, observations: list) -> Any:
        self._observations = concatenate(self.single_observation_space, observations, self._observations)
        return self._observations


def make_drive_vector(num_envs: int = 1, render_mode: str | None = None, **overrides: Any) -> MirageVectorEnv:
    """``vector_entry_point`` of MirageDrive-v0."""
    from mirage_env.envs.drive import MirageDriveEnv

    return MirageVectorEnv(MirageDriveEnv, num_envs, render_mode, **overrides)


def make_world_vector(num_envs: int = 1, render_mode: str | None = None, **overrides: Any) -> MirageVectorEnv:
    """``vector_entry_point`` of MirageWorld-v0."""
    from mirage_env.envs.world import MirageWorldEnv

    return MirageVectorEnv(MirageWorldEnv, num_envs, render_mode, **overrides)
