"""Latent cache vs pixel-space memory on a closed loop through Town01, side by side.

The expert drives the same loop ``--laps`` times; every frame (128 x 128, ground-truth RGB and
depth from the renderer) is encoded with one VAE and written to both memories (the pixel
memory up to 1,000 frames: it grows without bound). Reported:

- per-step read time [ms] at the next 20 poses after 100 and 1,000 frames (best of 3 passes): the latent cache's
  projection vs the pixel memory's render + VAE encode;
- bytes held after 10, 100 and 1,000 frames;
- latent cache size at the end of lap 1 and lap ``--laps`` (growth should stay <= 1.2).

The VAE is a small diffusers ``AutoencoderKL`` (``--downsample`` 8 as in the design, 8 latent
channels) with random weights: timing and memory do not depend on what it learned. Writes a table to stdout,
``benchmarks/results/memory.json`` and the plot ``docs/memory_bytes.png``.

    python benchmarks/memory.py [--laps 10] [--size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from mirage_env.expert import drive_route  # noqa: E402
from mirage_env.renderer import GroundTruthRenderer  # noqa: E402
from mirage_env.road_map import RoadMap, Route  # noqa: E402
from mirage_env.scene import dress_scene  # noqa: E402
from mirage_env.vehicle import CameraMount  # noqa: E402
from world_model.latent_cache import LatentCache, LatentCacheConfig  # noqa: E402
from world_model.memory import MemoryFrame  # noqa: E402
from world_model.pixel_memory import PixelMemory  # noqa: E402

PIXEL_FRAMES = 1000
READ_STEPS = 20


def closed_loop(road_map: RoadMap, laps: int) -> tuple[Route, float]:
    """The shortest loop over 200 m (see :meth:`RoadMap.loop_route`) repeated ``laps`` times;
    returns the route and one lap's length [m]."""
    lap = road_map.loop_route(np.random.default_rng(0), min_length_m=200.0)
    points = np.concatenate([lap.points[:-1]] * laps + [lap.points[-1:]])
    yaw = np.concatenate([lap.yaw[:-1]] * laps + [lap.yaw[-1:]])
    route = Route(points, yaw, np.zeros(len(points), dtype=bool), road_map.name)
    return route, lap.length


def make_vae(device: str, downsample: int) -> AutoencoderKL:
    levels = int(math.log2(downsample)) + 1
    if 2 ** (levels - 1) != downsample:
        raise ValueError(f"--downsample must be a power of 2, got {downsample}")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(32,) + (64,) * (levels - 1),
        latent_channels=8,
        norm_num_groups=16,
        mid_block_add_attention=False,
    )
    return vae.to(device).eval()


def timed_reads(memory, poses, K, size, passes: int = 3) -> tuple[float, float]:
    """Milliseconds per single-view read over the given poses (the best of ``passes`` passes:
    these machines are shared, and the minimum is the least disturbed), and the mean fraction
    of latent cells the reads cover."""
    memory.read(poses[:1], K[:1], (size, size))  # warm-up
    best, covered = float("inf"), 0.0
    for _ in range(passes):
        covered = 0.0
        start = time.perf_counter()
        for i in range(len(poses)):
            covered += float(memory.read(poses[i : i + 1], K[i : i + 1], (size, size)).valid.float().mean())
        best = min(best, 1000 * (time.perf_counter() - start) / len(poses))
    return best, covered / len(poses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laps", type=int, default=10)
    parser.add_argument("--size", type=int, default=128, help="image side [px]")
    parser.add_argument("--downsample", type=int, default=8, help="the VAE's factor (8 as in the design; 4 as ours)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--plot", default="docs/memory_bytes.png")
    args = parser.parse_args()

    road_map = RoadMap.town01()
    route, lap_length = closed_loop(road_map, args.laps)
    mount = CameraMount(width=args.size, height=args.size)
    trajectory = drive_route(route, mount, max_steps=100_000)
    travelled = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(trajectory.ego[:, :2], axis=0), axis=1))])
    lap_of_frame = np.minimum((travelled / lap_length).astype(int), args.laps - 1)
    poses = torch.as_tensor(trajectory.cam_to_world)
    K = torch.as_tensor(trajectory.intrinsics).expand(len(poses), 3, 3)
    print(f"loop {lap_length:.0f} m x {args.laps} laps = {len(poses)} frames at {args.size}x{args.size}")

    renderer = GroundTruthRenderer(dress_scene(road_map, seed=0), device=args.device)
    vae = make_vae(args.device, args.downsample)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        return vae.encode(images.to(args.device) * 2 - 1).latent_dist.mode()

    latent = LatentCache(1, 8, LatentCacheConfig(downsample=args.downsample), device=args.device)
    pixel = PixelMemory(1, encode, downsample=args.downsample, device=args.device)
    latent_bytes, pixel_bytes, reads = [], [], {}
    lap_end_tokens = {}
    chunk = 16
    for start in tqdm(range(0, len(poses), chunk), desc="writing", unit="chunk"):
        frames = range(start, min(start + chunk, len(poses)))
        out = renderer.render(poses[frames.start : frames.stop], K[frames.start : frames.stop], args.size, args.size)
        rgb = out.rgb.permute(0, 3, 1, 2).float() / 255
        latents = encode(rgb)
        for j, frame in enumerate(frames):
            batch = slice(j, j + 1)
            memory_frame = MemoryFrame(latents[batch], out.depth[batch], K[frame : frame + 1], poses[frame : frame + 1], rgb=rgb[batch])
            latent.write(memory_frame)
            latent_bytes.append(latent.nbytes())
            if frame < PIXEL_FRAMES:
                pixel.write(memory_frame)
                pixel_bytes.append(pixel.nbytes())
            lap_end_tokens[int(lap_of_frame[frame])] = (len(latent), latent.nbytes())
            written = frame + 1
            if written in (100, PIXEL_FRAMES) and written + READ_STEPS <= len(poses):
                ahead = slice(written, written + READ_STEPS)
                latent_ms, latent_coverage = timed_reads(latent, poses[ahead], K[ahead], args.size)
                pixel_ms, pixel_coverage = timed_reads(pixel, poses[ahead], K[ahead], args.size)
                reads[written] = {"latent_ms": latent_ms, "pixel_ms": pixel_ms,
                                  "latent_coverage": latent_coverage, "pixel_coverage": pixel_coverage}

    def at(values, frames):
        return values[frames - 1] if len(values) >= frames else None

    first_lap, last_lap = lap_end_tokens[0], lap_end_tokens[args.laps - 1]
    report = {
        "benchmark": "memory",
        "map": "Town01",
        "image_size": args.size,
        "vae_downsample": args.downsample,
        "latent_grid": args.size // args.downsample,
        "latent_channels": 8,
        "frames": len(poses),
        "laps": args.laps,
        "lap_length_m": round(lap_length, 1),
        "device": args.device,
        "reads": {str(k): {name: round(v, 3) for name, v in r.items()} for k, r in reads.items()},
        "read_speedup": round(reads[100]["pixel_ms"] / reads[100]["latent_ms"], 1),
        "read_speedup_1000": round(reads[PIXEL_FRAMES]["pixel_ms"] / reads[PIXEL_FRAMES]["latent_ms"], 1)
        if PIXEL_FRAMES in reads else None,
        "bytes": {
            str(n): {"latent": at(latent_bytes, n), "pixel": at(pixel_bytes, n)} for n in (10, 100, PIXEL_FRAMES)
        },
        "bytes_ratio_1000": round(at(pixel_bytes, PIXEL_FRAMES) / at(latent_bytes, PIXEL_FRAMES), 1)
        if at(pixel_bytes, PIXEL_FRAMES) else None,
        "latent_tokens_at_lap_end": [lap_end_tokens[lap][0] for lap in range(args.laps)],
        "latent_tokens_lap1": first_lap[0],
        "latent_tokens_last_lap": last_lap[0],
        "latent_growth_lap10_over_lap1": round(last_lap[1] / first_lap[1], 3),
    }

    print(f"\n{'':28}{'latent cache':>14}{'pixel memory':>14}")
    for frames, row in report["reads"].items():
        print(f"{'read ms after ' + frames + ' frames':28}{row['latent_ms']:>14.2f}{row['pixel_ms']:>14.2f}")
        print(f"{'  cells covered':28}{row['latent_coverage']:>14.2f}{row['pixel_coverage']:>14.2f}")
    for frames, row in report["bytes"].items():
        pixel_text = f"{row['pixel'] / 2**20:>12.2f}MB" if row["pixel"] else f"{'-':>14}"
        print(f"{'bytes after ' + frames + ' frames':28}{row['latent'] / 2**20:>12.2f}MB{pixel_text}")
    print(f"read speedup (100 frames)   {report['read_speedup']}x   (1,000 frames) {report['read_speedup_1000']}x")
    print(f"bytes ratio at 1,000 frames {report['bytes_ratio_1000']}x")
    print(f"latent growth lap {args.laps} / lap 1: {report['latent_growth_lap10_over_lap1']}"
          f" ({first_lap[0]} -> {last_lap[0]} tokens)")

    write_report(report, args.out)
    lap_starts = np.flatnonzero(np.diff(lap_of_frame)) + 1
    plot_bytes(latent_bytes, pixel_bytes, lap_length, lap_starts, Path(args.plot), args.laps, args.size)


def plot_bytes(latent_bytes, pixel_bytes, lap_length, lap_starts, path: Path, laps: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    frames = np.arange(1, len(latent_bytes) + 1)
    ax.plot(frames, np.array(latent_bytes) / 2**20, label="latent cache (bounded)")
    ax.plot(frames[: len(pixel_bytes)], np.array(pixel_bytes) / 2**20, label="pixel-space memory")
    for i, start in enumerate(lap_starts):
        ax.axvline(start, color="grey", lw=0.6, ls="--", label="new lap" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("frames written")
    ax.set_ylabel("memory held [MB]")
    ax.set_title(f"Town01 loop of {lap_length:.0f} m driven {laps} times, {size}x{size} frames")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
