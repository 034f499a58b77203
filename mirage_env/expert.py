"""A route-following expert: pure pursuit on the planned route with speed control."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mirage_env.road_map import Route
from mirage_env.trajectory import Trajectory
from mirage_env.vehicle import BicycleModel, CameraMount, VehicleState


@dataclass
class ExpertConfig:
    """Defaults of the route expert (units in comments)."""

    target_speed_mps: float = 8.0  # [m/s] cruise speed
    max_lateral_accel_mps2: float = 2.0  # [m/s^2] slows down for curves
    lookahead_base_m: float = 3.0  # [m] pure-pursuit lookahead at standstill
    lookahead_per_mps: float = 0.4  # [s] lookahead growth with speed
    speed_gain: float = 0.6  # throttle per m/s of speed error
    stop_distance_m: float = 1.0  # [m] before the route end


class RouteExpert:
    """Computes normalised ``(steer, throttle)`` that follow ``route`` with ``model``."""

    def __init__(self, route: Route, model: BicycleModel | None = None, config: ExpertConfig | None = None):
        self.route = route
        self.model = model or BicycleModel()
        self.config = config or ExpertConfig()
        self.progress_m = 0.0  # [m] along the route: tracked so loops driven twice are followed

    def _progress(self, state: VehicleState) -> float:
        self.progress_m, _, _ = self.route.project((state.x, state.y), near_s=self.progress_m)
        return self.progress_m

    def act(self, state: VehicleState) -> tuple[float, float]:
        cfg, model = self.config, self.model
        s = self._progress(state)
        lookahead = cfg.lookahead_base_m + cfg.lookahead_per_mps * state.speed
        target = self.route.point_at(s + lookahead)
        dx, dy = target[0] - state.x, target[1] - state.y
        alpha = math.atan2(dy, dx) - state.yaw
        distance = max(math.hypot(dx, dy), 1e-3)
        steer_angle = math.atan(2.0 * model.wheelbase_m * math.sin(alpha) / distance)
        steer = float(np.clip(steer_angle / model.max_steer_rad, -1.0, 1.0))

        remaining = self.route.length - s - cfg.stop_distance_m
        desired = min(cfg.target_speed_mps, self._curve_speed(s), math.sqrt(max(0.0, 2.0 * 2.0 * remaining)))
        if remaining <= 0:
            desired = 0.0
        throttle = float(np.clip(cfg.speed_gain * (desired - state.speed), -1.0, 1.0))
        return steer, throttle

    def _curve_speed(self, s: float) -> float:
        """Highest speed [m/s] keeping lateral acceleration within bounds over the next stretch."""
        ahead = np.linspace(s, s + 15.0, 6)
        headings = np.unwrap([self.route.heading_at(x) for x in ahead])
        curvature = np.abs(np.diff(headings)).max() / (ahead[1] - ahead[0])
        return math.sqrt(self.config.max_lateral_accel_mps2 / max(curvature, 1e-6))

    def done(self, state: VehicleState) -> bool:
        s = self._progress(state)
        return self.route.length - s <= self.config.stop_distance_m + 0.5 and state.speed < 0.1


def drive_route(
    route: Route,
    mount: CameraMount | None = None,
    dt: float = 0.1,
    max_steps: int = 5000,
    expert: RouteExpert | None = None,
    progress: bool = False,
) -> Trajectory:
    """Drive ``route`` with the expert from its start until it stops at the end.

    Returns the ground-truth :class:`Trajectory` sampled every ``dt`` [s].
    """
    mount = mount or CameraMount()
    expert = expert or RouteExpert(route)
    start = route.points[0]
    state = VehicleState(float(start[0]), float(start[1]), route.heading_at(0.0), 0.0)
    states, controls = [state.as_array()], []
    for _ in tqdm(range(max_steps), desc=f"expert on {route.map_name}", disable=not progress):
        steer, throttle = expert.act(state)
        controls.append((steer, throttle))
        state = expert.model.step(state, steer, throttle, dt)
        states.append(state.as_array())
        if expert.done(state):
            break
    controls.append((0.0, 0.0))
    ego = np.stack(states)
    return Trajectory(
        map_name=route.map_name,
        timestamps=np.arange(len(ego)) * dt,
        ego=ego,
        controls=np.array(controls),
        cam_to_world=mount.poses(ego).numpy(),
        intrinsics=mount.intrinsics().numpy(),
        mount=mount,
    )
