"""Policies the evaluator and the imitation scripts drive with.

A policy is any callable ``policy(observation) -> action``. If it also has a ``reset(env)``
method, that is called at the start of every episode with the (wrapped) env, so a policy can
read what it needs from it (the expert reads the planned route and the car's state).
:func:`load_policy` turns a command-line spec into one:

- ``"expert"``: the route-following expert (:class:`mirage_env.expert.RouteExpert`); it drives
  from the car's state, not the pixels, so it is the reference an agent is compared with;
- a stable-baselines3 checkpoint ``path/to/model.zip`` (PPO or SAC, detected from the file;
  BC and DAgger save PPO checkpoints), acting deterministically;
- ``"module:function"``: any importable callable (``function(observation) -> action``,
  optionally with ``reset(env)``).
"""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Policy(Protocol):
    def __call__(self, observation: Any) -> np.ndarray: ...


class ExpertPolicy:
    """The route-following expert of MirageDrive-v0: pure pursuit on the planned route, braking for
    inserted traffic in its path."""

    def __init__(self) -> None:
        self.env = None
        self.expert = None

    def reset(self, env: gym.Env) -> None:
        from mirage_env.envs import MirageDriveEnv
        from mirage_env.expert import RouteExpert

        inner = env.unwrapped
        if not isinstance(inner, MirageDriveEnv):
            raise ValueError(f"the expert drives MirageDrive-v0 (steer, throttle), not {type(inner).__name__}")
        self.env = inner
        self.expert = RouteExpert(inner.scenario.route, inner.model)

    def __call__(self, observation: Any) -> np.ndarray:
        if self.expert is None:
            raise RuntimeError("call reset(env) at the start of each episode before asking the expert")
        return np.array(self.expert.act(self.env.state, self.env.traffic_boxes()), dtype=np.float32)


class SB3Policy:
    """A stable-baselines3 model acting deterministically (its policy's mean or mode)."""

    def __init__(self, model: Any, source: str = "model"):
        self.model = model
        self.source = source

    def reset(self, env: gym.Env) -> None:
        check_observation_space(self.model.observation_space, env.observation_space, self.source)

    def __call__(self, observation: Any) -> np.ndarray:
        action, _ = self.model.predict(observation, deterministic=True)
        return action


ALGORITHMS = ("ppo", "sac")


def algorithm_class(name: str) -> type:
    """The stable-baselines3 class of ``name`` (``ppo`` or ``sac``)."""
    from stable_baselines3 import PPO, SAC

    classes = {"ppo": PPO, "sac": SAC}
    if name not in classes:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(classes)}")
    return classes[name]


def checkpoint_algorithm(path: str | Path) -> str:
    """``ppo`` or ``sac``: which algorithm saved the stable-baselines3 checkpoint ``path``
    (read from the policy class recorded in the zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a stable-baselines3 checkpoint (a zip with a `data` entry): "
                         f"{error}") from error
    module = data.get("policy_class", {}).get("__module__", "")
    if module.startswith("stable_baselines3.sac"):
        return "sac"
    if module.startswith("stable_baselines3.common.policies"):  # ActorCriticPolicy: PPO, BC, DAgger
        return "ppo"
    raise ValueError(f"{path}: policy class from {module!r} is neither PPO's nor SAC's; "
                     "pass algorithm=ppo or algorithm=sac")


def load_checkpoint(path: str | Path, algorithm: str = "auto", device: str = "cpu") -> Any:
    """Load a stable-baselines3 checkpoint; ``algorithm`` ``auto`` reads it from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    name = checkpoint_algorithm(path) if algorithm == "auto" else algorithm
    return algorithm_class(name).load(path, device=device)


def load_policy(spec: str, algorithm: str = "auto", device: str = "cpu") -> Policy:
    """The policy named by ``spec``: ``expert``, a checkpoint ``.zip`` or ``module:function``."""
    spec = str(spec)
    if spec == "expert":
        return ExpertPolicy()
    if spec.endswith(".zip") or Path(spec).is_file():
        return SB3Policy(load_checkpoint(spec, algorithm, device), source=spec)
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"policy {spec!r}: cannot import module {module_name!r} ({error})") from error
        policy = getattr(module, attribute, None)
        if policy is None or not callable(policy):
            raise ValueError(f"policy {spec!r}: {module_name} has no callable {attribute!r}")
        return policy
    raise ValueError(f"unknown policy {spec!r}: give `expert`, a stable-baselines3 checkpoint `path/model.zip` "
                     "or an importable callable `module:function`")


def check_observation_space(expected: spaces.Space, given: spaces.Space, source: str = "model") -> None:
    """Raise a clear error when an env's observations do not fit a model's (an image may be
    channel-first in the model: stable-baselines3 transposes HWC images)."""
    def shape_of(space: spaces.Space) -> dict[str, tuple[int, ...]]:
        if isinstance(space, spaces.Dict):
            return {key: tuple(sub.shape) for key, sub in space.spaces.items()}
        return {"": tuple(space.shape)}

    want, have = shape_of(expected), shape_of(given)
    matches = set(want) == set(have) and all(
        want[key] == have[key] or (len(have[key]) == 3 and want[key] == (have[key][2], *have[key][:2]))
        for key in want)
    if not matches:
        raise ValueError(f"{source} was trained on observations {want} but the env gives {have}: "
                         "create the env with the same width, height, observation and route_points")
