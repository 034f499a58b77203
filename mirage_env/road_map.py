"""Road maps: OpenDRIVE through libcarla's offline parser, a lane graph, spawn points, routes.

libcarla behaviours this module works around (found by probing the 0.9.x client):

- ``carla.Map.get_spawn_points()`` is empty without a server: spawn points come from our own
  lane sampling (:meth:`RoadMap.spawn_points`).
- ``get_topology()`` drops dead-end forward lanes (``get_waypoint_xodr(road, lane, s=length)``
  returns None), so the lane graph is built from ``generate_waypoints`` and ``Waypoint.next``.
- Garbage XML gives an empty map with no error and non-XML raises ``RuntimeError``: both become
  a ``ValueError`` naming the file.
- libcarla's frame is left-handed; every coordinate goes through :mod:`mirage_env.carla_frame`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import carla
import networkx as nx
import numpy as np
from scipy.spatial import cKDTree

from mirage_env.carla_frame import transform_to_world

GRAPH_SPACING_M = 2.0  # [m] distance between lane-graph nodes along a lane
LANE_CHANGE_LENGTH_M = 8.0  # [m] distance travelled while changing lane
LANE_CHANGE_PENALTY_M = 10.0  # [m] extra route cost of one lane change (prefer staying in lane)


def load_road_map(spec: str | Path) -> RoadMap:
    """A map from a spec: the name of an embedded map (``"Town01"``), ``"town:<seed>"`` for a
    procedural town, or the path of an ``.xodr`` file."""
    spec = str(spec)
    if spec.startswith("town:"):
        from mirage_env.towns import generate_town

        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError as error:
            raise ValueError(f"procedural town spec must be 'town:<integer seed>', got {spec!r}") from error
        return RoadMap.from_xodr(generate_town(seed), name=f"town_{seed}", source=spec)
    embedded = Path(str(resources.files("mirage_env") / "maps" / f"{spec}.xodr"))
    if embedded.is_file():
        return RoadMap.from_file(embedded)
    if not spec.endswith(".xodr") and not Path(spec).exists():
        raise FileNotFoundError(
            f"unknown map {spec!r}: give an embedded map name (Town01), 'town:<seed>' or an .xodr file path"
        )
    return RoadMap.from_file(spec)


def embedded_map_path(name: str = "Town01") -> Path:
    """Path of a map shipped inside the package (``Town01``)."""
    path = Path(str(resources.files("mirage_env") / "maps" / f"{name}.xodr"))
    if not path.is_file():
        raise FileNotFoundError(f"no embedded map named {name!r} (looked for {path})")
    return path


@dataclass(frozen=True)
class LanePoint:
    """One driving-lane sample in our world frame."""

    xy: np.ndarray  # (2,) [m]
    yaw: float  # [rad] direction of travel
    width: float  # [m] lane width
    road_id: int
    section_id: int
    lane_id: int
    s: float  # [m] OpenDRIVE s coordinate along the road
    is_junction: bool


class LaneOffset(NamedTuple):
    """A point relative to the nearest driving lane."""

    beyond_edge_m: float  # [m] distance outside the lane's edge, 0 inside it (inf: no lane)
    lane_yaw: float  # [rad] the lane's direction of travel
    in_junction: bool


@dataclass
class Route:
    """A planned path along lane centres.

    ``points`` (M, 2) [m] and ``yaw`` (M,) [rad] are in our world frame, spaced about
    ``GRAPH_SPACING_M`` apart; ``lane_change`` (M,) is True on points where the route moves to a
    neighbouring lane.
    """

    points: np.ndarray
    yaw: np.ndarray
    lane_change: np.ndarray
    map_name: str

    def __post_init__(self) -> None:
        segment = np.diff(self.points, axis=0)
        self.segment_length = np.linalg.norm(segment, axis=1)
        self.cumulative_s = np.concatenate([[0.0], np.cumsum(self.segment_length)])

    @property
    def length(self) -> float:
        """Route length [m]."""
        return float(self.cumulative_s[-1])

    def project(self, xy, near_s: float | None = None, window_m: tuple[float, float] = (-10.0, 50.0)):
        """Closest point of the route to ``xy``: ``(s [m] along the route, signed lateral offset
        [m] (> 0 left of the route), index of the segment)``. With ``near_s`` [m], only segments
        within ``window_m`` of it are considered: a route that passes the same place twice (a
        loop driven again) is then tracked by progress instead of jumping back."""
        xy = np.asarray(xy, dtype=np.float64)[:2]
        first, last = 0, len(self.segment_length)
        if near_s is not None:
            # The segments that reach into the window, [first, last): they are consecutive, and
            # the search looks at them alone (an env step's cost on long routes).
            first = int(np.searchsorted(self.cumulative_s[1:], near_s + window_m[0], side="left"))
            last = int(np.searchsorted(self.cumulative_s[:-1], near_s + window_m[1], side="right"))
            if first >= last:  # no segment within the window: the first segment, as an all-infinite argmin gives
                first, last = 0, 1
        start = self.points[first:last]
        segment = self.points[first + 1 : last + 1] - start
        length_sq = np.maximum(self.segment_length[first:last] ** 2, 1e-12)
        t = np.clip(((xy - start) * segment).sum(1) / length_sq, 0.0, 1.0)
        closest = start + segment * t[:, None]
        distance = np.linalg.norm(closest - xy, axis=1)
        nearest = int(np.argmin(distance))
        index = first + nearest
        offset = xy - closest[nearest]
        direction = segment[nearest] / max(self.segment_length[index], 1e-9)
        lateral = direction[0] * offset[1] - direction[1] * offset[0]
        s = self.cumulative_s[index] + t[nearest] * self.segment_length[index]
        return float(s), float(lateral), index

    def point_at(self, s: float | np.ndarray) -> np.ndarray:
        """Point (2,) [m] at arc length ``s`` [m], or points (N, 2) at ``s`` (N,); clamped to
        the route (``np.interp`` holds the end values beyond its ends)."""
        x = np.interp(s, self.cumulative_s, self.points[:, 0])
        y = np.interp(s, self.cumulative_s, self.points[:, 1])
        return np.stack([x, y], axis=-1)

    def heading_at(self, s: float | np.ndarray) -> float | np.ndarray:
        """Direction of travel [rad] of the segment containing arc length ``s`` [m], or the
        directions (N,) at ``s`` (N,)."""
        index = np.searchsorted(self.cumulative_s, s, side="right") - 1
        index = np.minimum(np.maximum(index, 0), len(self.points) - 2)
        delta = self.points[index + 1] - self.points[index]
        heading = np.arctan2(delta[..., 1], delta[..., 0])
        return float(heading) if np.ndim(s) == 0 else heading


class RoadMap:
    """A road network loaded from OpenDRIVE, in our world frame.

    Build with :meth:`from_file`, :meth:`from_xodr` or :meth:`town01`. ``nodes`` are driving-lane
    samples every ``GRAPH_SPACING_M``; ``graph`` is a ``networkx.DiGraph`` over their indices with
    ``weight`` [m] and ``kind`` ("follow", "change_left", "change_right") on each edge.
    """

    def __init__(self, carla_map: carla.Map, name: str, source: str):
        self.carla_map = carla_map
        self.name = name
        self.source = source
        waypoints = carla_map.generate_waypoints(GRAPH_SPACING_M)
        if not waypoints:
            raise ValueError(
                f"map {source!r} has no drivable lanes: libcarla found no driving lane in it. "
                "Check that it is an OpenDRIVE file with <road> elements and lanes of type 'driving'."
            )
        self._waypoints = waypoints
        self.nodes = [_lane_point(w) for w in waypoints]
        self.node_xy = np.stack([n.xy for n in self.nodes])
        self.node_yaw = np.array([n.yaw for n in self.nodes])
        self._kdtree = cKDTree(self.node_xy)
        self._node_xy_list = self.node_xy.tolist()  # for the route search heuristic
        self._by_lane = _index_by_lane(self.nodes)
        self.graph = self._build_graph()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_xodr(cls, xodr: str, name: str = "map", source: str | None = None) -> RoadMap:
        """Parse OpenDRIVE text. ``source`` names the input in error messages."""
        source = source or name
        if not isinstance(xodr, str) or not xodr.strip():
            raise ValueError(f"map {source!r} is empty: expected OpenDRIVE XML text")
        try:
            carla_map = carla.Map(name, xodr)
        except RuntimeError as error:
            raise ValueError(f"map {source!r} is not valid OpenDRIVE XML ({error})") from error
        return cls(carla_map, name, source)

    @classmethod
    def from_file(cls, path: str | Path) -> RoadMap:
        """Load an ``.xodr`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"OpenDRIVE map file not found: {path}")
        return cls.from_xodr(path.read_text(encoding="utf-8"), name=path.stem, source=str(path))

    @classmethod
    def town01(cls) -> RoadMap:
        """CARLA's Town01, shipped inside the package."""
        return cls.from_file(embedded_map_path("Town01"))

    # ------------------------------------------------------------------ queries
    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` [m] of the driving-lane centres."""
        lo, hi = self.node_xy.min(0), self.node_xy.max(0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def distance_to_lanes(self, xy) -> float:
        """Distance [m] from ``xy`` [m] to the nearest driving-lane centre sample (samples are
        ``GRAPH_SPACING_M`` apart along each lane)."""
        distance, _ = self._kdtree.query(np.asarray(xy, dtype=np.float64)[:2])
        return float(distance)

    def nearest_node(self, xy, yaw: float | None = None, max_heading_error: float = math.pi / 2) -> int:
        """Index of the lane node closest to ``xy`` [m]; with ``yaw`` [rad], only nodes whose
        direction of travel is within ``max_heading_error`` [rad] of it."""
        xy = np.asarray(xy, dtype=np.float64)[:2]
        k = min(32, len(self.nodes))
        _, candidates = self._kdtree.query(xy, k=k)
        candidates = np.atleast_1d(candidates)
        if yaw is not None:
            error = np.abs(_wrap(self.node_yaw[candidates] - yaw))
            aligned = candidates[error <= max_heading_error]
            if len(aligned):
                candidates = aligned
        return int(candidates[0])

    def spawn_points(self, min_spacing: float = 10.0, include_junctions: bool = False) -> np.ndarray:
        """(N, 3) spawn poses ``(x, y, yaw)`` [m, m, rad] on driving-lane centres, at least
        ``min_spacing`` [m] apart along each lane, outside junctions unless asked."""
        step = max(1, int(round(min_spacing / GRAPH_SPACING_M)))
        chosen = []
        for indices in self._by_lane.values():
            for i in indices[::step]:
                node = self.nodes[i]
                if include_junctions or not node.is_junction:
                    chosen.append((node.xy[0], node.xy[1], node.yaw))
        return np.array(chosen, dtype=np.float64).reshape(-1, 3)

    def plan_route(self, start, goal, start_yaw: float | None = None, goal_yaw: float | None = None) -> Route:
        """Shortest route from ``start`` to ``goal`` (our world ``xy`` [m]) over the lane graph,
        changing lanes where the map's lane marks allow it. ``start_yaw`` and ``goal_yaw`` [rad]
        pick the lane direction at either end."""
        source = self.nearest_node(start, start_yaw)
        target = self.nearest_node(goal, goal_yaw)
        target_x, target_y = self._node_xy_list[target]
        node_xy = self._node_xy_list

        def distance_to_goal(node: int, _target: int) -> float:  # the search's hot loop: plain floats
            x, y = node_xy[node]
            return math.hypot(x - target_x, y - target_y)

        try:
            path = nx.astar_path(self.graph, source, target, heuristic=distance_to_goal, weight="weight")
        except nx.NetworkXNoPath as error:
            raise ValueError(
                f"no route in {self.name!r} from {np.round(start, 1).tolist()} to "
                f"{np.round(goal, 1).tolist()}: the goal cannot be reached along the lane directions"
            ) from error
        change = np.zeros(len(path), dtype=bool)
        for i, (a, b) in enumerate(zip(path[:-1], path[1:])):
            change[i + 1] = self.graph.edges[a, b]["kind"] != "follow"
        return Route(self.node_xy[path].copy(), self.node_yaw[path].copy(), change, self.name)

    def random_route(self, rng: np.random.Generator, min_length_m: float = 150.0,
                     max_length_m: float = 400.0, attempts: int = 200) -> Route:
        """A route between random spawn points whose length lies in [min, max] [m]."""
        spawns = self.spawn_points()
        best: Route | None = None
        for _ in range(attempts):
            i, j = rng.choice(len(spawns), size=2, replace=False)
            try:
                route = self.plan_route(spawns[i, :2], spawns[j, :2], start_yaw=spawns[i, 2])
            except ValueError:
                continue
            if min_length_m <= route.length <= max_length_m:
                return route
            if best is None or abs(route.length - min_length_m) < abs(best.length - min_length_m):
                best = route
        if best is None:
            raise ValueError(f"no connected pair of spawn points found in {self.name!r}")
        return best

    def loop_route(self, rng: np.random.Generator, min_length_m: float = 200.0, attempts: int = 300) -> Route:
        """The shortest closed loop A -> B -> A (back into A's lane and direction, no U-turn)
        longer than ``min_length_m`` [m] among ``attempts`` random spawn pairs: a route that
        revisits every place it passes."""
        spawns = self.spawn_points()
        best: Route | None = None
        for _ in range(attempts):
            a, b = spawns[rng.choice(len(spawns), 2, replace=False)]
            try:
                out = self.plan_route(a[:2], b[:2], start_yaw=a[2])
                back = self.plan_route(out.points[-1], a[:2], start_yaw=out.yaw[-1], goal_yaw=a[2])
            except ValueError:  # a spawn point outside the strongly connected part of the map
                continue
            length = out.length + back.length
            if length > min_length_m and (best is None or length < best.length):
                best = Route(np.concatenate([out.points, back.points[1:]]), np.concatenate([out.yaw, back.yaw[1:]]),
                             np.concatenate([out.lane_change, back.lane_change[1:]]), self.name)
        if best is None:
            raise ValueError(f"no closed loop longer than {min_length_m} m found in {self.name!r}")
        return best

    def driving_lane_offset(self, xy) -> LaneOffset:
        """Where ``xy`` [m] lies relative to the nearest driving lane (see :class:`LaneOffset`)."""
        from mirage_env.carla_frame import world_to_location

        xy = np.asarray(xy, dtype=np.float64)[:2]
        waypoint = self.carla_map.get_waypoint(
            world_to_location(xy), project_to_road=True, lane_type=carla.LaneType.Driving
        )
        if waypoint is None:
            return LaneOffset(math.inf, 0.0, False)
        # The projected waypoint is the lane centre at the point's own s, so the distance to
        # it is lateral (or longitudinal beyond a dead end, which is off the road as well).
        centre, yaw = transform_to_world(waypoint.transform)
        beyond = float(np.linalg.norm(centre[:2] - xy)) - 0.5 * float(waypoint.lane_width)
        return LaneOffset(max(0.0, beyond), yaw, bool(waypoint.is_junction))

    def waypoint_at(self, xy, lane_type: carla.LaneType = carla.LaneType.Driving):
        """libcarla waypoint of the lane of ``lane_type`` containing ``xy``, or None off it."""
        from mirage_env.carla_frame import world_to_location

        return self.carla_map.get_waypoint(world_to_location(xy), project_to_road=False, lane_type=lane_type)

    # ------------------------------------------------------------------ graph
    def _snap(self, waypoint: carla.Waypoint) -> int | None:
        key = (waypoint.road_id, waypoint.section_id, waypoint.lane_id)
        lane = self._by_lane.get(key)
        if lane is None:
            return None
        s_values = np.array([self.nodes[i].s for i in lane])
        return int(lane[int(np.argmin(np.abs(s_values - waypoint.s)))])

    def _build_graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(range(len(self.nodes)))
        for i, waypoint in enumerate(self._waypoints):
            for successor in waypoint.next(GRAPH_SPACING_M):
                j = self._snap(successor)
                if j is None:
                    j = self.nearest_node(transform_to_world(successor.transform)[0][:2])
                if j != i:
                    graph.add_edge(i, j, weight=float(np.linalg.norm(self.node_xy[j] - self.node_xy[i])), kind="follow")
            self._add_lane_changes(graph, i, waypoint)
        return graph

    def _add_lane_changes(self, graph: nx.DiGraph, i: int, waypoint: carla.Waypoint) -> None:
        allowed = waypoint.lane_change
        sides = []
        if allowed in (carla.LaneChange.Left, carla.LaneChange.Both):
            sides.append(("change_left", waypoint.get_left_lane()))
        if allowed in (carla.LaneChange.Right, carla.LaneChange.Both):
            sides.append(("change_right", waypoint.get_right_lane()))
        for kind, neighbour in sides:
            same_direction = neighbour is not None and neighbour.lane_id * waypoint.lane_id > 0
            if not same_direction or neighbour.lane_type != carla.LaneType.Driving:
                continue
            ahead = neighbour.next(LANE_CHANGE_LENGTH_M)
            if not ahead:
                continue
            j = self._snap(ahead[0])
            if j is not None and j != i:
                distance = float(np.linalg.norm(self.node_xy[j] - self.node_xy[i]))
                graph.add_edge(i, j, weight=distance + LANE_CHANGE_PENALTY_M, kind=kind)


def _lane_point(waypoint: carla.Waypoint) -> LanePoint:
    position, yaw = transform_to_world(waypoint.transform)
    return LanePoint(
        xy=position[:2],
        yaw=yaw,
        width=float(waypoint.lane_width),
        road_id=int(waypoint.road_id),
        section_id=int(waypoint.section_id),
        lane_id=int(waypoint.lane_id),
        s=float(waypoint.s),
        is_junction=bool(waypoint.is_junction),
    )


def _index_by_lane(nodes: list[LanePoint]) -> dict[tuple[int, int, int], list[int]]:
    """Node indices per lane, ordered along the direction of travel."""
    lanes: dict[tuple[int, int, int], list[int]] = {}
    for i, node in enumerate(nodes):
        lanes.setdefault((node.road_id, node.section_id, node.lane_id), []).append(i)
    for key, indices in lanes.items():
        # Negative lane ids travel along +s, positive ones against it (right-hand traffic).
        indices.sort(key=lambda i: nodes[i].s if key[2] < 0 else -nodes[i].s)
    return lanes


def _wrap(angle):
    """Angle(s) wrapped to (-pi, pi]."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi
