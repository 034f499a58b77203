"""World-anchored motion of assets: tracks of poses over time.

A :class:`Track` holds an asset's pose ``(x, y, yaw)`` in the world frame at every time step
(the asset stands on the ground; :mod:`editors.placement` finds its height in a frame). Paths
are polylines given by the caller, who reads them from the road map: lane centrelines for
vehicles, sidewalks and crossings for pedestrians. Everything here is deterministic: the same
inputs give the same tracks.
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
    vehicle ahead, so a fast vehicle queues behind a slower or stopped one. Vehicles stop at the
    end of the centreline. Returns tracks of ``steps`` poses ``dt`` [s] apart, ids from
    ``first_id`` in the order of ``assets``.
    """
    if not len(assets) == len(start_s) == len(speeds):
        raise ValueError(f"assets, start_s and speeds must have one entry per vehicle, got "
                         f"{len(assets)}, {len(start_s)}, {len(speeds)}")
    if steps < 1 or dt <= 0 or gap_m < 0 or any(v < 0 for v in speeds):
        raise ValueError(f"need steps >= 1, dt > 0, gap_m >= 0 and speeds >= 0; got {steps}, {dt}, {gap_m}, {speeds}")
    if any(a.is_pedestrian for a in assets):
        raise ValueError("pedestrians walk with `walk`, not `follow_lane`")
    path = Polyline(centreline)
    s = np.array(start_s, dtype=float)
    half_length = np.array([(a.upper[0] - a.lower[0]) / 2 for a in assets])
    speed = np.array(speeds, dtype=float)
    order = np.argsort(-s)  # front to back, so each leader has moved before its follower
    for ahead, behind in zip(order[:-1], order[1:]):
        if s[ahead] - s[behind] < half_length[ahead] + half_length[behind] + gap_m - 1e-6:
            raise ValueError(f"vehicles {ahead} and {behind} start closer than gap_m={gap_m} m bumper to bumper")
    history = np.empty((steps, len(assets)))
    for step in range(steps):
        history[step] = s
        for rank, i in enumerate(order):
            limit = path.length
            if rank > 0:
                leader = order[rank - 1]
                limit = min(limit, s[leader] - half_length[leader] - half_length[i] - gap_m)
            s[i] = max(s[i], min(s[i] + speed[i] * dt, limit))
    return [Track(first_id + i, asset, path.pose_at(history[:, i])) for i, asset in enumerate(assets)]


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
