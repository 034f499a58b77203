"""MirageDrive-v0: drive a car along a route by steering and throttle, seeing through its camera."""

from __future__ import annotations

import math

import numpy as np
import torch

from mirage_env.envs.base import MirageEnv
from mirage_env.envs.config import DriveConfig
from mirage_env.scenario import Scenario, StartFrame
from mirage_env.vehicle import BicycleModel, VehicleState


class MirageDriveEnv(MirageEnv):
    """
    ## Description

    A car follows a route through a road map (CARLA's Town01, a procedural town or any OpenDRIVE
    file, dressed with buildings, trees, poles and parked cars) and sees it through a camera
    mounted on the car. The frames come from a frame source: ``renderer="world_model"`` (the
    default) generates them with the video world model and its latent spatial memory, starting
    from the exact first frame; ``renderer="ground_truth"`` draws the scene exactly.
    Rewards, infractions and episode ends are measured on the road map and the scene's geometry,
    never on pixels.

    ```python
    import gymnasium as gym
    import mirage_env  # registers the ids
    env = gym.make("MirageDrive-v0", render_mode="rgb_array")
    # or, without the import (also in spawned vector-env workers):
    env = gym.make("mirage_env:MirageDrive-v0")
    ```

    ## Action Space

    ``Box(-1, 1, (2,), float32)``: ``[steer, throttle]``. ``steer`` > 0 turns left (front-wheel
    angle ``steer * max_steer_rad``); ``throttle`` > 0 accelerates (up to ``max_accel_mps2``),
    < 0 brakes (up to ``max_brake_mps2``). A kinematic bicycle model advances ``dt_s`` per step.
    NaN or out-of-range actions raise ``ValueError``.

    ## Observation Space

    With ``observation="dict"`` (default) a flat ``Dict``:

    | key | space | meaning |
    |---|---|---|
    | ``rgb`` | ``Box(0, 255, (height, width, 3), uint8)`` | the camera frame |
    | ``speed`` | ``Box(0, 100, (1,))`` | [m/s] |
    | ``heading_error`` | ``Box(-pi, pi, (1,))`` | [rad] car yaw minus route heading |
    | ``lateral_error`` | ``Box(-200, 200, (1,))`` | [m] from the route, > 0 left of it |
    | ``route`` | ``Box(-200, 200, (2 * route_points,))`` | [m] route points ahead, in the car frame |

    ``route`` holds the next ``route_points`` points along the route, ``route_point_spacing_m``
    apart, in the car frame (x forward, y left) as ``x0, y0, x1, y1, ...``. State entries are
    float32 and clipped to these bounds (an episode ends long before).

    With ``observation="rgb"`` the ``rgb`` image alone. The default 64 x 64 keeps a step cheap
    enough for on-policy RL on a CPU (the ground truth renders it in ~10 ms; the world model
    generates at ``world_model_size``, 128 px by default, and resizes) and is above the 36 x 36 minimum of
    stable-baselines3's ``CnnPolicy``; pass ``width=128, height=128`` for more detail.
    Stack frames with Gymnasium's ``FrameStackObservation`` wrapper. ``frames_per_step=k``
    renders k frames along each step's motion (the car after ``dt_s * i / k``; the world model
    generates them one after the other): ``rgb`` is the last, ``info["frames"]`` (k, height,
    width, 3) holds all (not with traffic).

    The reference point of the car (for route, lane and speed terms) is its centre, half a
    wheelbase ahead of the rear axle.

    ## Rewards

    A weighted sum of named terms; ``info["rewards"]`` holds each term's contribution
    (weight x value), which add up to the reward. Weights (``reward_weights``, partial dicts
    update the defaults): ``progress`` 1.0 per metre along the route, ``lane_centering`` -0.2
    per metre from the route, ``heading`` -0.2 per radian of heading error, ``overspeed`` -0.5
    per m/s above ``speed_limit_mps``, ``off_road`` -1.0 per step outside the driving lanes,
    ``collision`` -50 per collision, ``route_complete`` +20 once.

    ``info["infractions"]`` counts infractions under the CARLA Leaderboard 2.x names (see
    :mod:`mirage_env.rewards`), and ``info["route_completion"]`` [%], ``info["infraction_penalty"]``
    and ``info["driving_score"]`` [%] score the episode the Leaderboard's way.

    ## Starting State

    The car stands still at the start of the route, heading along it. The route runs between
    ``route_start`` and ``route_goal`` when given, else it is drawn from the env's RNG between
    random spawn points, ``route_min_length_m`` to ``route_max_length_m`` long.

    ## Episode End

    Terminated when the car hits a static object (``collisions_layout``, ``collisions_vehicle``
    for parked cars) or traffic (``collisions_vehicle``, ``collisions_pedestrian``; with
    ``terminate_on_collision``), is more than ``off_road_tolerance_m``
    beyond the driving lanes, strays ``route_deviation_m`` from the route (``route_dev``), or
    comes within ``goal_tolerance_m`` of the route's end. Truncated after ``max_steps`` steps
    (``route_timeout``) or after standing still for ``blocked_time_s`` (``vehicle_blocked``).
    ``info["termination_reason"]`` says which: ``collision``, ``off_road``,
    ``route_deviation``, ``route_complete``, ``step_limit``, ``blocked`` (``""`` while running).

    ## Arguments

    ``gym.make("MirageDrive-v0", render_mode=None, config=None, **overrides)``: every field of
    :class:`~mirage_env.envs.config.DriveConfig` (defaults and units listed there), e.g.
    ``map="Town01"``, ``width=128``, ``reward_weights={"collision": -100}``. ``reset(seed=...,
    options={...})`` takes the same keys for one episode (the scenario: ``map``,
    ``scene_seed``, ``route_start``, ``route_goal``, ...), except those that shape the spaces;
    unknown keys raise ``ValueError``. ``render_mode="rgb_array"``: ``render()`` returns the
    observation beside a bird's-eye map (roads, objects, route, trail, car).

    Traffic: ``traffic_vehicles`` and ``traffic_pedestrians`` insert moving assets of the asset
    editor (:mod:`editors`) into the frames of either renderer (vehicles follow lanes and keep
    ``traffic_gap_m`` behind anything ahead, the car included; pedestrians walk sidewalks and
    cross roads); ``info["labels"]`` then holds per asset its class, track id, 2D box, 3D box in
    world and camera frames, occlusion fraction and alignment residual, and
    ``info["instance_mask"]`` the track id of every pixel (-1 none). ``refine_assets=True`` runs
    the one-step refiner on those frames.

    Loaded maps and dressed scenes are cached per process (Town01 takes ~3 s to build).

    ## Version History

    * v0: initial version.
    """

    config_class = DriveConfig
    action_names = ("steer", "throttle")

    def _start(self, scenario: Scenario) -> StartFrame:
        config = self.episode_config
        self.model = BicycleModel(
            wheelbase_m=config.wheelbase_m,
            max_steer_rad=config.max_steer_rad,
            max_accel_mps2=config.max_accel_mps2,
            max_brake_mps2=config.max_brake_mps2,
            max_speed_mps=config.max_speed_mps,
        )
        self.mount = config.camera_mount()
        route = scenario.route
        self.state = VehicleState(float(route.points[0, 0]), float(route.points[0, 1]), route.heading_at(0.0), 0.0)
        return self._render_start(scenario, self._camera_pose(), self.mount.intrinsics())

    def _apply_action(self, action: np.ndarray) -> torch.Tensor:
        config, start = self.episode_config, self.state
        steer, throttle = float(action[0]), float(action[1])
        # Frames before the last show the same motion after fractions of the step.
        frames = config.frames_per_step
        states = [self.model.step(start, steer, throttle, config.dt_s * i / frames) for i in range(1, frames)]
        self.state = self.model.step(start, steer, throttle, config.dt_s)
        return self.mount.poses(np.stack([state.as_array() for state in (*states, self.state)]))

    def _camera_pose(self) -> torch.Tensor:
        return self.mount.poses(self.state.as_array()[None])[0]

    def _ego(self) -> tuple[np.ndarray, float, float]:
        half_wheelbase = 0.5 * self.episode_config.wheelbase_m
        state = self.state
        centre = np.array([state.x, state.y]) + half_wheelbase * np.array([math.cos(state.yaw), math.sin(state.yaw)])
        return centre, state.yaw, state.speed

    def _footprint(self) -> tuple[np.ndarray, np.ndarray, float]:
        config = self.episode_config
        centre, yaw, _ = self._ego()
        half = 0.5 * np.array([config.vehicle_length_m, config.vehicle_width_m, config.vehicle_height_m])
        return np.array([centre[0], centre[1], half[2]]), half, yaw
