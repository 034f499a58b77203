"""World-model speed: generated frames/s in per-step mode (the env's mode), with where the time goes.

The expert drives a Town01 route; the world model starts from its first ground-truth frame and
renders the later poses one at a time with the latent cache and the road layout, exactly as
``MirageDrive-v0`` does, at batch 1 and with 16 copies of the drive (each with its own memory and
noise) batched in one call, as the batched vector env renders. Each ``--model``, ``--precision``
(the backbone's float32 or bfloat16 networks) and ``--anchor`` (the pull toward the start frame,
whose caches are read in the same call as the shared ones) runs in the same process one after
another, so they compare side by side. Reported per model, precision, anchor, size and batch:
frames/s and milliseconds per step in the memory read, the generator, the decoder, the
re-encoding of the frames shown, the depth head and the memory write (the rest is the layout,
the pull and the loop). The issue's target is 30 frames/s at 128 px, batch 1.

    python benchmarks/world_model_speed.py [--model DIR ...] [--precision float32 bfloat16] [--anchor 0 0.5]
                                           [--sizes 64 128] [--batches 1 16] [--steps 150]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from mirage_env.expert import drive_route
from mirage_env.scenario import load_map_assets
from mirage_env.vehicle import CameraMount
from world_model.pretrained import load_default_backbone
from world_model.backbone import PRECISIONS
from world_model.world_model import WorldModel, WorldModelConfig

STAGES = {"memory read": ("memory", "read"), "generator": ("backbone", "generate"),
          "decoder": ("backbone", "decode"), "re-encode": ("backbone", "reencode"),
          "depth head": ("backbone", "estimate_depth"), "memory write": ("memory", "write")}


def timed_stages(model: WorldModel) -> dict[str, float]:
    """Wrap the stages of ``model`` (on these instances only) to add their seconds to the dict returned."""
    seconds: dict[str, float] = defaultdict(float)
    for stage, (owner, method) in STAGES.items():
        target = getattr(model, owner)
        original = getattr(target, method)

        def wrapper(*args, _original=original, _stage=stage, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            seconds[_stage] += time.perf_counter() - start
            return out

        setattr(target, method, wrapper)
    return seconds


def measure(model_path: str | None, precision: str, anchor: float, size: int, batch: int, steps: int, assets, poses,
            K) -> dict:
    backbone = load_default_backbone(model_path, precision=precision)
    model = WorldModel(backbone, num_envs=batch, config=WorldModelConfig(anchor=anchor))
    start = assets.renderer.render(poses[:1], K[:1], size, size)  # the env's start frame, with depth
    model.reset(start.rgb.expand(batch, -1, -1, -1), K[:1].expand(batch, 3, 3), poses[:1].expand(batch, 4, 4),
                depth=start.depth.expand(batch, -1, -1, -1))
    generator = [torch.Generator().manual_seed(i) for i in range(batch)]
    warm_up = 5
    seconds = timed_stages(model)
    for i in range(1, warm_up + steps + 1):
        if i == warm_up + 1:
            seconds.clear()
            clock = time.perf_counter()
        pose = poses[i % len(poses)].expand(batch, 4, 4)
        layout = assets.layout(pose, K[:1].expand(batch, 3, 3), size, size, backbone.downsample)
        model.render(pose, K[:1].expand(batch, 3, 3), layout=layout[:, None], generator=generator)
    total = time.perf_counter() - clock
    split = {stage: round(1000 * seconds[stage] / steps, 2) for stage in STAGES}
    split["rest"] = round(1000 * total / steps - sum(split.values()), 2)
    return {"frames_per_second": round(batch * steps / total, 1), "ms_per_step": round(1000 * total / steps, 2),
            "ms_per_step_by_stage": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=[None], help="model folders (default: the shipped model)")
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=PRECISIONS,
                        help="precisions of the backbone's networks to compare")
    parser.add_argument("--anchor", type=float, nargs="+", default=[WorldModelConfig.anchor],
                        help="anchor weights to compare (see world_model.world_model; 0: no pull)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="[px] square frames generated")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="drives rendered per call")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per measurement (after 5 warm-up)")
    parser.add_argument("--out", default="benchmarks/results/world_model_speed.json")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    assets = load_map_assets("Town01", 0)
    route = assets.road_map.random_route(np.random.default_rng(0), 200.0)
    report: dict = {"benchmark": "world_model_speed", "threads": torch.get_num_threads(), "route_m": round(route.length),
                    "runs": []}
    print(f"{'model':34}{'precision':>10}{'anchor':>7}{'px':>5}{'batch':>6}{'frames/s':>10}{'ms/step':>9}  split (ms/step)")
    for size in args.sizes:
        mount = CameraMount(width=size, height=size)
        poses = mount.poses(drive_route(route, mount).ego)
        K = mount.intrinsics().expand(len(poses), 3, 3)
        for batch in args.batches:
            for model_path in args.model:
                for precision in args.precision:
                    for anchor in args.anchor:
                        run = {"model": model_path or "shipped", "precision": precision, "anchor": anchor,
                               "size": size, "batch": batch,
                               **measure(model_path, precision, anchor, size, batch, args.steps, assets, poses, K)}
                        report["runs"].append(run)
                        split = "  ".join(f"{stage} {ms}" for stage, ms in run["ms_per_step_by_stage"].items())
                        print(f"{run['model'][-34:]:34}{precision:>10}{anchor:>7}{size:>5}{batch:>6}"
                              f"{run['frames_per_second']:>10}{run['ms_per_step']:>9}  {split}", flush=True)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
