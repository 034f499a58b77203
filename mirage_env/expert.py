"""A route-following expert: pure pursuit on the planned route with speed control; it brakes
for obstacles in its path (inserted traffic) and never steers around them."""

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
    ego_front_m: float = 3.6  # [m] from the rear axle (the state's point) to the front bumper
    ego_half_width_m: float = 0.95  # [m]
    obstacle_clearance_m: float = 0.7  # [m] lateral room it wants beside an obstacle to drive past it
    obstacle_gap_m: float = 3.0  # [m] it stops this far behind an obstacle in its path
    obstacle_horizon_m: float = 30.0  # [m] of route ahead it watches
    brake_decel_mps2: float = 3.0  # [m/s^2] the deceleration it plans stops with


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

    def act(self, state: VehicleState, obstacles=()) -> tuple[float, float]:
        """``(steer, throttle)`` in [-1, 1] at ``state``. ``obstacles``: boxes to stop behind
        (e.g. ``editors.Traffic.boxes()``), each a centre (2 or 3,) [m], half sizes (2 or 3,)
        [m] along its own axes and a yaw [rad]; the expert keeps its lane and brakes for those
        in its path, it never steers around them."""
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
        free = self._free_distance(s, obstacles)
        desired = min(desired, math.sqrt(2.0 * cfg.brake_decel_mps2 * max(0.0, free - cfg.obstacle_gap_m)))
        throttle = float(np.clip(cfg.speed_gain * (desired - state.speed), -1.0, 1.0))
        return steer, throttle

    def _free_distance(self, s: float, obstacles) -> float:
        """[m] from the front bumper to the nearest obstacle in its path within the horizon (inf
        if none): one whose footprint comes within the ego's half width plus the clearance of
        the route, ahead along it."""
        cfg, free = self.config, math.inf
        for centre, half, yaw in obstacles:
            along, lateral, index = self.route.project(centre, near_s=s, window_m=(0.0, cfg.obstacle_horizon_m + 10.0))
            relative = float(yaw) - self.route.heading_at(along)
            c, sn = abs(math.cos(relative)), abs(math.sin(relative))
            half_along, half_across = half[0] * c + half[1] * sn, half[0] * sn + half[1] * c
            if abs(lateral) - half_across > cfg.ego_half_width_m + cfg.obstacle_clearance_m:
                continue  # beside the path
            gap = along - half_along - (s + cfg.ego_front_m)
            if -cfg.ego_front_m < gap < cfg.obstacle_horizon_m:  # ahead of the rear axle, within the horizon
                free = min(free, max(gap, 0.0))
        return free

    def _curve_speed(self, s: float) -> float:
        """Highest speed [m/s] keeping lateral acceleration within bounds over the next stretch."""
        ahead = np.linspace(s, s + 15.0, 6)
        headings = np.unwrap(self.route.heading_at(ahead))
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
