"""Versioned route sets for closed-loop evaluation.

A route set is a JSON file with a ``version`` and a list of route entries; every report names
the version it was scored on, so scores from different versions are never compared by
mistake. The sets shipped with the package live in ``agents/routes/<version>.json``; any other
file with the same schema can be passed by path.

An entry fixes everything an episode depends on: ``map`` (``"Town01"`` or a held-out
``"town:<seed>"``), ``scene_seed`` (scene dressing), ``seed`` (the episode seed: world-model
samples, inserted traffic), ``start`` and ``goal`` (world xy [m] on lane centres, replanned by
the env into the route of ``length_m``), ``max_steps`` (the route's time limit) and
``traffic`` (``{"vehicles": N, "pedestrians": M}`` inserted into the scene; all zero for the
empty-road variant)::

    {"id": "town01_0+traffic", "map": "Town01", "scene_seed": 0, "seed": 0,
     "start": [x, y], "goal": [x, y], "length_m": 201.3, "max_steps": 700,
     "traffic": {"vehicles": 4, "pedestrians": 4}}

``python -m agents.routes`` regenerates ``mirage_routes_v1`` deterministically (and checks
that every entry replans to its recorded length); a changed route set needs a new version.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROUTES_DIR = Path(__file__).parent / "routes"
ROUTE_SET_FORMAT = "mirage-routes/1"
DEFAULT_ROUTE_SET = "mirage_routes_v1"
TRAFFIC_KINDS = ("vehicles", "pedestrians")

# A route must be driven at this average speed or it times out, plus a fixed allowance.
TIMEOUT_SPEED_MPS = 4.0  # [m/s] (the expert cruises at 8 and slows for curves)
TIMEOUT_ALLOWANCE_S = 20.0  # [s]
DT_S = 0.1  # [s] the envs' default step


@dataclass(frozen=True)
class RouteEntry:
    """One route to drive (see the module docstring for the fields)."""

    id: str
    map: str
    scene_seed: int
    seed: int
    start: tuple[float, float]
    goal: tuple[float, float]
    length_m: float
    max_steps: int
    traffic: dict[str, int]

    @property
    def has_traffic(self) -> bool:
        return any(self.traffic.values())

    @property
    def group(self) -> str:
        """``Town01`` or ``held-out towns``: the two halves of the set reported apart."""
        return "Town01" if self.map == "Town01" else "held-out towns"

    def reset_options(self) -> dict[str, Any]:
        """``env.reset(options=...)`` for this route (traffic is added by the evaluator)."""
        return {"map": self.map, "scene_seed": self.scene_seed, "route_start": tuple(self.start),
                "route_goal": tuple(self.goal), "max_steps": self.max_steps}


@dataclass(frozen=True)
class RouteSet:
    version: str
    description: str
    routes: tuple[RouteEntry, ...]

    def to_json(self) -> str:
        """The route-set file: a header, then one route per line (readable diffs)."""
        header = {"format": ROUTE_SET_FORMAT, "version": self.version, "description": self.description}
        lines = ",\n".join("  " + json.dumps(asdict(r)) for r in self.routes)
        return json.dumps(header, indent=1)[:-2] + ',\n "routes": [\n' + lines + "\n ]\n}"


def available_route_sets() -> list[str]:
    """Versions shipped in ``agents/routes/``."""
    return sorted(p.stem for p in ROUTES_DIR.glob("*.json"))


def load_route_set(spec: str | Path = DEFAULT_ROUTE_SET) -> RouteSet:
    """The route set named by a shipped version (``"mirage_routes_v1"``) or a JSON file path."""
    spec = str(spec)
    path = Path(spec)
    if not (spec.endswith(".json") or path.is_file()):
        path = ROUTES_DIR / f"{spec}.json"
        if not path.is_file():
            raise ValueError(f"unknown route set version {spec!r}; shipped versions: "
                             f"{', '.join(available_route_sets())}, or give the path of a route-set JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"route set file not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    return parse_route_set(data, source=str(path))


def parse_route_set(data: dict, source: str = "route set") -> RouteSet:
    """Check and wrap route-set JSON data (see the module docstring)."""
    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"{source}: {message}")

    require(isinstance(data, dict) and data.get("format") == ROUTE_SET_FORMAT,
            f"not a route set: expected \"format\": \"{ROUTE_SET_FORMAT}\"")
    require(isinstance(data.get("version"), str) and bool(data["version"]), "missing \"version\"")
    require(isinstance(data.get("routes"), list) and bool(data["routes"]), "\"routes\" must be a non-empty list")
    routes, seen = [], set()
    fields = ("id", "map", "scene_seed", "seed", "start", "goal", "length_m", "max_steps", "traffic")
    for i, raw in enumerate(data["routes"]):
        missing = [name for name in fields if name not in raw]
        require(not missing, f"route {i} lacks {missing}")
        require(raw["id"] not in seen, f"route id {raw['id']!r} appears twice")
        seen.add(raw["id"])
        for name in ("start", "goal"):
            require(np.shape(raw[name]) == (2,) and bool(np.isfinite(raw[name]).all()),
                    f"route {raw['id']!r}: `{name}` must be [x, y] in metres")
        require(isinstance(raw["traffic"], dict) and set(raw["traffic"]) <= set(TRAFFIC_KINDS)
                and all(isinstance(v, int) and v >= 0 for v in raw["traffic"].values()),
                f"route {raw['id']!r}: `traffic` must map {TRAFFIC_KINDS} to counts >= 0")
        require(int(raw["max_steps"]) > 0, f"route {raw['id']!r}: `max_steps` must be > 0")
        traffic = {kind: int(raw["traffic"].get(kind, 0)) for kind in TRAFFIC_KINDS}
        routes.append(RouteEntry(id=str(raw["id"]), map=str(raw["map"]), scene_seed=int(raw["scene_seed"]),
                                 seed=int(raw["seed"]), start=tuple(map(float, raw["start"])),
                                 goal=tuple(map(float, raw["goal"])), length_m=float(raw["length_m"]),
                                 max_steps=int(raw["max_steps"]), traffic=traffic))
    return RouteSet(version=data["version"], description=str(data.get("description", "")), routes=tuple(routes))


def route_time_limit(length_m: float, dt_s: float = DT_S) -> int:
    """Steps allowed for a route of ``length_m`` [m]."""
    return math.ceil((length_m / TIMEOUT_SPEED_MPS + TIMEOUT_ALLOWANCE_S) / dt_s)


# ---------------------------------------------------------------------- generating v1
V1_TOWN01_ROUTES = 3
V1_HELDOUT_TOWNS = 3  # the first held-out seeds, one route each
V1_LENGTH_M = (150.0, 250.0)  # [m] route lengths
V1_TRAFFIC = {"vehicles": 4, "pedestrians": 4}


def build_route_set_v1() -> RouteSet:
    """``mirage_routes_v1``: 3 Town01 routes and 1 route in each of the first 3 held-out
    procedural towns, 150-250 m, each with and without inserted traffic (12 entries)."""
    from mirage_env.road_map import load_road_map
    from mirage_env.towns import HELDOUT_SEEDS

    maps = [("Town01", "town01", V1_TOWN01_ROUTES)]
    maps += [(f"town:{seed}", f"heldout{seed}", 1) for seed in HELDOUT_SEEDS[:V1_HELDOUT_TOWNS]]
    routes = []
    for map_index, (spec, prefix, count) in enumerate(maps):
        road_map = load_road_map(spec)
        rng = np.random.default_rng([1, map_index])  # [version, map]: fixed forever for v1
        for k in range(count):
            route = road_map.random_route(rng, *V1_LENGTH_M)
            start, goal = np.round(route.points[0], 3), np.round(route.points[-1], 3)
            # The env replans from start and goal alone (no start yaw): it must find this route.
            replanned = road_map.plan_route(start, goal)
            if abs(replanned.length - route.length) > 1e-6:
                raise RuntimeError(f"{spec} route {k}: replanning gives {replanned.length:.1f} m, "
                                   f"not {route.length:.1f} m")
            for traffic in ({kind: 0 for kind in TRAFFIC_KINDS}, V1_TRAFFIC):
                suffix = "+traffic" if any(traffic.values()) else ""
                routes.append(RouteEntry(
                    id=f"{prefix}_{k}{suffix}", map=spec, scene_seed=0, seed=k,
                    start=(float(start[0]), float(start[1])), goal=(float(goal[0]), float(goal[1])),
                    length_m=round(route.length, 2), max_steps=route_time_limit(route.length), traffic=dict(traffic),
                ))
    description = (f"{V1_TOWN01_ROUTES} routes in CARLA's Town01 and one in each of the held-out procedural towns "
                   f"{', '.join(str(s) for s in HELDOUT_SEEDS[:V1_HELDOUT_TOWNS])}, {V1_LENGTH_M[0]:.0f}-"
                   f"{V1_LENGTH_M[1]:.0f} m, each without and with inserted traffic "
                   f"({V1_TRAFFIC['vehicles']} vehicles, {V1_TRAFFIC['pedestrians']} pedestrians). Time limit: "
                   f"length / {TIMEOUT_SPEED_MPS} m/s + {TIMEOUT_ALLOWANCE_S:.0f} s.")
    return RouteSet(version="mirage_routes_v1", description=description, routes=tuple(routes))


if __name__ == "__main__":
    route_set = build_route_set_v1()
    path = ROUTES_DIR / f"{route_set.version}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(route_set.to_json() + "\n", encoding="utf-8")
    print(f"wrote {len(route_set.routes)} routes to {path}")
