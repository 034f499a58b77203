"""Training and evaluation pairs for the asset refiner, from the ground-truth renderer.

A clip is a few consecutive frames of an expert drive through a procedural town with vehicles
and pedestrians from the asset library moving around the ego (vehicles along the route ahead,
in its lane or the opposite one; pedestrians beside or across the road). For every frame we
render:

- ``background``: the scene without the assets (what a frame source gives the editor);
- ``naive``: the editor's rough composite of the assets into the background
  (:func:`editors.composite`: its own fixed lighting, a contact shadow);
- ``truth``: the scene rendered with the assets as real scene geometry (boxes handed to the
  renderer as actors), lit by the scene's own sun like everything else in it.

Their masks and the composite's shadow are kept, so the refiner's target is the truth with the
same contact shadow (the renderer draws no shadows): what the refiner must learn is the asset's
look in the scene (lighting, colour, edges). Towns come from training seeds only unless
``allow_heldout`` (benchmarks evaluate on held-out seeds). One safetensors shard per town;
existing shards are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from editors import AssetInstance, Polyline, composite, make_asset
from editors.assets import VEHICLE_CLASSES
from editors.motion import asset_box
from mirage_env.envs.traffic import asset_primitives
from mirage_env.expert import drive_route
from mirage_env.scenario import load_map_assets
from mirage_env.towns import is_heldout
from mirage_env.vehicle import CameraMount
from mirage_env.world_model_data import read_town_shards, write_town_shards

FORMAT = "mirage-editor-pairs/1"
PAIR_KEYS = ("background", "naive", "truth", "naive_mask", "truth_mask", "shadow", "cam_to_world", "asset_poses")


@dataclass
class PairConfig:
    """How refiner pairs are made (units in comments)."""

    size: int = 96  # [px] square frames (a multiple of 4)
    fov_deg: float = 70.0  # [deg] horizontal field of view
    frames: int = 3  # consecutive frames per clip (0.1 s apart)
    clips_per_town: int = 24
    vehicles: tuple[int, int] = (1, 3)  # vehicles per clip, inclusive range
    pedestrians: tuple[int, int] = (0, 2)  # pedestrians per clip, inclusive range
    distance_m: tuple[float, float] = (5.0, 22.0)  # [m] assets start this far ahead along the route
    min_asset_pixels: int = 40  # clips whose middle frame shows fewer asset pixels are skipped


def _clip_assets(rng: np.random.Generator, route, progress_m: float, config: PairConfig, times: np.ndarray):
    """Asset instances with (T, 4) poses at ``times`` [s] around the route ahead of ``progress_m``."""
    path = Polyline(route.points)
    instances = []
    for _ in range(int(rng.integers(config.vehicles[0], config.vehicles[1] + 1))):
        kind = VEHICLE_CLASSES[int(rng.integers(len(VEHICLE_CLASSES)))]
        s = progress_m + rng.uniform(*config.distance_m) + np.clip(rng.uniform(2, 9), 0, None) * times
        pose = path.pose_at(s)
        if rng.random() < 0.4:  # oncoming, in the lane to the left
            left = np.stack([-np.sin(pose[:, 2]), np.cos(pose[:, 2])], 1)
            s_back = progress_m + rng.uniform(*config.distance_m) - rng.uniform(2, 9) * times
            pose = path.pose_at(s_back)
            pose[:, :2] += 3.5 * left
            pose[:, 2] += math.pi
        instances.append((make_asset(kind, seed=int(rng.integers(2**31))), pose))
    for _ in range(int(rng.integers(config.pedestrians[0], config.pedestrians[1] + 1))):
        base = path.pose_at(progress_m + rng.uniform(*config.distance_m))
        side = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 6.0)
        xy = base[:2] + side * np.array([-np.sin(base[2]), np.cos(base[2])])
        heading = rng.uniform(-math.pi, math.pi)
        speed = rng.uniform(0.8, 1.6)
        poses = np.stack([xy[0] + speed * times * math.cos(heading), xy[1] + speed * times * math.sin(heading),
                          np.full_like(times, heading)], 1)
        instances.append((make_asset("pedestrian", seed=int(rng.integers(2**31))), poses))
    return [AssetInstance(asset, i, torch.tensor(np.concatenate([p[:, :2], np.zeros((len(p), 1)), p[:, 2:]], 1),
                                                 dtype=torch.float32))
            for i, (asset, p) in enumerate(instances)]


def render_pair_clips(seed: int, config: PairConfig | None = None, allow_heldout: bool = False) -> dict[str, torch.Tensor]:
    """Pairs of procedural town ``seed`` (see the module doc). N clips of T frames:
    ``background``, ``naive``, ``truth`` (N, T, H, W, 3) uint8; ``naive_mask``, ``truth_mask``
    (N, T, 1, H, W) bool (asset pixels); ``shadow`` (N, T, 1, H, W) float16 darkening;
    ``cam_to_world`` (N, T, 4, 4); ``asset_poses`` (N, T, A, 4) ``x, y, z, yaw`` of the first A
    = ``max vehicles + max pedestrians`` assets (NaN rows where a clip has fewer); ``K`` (3, 3)."""
    config = config or PairConfig()
    if config.size % 4:
        raise ValueError(f"`size` must be a multiple of 4, got {config.size}")
    if is_heldout(seed) and not allow_heldout:
        raise ValueError(f"town seed {seed} is held out for evaluation; train on other seeds")
    rng = np.random.default_rng([seed, 0xED17])
    assets = load_map_assets(f"town:{seed}", seed)
    renderer = assets.renderer
    mount = CameraMount(fov_deg=config.fov_deg, width=config.size, height=config.size)
    K = mount.intrinsics()
    frames, size = config.frames, config.size
    slots = config.vehicles[1] + config.pedestrians[1]
    times = np.arange(frames) * 0.1
    clips: dict[str, list] = {key: [] for key in PAIR_KEYS}
    attempts = 0
    while len(clips["background"]) < config.clips_per_town and attempts < 4 * config.clips_per_town:
        attempts += 1
        route = assets.road_map.random_route(rng, min_length_m=60.0, max_length_m=300.0)
        ego = drive_route(route, mount, max_steps=3000).ego
        if len(ego) < frames + 1:
            continue
        start = int(rng.integers(0, len(ego) - frames))
        ego = ego[start:start + frames]
        progress = route.project(ego[0, :2], near_s=None)[0]
        instances = _clip_assets(rng, route, progress, config, times)
        poses = mount.poses(ego)
        Ks = K.expand(frames, 3, 3)
        background = renderer.render(poses, Ks, size, size)
        truth = [renderer.render(poses[t:t + 1], Ks[:1], size, size, actors=asset_primitives(instances, t))
                 for t in range(frames)]
        truth_rgb = torch.cat([out.rgb for out in truth])
        truth_depth = torch.cat([out.depth for out in truth])
        comp = composite(background.rgb.permute(0, 3, 1, 2).float() / 255, background.depth, Ks, poses, instances)
        naive_mask = comp.instance >= 0
        if int(naive_mask[frames // 2].sum()) < config.min_asset_pixels:
            continue
        in_front = (truth_depth > 0) & ((background.depth <= 0) | (truth_depth < background.depth - 1e-3))
        clips["background"].append(background.rgb)
        clips["naive"].append((comp.rgb.permute(0, 2, 3, 1) * 255 + 0.5).clamp(0, 255).to(torch.uint8))
        clips["truth"].append(truth_rgb)
        clips["naive_mask"].append(naive_mask)
        clips["truth_mask"].append(in_front)
        clips["shadow"].append(comp.shadow.half())
        clips["cam_to_world"].append(poses)
        asset_poses = torch.full((frames, slots, 4), float("nan"))
        for i, instance in enumerate(instances[:slots]):
            asset_poses[:, i] = instance.poses
        clips["asset_poses"].append(asset_poses)
    if not clips["background"]:
        raise ValueError(f"town {seed}: no clip showed an asset; lower min_asset_pixels or widen distance_m")
    tensors = {key: torch.stack(values) for key, values in clips.items()}
    tensors["K"] = K
    return tensors


def generate_pair_shards(directory: str | Path, seeds, config: PairConfig | None = None,
                         allow_heldout: bool = False) -> list[Path]:
    """Render the pairs of every town in ``seeds`` into ``directory`` (one shard per town,
    existing shards reused). Returns the shard paths."""
    config = config or PairConfig()
    return write_town_shards(directory, seeds, lambda seed: render_pair_clips(seed, config, allow_heldout), FORMAT,
                             "rendering editor pairs", asdict(config))


def load_pair_shards(paths) -> dict[str, torch.Tensor]:
    """Concatenate pair shards (all rendered with the same intrinsics)."""
    return read_town_shards(paths, "editor pair shard", "PairConfig", keys=PAIR_KEYS)


# ---------------------------------------------------------------------------------------------
# Clips to edit (`mirage edit`)

CLIP_FRAMES_FILE = "frames.safetensors"  # rgb (T, H, W, 3) uint8, depth (T, 1, H, W) float32 [m]
CLIP_TRAJECTORY_FILE = "trajectory.safetensors"  # mirage_env.trajectory format: poses, intrinsics, map
CLIP_TRAFFIC_AHEAD_M = (8.0, 30.0)  # [m] random traffic of a clip starts this far ahead along the ego's path


def save_clip(directory: str | Path, trajectory, rgb: torch.Tensor, depth: torch.Tensor) -> Path:
    """Write a clip folder: ``trajectory`` (:class:`~mirage_env.trajectory.Trajectory`) and its
    frames ``rgb`` (T, H, W, 3) uint8 with metric z-depth ``depth`` (T, 1, H, W) [m] (0: sky)."""
    directory = Path(directory)
    _check_clip(rgb, depth, trajectory, f"clip for {directory}")
    trajectory.save(directory / CLIP_TRAJECTORY_FILE)
    save_file({"rgb": rgb.contiguous(), "depth": depth.float().contiguous()}, str(directory / CLIP_FRAMES_FILE),
              metadata={"format": "mirage-clip-frames/1"})
    return directory


def load_clip(directory: str | Path):
    """``(trajectory, rgb (T, H, W, 3) uint8, depth (T, 1, H, W) float32)`` of a clip folder."""
    from mirage_env.trajectory import Trajectory

    directory = Path(directory)
    for name in (CLIP_TRAJECTORY_FILE, CLIP_FRAMES_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"clip folder {directory} has no {name}: a clip is {CLIP_TRAJECTORY_FILE} "
                                    f"(poses, intrinsics) and {CLIP_FRAMES_FILE} (rgb, depth); see `save_clip`")
    trajectory = Trajectory.load(directory / CLIP_TRAJECTORY_FILE)
    try:
        frames = load_file(str(directory / CLIP_FRAMES_FILE))
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ValueError(f"{directory / CLIP_FRAMES_FILE} is unreadable ({error})") from error
    if "rgb" not in frames or "depth" not in frames:
        raise ValueError(f"{directory / CLIP_FRAMES_FILE} must hold 'rgb' and 'depth', got {sorted(frames)}")
    _check_clip(frames["rgb"], frames["depth"], trajectory, str(directory))
    return trajectory, frames["rgb"], frames["depth"].float()


def _check_clip(rgb: torch.Tensor, depth: torch.Tensor, trajectory, where: str) -> None:
    """Frames that fit ``trajectory``: one per pose, at the size of its camera (``mount``)."""
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != torch.uint8:
        raise ValueError(f"{where}: rgb must be (T, H, W, 3) uint8, got {tuple(rgb.shape)} {rgb.dtype}")
    if depth.shape != (rgb.shape[0], 1, *rgb.shape[1:3]):
        raise ValueError(f"{where}: depth must be (T, 1, H, W) = {(rgb.shape[0], 1, *rgb.shape[1:3])}, "
                         f"got {tuple(depth.shape)}")
    if rgb.shape[0] != len(trajectory):
        raise ValueError(f"{where}: {rgb.shape[0]} frames but {len(trajectory)} trajectory poses")
    mount = trajectory.mount
    if tuple(rgb.shape[1:3]) != (mount.height, mount.width):
        raise ValueError(f"{where}: frames are {rgb.shape[2]}x{rgb.shape[1]} px (W x H) but the trajectory's camera "
                         f"is {mount.width}x{mount.height} px, so its intrinsics do not fit them; save the "
                         "trajectory with the camera (mount width/height, intrinsics) the frames were taken with")


def map_spec(map_name: str) -> str:
    """The :func:`~mirage_env.road_map.load_road_map` spec of a map name a trajectory records
    (``town_7`` -> ``town:7``; others unchanged)."""
    if map_name.startswith("town_") and map_name[5:].isdigit():
        return f"town:{map_name[5:]}"
    return map_name


def demo_clip(map_name: str, seed: int, frames: int, size: int, fov_deg: float = 90.0):
    """A clip to edit: the expert drives a random route of ``map_name``, rendered by the
    ground-truth renderer. Returns ``(trajectory, rgb, depth)``."""
    from mirage_env.trajectory import Trajectory

    assets = load_map_assets(map_name, seed)
    rng = np.random.default_rng(seed)
    mount = CameraMount(fov_deg=fov_deg, width=size, height=size)
    route = assets.road_map.random_route(rng, min_length_m=80.0, max_length_m=300.0)
    drive = drive_route(route, mount, max_steps=frames - 1)
    ego = drive.ego[:frames]
    poses = mount.poses(ego)
    out = assets.renderer.render(poses, mount.intrinsics().expand(len(ego), 3, 3), size, size)
    trajectory = Trajectory(map_name=assets.road_map.name, timestamps=np.arange(len(ego)) * 0.1, ego=ego,
                            controls=np.zeros((len(ego), 2)), cam_to_world=poses.numpy(),
                            intrinsics=mount.intrinsics().numpy(), mount=mount)
    return trajectory, out.rgb, out.depth


@dataclass
class EditResult:
    """An edited clip: ``rgb`` (T, H, W, 3) uint8 (refined when a refiner was given), ``naive``
    the composite before refinement, ``labels[t]`` per frame one dict per asset
    (:func:`mirage_env.envs.traffic.label_dict`), ``instance`` (T, H, W) int16 track ids (-1
    none), ``dynamic`` (T, 1, H, W) bool (pixels to keep out of any cache), ``seconds`` per
    stage."""

    rgb: torch.Tensor
    naive: torch.Tensor
    labels: list[list[dict]]
    instance: torch.Tensor
    dynamic: torch.Tensor
    seconds: dict[str, float]


def clip_tracks(trajectory, spec: str | None, seed: int, vehicles: int, pedestrians: int,
                explicit: list[dict]) -> tuple[list, list[np.ndarray]]:
    """Assets and their (T, 3) world tracks ``x, y, yaw`` over the clip's timestamps: the random
    traffic first, then the ``explicit`` assets.

    ``explicit`` assets are dicts with ``kind`` (or ``file``: a .json spec or a mesh, with
    ``kind``), ``seed``, ``x``, ``y`` [m], ``yaw`` [rad] and ``speed_mps`` (straight ahead);
    with a map (``spec``) they must be on it, and one without ``yaw`` faces along the nearest
    driving lane (coarse alignment with the lane; yaw 0 without a map). With a map,
    ``vehicles`` and ``pedestrians`` come from :func:`mirage_env.envs.traffic.make_traffic`
    around the ego's path; the ego's footprint and the explicit assets are obstacles the
    vehicles keep their gap to (pedestrians walk their paths regardless)."""
    from editors.assets import load_asset
    from mirage_env.envs.traffic import check_on_map, make_traffic
    from mirage_env.road_map import Route
    from mirage_env.scenario import MapScenario

    times = np.asarray(trajectory.timestamps, dtype=float)
    road_map = map_assets = None
    if spec is not None and (vehicles or pedestrians or explicit):
        map_assets = load_map_assets(spec, seed)
        road_map = map_assets.road_map
    elif vehicles or pedestrians:
        raise ValueError(f"the clip's map {trajectory.map_name!r} cannot be loaded, so random traffic has no lanes; "
                         "give `map=` (town:<seed>, Town01 or an .xodr) or place assets explicitly with `assets=`")
    placed, placed_tracks = [], []
    for i, item in enumerate(explicit):
        item = dict(item)
        unknown = set(item) - {"kind", "file", "seed", "x", "y", "yaw", "speed_mps"}
        if unknown or "x" not in item or "y" not in item:
            raise ValueError(f"asset {i}: needs x, y (and kind or file; optional seed, yaw, speed_mps), "
                             f"got keys {sorted(item)}")
        if item.get("file"):
            asset = load_asset(item["file"], kind=item.get("kind"))
        elif "kind" in item:
            asset = make_asset(item["kind"], seed=int(item.get("seed", i)))
        else:
            raise ValueError(f"asset {i}: give `kind` (one of the library's classes) or `file`")
        x, y = float(item["x"]), float(item["y"])
        if road_map is not None:
            check_on_map(road_map, (x, y), f"asset {i} ({asset.kind})")
        if item.get("yaw") is not None:
            yaw = float(item["yaw"])
        elif road_map is not None:
            yaw = lane_heading(road_map, (x, y))
        else:
            yaw = 0.0
        speed = float(item.get("speed_mps", 0.0))
        travelled = speed * (times - times[0])
        placed_tracks.append(np.stack([x + travelled * np.cos(yaw), y + travelled * np.sin(yaw),
                                       np.full_like(times, yaw)], 1))
        placed.append(asset)
    assets_out, tracks = [], []
    if vehicles or pedestrians:
        ego = np.asarray(trajectory.ego, dtype=float)
        step = np.concatenate([[True], np.linalg.norm(np.diff(ego[:, :2], axis=0), axis=1) > 1e-3])
        path = ego[step]
        if len(path) < 2:  # a standing ego: a short stub ahead of it along its heading
            path = np.stack([ego[0], ego[0] + [np.cos(ego[0, 2]), np.sin(ego[0, 2]), 0, 0]])
        route = Route(path[:, :2].copy(), path[:, 2].copy(), np.zeros(len(path), bool), road_map.name)
        traffic = make_traffic(MapScenario(map_assets, route), np.random.default_rng(seed), vehicles,
                               pedestrians, (ego[0, :2], float(ego[0, 2])), ahead_m=CLIP_TRAFFIC_AHEAD_M)
        history = []
        for t in range(len(times)):
            history.append(traffic.poses())
            if t + 1 < len(times):
                x, y, yaw = ego[t + 1, :3]
                obstacles = [((x + 1.4 * np.cos(yaw), y + 1.4 * np.sin(yaw)), (2.3, 0.95), yaw)]
                obstacles += [asset_box(asset, *track[t + 1]) for asset, track in zip(placed, placed_tracks)]
                traffic.step(max(times[t + 1] - times[t], 1e-3), obstacles)
        history = np.stack(history)
        assets_out += traffic.assets
        tracks += [history[:, i] for i in range(len(traffic.assets))]
    return assets_out + placed, tracks + placed_tracks


def lane_heading(road_map, xy) -> float:
    """Direction of travel [rad] of the driving lane nearest to ``xy`` [m] (the lane containing
    it, else the one it projects onto; the nearest lane sample's where libcarla finds none)."""
    offset = road_map.driving_lane_offset(xy)
    if np.isfinite(offset.beyond_edge_m):
        return float(offset.lane_yaw)
    return float(road_map.node_yaw[road_map.nearest_node(xy)])


def edit_clip(trajectory, rgb: torch.Tensor, depth: torch.Tensor, assets: list, tracks: list[np.ndarray],
              refiner=None, first_id: int = 0) -> EditResult:
    """Insert ``assets`` moving along ``tracks`` (T, 3) into a clip with both alignment stages.

    Coarse 3D: in each frame the asset's height is read from the depth under its footprint
    (:func:`editors.place_on_ground`). Fine 2D: its ground contact is then aligned with the
    frame's depth in the image (:func:`editors.refine_placement`); the track keeps the median
    of the aligned heights over the frames that see it, so the asset stays on one ground level
    instead of jittering with per-frame depth noise. A frame where either stage fails (footprint
    or contact over sky, off the image, hidden) gives no height; a coarse failure is reported
    in that frame's label as ``placement_error``. The contact residual [px] of each frame at
    the track's level is reported in its label. Then composite, refine (if ``refiner``) and
    label."""
    import time

    from editors import AssetInstance, place_on_ground, refine_placement
    from editors.placement import Placement
    from mirage_env.envs.traffic import label_dict

    seconds = {"align": 0.0, "composite": 0.0, "refine": 0.0}
    count = rgb.shape[0]
    K = torch.as_tensor(trajectory.intrinsics, dtype=torch.float32).expand(count, 3, 3)
    poses = torch.as_tensor(trajectory.cam_to_world, dtype=torch.float32)
    clock = time.perf_counter()
    instances, residuals, failures = [], [], []
    for asset, track in zip(assets, tracks):
        levels, track_residuals, track_failures = [], [], [None] * count
        for t in range(count):
            x, y, yaw = track[t]
            try:
                placed = place_on_ground(asset, x, y, yaw, depth[t:t + 1], K[t:t + 1], poses[t:t + 1])
            except ValueError as error:  # no surface under the footprint in this frame: no level from it
                track_failures[t] = f"coarse placement: {error}"
                continue
            try:
                levels.append(refine_placement(asset, placed, depth[t:t + 1], K[t:t + 1], poses[t:t + 1]).placement.z)
            except ValueError:  # contact out of view or over sky in this frame
                pass
        level = float(np.median(levels)) if levels else 0.0  # never in view: the map's ground
        pose = np.concatenate([track[:, :2], np.full((count, 1), level), track[:, 2:]], 1)
        for t in range(count):
            try:
                fine = refine_placement(asset, Placement(*pose[t]), depth[t:t + 1], K[t:t + 1], poses[t:t + 1])
                track_residuals.append(fine.initial_residual_px)
            except ValueError:
                track_residuals.append(None)
        residuals.append(track_residuals)
        failures.append(track_failures)
        instances.append(AssetInstance(asset, first_id + len(instances), torch.tensor(pose, dtype=torch.float32)))
    seconds["align"] = time.perf_counter() - clock
    clock = time.perf_counter()
    frames = rgb.permute(0, 3, 1, 2).float() / 255
    out = composite(frames, depth, K, poses, instances)
    seconds["composite"] = time.perf_counter() - clock
    mask = out.instance >= 0
    refined = out.rgb
    if refiner is not None:
        clock = time.perf_counter()
        refined = refiner.refine_clip(out.rgb, mask)
        seconds["refine"] = time.perf_counter() - clock

    def as_uint8(x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 2, 3, 1) * 255 + 0.5).clamp(0, 255).to(torch.uint8)

    labels = [[label_dict(label, residuals[i][t], failures[i][t]) for i, label in enumerate(out.labels[t])]
              for t in range(count)]
    ids = torch.tensor([i.track_id for i in instances] + [-1], dtype=torch.int16)
    return EditResult(rgb=as_uint8(refined), naive=as_uint8(out.rgb), labels=labels, instance=ids[out.instance[:, 0]],
                      dynamic=out.dynamic, seconds=seconds)
