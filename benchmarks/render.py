"""Ground-truth renderer throughput: frames/s at 64, 128 and 256 px, batch 1 and 16.

Cameras follow an expert drive through Town01 (the embedded map, seed 0). Every configuration
renders the same poses, after one warm-up call, in one run so the figures compare side by side.

    python benchmarks/render.py [--device cpu|cuda] [--frames 64] [--out benchmarks/results/render.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from mirage_env.expert import drive_route
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import RoadMap
from mirage_env.scene import dress_scene
from mirage_env.vehicle import CameraMount


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=64, help="frames rendered per configuration")
    parser.add_argument("--out", default="benchmarks/results/render.json")
    args = parser.parse_args()

    road_map = RoadMap.town01()
    route = road_map.random_route(np.random.default_rng(0), 250, 450)
    trajectory = drive_route(route, CameraMount())
    steps = np.linspace(0, len(trajectory) - 1, args.frames).round().astype(int)
    poses = torch.as_tensor(trajectory.cam_to_world[steps])
    renderer = GroundTruthRenderer(dress_scene(road_map, seed=0), device=args.device)

    results = []
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
            results.append({"size": size, "batch": batch, "frames_per_s": round(args.frames / seconds, 1),
                            "ms_per_frame": round(1000 * seconds / args.frames, 2)})
            print(f"{size:>4} px  batch {batch:>2}: {results[-1]['frames_per_s']:>7.1f} frames/s "
                  f"({results[-1]['ms_per_frame']:.2f} ms/frame)")

    report = {
        "benchmark": "render",
        "map": "Town01",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "frames_per_config": args.frames,
        "results": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
