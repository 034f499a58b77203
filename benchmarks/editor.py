"""Asset editor: refiner vs naive paste, temporal jitter, 2D alignment residual, time per frame.

Quality: clips from held-out procedural towns (never trained on) rendered like the refiner's
training pairs (:mod:`mirage_env.editor_data`): the naive composite and the refined frame
against the ground truth with the assets rendered in the scene (same contact shadow), PSNR over
the edited region (asset masks, pasted and true, grown by the refiner's band) and SSIM over the
same pixels. Two settings: "plain", the ground-truth renderer's own look, and
"world_model_look", where the scene and the target get a random frame look (blur, colour gain,
gamma; ``Look.random`` with the training config, seed 7, one look per clip) that the pasted
asset lacks. ``Look.random`` leaves ``plain_fraction`` = 0.25 of the samples without a look, so
about a quarter of the "world_model_look" clips (4 of the 16 clips of the default run) are
plain frames too. Frames are refined in order, each with the previous frame's state, as in a
stream; the scores are over every frame but a clip's first.

Placement: `mirage edit`'s pipeline on expert drives through held-out towns with random traffic
(4 vehicles, 2 pedestrians), given the exact depth or a noisy one (per-8x8-token
multiplicative noise of 15 %, like the world model's estimated depth). Jitter: per track, over
the frames where the asset is in view, at most 2 % occluded and off the image border (tracks
with at least 4 such frames), the norm of the per-axis standard deviations of the 2D box
centre's offset from the projection of the true 3D box centre [px], with the track's ground
level chosen once per clip (ours) or per frame (the fine alignment applied frame by frame). Residual:
each label's ``alignment_residual_px``, the ground-contact disagreement [px] of the asset as
drawn, at its track's clip-wide ground level (no per-frame shift applied): the mean over the
contact points that land on pixels with depth, leaving out those that disagree with the best
common shift by more than 1 px and 3x the median (occluded ones, kerbs); mean and median over
the frames and tracks where any contact point lands on depth. Time: milliseconds per frame of
alignment, compositing and refinement at the clip size, on one CPU thread (exact and noisy
depth runs together).

    python benchmarks/editor.py [--towns 2] [--clips 8] [--out benchmarks/results/editor.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from editors import AssetInstance, composite, load_refiner, refine_placement
from editors.placement import Placement
from editors.refiner import edit_region
from editors.refiner_training import Look, RefinerTrainingConfig, pair_batch
from mirage_env.editor_data import PairConfig, clip_tracks, demo_clip, edit_clip, render_pair_clips
from mirage_env.towns import HELDOUT_SEEDS
from mirage_env.visualize import contact_sheet
from world_model.camera import project_points
from world_model.metrics import psnr, ssim


def quality(refiner, seeds, clips: int) -> tuple[dict, list]:
    pairs = [render_pair_clips(seed, PairConfig(clips_per_town=clips), allow_heldout=True) for seed in seeds]
    pairs = {key: torch.cat([p[key] for p in pairs]) for key in pairs[0] if key != "K"}
    count, frames = pairs["background"].shape[:2]
    band = refiner.config.band_px
    results, sheet = {}, []
    for name, look in (("plain", None), ("world_model_look", Look.random(count, RefinerTrainingConfig(),
                                                                      torch.Generator().manual_seed(7)))):
        clip = torch.arange(count)
        batches = [pair_batch(pairs, clip, torch.full((count,), t), look) for t in range(frames)]
        rgb = torch.stack([b[0] for b in batches], 1)  # (N, T, 3, H, W)
        mask = torch.stack([b[1] for b in batches], 1)
        with torch.no_grad():
            refined = torch.stack([refiner.refine_clip(rgb[n], mask[n]) for n in range(count)])
        scores = {"naive": {"psnr": [], "ssim": []}, "refined": {"psnr": [], "ssim": []}}
        for t in range(1, frames):
            target, region = batches[t][2], edit_region(batches[t][3], band) > 0
            for key, images in (("naive", rgb[:, t]), ("refined", refined[:, t])):
                scores[key]["psnr"].append(psnr(images, target, region))
                scores[key]["ssim"].append(ssim(images, target, region))
        results[name] = {key: {metric: round(float(torch.cat(v).nanmean()), 3 if metric == "ssim" else 2)
                               for metric, v in value.items()} for key, value in scores.items()}
        # Clips whose assets cover 3-30 % of the frame: in view, not filling it.
        fraction = mask[:, 1].flatten(1).float().mean(1)
        order = torch.where((fraction > 0.03) & (fraction < 0.3), fraction, fraction - 1).argsort(descending=True)
        look_name = "GT look" if look is None else "WM look"
        sheet += [[_as_uint8(rgb[n, 1]), _as_uint8(refined[n, 1]), _as_uint8(batches[1][2][n]), look_name]
                  for n in order[:3]]
    results["clips"], results["frames_scored"] = count, count * (frames - 1)
    return results, sheet


def _as_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()


def noisy_depth(depth: torch.Tensor, generator: torch.Generator, sigma: float = 0.15) -> torch.Tensor:
    """``depth`` (T, 1, H, W) times per-8x8-token noise ``1 + N(0, sigma)`` (sky stays 0)."""
    frames, _, height, width = depth.shape
    noise = 1 + sigma * torch.randn(frames, 1, height // 8, width // 8, generator=generator)
    return depth * torch.nn.functional.interpolate(noise, size=(height, width), mode="nearest")


def per_frame_levels(trajectory, depth, assets, tracks):
    """Instances whose height is the fine alignment of each frame on its own (no clip median)."""
    count = depth.shape[0]
    K = torch.as_tensor(trajectory.intrinsics, dtype=torch.float32)[None]
    poses = torch.as_tensor(trajectory.cam_to_world, dtype=torch.float32)
    instances = []
    for i, (asset, track) in enumerate(zip(assets, tracks)):
        rows = []
        for t in range(count):
            x, y, yaw = track[t]
            try:
                z = refine_placement(asset, Placement(x, y, 0.0, yaw), depth[t:t + 1], K, poses[t:t + 1]).placement.z
            except ValueError:
                z = 0.0
            rows.append([x, y, z, yaw])
        instances.append(AssetInstance(asset, i, torch.tensor(rows, dtype=torch.float32)))
    return instances


def box_jitter(trajectory, labels_per_frame, tracks, assets, size: int) -> list[float]:
    """Per track: std over frames [px] of (2D box centre - projected true 3D box centre)."""
    K = torch.as_tensor(trajectory.intrinsics, dtype=torch.float32)[None]
    poses = torch.as_tensor(trajectory.cam_to_world, dtype=torch.float32)
    out = []
    for i, (asset, track) in enumerate(zip(assets, tracks)):
        offsets = []
        for t, labels in enumerate(labels_per_frame):
            label = labels[i]
            box = label["box_2d"]
            if box is None or label["occlusion"] > 0.02 or min(box[:2]) <= 0 or max(box[2:]) >= size:
                continue
            x, y, yaw = track[t]
            centre = Placement(x, y, 0.0, yaw).to_world(((asset.lower + asset.upper) / 2)[None])
            uv, z = project_points(torch.tensor(centre, dtype=torch.float32)[None], K, poses[t:t + 1])
            if z[0, 0] <= 0:
                continue
            offsets.append([(box[0] + box[2]) / 2 - float(uv[0, 0, 0]), (box[1] + box[3]) / 2 - float(uv[0, 0, 1])])
        if len(offsets) >= 4:
            out.append(float(np.linalg.norm(np.std(np.array(offsets), axis=0))))
    return out


def placement(refiner, seeds, frames: int, size: int) -> dict:
    generator = torch.Generator().manual_seed(3)
    jitter = {"exact_depth": [], "noisy_depth_clip_level": [], "noisy_depth_per_frame_level": []}
    residuals = {"exact_depth": [], "noisy_depth": []}
    seconds = {"align": 0.0, "composite": 0.0, "refine": 0.0}
    total_frames = 0
    for seed in seeds:
        trajectory, rgb, depth = demo_clip(f"town:{seed}", seed=int(seed), frames=frames, size=size)
        assets, tracks = clip_tracks(trajectory, f"town:{seed}", int(seed), vehicles=4, pedestrians=2, explicit=[])
        noisy = noisy_depth(depth, generator)
        for name, frame_depth in (("exact_depth", depth), ("noisy_depth", noisy)):
            result = edit_clip(trajectory, rgb, frame_depth, assets, tracks, refiner)
            key = "exact_depth" if name == "exact_depth" else "noisy_depth_clip_level"
            jitter[key] += box_jitter(trajectory, result.labels, tracks, assets, size)
            residuals[name] += [a["alignment_residual_px"] for f in result.labels for a in f
                                if a["alignment_residual_px"] is not None]
            for stage, value in result.seconds.items():
                seconds[stage] += value
            total_frames += frames
        K = torch.as_tensor(trajectory.intrinsics, dtype=torch.float32).expand(frames, 3, 3)
        poses = torch.as_tensor(trajectory.cam_to_world, dtype=torch.float32)
        out = composite(rgb.permute(0, 3, 1, 2).float() / 255, noisy, K, poses,
                        per_frame_levels(trajectory, noisy, assets, tracks))
        labels = [[{"box_2d": label.box_2d and list(label.box_2d), "occlusion": label.occlusion} for label in frame]
                  for frame in out.labels]
        jitter["noisy_depth_per_frame_level"] += box_jitter(trajectory, labels, tracks, assets, size)
    return {
        "jitter_px": {key: round(float(np.mean(v)), 3) if v else None for key, v in jitter.items()},
        "tracks_measured": {key: len(v) for key, v in jitter.items()},
        "alignment_residual_px": {key: {"mean": round(float(np.mean(v)), 3), "median": round(float(np.median(v)), 3)}
                                  for key, v in residuals.items()},
        "ms_per_frame": {stage: round(1000 * value / total_frames, 2) for stage, value in seconds.items()},
        "clip_size_px": size,
        "frames_per_clip": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towns", type=int, default=2, help="held-out towns for each part")
    parser.add_argument("--clips", type=int, default=8, help="quality clips per town")
    parser.add_argument("--frames", type=int, default=30, help="frames per placement clip")
    parser.add_argument("--size", type=int, default=128, help="[px] placement clips")
    parser.add_argument("--refiner", default=None, help="refiner folder (default: the shipped one)")
    parser.add_argument("--out", default="benchmarks/results/editor.json")
    parser.add_argument("--sheet", default="docs/editor_contact_sheet.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    refiner = load_refiner(args.refiner)
    seeds = HELDOUT_SEEDS[: args.towns]
    started = time.perf_counter()
    scores, sheet_rows = quality(refiner, seeds, args.clips)
    placed = placement(refiner, seeds, args.frames, args.size)
    report = {"quality": scores, "placement": placed, "held_out_towns": list(seeds),
              "wall_time_s": round(time.perf_counter() - started, 1), "machine": platform.processor() or platform.machine(),
              "threads": 1, "load_average_1min": round(os.getloadavg()[0], 2)}  # timings scale with other work
    write_report(report, args.out)
    frames = np.stack([image.repeat(2, 0).repeat(2, 1) for row in sheet_rows for image in row[:3]])
    captions = [f"{caption}, {row[3]}" for row in sheet_rows for caption in ("naive", "refined", "truth")]
    Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(frames, captions, columns=3,
                  title="Held-out towns: naive paste | refined | truth").save(args.sheet)
    print(f"wrote {args.sheet}")
    print(f"{'look':<18}{'':>8}{'PSNR dB':>10}{'SSIM':>8}")
    for look in ("plain", "world_model_look"):
        for key in ("naive", "refined"):
            print(f"{look:<18}{key:>8}{scores[look][key]['psnr']:>10.2f}{scores[look][key]['ssim']:>8.3f}")
    print("jitter px:", placed["jitter_px"])
    print("alignment residual px:", placed["alignment_residual_px"])
    print("ms per frame:", placed["ms_per_frame"])


if __name__ == "__main__":
    main()
