"""Traffic in the envs: vehicles and pedestrians from the asset editor, moving on the road map.

:func:`make_traffic` reads paths from a map scenario (lane routes for vehicles; sidewalks and
road crossings, found on the scene's ground texture, for pedestrians) and hands them to
:class:`editors.motion.Traffic`, which moves them (vehicles keep a gap behind anything in their
lane, the ego included). :class:`TrafficFrames` wraps a frame source: it renders each slot's
frame without the assets, then the editor composites them by depth (occlusion both ways,
contact shadows), optionally refines the frame in one step, and keeps the labels. Inserted
assets never reach the world model's memory: the model generates and caches the frame without
them, and their silhouettes go to it as the ``dynamic`` mask so that the background it
generated behind them is not cached either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from editors import VEHICLE_CLASSES, AssetInstance, Traffic, composite, make_asset, render_assets
from editors.placement import Placement, refine_placement
from mirage_env.envs.frame_source import FrameSource, WorldModelFrames
from mirage_env.road_map import RoadMap
from mirage_env.scenario import MapScenario, Scenario, StartFrame
from mirage_env.scene import Primitives, Scene, Semantic

if TYPE_CHECKING:
    from editors.refiner import AssetRefiner

VEHICLE_SPEED_MPS = (4.0, 10.0)  # [m/s] range of vehicles' cruising speeds
PEDESTRIAN_SPEED_MPS = (0.9, 1.6)  # [m/s] walking speeds
SPAWN_RADIUS_M = 80.0  # [m] traffic off the ego's route starts within this distance of it
EGO_CLEARANCE_M = 12.0  # [m] no traffic starts closer than this to the ego
VEHICLE_SPACING_M = 16.0  # [m] between vehicle spawn points along a lane
SIDEWALK_WALK_M = 10.0  # [m] pedestrians walk this far along the sidewalk before and after crossing
_VEHICLE_WEIGHTS = (0.45, 0.25, 0.12, 0.1, 0.08)  # car, suv, van, truck, bus


def ground_class(scene: Scene, xy: np.ndarray) -> np.ndarray:
    """:class:`Semantic` class of the scene's ground at points ``xy`` (N, 2) [m] (terrain outside)."""
    ground = scene.ground
    xy = np.atleast_2d(np.asarray(xy, dtype=float))
    col = np.floor((xy[:, 0] - ground.x0) / ground.texel).astype(int)
    row = np.floor((xy[:, 1] - ground.y0) / ground.texel).astype(int)
    rows, cols = ground.classes.shape
    inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    out = np.full(len(xy), int(Semantic.TERRAIN))
    out[inside] = ground.classes[row[inside], col[inside]]
    return out


def check_on_map(road_map: RoadMap, xy, what: str = "asset", margin_m: float = 30.0) -> None:
    """Raise ``ValueError`` when ``xy`` [m] lies off the map: farther than ``margin_m`` [m] from
    every driving-lane centre."""
    x, y = float(xy[0]), float(xy[1])
    distance = road_map.distance_to_lanes((x, y))
    if not distance <= margin_m:
        xmin, ymin, xmax, ymax = road_map.bounds
        raise ValueError(f"{what} at ({x:.1f}, {y:.1f}) m is off the map {road_map.name!r}: the nearest lane is "
                         f"{distance:.1f} m away (more than {margin_m:.0f} m; the lanes span x {xmin:.0f}..{xmax:.0f}, "
                         f"y {ymin:.0f}..{ymax:.0f} m); place it on or beside a road")


def pedestrian_path(scene: Scene, x: float, y: float, yaw: float) -> np.ndarray | None:
    """A walk that crosses the road at lane point ``(x, y)`` heading ``yaw``: along the right
    sidewalk, across the road, along the far sidewalk. (4, 2) [m], or None where no sidewalk is
    found within 20 m on both sides."""
    forward = np.array([np.cos(yaw), np.sin(yaw)])
    right = np.array([np.sin(yaw), -np.cos(yaw)])
    steps = np.arange(0.0, 20.0, 0.2)
    centre = np.array([x, y])

    def first_sidewalk(direction: np.ndarray) -> np.ndarray | None:
        classes = ground_class(scene, centre + steps[:, None] * direction)
        hits = np.flatnonzero(classes == Semantic.SIDEWALK)
        return None if not len(hits) else centre + (steps[hits[0]] + 1.0) * direction

    near, far = first_sidewalk(right), first_sidewalk(-right)
    if near is None or far is None:
        return None
    return np.stack([near - SIDEWALK_WALK_M * forward, near, far, far + SIDEWALK_WALK_M * forward])


def make_traffic(scenario: MapScenario, rng: np.random.Generator, vehicles: int, pedestrians: int,
                 ego: tuple[np.ndarray, float], gap_m: float = 2.0,
                 ahead_m: tuple[float, float] = (15.0, 60.0)) -> Traffic:
    """``vehicles`` and ``pedestrians`` around the ``ego`` (xy (2,) [m], yaw [rad]) of a map
    scenario, every choice drawn from ``rng``. Half the vehicles (rounded up) start on the
    ego's route ``ahead_m`` [m] ahead and drive on along it (and beyond its end); the others start at
    spawn points within ``SPAWN_RADIUS_M`` on random routes. Half the pedestrians (rounded up)
    cross the ego's route ``ahead_m`` ahead; the others cross roads near spawn points
    (:func:`pedestrian_path`)."""
    if vehicles < 0 or pedestrians < 0:
        raise ValueError(f"traffic counts must be >= 0, got {vehicles} vehicles and {pedestrians} pedestrians")
    road_map, scene, route = scenario.assets.road_map, scenario.assets.scene, scenario.route
    ego_xy = np.asarray(ego[0], dtype=float)[:2]
    progress = route.project(ego_xy, near_s=0.0)[0]
    ahead_s = progress + rng.uniform(*ahead_m, size=4 * (vehicles + pedestrians) + 4)
    on_route = np.array([[*route.point_at(s), route.heading_at(s)] for s in ahead_s]).reshape(-1, 3)
    spawns = road_map.spawn_points(min_spacing=VEHICLE_SPACING_M)
    distance = np.linalg.norm(spawns[:, :2] - ego_xy, axis=1)
    nearby = spawns[(distance > EGO_CLEARANCE_M) & (distance < SPAWN_RADIUS_M)]
    if len(nearby) < vehicles + pedestrians:
        nearby = spawns[distance > EGO_CLEARANCE_M]
    nearby = nearby[rng.permutation(len(nearby))]
    goals = road_map.spawn_points()

    def onward(x: float, y: float, yaw: float, along_route_s: float | None) -> np.ndarray | None:
        """A lane path from (x, y): the ego's route from ``along_route_s`` then on to a random
        spawn point, or a route from there to a random spawn point."""
        goal = goals[rng.integers(len(goals))]
        try:
            if along_route_s is None:
                path = road_map.plan_route((x, y), goal[:2], start_yaw=yaw).points
            else:
                route_s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route.points, axis=0), axis=1))])
                rest = route.points[np.searchsorted(route_s, along_route_s):]
                more = road_map.plan_route(route.points[-1], goal[:2], start_yaw=route.yaw[-1]).points
                path = np.concatenate([[[x, y]], rest, more[1:]])
        except ValueError:
            return None
        return path if np.linalg.norm(np.diff(path, axis=0), axis=1).sum() >= 20.0 else None

    assets, paths, speeds, starts = [], [], [], []
    candidates = [(*pose, s) for pose, s in zip(on_route, ahead_s)] + [(*pose, None) for pose in nearby]
    for route_limit in ((vehicles + 1) // 2, vehicles):  # the second pass fills up from the route
        for x, y, yaw, along in candidates:
            if len(assets) == vehicles:
                break
            if along is not None and sum(a is not None for _, _, a in starts) >= route_limit:
                continue
            if any(np.hypot(x - sx, y - sy) < VEHICLE_SPACING_M for sx, sy, _ in starts) \
                    or np.hypot(*(ego_xy - (x, y))) < 10:
                continue  # keep vehicles apart from each other and from the ego
            path = onward(x, y, yaw, along)
            if path is None:
                continue
            kind = VEHICLE_CLASSES[rng.choice(len(VEHICLE_CLASSES), p=_VEHICLE_WEIGHTS)]
            assets.append(make_asset(kind, seed=int(rng.integers(2**31))))
            paths.append(path)
            speeds.append(float(rng.uniform(*VEHICLE_SPEED_MPS)))
            starts.append((x, y, along))
    walkers, walks, walk_speeds, walk_start = [], [], [], []
    crossings = [*on_route[-(2 * pedestrians + 2):][: 2 * ((pedestrians + 1) // 2)], *nearby, *on_route]
    for x, y, yaw in crossings:
        if len(walkers) == pedestrians:
            break
        path = pedestrian_path(scene, x, y, yaw)
        if path is None:
            continue
        walkers.append(make_asset("pedestrian", seed=int(rng.integers(2**31))))
        walks.append(path)
        walk_speeds.append(float(rng.uniform(*PEDESTRIAN_SPEED_MPS)))
        walk_start.append(float(rng.uniform(0.0, 2 * SIDEWALK_WALK_M)))
    if len(assets) < vehicles or len(walkers) < pedestrians:
        raise ValueError(f"map {road_map.name!r} has room for {len(assets)} vehicles and {len(walkers)} "
                         f"pedestrians near the ego, {vehicles} and {pedestrians} were asked for")
    return Traffic(assets, paths, speeds, None, walkers, walks, walk_speeds, walk_start, gap_m=gap_m)


def traffic_instances(traffic: Traffic, ground_z: float = 0.0) -> list[AssetInstance]:
    """The traffic now as one-frame :class:`~editors.AssetInstance` s, standing at ``ground_z``
    [m] (the map scenes' ground is the plane z = 0: the coarse placement is exact there)."""
    poses = traffic.poses()
    return [AssetInstance(asset, track_id, torch.tensor([[x, y, ground_z, yaw]], dtype=torch.float32))
            for asset, track_id, (x, y, yaw) in zip(traffic.assets, traffic.track_ids, poses)]


def asset_primitives(instances: list[AssetInstance], frame: int = 0) -> Primitives:
    """Boxes of ``instances`` at ``frame`` as ground-truth renderer primitives (real scene geometry)."""
    return Primitives.from_lists(asset_boxes(instances, frame), [])


def asset_boxes(instances: list[AssetInstance], frame: int = 0) -> list[tuple]:
    """Boxes of ``instances`` at ``frame`` as ``Primitives.from_lists`` box tuples."""
    boxes = []
    for instance in instances:
        x, y, z, yaw = instance.poses[frame].tolist()
        label = Semantic.PEDESTRIAN if instance.asset.is_pedestrian else Semantic.VEHICLE
        centres = Placement(x, y, z, yaw).to_world(instance.asset.centres)
        for centre, size, colour in zip(centres, instance.asset.sizes, instance.asset.colours):
            boxes.append((centre, size / 2, yaw, label, colour, False))
    return boxes


def collision_names(traffic: Traffic, centre: np.ndarray, half: np.ndarray, yaw: float) -> set[str]:
    """Leaderboard infraction names of the traffic the box (``centre`` (3,), ``half`` (3,) [m],
    ``yaw`` [rad]) overlaps: ``collisions_vehicle`` / ``collisions_pedestrian``."""
    from mirage_env.scenario import StaticObstacles

    boxes = traffic.boxes()
    if not boxes:
        return set()
    classes = [Semantic.PEDESTRIAN if a.is_pedestrian else Semantic.VEHICLE for a in traffic.assets]
    obstacles = StaticObstacles(Primitives.from_lists(
        [(c, h, yaw_, label, (0, 0, 0), False) for (c, h, yaw_), label in zip(boxes, classes)], []))
    hits = obstacles.hits(centre, half, yaw)
    return {"collisions_vehicle" if hit == Semantic.VEHICLE else "collisions_pedestrian" for hit in hits}


def label_dict(label, residual_px: float | None, placement_error: str | None = None) -> dict[str, Any]:
    """An :class:`editors.AssetLabel` as plain values for ``info`` and JSON. ``residual_px``:
    the ground-contact disagreement [px] of the asset where it is drawn
    (:attr:`editors.Refinement.initial_residual_px` of its placement: no shift is applied after
    it), None where no contact point lands on depth. ``placement_error``: why the asset's
    placement could not be measured in this frame (it keeps its track's level), else None."""
    return {
        "class": label.kind,
        "track_id": label.track_id,
        "box_2d": None if label.box_2d is None else list(label.box_2d),
        "box_3d_world": label.corners_world.round(4).tolist(),
        "box_3d_camera": label.corners_camera.round(4).tolist(),
        "occlusion": round(float(label.occlusion), 4),
        "visible_pixels": int(label.mask.sum()),
        "alignment_residual_px": None if residual_px is None else round(residual_px, 4),
        "placement_error": placement_error,
    }


class TrafficFrames:
    """A frame source that inserts each slot's assets into the frames of ``inner``.

    Envs set a slot's assets with :meth:`set_assets` before it renders; after a render,
    ``labels[slot]`` holds one :func:`label_dict` per asset and ``instance_masks[slot]`` the
    (H, W) int16 track id per pixel (-1 where none). ``refiner``: an
    :class:`~editors.refiner.AssetRefiner` run on every frame with assets in view (its temporal
    state kept per slot and dropped on a frame with none in view), or None for the composite alone.
    """

    def __init__(self, inner: FrameSource, refiner: AssetRefiner | None = None):
        self.inner, self.refiner = inner, refiner
        self.height, self.width = inner.height, inner.width
        self.assets: dict[int, list[AssetInstance]] = {}
        self.labels: dict[int, list[dict]] = {}
        self.instance_masks: dict[int, np.ndarray] = {}
        self._states: dict[int, torch.Tensor | None] = {}

    def reset(self, slot: int, start: StartFrame, scenario: Scenario, seed: int = 0) -> None:
        self.inner.reset(slot, start, scenario, seed)
        self.assets[slot], self.labels[slot], self._states[slot] = [], [], None
        self.instance_masks[slot] = np.full((self.height, self.width), -1, dtype=np.int16)

    def set_assets(self, slot: int, instances: list[AssetInstance]) -> None:
        self.assets[slot] = instances

    def insert(self, slot: int, rgb: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
               cam_to_world: torch.Tensor) -> np.ndarray:
        """Composite (and refine) ``slot``'s assets into one frame: ``rgb`` (H, W, 3) uint8,
        ``depth`` (1, H, W) [m], ``K`` (3, 3), ``cam_to_world`` (4, 4). Returns (H, W, 3) uint8."""
        instances = self.assets.get(slot, [])
        frame = rgb.permute(2, 0, 1)[None].float() / 255
        depth, K, pose = depth[None].float(), K[None].float(), cam_to_world[None].float()
        out = composite(frame, depth, K, pose, instances)
        mask = out.instance >= 0
        result = out.rgb
        if self.refiner is not None and mask.any():
            with torch.no_grad():
                refined = self.refiner(out.rgb, mask, self._states.get(slot))
            result, self._states[slot] = refined.rgb, refined.state
        else:  # nothing in view: the stream restarts when an asset (re)appears, not from a stale frame
            self._states[slot] = None
        labels = []
        for instance, label in zip(instances, out.labels[0]):
            residual = None
            if label.box_2d is not None:
                x, y, z, yaw = instance.poses[0].tolist()
                try:
                    residual = refine_placement(instance.asset, Placement(x, y, z, yaw), depth, K,
                                                pose).initial_residual_px
                except ValueError:  # ground contact out of view or over sky: nothing to measure
                    residual = None
            labels.append(label_dict(label, residual))
        self.labels[slot] = labels
        ids = torch.tensor([i.track_id for i in instances] + [-1], dtype=torch.int16)
        self.instance_masks[slot] = ids[out.instance[0, 0]].numpy()  # index -1 picks the trailing -1
        return (result[0].permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()

    def render(self, slots: Sequence[int], cam_to_world: torch.Tensor, K: torch.Tensor) -> np.ndarray:
        if cam_to_world.ndim == 4:  # (B, T, 4, 4): one frame per slot only
            if cam_to_world.shape[1] != 1:
                raise ValueError(f"traffic is inserted into one frame per slot and render call, got "
                                 f"{cam_to_world.shape[1]} poses per slot (frames_per_step must be 1 with traffic)")
            return self.render(slots, cam_to_world[:, 0], K)[:, None]
        if isinstance(self.inner, WorldModelFrames):
            dynamic = torch.zeros(len(slots), 1, self.height, self.width, dtype=torch.bool)
            for index, slot in enumerate(slots):
                if self.assets.get(slot):
                    alone = render_assets(self.assets[slot], K[index:index + 1], cam_to_world[index:index + 1],
                                          self.height, self.width).alone
                    dynamic[index, 0] = alone[0].any(0)
            frames = self.inner.render(slots, cam_to_world, K, dynamic=dynamic)
        else:
            frames = self.inner.render(slots, cam_to_world, K)
        depth = self.inner.last_depth
        for index, slot in enumerate(slots):
            frames[index] = self.insert(slot, torch.from_numpy(frames[index]), depth[index], K[index],
                                        cam_to_world[index])
        return frames


def with_traffic(source: FrameSource, config) -> FrameSource:
    """``source`` wrapped in :class:`TrafficFrames` when ``config`` asks for traffic."""
    if isinstance(source, TrafficFrames) or not (config.traffic_vehicles or config.traffic_pedestrians):
        return source
    refiner = None
    if config.refine_assets:
        from editors.refiner import load_refiner

        refiner = load_refiner(config.refiner_path, config.device)
    return TrafficFrames(source, refiner)

