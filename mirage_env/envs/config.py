"""Every setting of the Mirage envs, with its default and unit, in one place.

``gym.make("MirageDrive-v0", width=128, map="Town01")`` overrides fields for the env's life;
``env.reset(options={"map": "town:7", "route_start": (x, y), "route_goal": (x, y)})`` overrides
them for one episode. Unknown keys raise. Fields that shape the spaces or the frame source
(:data:`CONSTRUCTION_ONLY`) can only be set at construction. ``reward_weights`` given as a
partial dict update the defaults term by term.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mirage_env.rewards import DEFAULT_REWARD_WEIGHTS, REWARD_TERMS
from mirage_env.vehicle import BicycleModel, CameraMount
from world_model.backbone import PRECISIONS
from world_model.world_model import MEMORIES, WorldModelConfig

OBSERVATION_MODES = ("dict", "rgb")
RENDERERS = ("ground_truth", "world_model")
CONSTRUCTION_ONLY = frozenset({"width", "height", "observation", "route_points", "renderer", "device", "render_size",
                               "world_model_path", "memory", "world_model_size", "world_model_reencode",
                               "world_model_anchor",
                               "world_model_precision", "frames_per_step",
                               "traffic_vehicles", "traffic_pedestrians", "refine_assets", "refiner_path"})
"""Fields that change the observation space or the frame source: ``gym.make`` only."""


@dataclass(frozen=True, eq=False)
class EnvConfig:
    """Settings shared by MirageDrive-v0 and MirageWorld-v0 (units in comments)."""

    # --- scenario ---------------------------------------------------------------------------
    # "Town01" (embedded), "town:<seed>" (procedural town) or an .xodr path. The default is a
    # training town: Town01 and mirage_env.towns.HELDOUT_SEEDS are kept for evaluation.
    map: str = "town:0"
    scene_seed: int = 0  # scene dressing (buildings, trees, parked cars, colours, sky)
    route_start: tuple[float, float] | None = None  # [m] world xy; None draws a random route
    route_goal: tuple[float, float] | None = None  # [m] world xy; given together with route_start
    route_min_length_m: float = 100.0  # [m] random routes are at least this long where the map allows
    route_max_length_m: float = 300.0  # [m]
    # --- frames and observations -------------------------------------------------------------
    # "world_model" (generated frames) or "ground_truth" (the exact scene: for comparison, and
    # about twice the steps/s for fast training).
    renderer: str = "world_model"
    world_model_path: str | None = None  # world-model weights folder; None: the model shipped in the package
    memory: str = "latent"  # the world model's memory: "latent" (cache), "pixel" (baseline) or "none"
    world_model_size: int = 128  # [px] square size the world model generates at (frames are resized to width x height)
    # Weight of the shown frames, encoded again, in what the world model's memory and context
    # keep (0 to 1; see world_model.world_model): more holds long episodes together, less keeps
    # the first seconds sharper.
    world_model_reencode: float = WorldModelConfig.reencode
    # Pull of the start frame on generated frames where it saw the view (0 to 1; see
    # world_model.world_model): more keeps what the start frame saw closer to it on return.
    # Above 0 each env's start frames take a latent cache of their own beside its shared one,
    # so one batched vector env holds at most 128 envs (256 at 0).
    world_model_anchor: float = WorldModelConfig.anchor
    # "bfloat16" runs the world model's networks in bfloat16: faster batched steps (the batched
    # vector env) on CPUs with native bfloat16 (AMX / AVX-512 BF16), slower elsewhere and at
    # batch 1; see world_model.tiny_backbone.TinyBackbone.
    world_model_precision: str = "float32"
    device: str = "cpu"  # torch device that renders
    # Colour rays per pixel side of the ground-truth renderer (start frames and ground_truth
    # frames): 1 is one ray through each pixel centre, which aliases (stair-step edges, sub-pixel
    # detail as noise); 2 or 3 average rays over each pixel's area, as a camera does, at 2.7x /
    # 3.6x the rendering time at 64 px (benchmarks/render.py). The shipped world model was trained on 1.
    antialias: int = 1
    width: int = 64  # [px] observation width
    height: int = 64  # [px] observation height
    fov_deg: float = CameraMount.fov_deg  # [deg] horizontal field of view
    camera_forward_m: float = CameraMount.forward_m  # [m] camera ahead of the rear axle
    camera_height_m: float = CameraMount.height_m  # [m] camera above the ground
    camera_pitch_deg: float = CameraMount.pitch_deg  # [deg] > 0 looks up
    observation: str = "dict"  # "dict" (rgb + ego/route state) or "rgb" (the image alone)
    # Frames rendered per step, along the step's motion (the world model generates them in turn):
    # the observation is the last, info["frames"] (frames_per_step, height, width, 3) holds all.
    # The motion, rewards and episode are the same for any value.
    frames_per_step: int = 1
    route_points: int = 8  # route points ahead in the observation
    route_point_spacing_m: float = 4.0  # [m] between them, along the route
    # --- episode ----------------------------------------------------------------------------
    dt_s: float = 0.1  # [s] simulated time per step
    max_steps: int = 1000  # steps before the episode is truncated
    goal_tolerance_m: float = 2.0  # [m] the route is complete this close to its end
    lane_margin_m: float = 0.5  # [m] allowed beyond a lane edge before counting as outside the lanes
    off_road_tolerance_m: float = 2.0  # [m] beyond a lane edge that ends the episode
    route_deviation_m: float = 30.0  # [m] from the route that ends the episode (Leaderboard's value)
    blocked_speed_mps: float = 0.1  # [m/s] slower counts as standing still (Leaderboard's value)
    blocked_time_s: float = 20.0  # [s] standing still this long truncates the episode
    speed_limit_mps: float = 10.0  # [m/s] faster is penalised
    terminate_on_collision: bool = True  # False: count collisions and drive on (evaluation)
    reward_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))
    # --- traffic: assets from the editor inserted into the frames (map scenarios) -------------
    traffic_vehicles: int = 0  # vehicles driving the map's lanes near the ego (collisions: collisions_vehicle)
    traffic_pedestrians: int = 0  # pedestrians on sidewalks and crossings near the ego (collisions_pedestrian)
    traffic_seed: int | None = None  # traffic layout, assets and speeds; None: drawn from the env's RNG at reset
    traffic_gap_m: float = 2.0  # [m] bumper-to-bumper gap vehicles keep to anything ahead, the ego included
    refine_assets: bool = False  # run the one-step refiner on frames with assets in view (~ms per frame)
    refiner_path: str | None = None  # refiner weights folder; None: the refiner shipped in the package
    # --- render() ---------------------------------------------------------------------------
    render_size: int = 256  # [px] height of render() frames
    birds_eye_range_m: float = 60.0  # [m] side of the bird's-eye map in render()

    def __post_init__(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")

        require(isinstance(self.map, str) and bool(self.map), f"`map` must be a non-empty string, got {self.map!r}")
        for name in ("traffic_vehicles", "traffic_pedestrians"):
            value = getattr(self, name)
            require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0,
                    f"`{name}` must be an integer >= 0, got {value!r}")
        require(self.traffic_seed is None or isinstance(self.traffic_seed, (int, np.integer)),
                f"`traffic_seed` must be an integer or None, got {self.traffic_seed!r}")
        require(self.frames_per_step == 1 or not (self.traffic_vehicles or self.traffic_pedestrians),
                f"traffic is inserted into one frame per step: use frames_per_step=1 with traffic_vehicles or "
                f"traffic_pedestrians, got frames_per_step={self.frames_per_step!r}")
        for name in ("width", "height", "route_points", "max_steps", "render_size", "frames_per_step", "antialias"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0,
                f"`{name}` must be a positive integer, got {value!r}",
            )
        require(
            self.observation in OBSERVATION_MODES,
            f"`observation` must be one of {OBSERVATION_MODES}, got {self.observation!r}",
        )
        require(self.renderer in RENDERERS, f"`renderer` must be one of {RENDERERS}, got {self.renderer!r}")
        require(self.memory in MEMORIES, f"`memory` must be one of {MEMORIES}, got {self.memory!r}")
        for name in ("world_model_reencode", "world_model_anchor"):
            value = getattr(self, name)
            require(isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
                    f"`{name}` must be a number in [0, 1], got {value!r}")
        require(self.world_model_precision in PRECISIONS,
                f"`world_model_precision` must be one of {PRECISIONS}, got {self.world_model_precision!r}")
        require(isinstance(self.world_model_size, (int, np.integer)) and self.world_model_size >= 16
                and self.world_model_size % 16 == 0,
                f"`world_model_size` must be a multiple of 16 pixels (the default model's latent grid is 1/4 of "
                f"it and its UNet halves that twice), got {self.world_model_size!r}")
        require(0.0 < self.fov_deg < 180.0, f"`fov_deg` must be in (0, 180), got {self.fov_deg}")
        require(self.dt_s > 0.0, f"`dt_s` must be > 0 seconds, got {self.dt_s}")
        require(
            0.0 < self.route_min_length_m <= self.route_max_length_m,
            "need 0 < route_min_length_m <= route_max_length_m, "
            f"got {self.route_min_length_m}, {self.route_max_length_m}",
        )
        require(
            (self.route_start is None) == (self.route_goal is None),
            "give `route_start` and `route_goal` together (world xy in metres), or neither for a random route",
        )
        for name in ("route_start", "route_goal"):
            value = getattr(self, name)
            require(
                value is None or (np.shape(value) == (2,) and bool(np.isfinite(value).all())),
                f"`{name}` must be (x, y) in metres, got {value!r}",
            )
        for name in ("goal_tolerance_m", "lane_margin_m", "off_road_tolerance_m", "route_deviation_m",
                     "blocked_speed_mps", "blocked_time_s", "speed_limit_mps", "route_point_spacing_m",
                     "birds_eye_range_m", "camera_height_m", "traffic_gap_m"):
            value = getattr(self, name)
            require(not math.isnan(value) and value >= 0.0, f"`{name}` must be >= 0, got {value}")
        require(
            set(self.reward_weights) == set(REWARD_TERMS),
            f"`reward_weights` must give exactly the terms {REWARD_TERMS}",
        )
        require(all(math.isfinite(w) for w in self.reward_weights.values()), "`reward_weights` must be finite")

    def camera_mount(self) -> CameraMount:
        """The camera of these settings, on the car (MirageDrive-v0) or at a route start."""
        return CameraMount(forward_m=self.camera_forward_m, height_m=self.camera_height_m,
                           pitch_deg=self.camera_pitch_deg, fov_deg=self.fov_deg, width=self.width, height=self.height)

    def updated(self, overrides: Mapping[str, Any], at_reset: bool = False) -> EnvConfig:
        """A copy with ``overrides`` applied; ``at_reset`` refuses :data:`CONSTRUCTION_ONLY` keys."""
        overrides = dict(overrides)
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"unknown option {key!r} for {type(self).__name__}.{hint} Valid options: {', '.join(sorted(known))}"
                )
            if at_reset and key in CONSTRUCTION_ONLY:
                raise ValueError(
                    f"option {key!r} changes the spaces or the renderer: pass it to gym.make(), not reset()"
                )
        if "reward_weights" in overrides:
            weights = dict(overrides["reward_weights"])
            unknown = set(weights) - set(REWARD_TERMS)
            if unknown:
                raise ValueError(f"unknown reward terms {sorted(unknown)}; terms: {', '.join(REWARD_TERMS)}")
            overrides["reward_weights"] = {**self.reward_weights, **{k: float(v) for k, v in weights.items()}}
        if isinstance(overrides.get("map"), os.PathLike):
            overrides["map"] = os.fspath(overrides["map"])
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True, eq=False)
class DriveConfig(EnvConfig):
    """MirageDrive-v0: the :class:`EnvConfig` fields plus the car (units in comments)."""

    wheelbase_m: float = BicycleModel.wheelbase_m  # [m]
    max_steer_rad: float = BicycleModel.max_steer_rad  # [rad] front-wheel angle at steer = +-1
    max_accel_mps2: float = BicycleModel.max_accel_mps2  # [m/s^2] at throttle = 1
    max_brake_mps2: float = BicycleModel.max_brake_mps2  # [m/s^2] at throttle = -1
    max_speed_mps: float = BicycleModel.max_speed_mps  # [m/s]
    vehicle_length_m: float = 4.6  # [m] collision footprint, centred between the axles
    vehicle_width_m: float = 1.9  # [m]
    vehicle_height_m: float = 1.5  # [m]


@dataclass(frozen=True, eq=False)
class WorldConfig(EnvConfig):
    """MirageWorld-v0: the :class:`EnvConfig` fields plus camera steps and start images."""

    max_translation_m: float = 0.5  # [m] camera move per step at action +-1, per axis
    max_rotation_deg: float = 5.0  # [deg] camera turn per step at action +-1, per axis
    camera_radius_m: float = 0.3  # [m] half size of the camera's collision box
    min_camera_height_m: float = 0.2  # [m] lower is a collision with the ground
    start_image: np.ndarray | None = None  # (height, width, 3) uint8: explore from this image, no map
    start_depth: np.ndarray | None = None  # (height, width) [m] of start_image, 0 = no surface
    start_intrinsics: np.ndarray | None = None  # (3, 3) [px] of start_image; None: from fov_deg
    start_pose: np.ndarray | None = None  # (4, 4) cam_to_world of start_image; None: camera_height_m up, along +x
