"""World-model fidelity: generated vs ground-truth frames, latent cache vs pixel memory vs none.

On held-out maps (CARLA's Town01 and held-out procedural towns), the expert drives a closed
loop twice, so every place is left and come back to. The world model starts from the first
ground-truth frame (with depth, as the env gives it) and renders every later pose in per-step
mode, conditioned on the map's road layout; the same backbone and seeds run with each memory.
Long rollouts are chaotic (a change in the last bit, such as another thread count, sends them
elsewhere), so each memory drives every route with ``--seeds`` noise seeds and the figures are
means over them; the per-seed revisit PSNR is in the JSON.
Reported per memory, over all frames and over the second lap (the revisits):

- PSNR / SSIM against ground truth on the whole frame, on the pixels the memory covered, and
  on the pixels seen in the start frame (``seen``: their surface, by ground-truth geometry, was
  in view and not occluded there), in frames where those are at least 2 % of the image. The
  start frame is the only thing the world model is shown, so ``seen`` pixels are where a memory
  can match the truth; ``covered`` also counts what the model generated and stored itself.
  Beside them, a ceiling per route: the true frame with its seen pixels replaced by the start
  frame warped there with ground-truth depth, through the backbone's autoencoder (a perfect
  memory seen through this autoencoder), that warp alone (``warped_psnr_seen``) and the start
  frame's latents moved to the true place of their surface, decoded (``latent_warp_psnr_seen``:
  a perfect memory of latent tokens);
- revisit PSNR on the second lap, whole frame and seen pixels;
- revisit consistency: PSNR between a second-lap frame and the first-lap frame nearest in pose
  (within 0.5 m and 5 deg), generated vs generated;
- sharpness: variance of the Laplacian of generated / ground-truth frames (1 = as sharp);
- colour shift: distance between the mean colours of generated and true frames, in 8-bit levels
  (the start frame shown again: ``colour_shift_start_frame_again`` per route);
- beside them, per route, the true frames encoded and decoded (``autoencoder``: PSNR, SSIM,
  sharpness, colour shift), how the truth itself looks through the backbone's autoencoder;
- milliseconds per generated frame;
- how long a rollout tracks the truth: whole-frame PSNR by time since the start frame
  (``psnr_by_horizon``, in windows of seconds), beside a trivial baseline that shows the start
  frame again, and the same as a curve for the first route.

Writes a table, ``benchmarks/results/fidelity.json``, a side-by-side video (ground truth |
latent | pixel | none) ``docs/fidelity.mp4``, a contact sheet ``docs/fidelity_contact_sheet.png``,
the PSNR-over-time curve ``docs/fidelity_horizon.png`` and the ceilings beside the first memory's
frames on frames with seen pixels ``docs/fidelity_ceilings.png``, all of the first route.

    python benchmarks/fidelity.py [--model world_model/weights/tiny] [--maps Town01 town:1000000]
                                  [--seeds 3] [--first-seed 0] [--reencode 0.25] [--anchor 0.5]
                                  [--min-confidence 0.5] [--unsure-depth-penalty 20]
                                  [--antialias 1]
                                  [--precision float32]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from mirage_env.expert import drive_route
from mirage_env.layout import LayoutRasteriser
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import Route, load_road_map
from mirage_env.scene import dress_scene
from mirage_env.vehicle import CameraMount
from mirage_env.visualize import contact_sheet, write_video
from world_model.camera import project_points, unproject_depth
from world_model.metrics import colour_shift, laplacian_variance, psnr, ssim
from world_model.latent_cache import LatentCacheConfig
from world_model.pretrained import load_default_backbone
from world_model.backbone import PRECISIONS
from world_model.world_model import MEMORIES, WorldModel, WorldModelConfig

REVISIT_MAX_M, REVISIT_MAX_DEG = 0.5, 5.0
SEEN_MIN_SHARE = 0.02  # frames with fewer seen pixels are left out of the seen metrics
SEEN_DEPTH_TOLERANCE = 0.03  # relative depth difference within which a start-frame pixel is the same surface
HORIZONS_S = (0, 2, 5, 15, 60, math.inf)  # [s] edges of the psnr_by_horizon windows
TITLES = {"latent": "latent cache", "pixel": "pixel memory", "none": "no memory"}


def two_laps(road_map, seed: int, min_length_m: float) -> tuple[Route, float]:
    lap = road_map.loop_route(np.random.default_rng(seed), min_length_m=min_length_m)
    points = np.concatenate([lap.points[:-1], lap.points])
    yaw = np.concatenate([lap.yaw[:-1], lap.yaw])
    return Route(points, yaw, np.zeros(len(points), dtype=bool), road_map.name), lap.length


def revisit_pairs(poses: torch.Tensor, second_lap: np.ndarray) -> list[tuple[int, int]]:
    """(second-lap frame, nearest first-lap frame) pairs within the revisit tolerances."""
    position = poses[:, :3, 3]
    forward = poses[:, :3, 2]
    first = np.flatnonzero(~second_lap)
    pairs = []
    for frame in np.flatnonzero(second_lap):
        distance = (position[first] - position[frame]).norm(dim=1)
        nearest = int(distance.argmin())
        angle = math.degrees(math.acos(float((forward[first[nearest]] @ forward[frame]).clamp(-1, 1))))
        if float(distance[nearest]) <= REVISIT_MAX_M and angle <= REVISIT_MAX_DEG:
            pairs.append((int(frame), int(first[nearest])))
    return pairs


def start_frame_projection(depth: torch.Tensor, K: torch.Tensor, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where every pixel's surface (``depth`` (N, 1, H, W) of frames at ``poses``) lands in frame
    0: ``uv`` (N, H*W, 2) and its depth there (N, H*W)."""
    count = depth.shape[0]
    points = unproject_depth(depth, K, poses).view(count, -1, 3)
    return project_points(points, K[:1].expand(count, 3, 3), poses[:1].expand(count, 4, 4))


def seen_in_start_frame(depth: torch.Tensor, uv: torch.Tensor, z: torch.Tensor, max_range_m: float) -> torch.Tensor:
    """(N, 1, H, W) bool: pixels of frame i whose surface (``depth`` (N, 1, H, W) of each frame,
    0 = sky; ``uv``, ``z`` from :func:`start_frame_projection`) was visible in frame 0: it
    projects inside frame 0, within ``max_range_m`` of it, at the depth frame 0 has there (within
    SEEN_DEPTH_TOLERANCE plus 5 cm; else it was occluded)."""
    count, _, height, width = depth.shape
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & (z > 0)
    start_depth = depth[0, 0][v.clamp(0, height - 1), u.clamp(0, width - 1)]
    same_surface = (z - start_depth).abs() <= SEEN_DEPTH_TOLERANCE * z + 0.05
    seen = inside & same_surface & (start_depth > 0) & (start_depth <= max_range_m) & (depth.view(count, -1) > 0)
    return seen.view(count, 1, height, width)


def latent_warp(start_latents: torch.Tensor, uv: torch.Tensor, seen: torch.Tensor,
                downsample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The start frame's latents (1, C, h, w) moved into every frame by ground-truth geometry:
    each latent cell whose centre pixel is ``seen`` takes the start-frame cell its surface lay in
    (``uv`` of :func:`start_frame_projection`). Returns the latents (N, C, h, w), zero elsewhere,
    and which cells took one (N, 1, h, w): a perfect latent memory of the start frame."""
    count, _, height, width = seen.shape
    rows, cols = start_latents.shape[-2:]
    centre = downsample // 2
    at_centre = uv.view(count, height, width, 2)[:, centre::downsample, centre::downsample]
    col = (at_centre[..., 0] / downsample).floor().long().clamp(0, cols - 1)
    row = (at_centre[..., 1] / downsample).floor().long().clamp(0, rows - 1)
    taken = seen[:, :, centre::downsample, centre::downsample]
    moved = start_latents[0][:, row, col].permute(1, 0, 2, 3)  # (N, C, h, w)
    return torch.where(taken, moved, torch.zeros_like(moved)), taken


def seen_ceiling(backbone, truth_rgb: torch.Tensor, uv: torch.Tensor,
                 seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three ceilings for a memory of the start frame, by ground-truth geometry (``uv`` of
    :func:`start_frame_projection`), and the true frames through the autoencoder:

    - the true frames with their ``seen`` pixels replaced by the start frame warped there
      (bilinear): the best such a memory could show at this resolution;
    - those encoded and decoded by ``backbone``: the best through this autoencoder;
    - the true frames' latents with the cells the start frame saw replaced by its latents
      moved there (:func:`latent_warp`), decoded: the best a memory of latent tokens could show,
      had it every token of the start frame in the right place and the rest of the frame right;
    - the true frames encoded and decoded: whatever generates latents is seen through this.
    """
    count, _, height, width = truth_rgb.shape
    grid = torch.stack([uv[..., 0] / width * 2 - 1, uv[..., 1] / height * 2 - 1], dim=-1).view(count, height, width, 2)
    warped = torch.where(seen, F.grid_sample(truth_rgb[:1].expand(count, -1, -1, -1), grid, align_corners=False),
                         truth_rgb)
    decoded = torch.cat([backbone.decode(backbone.encode(part)).clamp(0, 1) for part in warped.split(64)])
    moved, taken = latent_warp(backbone.encode(truth_rgb[:1]), uv, seen, backbone.downsample)
    latents = torch.cat([backbone.encode(part) for part in truth_rgb.split(64)])
    mixed = torch.where(taken, moved, latents)
    latent_decoded = torch.cat([backbone.decode(part).clamp(0, 1) for part in mixed.split(64)])
    reconstructed = torch.cat([backbone.decode(part).clamp(0, 1) for part in latents.split(64)])
    return warped, decoded, latent_decoded, reconstructed


def ceiling_rows(truth_rgb: torch.Tensor, seen: torch.Tensor, panels: list[torch.Tensor]) -> np.ndarray:
    """Rows (N, H, W * (1 + len(panels)), 3) uint8: the truth (N, 3, H, W) with the pixels the
    start frame did not see (``seen`` (N, 1, H, W)) dimmed, then each of ``panels`` (N, 3, H, W),
    all in [0, 1]."""
    row = torch.cat([truth_rgb * torch.where(seen, 1.0, 0.3), *panels], dim=3)
    return (row.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def run_route(backbone, spec: str, seed: int, args) -> tuple[dict, np.ndarray, dict[str, np.ndarray], tuple]:
    """The route's summary, its side-by-side video (first seed), its PSNR curves per frame
    (``seconds`` and one per memory, means over seeds, plus the start frame shown again) and
    the ceiling sheet's rows with their frame numbers (see :func:`ceiling_rows`; the last panel is
    the first memory's frames, first seed)."""
    road_map = load_road_map(spec)
    scene = dress_scene(road_map, seed)
    route, lap_length = two_laps(road_map, seed, args.loop_min_m)
    size = args.size
    mount = CameraMount(width=size, height=size)
    drive = drive_route(route, mount, max_steps=20_000)
    ego, seconds = drive.ego[:: args.stride], drive.timestamps[:: args.stride]
    travelled = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ego[:, :2], axis=0), axis=1))])
    second_lap = travelled >= lap_length
    poses = mount.poses(ego)
    K = mount.intrinsics().expand(len(poses), 3, 3)
    truth = GroundTruthRenderer(scene, antialias=args.antialias).render(poses, K, size, size)
    truth_rgb = truth.rgb.permute(0, 3, 1, 2).float() / 255
    layout = LayoutRasteriser(scene.ground)(poses, K, size, size, backbone.downsample)
    pairs = revisit_pairs(poses, second_lap)
    uv, z = start_frame_projection(truth.depth, K, poses)
    seen = seen_in_start_frame(truth.depth, uv, z, LatentCacheConfig.max_range_m)
    warped, ceiling, latent_ceiling, reconstructed = seen_ceiling(backbone, truth_rgb, uv, seen)
    seen_share = seen.flatten(1).float().mean(1)
    with_seen = seen_share >= SEEN_MIN_SHARE
    with_seen[0] = False  # the start frame itself is given, not generated
    lap2 = torch.as_tensor(second_lap)

    start_again = psnr(truth_rgb[:1].expand_as(truth_rgb), truth_rgb).numpy()  # the trivial baseline
    results, videos = {}, {"ground truth": truth.rgb.numpy()}
    curves = {"start frame again": start_again}
    for memory in args.memories:
        runs, seed_curves = [], []
        for draw in args.noise_seeds:  # long rollouts are chaotic: average over noise seeds
            config = WorldModelConfig(memory=memory, reencode=args.reencode, anchor=args.anchor,
                                      cache=LatentCacheConfig(min_confidence=args.min_confidence,
                                                              unsure_depth_penalty=args.unsure_depth_penalty))
            metrics, frames, frame_psnr = _rollout(backbone, config, seed * 1000 + draw, truth, truth_rgb, poses, K,
                                                   layout, lap2, pairs, seen, with_seen, road_map.name, size)
            runs.append(metrics)
            seed_curves.append(frame_psnr)
            if draw == args.noise_seeds[0]:
                videos[memory] = frames
        curves[memory] = np.mean(seed_curves, axis=0)
        results[memory] = {key: _mean([run[key] for run in runs]) for key in runs[0]}
        results[memory]["revisit_psnr_per_seed"] = [round(run["revisit_psnr"], 3) for run in runs]
    summary = {"map": road_map.name, "frames": len(poses), "lap_length_m": round(lap_length, 1),
               "revisit_pairs": len(pairs), "frames_with_seen": int(with_seen.sum()),
               "second_lap_frames_with_seen": int((with_seen & lap2).sum()),
               "seen_share": _masked_mean(seen_share, with_seen),
               "colour_shift_start_frame_again": float(colour_shift(truth_rgb[:1].expand_as(truth_rgb),
                                                                    truth_rgb)[1:].mean()),
               "seen_ceiling": {"warped_psnr_seen": _masked_mean(psnr(warped, truth_rgb, seen), with_seen),
                                "psnr_seen": _masked_mean(psnr(ceiling, truth_rgb, seen), with_seen),
                                "ssim_seen": _masked_mean(ssim(ceiling, truth_rgb, seen), with_seen),
                                "latent_warp_psnr_seen": _masked_mean(psnr(latent_ceiling, truth_rgb, seen), with_seen),
                                "latent_warp_ssim_seen": _masked_mean(ssim(latent_ceiling, truth_rgb, seen), with_seen)},
               "autoencoder": reconstruction_metrics(reconstructed[1:], truth_rgb[1:]),
               "memories": results,
               "psnr_by_horizon": {name: by_horizon(curve, seconds) for name, curve in curves.items()}}
    side_by_side = np.concatenate([videos[name] for name in ("ground truth", *args.memories)], axis=2)
    candidates = torch.nonzero(with_seen)[:, 0]
    chosen = candidates[torch.linspace(0, len(candidates) - 1, min(6, len(candidates))).round().long()]
    generated = torch.as_tensor(videos[args.memories[0]][chosen.numpy()]).permute(0, 3, 1, 2).float() / 255
    rows = ceiling_rows(truth_rgb[chosen], seen[chosen], [warped[chosen], ceiling[chosen], latent_ceiling[chosen],
                                                          generated])
    return summary, side_by_side, {"seconds": seconds, **curves}, (rows, chosen.tolist())


def reconstruction_metrics(reconstructed: torch.Tensor, truth_rgb: torch.Tensor) -> dict[str, float]:
    """The true frames through the autoencoder against the truth: PSNR, SSIM, the sharpness ratio
    and the colour shift (each a mean over frames, as for the memories), what generated latents
    are seen through."""
    return {"psnr": float(psnr(reconstructed, truth_rgb).mean()), "ssim": float(ssim(reconstructed, truth_rgb).mean()),
            "sharpness_ratio": float(sharpness_ratio(reconstructed, truth_rgb).mean()),
            "colour_shift": float(colour_shift(reconstructed, truth_rgb).mean())}


def sharpness_ratio(frames: torch.Tensor, truth_rgb: torch.Tensor) -> torch.Tensor:
    """Per frame, the variance of the Laplacian of ``frames`` over that of the truth (1 = as sharp)."""
    return laplacian_variance(frames) / laplacian_variance(truth_rgb).clamp(min=1e-8)


def by_horizon(frame_psnr: np.ndarray, seconds: np.ndarray) -> dict[str, float | None]:
    """Mean PSNR of the generated frames (not the start frame) in each window of HORIZONS_S."""
    windows = {}
    for low, high in zip(HORIZONS_S[:-1], HORIZONS_S[1:]):
        chosen = (seconds > low) & (seconds <= high)
        label = f"{low}-{high} s" if math.isfinite(high) else f"over {low} s"
        windows[label] = round(float(frame_psnr[chosen].mean()), 3) if chosen.any() else None
    return windows


def plot_horizon(map_name: str, curves: dict[str, np.ndarray], path: str) -> None:
    """PSNR against ground truth over time since the start frame (``curves`` of
    :func:`run_route`), moving means over 1 s (fewer frames at the ends)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = curves["seconds"][1:]  # frame 0 is the given start frame
    kernel = np.ones(max(1, int(round(1.0 / max(seconds[0], 1e-6)))))
    frames_averaged = np.convolve(np.ones(len(seconds)), kernel, mode="same")
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for name, values in curves.items():
        if name == "seconds":
            continue
        smooth = np.convolve(values[1:], kernel, mode="same") / frames_averaged
        ax.plot(seconds, smooth, label=TITLES.get(name, name), linestyle="--" if name not in TITLES else "-")
    ax.set_xscale("log")
    ax.set_xlabel("seconds since the start frame")
    ax.set_ylabel("PSNR vs ground truth [dB]")
    ax.set_title(f"{map_name}: how long a rollout tracks the truth")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _masked_mean(values: torch.Tensor, chosen: torch.Tensor) -> float | None:
    return float(values[chosen].mean()) if chosen.any() else None


def _mean(values: list) -> float | None:
    values = [value for value in values if value is not None and not math.isnan(value)]
    return float(np.mean(values)) if values else None


def _rollout(backbone, config: WorldModelConfig, seed: int, truth, truth_rgb, poses, K, layout, lap2, pairs,
             seen, with_seen, name: str, size: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """One drive of the world model configured by ``config`` with noise seed ``seed``: its metrics,
    frames and PSNR per frame."""
    model = WorldModel(backbone, config=config)
    model.reset(truth.rgb[:1], K[:1], poses[:1], depth=truth.depth[:1])
    generator = torch.Generator().manual_seed(seed)
    grid = size // backbone.downsample
    frames, valid = [truth.rgb[:1]], [torch.ones(1, grid, grid, dtype=torch.bool)]
    start = time.perf_counter()
    for i in tqdm(range(1, len(poses)), desc=f"{name} {config.memory} seed {seed}", unit="frame", leave=False):
        out = model.render(poses[i : i + 1], K[:1], layout=layout[i : i + 1, None], generator=generator)
        frames.append(out.rgb[:, 0])
        valid.append(out.valid[:, 0, 0])
    ms_per_frame = 1000 * (time.perf_counter() - start) / (len(poses) - 1)
    rgb = torch.cat(frames).permute(0, 3, 1, 2).float() / 255
    covered = F.interpolate(torch.cat(valid)[:, None].float(), size=(size, size), mode="nearest") > 0
    later = slice(1, None)  # frame 0 is the given start frame
    frame_psnr, frame_ssim = psnr(rgb, truth_rgb), ssim(rgb, truth_rgb)
    covered_psnr, covered_ssim = psnr(rgb, truth_rgb, covered), ssim(rgb, truth_rgb, covered)
    seen_psnr, seen_ssim = psnr(rgb, truth_rgb, seen), ssim(rgb, truth_rgb, seen)
    sharpness = sharpness_ratio(rgb, truth_rgb)
    consistency = [float(psnr(rgb[a : a + 1], rgb[b : b + 1])) for a, b in pairs]
    metrics = {
        "psnr": float(frame_psnr[later].mean()),
        "ssim": float(frame_ssim[later].mean()),
        "psnr_covered": float(covered_psnr[later].nanmean()),
        "ssim_covered": float(covered_ssim[later].nanmean()),
        "coverage": float(covered[later].float().mean()),
        "psnr_seen": _masked_mean(seen_psnr, with_seen),
        "ssim_seen": _masked_mean(seen_ssim, with_seen),
        "revisit_psnr": float(frame_psnr[lap2].mean()),
        "revisit_ssim": float(frame_ssim[lap2].mean()),
        "revisit_psnr_seen": _masked_mean(seen_psnr, with_seen & lap2),
        "revisit_consistency_psnr": float(np.mean(consistency)) if consistency else None,
        "sharpness_ratio": float(sharpness[later].mean()),
        "colour_shift": float(colour_shift(rgb, truth_rgb)[later].mean()),
        "ms_per_frame": ms_per_frame,
    }
    return metrics, torch.cat(frames).numpy(), frame_psnr.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--maps", nargs="+", default=["Town01", "town:1000000", "town:1000001"])
    parser.add_argument("--size", type=int, default=128, help="[px] square frames the model generates")
    parser.add_argument("--loop-min-m", type=float, default=120.0, help="[m] shortest loop to drive twice")
    parser.add_argument("--stride", type=int, default=2, help="expert steps (0.1 s) per generated frame")
    parser.add_argument("--memories", nargs="+", default=list(MEMORIES), choices=MEMORIES,
                        help="memories to compare (the gains over none and pixel need those two)")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds per route and memory (metrics are means)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first noise seed (e.g. --first-seed 3 --seeds 3: three more seeds than the default)")
    parser.add_argument("--reencode", type=float, default=WorldModelConfig.reencode,
                        help="weight of re-encoded frames in memory and context (see world_model.world_model)")
    parser.add_argument("--anchor", type=float, default=WorldModelConfig.anchor,
                        help="pull of the start frame's read on generated latents (see world_model.world_model)")
    parser.add_argument("--min-confidence", type=float, default=LatentCacheConfig.min_confidence,
                        help="the latent cache's min_confidence (see world_model.latent_cache)")
    parser.add_argument("--unsure-depth-penalty", type=float, default=LatentCacheConfig.unsure_depth_penalty,
                        help="the latent cache's unsure_depth_penalty (see world_model.latent_cache)")
    parser.add_argument("--antialias", type=int, default=1,
                        help="colour rays per pixel side of the ground truth, start frame included "
                             "(see mirage_env.renderer; 1: one ray through each pixel centre)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="precision of the backbone's networks (see world_model.tiny_backbone)")
    parser.add_argument("--out", default="benchmarks/results/fidelity.json")
    parser.add_argument("--video", default="docs/fidelity.mp4")
    parser.add_argument("--sheet", default="docs/fidelity_contact_sheet.png")
    parser.add_argument("--horizon-plot", default="docs/fidelity_horizon.png")
    parser.add_argument("--ceilings-sheet", default="docs/fidelity_ceilings.png",
                        help="frames with seen pixels beside the three ceilings and the first memory")
    args = parser.parse_args()
    if args.seeds < 1 or args.first_seed < 0:
        parser.error("--seeds must be >= 1 and --first-seed >= 0")
    args.noise_seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    backbone = load_default_backbone(args.model, precision=args.precision)
    routes, first_video, first_curves, first_ceilings = [], None, None, None
    for index, spec in enumerate(args.maps):
        summary, video, curves, ceilings = run_route(backbone, spec, seed=index, args=args)
        routes.append(summary)
        if first_video is None:  # the video, contact sheet and curve show the first route
            first_video, first_curves, first_ceilings = video, curves, ceilings

    def mean(memory: str, key: str) -> float:
        value = _mean([r["memories"][memory][key] for r in routes])
        return float("nan") if value is None else value

    keys = ("psnr", "ssim", "psnr_covered", "ssim_covered", "coverage", "psnr_seen", "ssim_seen", "revisit_psnr",
            "revisit_psnr_seen", "revisit_consistency_psnr", "sharpness_ratio", "colour_shift", "ms_per_frame")
    memories = args.memories
    overall = {memory: {key: round(mean(memory, key), 3) for key in keys} for memory in memories}

    def gain(other: str, key: str = "revisit_psnr") -> float | None:
        if "latent" not in overall or other not in overall:
            return None
        return round(overall["latent"][key] - overall[other][key], 2)

    ceiling = {key: round(_mean([r["seen_ceiling"][key] for r in routes]) or float("nan"), 3)
               for key in routes[0]["seen_ceiling"]}
    autoencoder = {key: round(_mean([r["autoencoder"][key] for r in routes]), 3) for key in routes[0]["autoencoder"]}

    report = {
        "benchmark": "fidelity",
        "model": args.model or "shipped default",
        "image_size": args.size,
        "reencode": args.reencode,
        "anchor": args.anchor,
        "min_confidence": args.min_confidence,
        "unsure_depth_penalty": args.unsure_depth_penalty,
        "antialias": args.antialias,
        "precision": args.precision,
        "stride_steps": args.stride,
        "noise_seeds": args.noise_seeds,
        "routes": routes,
        "mean": overall,
        "revisit_psnr_gain_over_none_db": gain("none"),
        "revisit_psnr_latent_minus_pixel_db": gain("pixel"),
        "revisit_psnr_seen_gain_over_none_db": gain("none", "revisit_psnr_seen"),
        "revisit_psnr_seen_latent_minus_pixel_db": gain("pixel", "revisit_psnr_seen"),
        "seen_ceiling": ceiling,
        "autoencoder": autoencoder,
    }
    print(f"\n{'':28}" + "".join(f"{m:>12}" for m in memories))
    for key in keys:
        print(f"{key:28}" + "".join(f"{overall[m][key]:>12.3f}" for m in memories))
    print(f"revisit PSNR gain over no memory: {report['revisit_psnr_gain_over_none_db']} dB; "
          f"latent - pixel: {report['revisit_psnr_latent_minus_pixel_db']} dB")
    print(f"on pixels seen in the start frame: gain over no memory {report['revisit_psnr_seen_gain_over_none_db']} dB, "
          f"latent - pixel {report['revisit_psnr_seen_latent_minus_pixel_db']} dB; ceiling (start frame warped "
          f"with true depth, through the autoencoder): {ceiling['psnr_seen']} dB, SSIM {ceiling['ssim_seen']} "
          f"({ceiling['warped_psnr_seen']} dB warped alone; its latents moved with true depth: "
          f"{ceiling['latent_warp_psnr_seen']} dB)")
    print(f"true frames through the autoencoder: PSNR {autoencoder['psnr']} dB, SSIM {autoencoder['ssim']}, "
          f"sharpness {autoencoder['sharpness_ratio']}, colour shift {autoencoder['colour_shift']} levels")
    print("colour shift of the start frame shown again: "
          + ", ".join(f"{r['map']} {r['colour_shift_start_frame_again']:.1f}" for r in routes) + " levels")
    write_report(report, args.out)
    write_video(args.video, first_video, fps=10.0 / args.stride, quality=5)  # 720 frames: 2 MB, not 10
    chosen = np.linspace(1, len(first_video) - 1, 8).round().astype(int)
    sheet = contact_sheet(first_video[chosen], [f"frame {i}" for i in chosen], columns=1,
                          title=f"{routes[0]['map']}: ground truth | " + " | ".join(TITLES[m] for m in memories))
    sheet.save(args.sheet)
    plot_horizon(routes[0]["map"], first_curves, args.horizon_plot)
    rows, chosen = first_ceilings
    contact_sheet(rows, [f"frame {i}" for i in chosen], columns=1,
                  title=f"{routes[0]['map']}: truth, unseen dimmed | start warped | through autoencoder | "
                        f"latents moved | {TITLES[memories[0]]}").save(args.ceilings_sheet)
    print(f"wrote {args.video}, {args.sheet}, {args.horizon_plot} and {args.ceilings_sheet}")


if __name__ == "__main__":
    main()
