"""World-anchored motion of assets: tracks of poses over time.

A :class:`Track` holds an asset's pose ``(x, y, yaw)`` in the world frame at every time step
(the asset stands on the ground; :mod:`editors.placement` finds its height in a frame);
:class:`Traffic` moves vehicles and pedestrians step by step (vehicles stop behind whatever is
in their lane, so it can react to an ego car that is only known as it drives). Paths are
polylines given by the caller, who reads them from the road map: lane routes for vehicles,
sidewalks and crossings for pedestrians. Everything here is deterministic: the same inputs give
the same tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from editors.assets import Asset


@dataclass
class Track:
    """``asset`` with id ``track_id`` at ``poses`` (T, 3): world ``x``, ``y`` [m] and ``yaw``
    [rad] at each of T time steps."""

    track_id: int
    asset: Asset
    poses: np.ndarray


class Polyline:
    """A path through ``points`` (M, 2) [m], M >= 2, parametrised by arc length ``s`` [m]."""

    def __init__(self, points) -> None:
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2 or not np.isfinite(points).all():
            raise ValueError(f"a path must be finite (M, 2) points with M >= 2, got shape {points.shape}")
        steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
        keep = np.concatenate([[True], steps > 1e-9])  # repeated points have no heading
        self.points = points[keep]
        if len(self.points) < 2:
            raise ValueError("a path needs at least two distinct points")
        self.s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.points, axis=0), axis=1))])

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def pose_at(self, s) -> np.ndarray:
        """(..., 3) ``x, y, yaw`` at arc lengths ``s`` (...), clamped to the path's ends."""
        s = np.clip(np.asarray(s, dtype=float), 0.0, self.length)
        segment = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.points) - 2)
        start, end = self.points[segment], self.points[segment + 1]
        fraction = ((s - self.s[segment]) / (self.s[segment + 1] - self.s[segment]))[..., None]
        xy = start + (end - start) * fraction
        yaw = np.arctan2(end[..., 1] - start[..., 1], end[..., 0] - start[..., 0])
        return np.concatenate([xy, yaw[..., None]], axis=-1)


def asset_box(asset: Asset, x: float, y: float, yaw: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``asset``'s bounding box with its origin at ``(x, y)`` [m] facing ``yaw`` [rad]: centre
    (3,) [m] (the box middle), half sizes (3,) [m] along its own axes, and yaw [rad]; the form
    :meth:`Traffic.step` takes obstacles in."""
    middle = (asset.lower + asset.upper) / 2
    c, s = np.cos(yaw), np.sin(yaw)
    centre = np.array([x + c * middle[0] - s * middle[1], y + s * middle[0] + c * middle[1], middle[2]])
    return centre, (asset.upper - asset.lower) / 2, float(yaw)


class Traffic:
    """Vehicles and pedestrians moving along their own paths, stepped in time.

    Vehicle ``i`` drives along ``vehicle_paths[i]`` (M, 2) [m] (a lane route from the road map)
    at up to ``vehicle_speeds[i]`` [m/s] from arc length ``vehicle_start_s[i]``, and stops at the
    end of its path. It never comes closer than ``gap_m`` [m] (bumper to bumper) to anything in
    its way: another vehicle, a pedestrian on the road, or an external obstacle given to
    :meth:`step` (the ego car). "In its way" means: ahead of its centre along its own path,
    within ``lookahead_m`` [m], and overlapping the band of its own width around the path.
    Vehicles further along their paths move first and the ones behind see their new positions,
    so a queue on one lane keeps exactly ``gap_m``.

    Pedestrian ``j`` walks ``pedestrian_paths[j]`` (sidewalks, crossings) at
    ``pedestrian_speeds[j]`` [m/s], turning back at each end (they keep walking for as long as
    an episode lasts). Track ids are ``first_id``, ``first_id + 1``, ... vehicles first.
    """

    def __init__(self, vehicles: list[Asset] = (), vehicle_paths=(), vehicle_speeds=(), vehicle_start_s=None,
                 pedestrians: list[Asset] = (), pedestrian_paths=(), pedestrian_speeds=(), pedestrian_start_s=None,
                 gap_m: float = 2.0, lookahead_m: float = 30.0, first_id: int = 0):
        vehicles, pedestrians = list(vehicles), list(pedestrians)
        if not len(vehicles) == len(vehicle_paths) == len(vehicle_speeds):
            raise ValueError(f"vehicles, vehicle_paths and vehicle_speeds must have one entry per vehicle, got "
                             f"{len(vehicles)}, {len(vehicle_paths)}, {len(vehicle_speeds)}")
        if not len(pedestrians) == len(pedestrian_paths) == len(pedestrian_speeds):
            raise ValueError(f"pedestrians, pedestrian_paths and pedestrian_speeds must have one entry per "
                             f"pedestrian, got {len(pedestrians)}, {len(pedestrian_paths)}, {len(pedestrian_speeds)}")
        if any(a.is_pedestrian for a in vehicles):
            raise ValueError("pedestrians walk (pass them as `pedestrians`), they do not follow lanes")
        if any(not a.is_pedestrian for a in pedestrians):
            raise ValueError("only pedestrians walk; pass vehicles as `vehicles`")
        speeds = [*vehicle_speeds, *pedestrian_speeds]
        if gap_m < 0 or lookahead_m <= 0 or any(not np.isfinite(v) or v < 0 for v in speeds):
            raise ValueError(f"need gap_m >= 0, lookahead_m > 0 and finite speeds >= 0 m/s; got {gap_m}, "
                             f"{lookahead_m}, {speeds}")
        self.vehicles, self.pedestrians = vehicles, pedestrians
        self.vehicle_paths = [Polyline(p) for p in vehicle_paths]
        self.pedestrian_paths = [Polyline(p) for p in pedestrian_paths]
        self.vehicle_speeds = np.array(vehicle_speeds, dtype=float)
        self.pedestrian_speeds = np.array(pedestrian_speeds, dtype=float)
        self.vehicle_s = np.zeros(len(vehicles)) if vehicle_start_s is None else np.array(vehicle_start_s, float)
        self.pedestrian_s = (np.zeros(len(pedestrians)) if pedestrian_start_s is None
                             else np.array(pedestrian_start_s, float))
        if len(self.vehicle_s) != len(vehicles) or len(self.pedestrian_s) != len(pedestrians):
            raise ValueError("give one start arc length per vehicle and per pedestrian")
        self.pedestrian_direction = np.ones(len(pedestrians))
        self.gap_m, self.lookahead_m, self.first_id = float(gap_m), float(lookahead_m), int(first_id)

    @property
    def assets(self) -> list[Asset]:
        return [*self.vehicles, *self.pedestrians]

    @property
    def track_ids(self) -> list[int]:
        return list(range(self.first_id, self.first_id + len(self.assets)))

    def poses(self) -> np.ndarray:
        """(N, 3) ``x, y, yaw`` [m, rad] of every vehicle, then every pedestrian."""
        vehicles = [p.pose_at(s) for p, s in zip(self.vehicle_paths, self.vehicle_s)]
        walkers = []
        for path, s, direction in zip(self.pedestrian_paths, self.pedestrian_s, self.pedestrian_direction):
            pose = path.pose_at(s)
            if direction < 0:
                pose[2] = np.arctan2(-np.sin(pose[2]), -np.cos(pose[2]))  # walking back: face the other way
            walkers.append(pose)
        return np.array([*vehicles, *walkers]).reshape(-1, 3)

    def boxes(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Footprints now: per asset its :func:`asset_box`."""
        return [asset_box(asset, x, y, yaw) for asset, (x, y, yaw) in zip(self.assets, self.poses())]

    def step(self, dt: float, obstacles: list[tuple[np.ndarray, np.ndarray, float]] = ()) -> None:
        """Advance ``dt`` [s]. ``obstacles``: extra boxes vehicles must not drive into, each a
        centre (2 or 3,) [m], half sizes (2 or 3,) [m] and yaw [rad] (e.g. the ego's footprint)."""
        if not dt > 0:
            raise ValueError(f"`dt` must be > 0 s, got {dt}")
        self.pedestrian_s += self.pedestrian_direction * self.pedestrian_speeds * dt
        for j, path in enumerate(self.pedestrian_paths):
            if self.pedestrian_s[j] >= path.length or self.pedestrian_s[j] <= 0:
                self.pedestrian_s[j] = float(np.clip(self.pedestrian_s[j], 0.0, path.length))
                self.pedestrian_direction[j] = -1.0 if self.pedestrian_s[j] >= path.length else 1.0
        external = [(np.asarray(c, float)[:2], np.asarray(h, float)[:2], float(yaw)) for c, h, yaw in obstacles]
        for i in np.argsort(-self.vehicle_s, kind="stable"):
            boxes = self.boxes()
            others = [(c[:2], h[:2], yaw) for k, (c, h, yaw) in enumerate(boxes) if k != i] + external
            limit = self.vehicle_paths[i].length
            half_length = (self.vehicles[i].upper[0] - self.vehicles[i].lower[0]) / 2
            half_width = (self.vehicles[i].upper[1] - self.vehicles[i].lower[1]) / 2
            if others:
                ahead, along, lateral = self._project_ahead(i, others)
                clear = lateral > half_width
                blocking = ~clear & np.isfinite(ahead)
                if blocking.any():
                    limit = min(limit, float((ahead - along - half_length - self.gap_m)[blocking].min()))
            s = self.vehicle_s[i]
            self.vehicle_s[i] = max(s, min(s + self.vehicle_speeds[i] * dt, limit))

    def _project_ahead(self, i: int, others):
        """For obstacles ``others`` (centre (2,), half (2,), yaw): arc length on vehicle ``i``'s
        path of their nearest point ahead within the lookahead (inf if none), their half extent
        along the path there, and their distance beyond their lateral half extent from it."""
        path, s0 = self.vehicle_paths[i], self.vehicle_s[i]
        first = max(int(np.searchsorted(path.s, s0, side="right")) - 1, 0)
        last = min(int(np.searchsorted(path.s, s0 + self.lookahead_m, side="right")), len(path.points) - 1)
        if last <= first:  # at the end of its path: nothing lies ahead
            none = np.full(len(others), np.inf)
            return none, np.zeros(len(others)), none
        start, end = path.points[first:last], path.points[first + 1:last + 1]
        seg_s = path.s[first:last]
        direction = end - start
        length = np.linalg.norm(direction, axis=1)
        unit = direction / length[:, None]
        centres = np.array([c for c, _, _ in others])  # (n, 2)
        t = np.clip(((centres[:, None] - start[None]) * unit[None]).sum(-1), 0, length[None])  # (n, k)
        nearest = start[None] + t[..., None] * unit[None]
        distance = np.linalg.norm(centres[:, None] - nearest, axis=-1)
        best = distance.argmin(1)
        rows = np.arange(len(others))
        s = seg_s[best] + t[rows, best]
        heading = np.arctan2(unit[best, 1], unit[best, 0])
        half = np.array([h for _, h, _ in others])
        relative = np.array([yaw for _, _, yaw in others]) - heading
        c, sn = np.abs(np.cos(relative)), np.abs(np.sin(relative))
        along = half[:, 0] * c + half[:, 1] * sn
        across = half[:, 0] * sn + half[:, 1] * c
        ahead = np.where((s > s0 + 1e-6) & (s <= s0 + self.lookahead_m), s, np.inf)
        return ahead, along, distance[rows, best] - across


def follow_lane(
    centreline,
    assets: list[Asset],
    start_s: list[float],
    speeds: list[float],
    steps: int,
    dt: float,
    gap_m: float = 2.0,
    first_id: int = 0,
) -> list[Track]:
    """Vehicles driving along one lane's ``centreline`` (M, 2) [m] in its direction.

    Vehicle ``i`` starts at arc length ``start_s[i]`` [m] (its centre) and drives at up to
    ``speeds[i]`` [m/s], but never closer than ``gap_m`` [m] bumper to bumper behind the
    vehicle ahead, so a fast vehicle queues behind a slower or stopped one (a :class:`Traffic`
    of one lane). Vehicles stop at the end of the centreline. Returns tracks of ``steps`` poses
    ``dt`` [s] apart, ids from ``first_id`` in the order of ``assets``.
    """
    if not len(assets) == len(start_s) == len(speeds):
        raise ValueError(f"assets, start_s and speeds must have one entry per vehicle, got "
                         f"{len(assets)}, {len(start_s)}, {len(speeds)}")
    if steps < 1 or dt <= 0 or gap_m < 0 or any(v < 0 for v in speeds):
        raise ValueError(f"need steps >= 1, dt > 0, gap_m >= 0 and speeds >= 0; got {steps}, {dt}, {gap_m}, {speeds}")
    if any(a.is_pedestrian for a in assets):
        raise ValueError("pedestrians walk with `walk`, not `follow_lane`")
    s = np.array(start_s, dtype=float)
    half_length = np.array([(a.upper[0] - a.lower[0]) / 2 for a in assets])
    order = np.argsort(-s)
    for ahead, behind in zip(order[:-1], order[1:]):
        if s[ahead] - s[behind] < half_length[ahead] + half_length[behind] + gap_m - 1e-6:
            raise ValueError(f"vehicles {ahead} and {behind} start closer than gap_m={gap_m} m bumper to bumper")
    traffic = Traffic(assets, [centreline] * len(assets), speeds, start_s, gap_m=gap_m,
                      lookahead_m=max(30.0, float(np.ptp(s)) + 2 * half_length.max() + gap_m + 1), first_id=first_id)
    history = np.empty((steps, len(assets), 3))
    for step in range(steps):
        history[step] = traffic.poses()
        traffic.step(dt)
    return [Track(first_id + i, asset, history[:, i]) for i, asset in enumerate(assets)]


def walk(path, asset: Asset, speed: float, steps: int, dt: float, start_s: float = 0.0, track_id: int = 0) -> Track:
    """A pedestrian walking along ``path`` (M, 2) [m] (a sidewalk, or a crossing from
    :func:`crossing_path`) at ``speed`` [m/s] from arc length ``start_s`` [m]; it stops at the
    path's end."""
    if not asset.is_pedestrian:
        raise ValueError(f"`walk` moves pedestrians, got a {asset.kind!r}")
    if steps < 1 or dt <= 0 or speed < 0:
        raise ValueError(f"need steps >= 1, dt > 0 and speed >= 0; got {steps}, {dt}, {speed}")
    line = Polyline(path)
    return Track(track_id, asset, line.pose_at(start_s + speed * dt * np.arange(steps)))


def crossing_path(kerb, road_yaw: float, road_width_m: float) -> np.ndarray:
    """(2, 2) straight path across a road from the point ``kerb`` (2,) [m] on its right edge
    (seen along ``road_yaw`` [rad]) to the left edge ``road_width_m`` [m] away."""
    if road_width_m <= 0:
        raise ValueError(f"`road_width_m` must be > 0, got {road_width_m}")
    kerb = np.asarray(kerb, dtype=float)
    left = np.array([-np.sin(road_yaw), np.cos(road_yaw)])
    return np.stack([kerb, kerb + road_width_m * left])


def parked(asset: Asset, x: float, y: float, yaw: float, steps: int, track_id: int = 0) -> Track:
    """A static asset at ``(x, y)`` [m] facing ``yaw`` [rad] for ``steps`` time steps."""
    if steps < 1:
        raise ValueError(f"need steps >= 1, got {steps}")
    return Track(track_id, asset, np.tile(np.array([x, y, yaw], dtype=float), (steps, 1)))
