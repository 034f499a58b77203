"""MirageWorld-v0: move a free camera step by step and see what it sees."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from mirage_env.envs.base import MirageEnv
from mirage_env.envs.config import WorldConfig
from mirage_env.scenario import MapScenario, Scenario, StartFrame, image_scenario
from world_model.camera import camera_pose, intrinsics_from_fov


class MirageWorldEnv(MirageEnv):
    """
    ## Description

    A free camera moves through a world in 6-DoF steps. In a map scenario (CARLA's Town01, a
    procedural town or any OpenDRIVE file, dressed with buildings, trees and parked cars) it
    starts at car-mount height over the start of a route and is rewarded for following the
    route; with a start image and no map (``start_image``) it explores whatever the image
    shows. The frames come from a frame source: ``renderer="world_model"`` (the default)
    generates them with the video world model, and is the only one that can continue a start
    image; ``renderer="ground_truth"`` draws a map's scene exactly.

    ```python
    import gymnasium as gym
    import mirage_env  # registers the ids
    env = gym.make("MirageWorld-v0", render_mode="rgb_array")
    # or, without the import (also in spawned vector-env workers):
    env = gym.make("mirage_env:MirageWorld-v0")
    ```

    ## Action Space

    ``Box(-1, 1, (6,), float32)``: a pose step in the current camera frame (OpenCV: x right,
    y down, z forward). The first three move the camera by ``action[:3] * max_translation_m``
    along its x, y, z axes; then it turns by the rotation vector ``action[3:] *
    max_rotation_deg`` [deg] (right-handed about its own axes: + about x pitches up, + about
    y yaws right, + about z rolls right). NaN or out-of-range actions raise ``ValueError``.

    ## Observation Space

    As MirageDrive-v0, with the camera as the ego: a flat ``Dict`` with ``rgb``
    ``(height, width, 3)`` uint8, ``speed`` [m/s] (camera displacement per step / ``dt_s``),
    ``heading_error`` [rad] (the optical axis' heading minus the route's), ``lateral_error``
    [m] and ``route`` (the next ``route_points`` route points in the camera's heading frame,
    x forward, y left), or the ``rgb`` image alone with ``observation="rgb"``. Without a map
    the route entries are 0. Default 64 x 64 (cheap on a CPU, above the 36 x 36 minimum of
    stable-baselines3's ``CnnPolicy``).

    ## Rewards

    The terms and weights of MirageDrive-v0 (``info["rewards"]`` holds each contribution),
    measured at the camera's position: ``progress`` along the route, ``lane_centering``,
    ``heading``, ``overspeed``, ``off_road``, ``collision``, ``route_complete``. Collisions:
    the camera's box (``camera_radius_m``) overlapping a static object or traffic
    (``traffic_vehicles`` / ``traffic_pedestrians``, as in MirageDrive-v0, labels in ``info``),
    or dropping below ``min_camera_height_m`` (the ground; ``collisions_layout``). Without a map every term is 0.
    ``info["infractions"]`` uses the CARLA Leaderboard 2.x names.

    ## Starting State

    Map scenarios: the camera at ``camera_forward_m`` / ``camera_height_m`` / ``camera_pitch_deg``
    over the start of the route, looking along it; the route runs between ``route_start`` and
    ``route_goal``, or is drawn from the env's RNG. Start images: the camera at ``start_pose``
    (default ``camera_height_m`` above the origin looking along +x) seeing ``start_image``.

    ## Episode End

    Map scenarios end as in MirageDrive-v0: terminated on a collision, leaving the driving lanes
    by ``off_road_tolerance_m``, straying ``route_deviation_m`` from the route, or reaching its
    end; truncated after ``max_steps`` steps or standing still for ``blocked_time_s``. Without a
    map only ``max_steps`` ends the episode.

    ## Arguments

    ``gym.make("MirageWorld-v0", render_mode=None, config=None, **overrides)``: every field of
    :class:`~mirage_env.envs.config.WorldConfig` (defaults and units listed there).
    ``reset(seed=..., options={...})`` takes the same keys for one episode, e.g.
    ``{"map": "town:3"}`` or ``{"start_image": img, "start_depth": depth, "start_intrinsics": K}``
    (``start_image`` must be ``(height, width, 3)`` uint8), except those that shape the spaces;
    unknown keys raise ``ValueError``. ``render_mode="rgb_array"``: ``render()`` returns the
    observation beside a bird's-eye map. ``frames_per_step=k`` renders k frames along each
    camera step (translation and rotation scaled by ``i / k``; the world model generates them
    one after the other): ``rgb`` is the last, ``info["frames"]`` (k, height, width, 3) holds all.

    ## Version History

    * v0: initial version.
    """

    config_class = WorldConfig
    action_names = ("right", "down", "forward", "pitch_up", "yaw_right", "roll_right")

    def _make_scenario(self, config: WorldConfig) -> Scenario:
        if config.start_image is None:
            return super()._make_scenario(config)
        K = config.start_intrinsics
        if K is None:
            K = intrinsics_from_fov(config.fov_deg, config.width, config.height)
        pose = config.start_pose
        if pose is None:
            pose = camera_pose(
                torch.tensor([[0.0, 0.0, config.camera_height_m]]), torch.zeros(1),
                torch.tensor([math.radians(config.camera_pitch_deg)]),
            )[0]
        return image_scenario(config.start_image, config.start_depth, K, pose, config.height, config.width)

    def _start(self, scenario: Scenario) -> StartFrame:
        config = self.episode_config
        self.speed = 0.0
        if not isinstance(scenario, MapScenario):
            self.pose = scenario.start.cam_to_world[0].double().numpy()
            return scenario.start
        mount = config.camera_mount()
        route = scenario.route
        start = np.array([[route.points[0, 0], route.points[0, 1], route.heading_at(0.0)]])
        cam_to_world = mount.poses(start)[0]
        self.pose = cam_to_world.double().numpy()
        return self._render_start(scenario, cam_to_world, mount.intrinsics())

    def _apply_action(self, action: np.ndarray) -> torch.Tensor:
        config = self.episode_config
        rotation = action[3:] * math.radians(config.max_rotation_deg)
        translation = action[:3] * config.max_translation_m
        # Frames before the last show fractions of the step: the translation and the rotation
        # (about the same axis) scaled down.
        poses = []
        for i in range(1, config.frames_per_step + 1):
            fraction = i / config.frames_per_step
            step = np.eye(4)
            step[:3, :3] = Rotation.from_rotvec(rotation * fraction).as_matrix()
            step[:3, 3] = translation * fraction
            # Float64 composition keeps the rotation orthonormal to ~1e-15 per step.
            poses.append(self.pose @ step)
        previous = self.pose[:3, 3].copy()
        self.pose = poses[-1]
        self.speed = float(np.linalg.norm(self.pose[:3, 3] - previous)) / config.dt_s
        return torch.as_tensor(np.stack(poses), dtype=torch.float32)

    def _ego(self) -> tuple[np.ndarray, float, float]:
        forward = self.pose[:3, 2]  # the optical axis in the world
        return self.pose[:2, 3].copy(), math.atan2(forward[1], forward[0]), self.speed

    def _footprint(self) -> tuple[np.ndarray, np.ndarray, float]:
        xy, yaw, _ = self._ego()
        return self.pose[:3, 3].copy(), np.full(3, self.episode_config.camera_radius_m), yaw

    def _collisions(self, scenario: MapScenario) -> set[str]:
        hits = super()._collisions(scenario)
        if self.pose[2, 3] < self.episode_config.min_camera_height_m:
            hits.add("collisions_layout")
        return hits
