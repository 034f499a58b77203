"""Kinematic bicycle model of a car, and the camera mounted on it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from world_model.camera import camera_pose, intrinsics_from_fov


@dataclass
class VehicleState:
    """Pose of the rear-axle centre in our world frame and its speed."""

    x: float  # [m]
    y: float  # [m]
    yaw: float  # [rad]
    speed: float = 0.0  # [m/s]

    def as_array(self) -> np.ndarray:
        return np.array([self.x, self.y, self.yaw, self.speed])


@dataclass
class BicycleModel:
    """Kinematic bicycle about the rear axle; controls are normalised to [-1, 1]."""

    wheelbase_m: float = 2.7  # [m]
    max_steer_rad: float = 0.6  # [rad] front-wheel angle at steer = +-1 (> 0 turns left)
    max_accel_mps2: float = 3.0  # [m/s^2] at throttle = 1
    max_brake_mps2: float = 7.0  # [m/s^2] at throttle = -1
    max_speed_mps: float = 20.0  # [m/s]

    def step(self, state: VehicleState, steer: float, throttle: float, dt: float) -> VehicleState:
        """Advance ``dt`` [s] with ``steer`` and ``throttle`` (> 0 accelerate, < 0 brake) in [-1, 1].
        Out-of-range controls raise: they are a caller's bug, not something to clip silently."""
        if not (-1.0 <= steer <= 1.0 and -1.0 <= throttle <= 1.0) or not math.isfinite(steer + throttle):
            raise ValueError(f"controls must be finite and in [-1, 1], got steer={steer} throttle={throttle}")
        accel = throttle * (self.max_accel_mps2 if throttle > 0 else self.max_brake_mps2)
        speed = float(np.clip(state.speed + accel * dt, 0.0, self.max_speed_mps))
        mean_speed = 0.5 * (state.speed + speed)
        yaw_rate = mean_speed / self.wheelbase_m * math.tan(steer * self.max_steer_rad)
        mid_yaw = state.yaw + 0.5 * yaw_rate * dt
        return VehicleState(
            x=state.x + mean_speed * math.cos(mid_yaw) * dt,
            y=state.y + mean_speed * math.sin(mid_yaw) * dt,
            yaw=math.atan2(math.sin(state.yaw + yaw_rate * dt), math.cos(state.yaw + yaw_rate * dt)),
            speed=speed,
        )


@dataclass
class CameraMount:
    """A forward-looking camera fixed to the car."""

    forward_m: float = 1.5  # [m] ahead of the rear axle
    height_m: float = 1.6  # [m] above the ground
    pitch_deg: float = -5.0  # [deg] > 0 looks up
    fov_deg: float = 90.0  # [deg] horizontal field of view
    width: int = 128  # [px]
    height: int = 128  # [px]

    def intrinsics(self) -> torch.Tensor:
        """(3, 3) pinhole intrinsics of the image."""
        return intrinsics_from_fov(self.fov_deg, self.width, self.height)

    def poses(self, ego: np.ndarray) -> torch.Tensor:
        """(T, 4, 4) ``cam_to_world`` for ego states ``ego`` (T, >=3) = ``x, y, yaw, ...``."""
        ego = np.asarray(ego, dtype=np.float64).reshape(-1, ego.shape[-1])
        x = ego[:, 0] + self.forward_m * np.cos(ego[:, 2])
        y = ego[:, 1] + self.forward_m * np.sin(ego[:, 2])
        position = torch.tensor(np.stack([x, y, np.full_like(x, self.height_m)], 1), dtype=torch.float32)
        yaw = torch.tensor(ego[:, 2], dtype=torch.float32)
        return camera_pose(position, yaw, torch.full_like(yaw, math.radians(self.pitch_deg)))

    def to_dict(self) -> dict:
        return asdict(self)
