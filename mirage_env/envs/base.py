"""What MirageDrive-v0 and MirageWorld-v0 share: scenarios, frames, observations, rewards, render().

A step is split in two so that a batched vector env can render many envs at once:
:meth:`MirageEnv.move` turns an action into the camera poses of the step's frames (the last is
the new pose), the frame source renders them, and :meth:`MirageEnv.finish_step` turns the
frames into the step's results. The subclasses say
how actions move the ego and what its footprint is.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from PIL import Image

from mirage_env.envs.birds_eye import birds_eye_view
from mirage_env.envs.config import EnvConfig
from mirage_env.envs.frame_source import FrameSource, make_frame_source
from mirage_env.envs.traffic import collision_names, make_traffic, traffic_instances, with_traffic
from mirage_env.rewards import REWARD_TERMS, EpisodeMonitor, StepOutcome, collision_infraction
from mirage_env.scenario import MapScenario, Scenario, StartFrame, load_map_assets, plan_scenario_route

Observation = dict[str, np.ndarray] | np.ndarray

# Bounds of the state observations, far beyond what an episode reaches (the route deviation
# limit ends it at 30 m); values are clipped to them so they always lie in the space.
MAX_SPEED_OBS_MPS = 100.0  # [m/s]
MAX_DISTANCE_OBS_M = 200.0  # [m] lateral error and route points


class MirageEnv(gym.Env[Observation, np.ndarray]):
    """Base of the Mirage envs; see :class:`~mirage_env.envs.MirageDriveEnv` and
    :class:`~mirage_env.envs.MirageWorldEnv` for the documentation."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    config_class: ClassVar[type[EnvConfig]] = EnvConfig
    action_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, render_mode: str | None = None, config: EnvConfig | None = None, *,
                 frame_source: FrameSource | None = None, slot: int = 0, **overrides: Any):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"`config` must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config.updated(overrides)
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "render_fps": 1.0 / self.config.dt_s}
        # A batched vector env passes one shared source and gives each env its own slot in it.
        self.frames: FrameSource = with_traffic(frame_source or make_frame_source(self.config), self.config)
        self.traffic = None  # editors.Traffic of the running episode, when the config asks for traffic
        self.slot = slot
        self.observation_space = observation_space(self.config)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(len(self.action_names),), dtype=np.float32)
        self.episode_config = self.config  # config of the running episode (reset options applied)
        self.scenario: Scenario | None = None
        self.monitor: EpisodeMonitor | None = None
        self.K = torch.zeros(3, 3)  # (3, 3) intrinsics of this episode's frames
        self._rgb = np.zeros((self.config.height, self.config.width, 3), dtype=np.uint8)
        self._trail: list[np.ndarray] = []
        self._step_frames: np.ndarray | None = None  # (T, H, W, 3) of the last step when T > 1
        self._last = _no_outcome()

    # ------------------------------------------------------------------ subclass hooks
    def _start(self, scenario: Scenario) -> StartFrame:
        """Place the ego at the scenario's start; return the first frame."""
        raise NotImplementedError

    def _apply_action(self, action: np.ndarray) -> torch.Tensor:
        """Move the ego by a checked ``action``; return the ``cam_to_world`` (T, 4, 4) of the
        step's ``T = frames_per_step`` frames along the motion, the last the new pose."""
        raise NotImplementedError

    def _ego(self) -> tuple[np.ndarray, float, float]:
        """The ego's reference point ``xy`` (2,) [m], ``yaw`` [rad] and speed [m/s]."""
        raise NotImplementedError

    def _footprint(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The ego's collision box: centre (3,) [m], half sizes (3,) [m], yaw [rad]."""
        raise NotImplementedError

    def traffic_boxes(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """The inserted traffic's footprints now (``editors.Traffic.boxes``; empty without
        traffic): what the route expert brakes for."""
        return [] if self.traffic is None else self.traffic.boxes()

    def _collisions(self, scenario: MapScenario) -> set[str]:
        """Infraction names of what the ego's footprint overlaps."""
        hits = {collision_infraction(label) for label in scenario.assets.obstacles.hits(*self._footprint())}
        if self.traffic is not None:
            hits |= collision_names(self.traffic, *self._footprint())
        return hits

    def _make_scenario(self, config: EnvConfig) -> Scenario:
        assets = load_map_assets(config.map, config.scene_seed, config.device, config.antialias)
        route = plan_scenario_route(
            assets.road_map, self.np_random, config.route_start, config.route_goal,
            config.route_min_length_m, config.route_max_length_m,
        )
        return MapScenario(assets, route)

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.episode_config = self.config.updated(options or {}, at_reset=True)
        scenario = self._make_scenario(self.episode_config)
        start = self._start(scenario)
        self.frames.reset(self.slot, start, scenario, seed=int(self.np_random.integers(2**31)))
        self.scenario = scenario
        self.K = start.K[0]
        route = scenario.route if isinstance(scenario, MapScenario) else None
        self.monitor = EpisodeMonitor(route, self.episode_config)
        xy, yaw, _ = self._ego()
        self.monitor.start(xy, yaw)
        self._rgb = start.rgb[0].cpu().numpy().copy()
        self.traffic = self._start_traffic(scenario)
        if self.traffic is not None:
            self.frames.set_assets(self.slot, traffic_instances(self.traffic))
            self._rgb = self.frames.insert(self.slot, start.rgb[0], start.depth[0], self.K, start.cam_to_world[0])
        self._trail = [xy]
        self._step_frames = None
        self._last = _no_outcome()
        return self._observation(), self._info()

    def _start_traffic(self, scenario: Scenario):
        """The episode's traffic (see :mod:`mirage_env.envs.traffic`), or None when not asked for."""
        config = self.episode_config
        if not (config.traffic_vehicles or config.traffic_pedestrians):
            return None
        if not isinstance(scenario, MapScenario):
            raise ValueError("traffic (traffic_vehicles / traffic_pedestrians) moves on a road map: a start image "
                             "without a map has none; set both to 0 or use a map scenario")
        seed = config.traffic_seed if config.traffic_seed is not None else int(self.np_random.integers(2**31))
        xy, yaw, _ = self._ego()
        return make_traffic(scenario, np.random.default_rng(seed), config.traffic_vehicles,
                            config.traffic_pedestrians, (xy, yaw), config.traffic_gap_m)

    def step(self, action: np.ndarray):
        cam_to_world = self.move(action)
        frames = self.frames.render([self.slot], cam_to_world[None], self.K[None])[0]
        return self.finish_step(frames)

    def move(self, action: np.ndarray) -> torch.Tensor:
        """Check ``action`` and move the ego; returns the camera poses to render, (T, 4, 4) for
        ``T = frames_per_step`` frames, the last the new pose."""
        if self.scenario is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} {self.action_names}, got {action.shape}"
            )
        if not np.isfinite(action).all():
            raise ValueError(f"action contains NaN or inf: {action.tolist()}")
        if np.abs(action).max() > 1.0:
            raise ValueError(f"action must lie in the action space [-1, 1], got {action.tolist()}; clip or rescale it")
        cam_to_world = self._apply_action(action)
        if self.traffic is not None:  # traffic moves after the ego, keeping its gap to it
            self.traffic.step(self.episode_config.dt_s, [self._footprint()])
            self.frames.set_assets(self.slot, traffic_instances(self.traffic))
        return cam_to_world

    def finish_step(self, frames: np.ndarray):
        """Score the move and observe its ``frames`` (T, H, W, 3) uint8; returns Gymnasium's step tuple."""
        self._rgb = frames[-1]
        self._step_frames = frames if len(frames) > 1 else None
        xy, yaw, speed = self._ego()
        self._trail.append(xy)
        scenario = self.scenario
        if isinstance(scenario, MapScenario):
            centre = self._footprint()[0]
            lane = scenario.assets.road_map.driving_lane_offset(centre[:2])
            collisions = self._collisions(scenario)
        else:
            lane, collisions = None, set()
        self._last = self.monitor.update(xy, yaw, speed, lane, collisions)
        outcome = self._last
        return self._observation(), outcome.reward, outcome.terminated, outcome.truncated, self._info()

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the observation (upscaled) beside a bird's-eye map, (S, S + w, 3) uint8."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; create the env with render_mode='rgb_array'")
            return None
        if self.scenario is None:
            raise RuntimeError("call reset() before render()")
        size = self.config.render_size
        panel_width = max(1, round(size * self.config.width / self.config.height))
        view = np.asarray(Image.fromarray(self._rgb).resize((panel_width, size), Image.Resampling.NEAREST))
        speed = self._ego()[2]
        scenario = self.scenario
        is_map = isinstance(scenario, MapScenario)
        caption = f"{scenario.name}  {speed:4.1f} m/s  route {self.monitor.route_completion:3.0f}%"
        bev = birds_eye_view(
            size, self.episode_config.birds_eye_range_m, *self._footprint(), np.array(self._trail),
            scene=scenario.assets.scene if is_map else None,
            route=scenario.route.points if is_map else None,
            caption=caption,
        )
        return np.concatenate([view, bev], axis=1)

    # ------------------------------------------------------------------ observation and info
    def _observation(self) -> Observation:
        rgb = self._rgb
        if self.config.observation == "rgb":
            return rgb
        monitor, config = self.monitor, self.config
        xy, yaw, speed = self._ego()
        route_ahead = np.zeros(2 * config.route_points, dtype=np.float32)
        if monitor.route is not None:
            spacing = self.episode_config.route_point_spacing_m
            along = monitor.progress_m + spacing * np.arange(1, config.route_points + 1)
            points = monitor.route.point_at(along) - xy
            c, s = math.cos(yaw), math.sin(yaw)
            ego_frame = points @ np.array([[c, -s], [s, c]])  # x forward, y left
            route_ahead = ego_frame.astype(np.float32).reshape(-1)
        lateral = np.clip(monitor.lateral_error_m, -MAX_DISTANCE_OBS_M, MAX_DISTANCE_OBS_M)
        return {
            "rgb": rgb,
            "speed": np.array([min(speed, MAX_SPEED_OBS_MPS)], dtype=np.float32),
            "heading_error": np.array([monitor.heading_error_rad], dtype=np.float32),
            "lateral_error": np.array([lateral], dtype=np.float32),
            "route": np.clip(route_ahead, -MAX_DISTANCE_OBS_M, MAX_DISTANCE_OBS_M),
        }

    def _info(self) -> dict[str, Any]:
        monitor = self.monitor
        penalty = monitor.penalty
        return {
            "rewards": dict(self._last.rewards),
            "infractions": dict(monitor.infractions),
            "route_completion": monitor.route_completion,  # [%]
            "infraction_penalty": penalty,
            "driving_score": monitor.route_completion * penalty,  # [%] Leaderboard-style
            "termination_reason": self._last.reason,
            **({"labels": self.frames.labels[self.slot], "instance_mask": self.frames.instance_masks[self.slot]}
               if self.traffic is not None else {}),
            **({"frames": self._step_frames} if self._step_frames is not None else {}),
        }

    def _render_start(self, scenario: MapScenario, cam_to_world: torch.Tensor, K: torch.Tensor) -> StartFrame:
        """The exact first frame (with depth) of a map scenario, whichever source renders the rest."""
        out = scenario.assets.renderer.render(cam_to_world[None], K[None], self.config.height, self.config.width)
        return StartFrame(rgb=out.rgb.cpu(), depth=out.depth.cpu(), K=K[None], cam_to_world=cam_to_world[None])


def observation_space(config: EnvConfig) -> spaces.Space:
    """The observation space of ``config`` (see the env docstrings)."""
    rgb = spaces.Box(0, 255, shape=(config.height, config.width, 3), dtype=np.uint8)
    if config.observation == "rgb":
        return rgb
    distance = MAX_DISTANCE_OBS_M
    return spaces.Dict(
        {
            "rgb": rgb,
            "speed": spaces.Box(0.0, MAX_SPEED_OBS_MPS, shape=(1,), dtype=np.float32),
            "heading_error": spaces.Box(-np.pi, np.pi, shape=(1,), dtype=np.float32),
            "lateral_error": spaces.Box(-distance, distance, shape=(1,), dtype=np.float32),
            "route": spaces.Box(-distance, distance, shape=(2 * config.route_points,), dtype=np.float32),
        }
    )


def _no_outcome() -> StepOutcome:
    rewards = dict.fromkeys(REWARD_TERMS, 0.0)
    return StepOutcome(rewards=rewards, reward=0.0, terminated=False, truncated=False, reason="")
