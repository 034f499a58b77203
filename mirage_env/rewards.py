"""Rewards, infractions and episode ends of the Mirage envs, measured from geometry, not pixels.

The scalar reward is a weighted sum of named terms (:data:`DEFAULT_REWARD_WEIGHTS`); the env
returns each term's contribution in ``info["rewards"]`` so they add up to the reward.
Infractions are counted under the CARLA Leaderboard 2.x names (:data:`INFRACTIONS`) and scored
the Leaderboard's way: driving score = route completion x infraction penalty, the penalty being
the product of :data:`PENALTY_COEFFICIENTS` per infraction and ``(1 - pct / 100)`` for the
percentage of the route driven outside the route's lanes.

Detected here: ``collisions_layout`` / ``collisions_vehicle`` / ``collisions_pedestrian``
(the ego's footprint overlaps a static object of that class), ``outside_route_lanes`` (off the
driving lanes beyond a margin, or in an opposite-direction lane outside junctions; counted per
excursion), ``route_dev`` (too far from the route), ``vehicle_blocked`` (standing still too
long) and ``route_timeout`` (step limit). Scenarios have no traffic lights, stop signs, traffic
or scripted scenarios yet, so ``red_light``, ``stop_infraction``, ``min_speed_infractions``,
``scenario_timeouts`` and ``yield_emergency_vehicle_infractions`` stay 0; they are listed so the
schema matches the Leaderboard's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mirage_env.road_map import LaneOffset, Route
from mirage_env.scene import Semantic

DEFAULT_REWARD_WEIGHTS: dict[str, float] = {
    "progress": 1.0,  # per [m] driven along the route this step (negative when going back)
    "lane_centering": -0.2,  # per [m] of lateral distance from the route (lane centres)
    "heading": -0.2,  # per [rad] of heading error to the route
    "overspeed": -0.5,  # per [m/s] above the speed limit
    "off_road": -1.0,  # per step outside the driving lanes (beyond the lane margin)
    "collision": -50.0,  # per step that starts a collision
    "route_complete": 20.0,  # once, on reaching the end of the route
}
REWARD_TERMS: tuple[str, ...] = tuple(DEFAULT_REWARD_WEIGHTS)

INFRACTIONS: tuple[str, ...] = (
    "collisions_pedestrian",
    "collisions_vehicle",
    "collisions_layout",
    "red_light",
    "stop_infraction",
    "outside_route_lanes",
    "route_dev",
    "vehicle_blocked",
    "min_speed_infractions",
    "scenario_timeouts",
    "yield_emergency_vehicle_infractions",
    "route_timeout",
)
"""Infraction names of the CARLA Leaderboard 2.x results (``PENALTY_NAME_DICT`` plus ``route_timeout``)."""

PENALTY_COEFFICIENTS: dict[str, float] = {
    "collisions_pedestrian": 0.50,
    "collisions_vehicle": 0.60,
    "collisions_layout": 0.65,
    "red_light": 0.70,
    "stop_infraction": 0.80,
    "scenario_timeouts": 0.70,
    "yield_emergency_vehicle_infractions": 0.70,
}
"""Leaderboard 2.x multiplicative penalty per infraction; the others do not lower the score."""


def collision_infraction(label: int) -> str:
    """Leaderboard infraction name for hitting an object of :class:`Semantic` ``label``."""
    if label == Semantic.VEHICLE:
        return "collisions_vehicle"
    if label == Semantic.PEDESTRIAN:
        return "collisions_pedestrian"
    return "collisions_layout"


def infraction_penalty(infractions: Mapping[str, int], outside_route_lanes_pct: float) -> float:
    """Leaderboard 2.x infraction penalty in [0, 1] from infraction counts."""
    penalty = math.prod(PENALTY_COEFFICIENTS[name] ** infractions.get(name, 0) for name in PENALTY_COEFFICIENTS)
    return penalty * (1.0 - min(outside_route_lanes_pct, 100.0) / 100.0)


class Rules(Protocol):
    """What :class:`EpisodeMonitor` reads from the env config (units in comments)."""

    dt_s: float  # [s] simulated time per step
    max_steps: int  # steps before truncation
    goal_tolerance_m: float  # [m] the route is complete this close to its end, along it
    lane_margin_m: float  # [m] allowed beyond a lane edge before being outside the lanes
    off_road_tolerance_m: float  # [m] beyond a lane edge that ends the episode
    route_deviation_m: float  # [m] lateral distance from the route that ends the episode
    blocked_speed_mps: float  # [m/s] slower than this counts as standing still
    blocked_time_s: float  # [s] standing still this long ends the episode
    speed_limit_mps: float  # [m/s] faster is penalised
    terminate_on_collision: bool
    reward_weights: Mapping[str, float]


@dataclass(frozen=True)
class StepOutcome:
    """What one step earned: ``rewards`` (term -> weight x value), the reward, and how it ended."""

    rewards: dict[str, float]
    reward: float
    terminated: bool
    truncated: bool
    reason: str  # "" while the episode goes on; else why it ended


class EpisodeMonitor:
    """Follows one episode: progress along the route, infractions, rewards and its end.

    ``route`` is None for scenarios without a map: then every term is 0 and only the step limit
    ends the episode.
    """

    def __init__(self, route: Route | None, rules: Rules):
        self.route = route
        self.rules = rules
        self.steps = 0
        self.infractions = dict.fromkeys(INFRACTIONS, 0)
        self.progress_m = 0.0  # [m] along the route
        self.best_progress_m = 0.0  # [m] furthest point reached (route completion)
        self.lateral_error_m = 0.0  # [m] > 0 left of the route
        self.heading_error_rad = 0.0  # [rad] ego yaw minus route heading, wrapped
        self.outside_m = 0.0  # [m] of route progress made outside the route's lanes
        self._outside = False
        self._colliding: set[str] = set()
        self._still_s = 0.0

    def start(self, xy: np.ndarray, yaw: float) -> None:
        """Locate the ego at the episode start (no reward)."""
        if self.route is not None:
            self.progress_m, self.lateral_error_m, _ = self.route.project(xy, near_s=0.0)
            self.best_progress_m = self.progress_m
            self.heading_error_rad = _wrap(yaw - self.route.heading_at(self.progress_m))

    @property
    def route_completion(self) -> float:
        """Percentage of the route driven."""
        if self.route is None or self.route.length <= 0:
            return 0.0
        return 100.0 * min(1.0, self.best_progress_m / self.route.length)

    @property
    def outside_route_lanes_pct(self) -> float:
        if self.route is None or self.route.length <= 0:
            return 0.0
        return 100.0 * self.outside_m / self.route.length

    @property
    def penalty(self) -> float:
        return infraction_penalty(self.infractions, self.outside_route_lanes_pct)

    def update(
        self, xy: np.ndarray, yaw: float, speed_mps: float, lane: LaneOffset | None, collisions: set[str]
    ) -> StepOutcome:
        """Account for one step that left the ego at ``xy`` [m], ``yaw`` [rad] moving at
        ``speed_mps``; ``lane`` is its offset from the nearest driving lane and ``collisions``
        the infraction names of the objects its footprint overlaps."""
        rules = self.rules
        self.steps += 1
        values = dict.fromkeys(REWARD_TERMS, 0.0)
        reason = ""
        if self.route is not None:
            previous = self.progress_m
            self.progress_m, self.lateral_error_m, _ = self.route.project(xy, near_s=previous)
            self.best_progress_m = max(self.best_progress_m, self.progress_m)
            self.heading_error_rad = _wrap(yaw - self.route.heading_at(self.progress_m))
            values["progress"] = self.progress_m - previous
            values["lane_centering"] = abs(self.lateral_error_m)
            values["heading"] = abs(self.heading_error_rad)
            values["overspeed"] = max(0.0, speed_mps - rules.speed_limit_mps)

            # Opposite-direction lanes are only told apart outside junctions, where lanes overlap.
            wrong_way = not lane.in_junction and abs(_wrap(yaw - lane.lane_yaw)) > math.pi / 2
            outside = lane.beyond_edge_m > rules.lane_margin_m or wrong_way
            if outside and not self._outside:
                self.infractions["outside_route_lanes"] += 1
            if outside:
                self.outside_m += max(0.0, values["progress"])
            self._outside = outside
            values["off_road"] = float(lane.beyond_edge_m > rules.lane_margin_m)

            started = collisions - self._colliding
            for name in started:
                self.infractions[name] += 1
            values["collision"] = float(bool(started))
            self._colliding = set(collisions)

            self._still_s = self._still_s + rules.dt_s if speed_mps < rules.blocked_speed_mps else 0.0
            complete = self.route.length - self.progress_m <= rules.goal_tolerance_m
            values["route_complete"] = float(complete)
            if collisions and rules.terminate_on_collision:
                reason = "collision"
            elif lane.beyond_edge_m > rules.off_road_tolerance_m:
                reason = "off_road"
            elif abs(self.lateral_error_m) > rules.route_deviation_m:
                reason = "route_deviation"
                self.infractions["route_dev"] += 1
            elif complete:
                reason = "route_complete"
                self.best_progress_m = self.route.length
            elif self._still_s >= rules.blocked_time_s:
                # Standing still is not a terminal state of the task: truncate, not terminate.
                reason = "blocked"
                self.infractions["vehicle_blocked"] += 1
        if not reason and self.steps >= rules.max_steps:
            reason = "step_limit"
            if self.route is not None:
                self.infractions["route_timeout"] += 1

        # "+ 0.0" turns the -0.0 of a negative weight times 0 into 0.0 for readable infos.
        rewards = {term: float(rules.reward_weights[term] * value) + 0.0 for term, value in values.items()}
        truncated = reason in ("step_limit", "blocked")
        return StepOutcome(
            rewards=rewards,
            reward=float(sum(rewards.values())),
            terminated=bool(reason) and not truncated,
            truncated=truncated,
            reason=reason,
        )


def _wrap(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi
