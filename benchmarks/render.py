"""Ground-truth renderer throughput: frames/s at 64, 128 and 256 px, batch 1 and 16, for each
``antialias`` (colour rays per pixel side); and how far each antialias is from the image a
camera would record.

Cameras follow an expert drive through Town01 (the embedded map, seed 0). Every configuration
renders the same poses, after one warm-up call, in one run so the figures compare side by side.
Aliasing: for 16 of the poses at 64 and 128 px, each antialias against the same views rendered
with 8 x 8 rays per pixel (a camera's pixel integrates the light over its area): PSNR, and the
ratio of high-frequency energy (variance of the Laplacian, as the fidelity benchmark's sharpness),
which one centre ray per pixel inflates with stair-step edges and sub-pixel noise.

    python benchmarks/render.py [--device cpu|cuda] [--frames 64] [--antialias 1 2 3]
                                [--out benchmarks/results/render.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from mirage_env.expert import drive_route
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import RoadMap
from mirage_env.scene import dress_scene
from mirage_env.vehicle import CameraMount
from world_model.metrics import laplacian_variance, psnr

REFERENCE_RAYS = 8  # per pixel side, for the camera-like reference


def aliasing(scene, poses: torch.Tensor, size: int, antialias: list[int], device: str) -> list[dict]:
    """Each ``antialias`` at ``size`` px against the same views with REFERENCE_RAYS**2 rays per
    pixel: PSNR [dB] and the Laplacian-variance ratio (1 = as much high-frequency energy)."""
    K = CameraMount(width=size, height=size).intrinsics().expand(len(poses), 3, 3)

    def colour(renderer: GroundTruthRenderer) -> torch.Tensor:
        return renderer.render(poses, K, size, size).rgb.permute(0, 3, 1, 2).float().cpu() / 255

    reference = colour(GroundTruthRenderer(scene, device=device, antialias=REFERENCE_RAYS))
    rows = []
    for rays in antialias:
        frames = colour(GroundTruthRenderer(scene, device=device, antialias=rays))
        rows.append({"size": size, "antialias": rays, "psnr_vs_reference": round(float(psnr(frames, reference).mean()), 2),
                     "laplacian_variance_ratio": round(float(laplacian_variance(frames).mean()
                                                             / laplacian_variance(reference).mean()), 3)})
        print(f"{size:>4} px  antialias {rays}: {rows[-1]['psnr_vs_reference']:.2f} dB from a camera-like "
              f"frame, high-frequency energy x{rows[-1]['laplacian_variance_ratio']:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=64, help="frames rendered per configuration")
    parser.add_argument("--antialias", type=int, nargs="+", default=[1, 2, 3], help="colour rays per pixel side")
    parser.add_argument("--out", default="benchmarks/results/render.json")
    args = parser.parse_args()

    road_map = RoadMap.town01()
    route = road_map.random_route(np.random.default_rng(0), 250, 450)
    trajectory = drive_route(route, CameraMount())
    steps = np.linspace(0, len(trajectory) - 1, args.frames).round().astype(int)
    poses = torch.as_tensor(trajectory.cam_to_world[steps])
    scene = dress_scene(road_map, seed=0)

    results = []
    for rays in args.antialias:
        renderer = GroundTruthRenderer(scene, device=args.device, antialias=rays)
        for size in (64, 128, 256):
            K = CameraMount(width=size, height=size).intrinsics().expand(args.frames, 3, 3)
            for batch in (1, 16):
                renderer.render(poses[:batch], K[:batch], size, size)  # warm-up
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for i in range(0, args.frames, batch):
                    renderer.render(poses[i : i + batch], K[i : i + batch], size, size)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                results.append({"antialias": rays, "size": size, "batch": batch,
                                "frames_per_s": round(args.frames / seconds, 1),
                                "ms_per_frame": round(1000 * seconds / args.frames, 2)})
                print(f"antialias {rays}  {size:>4} px  batch {batch:>2}: {results[-1]['frames_per_s']:>7.1f} "
                      f"frames/s ({results[-1]['ms_per_frame']:.2f} ms/frame)")

    sample = poses[torch.linspace(0, args.frames - 1, min(16, args.frames)).round().long()]
    report = {
        "benchmark": "render",
        "map": "Town01",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "frames_per_config": args.frames,
        "results": results,
        "aliasing": [row for size in (64, 128) for row in aliasing(scene, sample, size, args.antialias, args.device)],
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
