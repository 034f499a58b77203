"""CARLA Leaderboard 2.x driving metrics of closed-loop routes.

Per route: **route completion** [%] (how far along the route the ego got), the **infraction
penalty** in [0, 1] (the product of one coefficient per infraction: pedestrian 0.50, vehicle
0.60, static 0.65, red light 0.70, stop sign 0.80, scenario timeout 0.70, times
``1 - pct / 100`` for the percentage of the route driven outside its lanes) and the **driving
score** = completion x penalty [%]. The coefficients and the penalty formula live in
:mod:`mirage_env.rewards` (one source of truth, also used by the env's ``info``).

Over a set of routes, as the Leaderboard does: the means of the three scores over routes, and
**infractions per km**: each infraction's count divided by the kilometres driven, a route
counting ``length x completion / 100`` (at least 1 m, so a policy that never moves does not
divide by zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mirage_env.rewards import INFRACTIONS, infraction_penalty

MIN_KM_DRIVEN = 0.001  # [km] a route counts at least this much driven (the Leaderboard's floor)


@dataclass(frozen=True)
class RouteScore:
    """The Leaderboard scores of one route."""

    route_completion: float  # [%]
    infraction_penalty: float  # in [0, 1]
    driving_score: float  # [%] = route_completion x infraction_penalty


def score_route(route_completion: float, infractions: Mapping[str, int], outside_route_lanes_pct: float) -> RouteScore:
    """Score one route: ``route_completion`` [%] in [0, 100], ``infractions`` counts by
    Leaderboard name, ``outside_route_lanes_pct`` [%] of the route driven outside its lanes."""
    if not 0.0 <= route_completion <= 100.0:
        raise ValueError(f"`route_completion` must be a percentage in [0, 100], got {route_completion}")
    if outside_route_lanes_pct < 0.0:
        raise ValueError(f"`outside_route_lanes_pct` must be >= 0, got {outside_route_lanes_pct}")
    unknown = set(infractions) - set(INFRACTIONS)
    if unknown:
        raise ValueError(f"unknown infractions {sorted(unknown)}; Leaderboard names: {', '.join(INFRACTIONS)}")
    penalty = infraction_penalty(infractions, outside_route_lanes_pct)
    return RouteScore(route_completion, penalty, route_completion * penalty)


@dataclass(frozen=True)
class RouteResult:
    """One closed-loop drive of one route entry with one renderer."""

    route_id: str
    map: str
    renderer: str  # "ground_truth" or "world_model"
    traffic: dict[str, int]
    length_m: float  # [m] of the planned route
    route_completion: float  # [%]
    outside_route_lanes_pct: float  # [%]
    infractions: dict[str, int]
    infraction_penalty: float
    driving_score: float  # [%]
    termination_reason: str
    steps: int
    wall_s: float  # [s] wall-clock time of the drive
    extra: dict = field(default_factory=dict)

    @property
    def km_driven(self) -> float:
        """[km] the Leaderboard's distance driven: route length x completion (floored)."""
        return max(self.length_m * self.route_completion / 100.0 / 1000.0, MIN_KM_DRIVEN)

    def as_dict(self) -> dict:
        return {**asdict(self), "km_driven": round(self.km_driven, 4)}


def summarize(results: Sequence[RouteResult]) -> dict:
    """Leaderboard-style global statistics of ``results``: mean driving score, route completion
    and infraction penalty over routes, infraction counts and counts per km driven."""
    if not results:
        return {"routes": 0}
    km = sum(r.km_driven for r in results)
    counts = {name: sum(r.infractions.get(name, 0) for r in results) for name in INFRACTIONS}
    return {
        "routes": len(results),
        "driving_score": float(np.mean([r.driving_score for r in results])),
        "route_completion": float(np.mean([r.route_completion for r in results])),
        "infraction_penalty": float(np.mean([r.infraction_penalty for r in results])),
        "outside_route_lanes_pct": float(np.mean([r.outside_route_lanes_pct for r in results])),
        "km_driven": km,
        "infractions": counts,
        "infractions_per_km": {name: count / km for name, count in counts.items()},
    }


def compare_renderers(truth: Sequence[RouteResult], generated: Sequence[RouteResult]) -> dict:
    """How far the world model's frames change the agent's score, route by route.

    ``truth`` and ``generated`` are results of the same route entries (matched by ``route_id``)
    with the ground-truth and the world-model renderer. Returns the mean driving score of each,
    the mean and mean absolute difference (generated - truth), the largest difference, and the
    Spearman rank correlation of the routes' scores (None with fewer than 3 routes or constant
    scores): a world model good for evaluation ranks routes, and agents, as the truth does.
    """
    by_id = {r.route_id: r for r in truth}
    pairs = [(by_id[r.route_id], r) for r in generated if r.route_id in by_id]
    if not pairs:
        return {"routes": 0}
    t = np.array([a.driving_score for a, _ in pairs])
    g = np.array([b.driving_score for _, b in pairs])
    difference = g - t
    worst = int(np.argmax(np.abs(difference)))
    return {
        "routes": len(pairs),
        "driving_score_ground_truth": float(t.mean()),
        "driving_score_world_model": float(g.mean()),
        "route_completion_ground_truth": float(np.mean([a.route_completion for a, _ in pairs])),
        "route_completion_world_model": float(np.mean([b.route_completion for _, b in pairs])),
        "mean_difference": float(difference.mean()),
        "mean_absolute_difference": float(np.abs(difference).mean()),
        "largest_difference": {"route_id": pairs[worst][0].route_id, "difference": float(difference[worst])},
        "spearman": spearman(t, g),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two score vectors (ties get their mean rank); None when
    undefined (fewer than 3 values, or one vector constant)."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = np.corrcoef(rankdata(a), rankdata(b))[0, 1]
    return None if math.isnan(rho) else float(rho)
