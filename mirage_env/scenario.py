"""Scenarios: what an episode happens in.

A :class:`MapScenario` is a road map (embedded ``"Town01"``, a procedural ``"town:<seed>"`` or
an OpenDRIVE file) with its dressed scene, the scene's ground-truth renderer, its static
obstacles and a route. An :class:`ImageScenario` is a user's start image (optionally with depth,
intrinsics and pose) and no map, for camera-pose exploration. Maps and scenes take seconds to
build, so they are cached per process by ``(map, scene seed, device)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirage_env.layout import LayoutRasteriser
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import RoadMap, Route, load_road_map
from mirage_env.scene import Primitives, Scene, Semantic, dress_scene
from world_model.camera import NO_SURFACE_DEPTH, check_intrinsics, check_poses

MAP_CACHE_SIZE = 4  # maps kept per process; Town01 with its scene and renderer is ~3 s and ~300 MB


@dataclass(frozen=True)
class StartFrame:
    """The first frame of an episode, in :mod:`world_model.camera` conventions: ``rgb``
    (1, H, W, 3) uint8, ``depth`` (1, 1, H, W) float32 [m] (0 = no surface) or None when
    unknown, ``K`` (1, 3, 3), ``cam_to_world`` (1, 4, 4)."""

    rgb: torch.Tensor
    depth: torch.Tensor | None
    K: torch.Tensor
    cam_to_world: torch.Tensor


class StaticObstacles:
    """The scene's solid objects as yaw-rotated 3-D boxes and spheres, for overlap tests."""

    def __init__(self, objects: Primitives):
        self.box_centre = objects.box_centre.reshape(-1, 3)
        self.box_half = objects.box_half.reshape(-1, 3)
        self.box_axes = _yaw_axes(objects.box_yaw.reshape(-1))  # (N, 2, 2): rows are the box x and y axes
        self.box_class = objects.box_class.reshape(-1)
        self.sphere_centre = objects.sphere_centre.reshape(-1, 3)
        self.sphere_radius = objects.sphere_radius.reshape(-1)
        self.sphere_class = objects.sphere_class.reshape(-1)
        self.box_reach = np.linalg.norm(self.box_half[:, :2], axis=1)  # [m] ground-plane bounding radius

    def hits(self, centre: np.ndarray, half: np.ndarray, yaw: float) -> set[Semantic]:
        """Classes of the objects overlapping the box at ``centre`` (3,) [m] with half sizes
        ``half`` (3,) [m] along its own axes, turned by ``yaw`` [rad]."""
        centre, half = np.asarray(centre, dtype=np.float64), np.asarray(half, dtype=np.float64)
        axes = _yaw_axes(np.array([yaw]))[0]
        reach = math.hypot(half[0], half[1])  # the query's ground-plane bounding radius
        # Only objects whose bounding circles meet the query's can overlap it: test those exactly.
        near = np.flatnonzero(((self.box_centre[:, :2] - centre[:2]) ** 2).sum(1) <= (self.box_reach + reach) ** 2)
        labels = list(self.box_class[near[self._boxes_overlapping(near, centre, half, axes)]]) if near.size else []
        # Sphere: the closest point of the box to its centre is within its radius.
        near = np.flatnonzero(((self.sphere_centre[:, :2] - centre[:2]) ** 2).sum(1)
                              <= (self.sphere_radius + reach) ** 2)
        if not near.size:  # most queries: nothing close (the exact tests below cost more than the search)
            return {Semantic(int(label)) for label in labels}
        local = (self.sphere_centre[near, :2] - centre[:2]) @ axes.T
        local_z = self.sphere_centre[near, 2:] - centre[2]
        offset = np.concatenate([local, local_z], axis=1)
        outside = offset - np.clip(offset, -half, half)
        labels += list(self.sphere_class[near][(outside**2).sum(1) < self.sphere_radius[near] ** 2])
        return {Semantic(int(label)) for label in labels}

    def _boxes_overlapping(self, index: np.ndarray, centre: np.ndarray, half: np.ndarray,
                           axes: np.ndarray) -> np.ndarray:
        """Mask of boxes ``index`` overlapping the query box: separating axis test in the ground
        plane (the four box axes) plus an overlap of the vertical extents."""
        box_centre, box_half, box_axes = self.box_centre[index], self.box_half[index], self.box_axes[index]
        delta = box_centre[:, :2] - centre[:2]  # (n, 2)
        separated = np.abs(box_centre[:, 2] - centre[2]) > box_half[:, 2] + half[2]
        candidate_axes = np.concatenate([np.broadcast_to(axes, box_axes.shape), box_axes], axis=1)
        for k in range(4):
            axis = candidate_axes[:, k]  # (n, 2)
            reach_query = half[0] * np.abs(axis @ axes[0]) + half[1] * np.abs(axis @ axes[1])
            reach_box = (
                box_half[:, 0] * np.abs((axis * box_axes[:, 0]).sum(1))
                + box_half[:, 1] * np.abs((axis * box_axes[:, 1]).sum(1))
            )
            separated |= np.abs((delta * axis).sum(1)) > reach_query + reach_box
        return ~separated


@dataclass(frozen=True)
class MapAssets:
    """Everything built once per ``(map, scene seed, device)``."""

    road_map: RoadMap
    scene: Scene
    renderer: GroundTruthRenderer
    obstacles: StaticObstacles
    layout: LayoutRasteriser  # the road layout that conditions the world model


@dataclass(frozen=True)
class MapScenario:
    """A road map with its scene and a route to drive (start at ``route.points[0]``)."""

    assets: MapAssets
    route: Route

    @property
    def name(self) -> str:
        return self.assets.road_map.name


@dataclass(frozen=True)
class ImageScenario:
    """A user's start frame and no map."""

    start: StartFrame
    name: str = "start_image"


Scenario = MapScenario | ImageScenario


def load_map_assets(spec: str | Path, scene_seed: int, device: str = "cpu", antialias: int = 1) -> MapAssets:
    """The map of ``spec`` (see :func:`~mirage_env.road_map.load_road_map`) with its scene
    dressed from ``scene_seed`` and a ground-truth renderer of ``antialias`` colour rays per pixel
    side, cached per process. Raises ``FileNotFoundError`` for a missing map file or an unknown
    map name."""
    spec = str(spec)
    if spec.endswith(".xodr") or Path(spec).exists():
        # Paths are cached by absolute path, so "a.xodr" and "./a.xodr" share one entry.
        spec = str(Path(spec).resolve())
    return _load_map_assets(spec, int(scene_seed), str(device), int(antialias))


@functools.lru_cache(maxsize=MAP_CACHE_SIZE)
def _load_map_assets(spec: str, scene_seed: int, device: str, antialias: int) -> MapAssets:
    road_map = load_road_map(spec)
    scene = dress_scene(road_map, scene_seed)
    renderer = GroundTruthRenderer(scene, device=device, antialias=antialias)
    return MapAssets(road_map, scene, renderer, StaticObstacles(scene.objects),
                     LayoutRasteriser(scene.ground, device=device))


def plan_scenario_route(
    road_map: RoadMap,
    rng: np.random.Generator,
    start: tuple[float, float] | None,
    goal: tuple[float, float] | None,
    min_length_m: float,
    max_length_m: float,
) -> Route:
    """The route from ``start`` to ``goal`` (world xy [m]) when given, else a random one from
    ``rng`` with a length in [``min_length_m``, ``max_length_m``] where the map allows it."""
    if start is None:
        return road_map.random_route(rng, min_length_m, max_length_m)
    route = road_map.plan_route(np.asarray(start, dtype=np.float64), np.asarray(goal, dtype=np.float64))
    if len(route.points) < 2:
        raise ValueError(f"route_start {start} and route_goal {goal} snap to the same lane point: no route to drive")
    return route


def image_scenario(
    image: np.ndarray,
    depth: np.ndarray | None,
    K: np.ndarray | torch.Tensor,
    cam_to_world: np.ndarray | torch.Tensor,
    height: int,
    width: int,
) -> ImageScenario:
    """Check a user's start frame and wrap it: ``image`` (height, width, 3) uint8, ``depth``
    (height, width) [m] with 0 for no surface (or None), ``K`` (3, 3) intrinsics of that
    image, ``cam_to_world`` (4, 4) its pose in any world frame you like."""
    image = np.asarray(image)
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(
            f"`start_image` must be a ({height}, {width}, 3) uint8 array (the env's height x width, RGB), "
            f"got shape {image.shape} dtype {image.dtype}; resize it or create the env with height/width to match"
        )
    depth_tensor = None
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != (height, width):
            raise ValueError(f"`start_depth` must be ({height}, {width}) metres, got shape {depth.shape}")
        if not np.isfinite(depth).all() or (depth < NO_SURFACE_DEPTH).any():
            raise ValueError("`start_depth` must be finite and >= 0 (0 marks no surface)")
        depth_tensor = torch.from_numpy(depth.copy())[None, None]
    K = torch.as_tensor(np.asarray(K, dtype=np.float32))
    if K.shape != (3, 3):
        raise ValueError(f"`start_intrinsics` must be a (3, 3) pinhole matrix in pixels, got shape {tuple(K.shape)}")
    check_intrinsics(K[None], batch=1)
    pose = torch.as_tensor(np.asarray(cam_to_world, dtype=np.float32))
    if pose.shape != (4, 4):
        raise ValueError(f"`start_pose` must be a (4, 4) cam_to_world matrix, got shape {tuple(pose.shape)}")
    check_poses(pose[None], batch=1)
    start = StartFrame(rgb=torch.from_numpy(image.copy())[None], depth=depth_tensor, K=K[None], cam_to_world=pose[None])
    return ImageScenario(start)


def _yaw_axes(yaw: np.ndarray) -> np.ndarray:
    """(N, 2, 2) unit x and y axes in the ground plane of frames turned by ``yaw`` (N,) [rad]."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], axis=1)

