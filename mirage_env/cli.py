"""The ``mirage`` command: ``mirage <command> [hydra overrides...]``.

Each command has a Hydra config ``configs/<command>.yaml``; override any key on the command
line (``mirage demo seed=3 map=town:7``). ``mirage <command> --help`` prints the config.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mirage_env.expert import drive_route
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import load_road_map
from mirage_env.scene import dress_scene
from mirage_env.vehicle import CameraMount
from mirage_env.visualize import colourise_depth, colourise_semantic, contact_sheet, write_video


def demo(cfg: DictConfig) -> dict:
    """Expert drive through a map, rendered to an mp4, a contact sheet and a trajectory file."""
    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    road_map = load_road_map(cfg.map)
    rng = np.random.default_rng(cfg.seed)
    route = road_map.random_route(rng, cfg.route_min_length_m, cfg.route_max_length_m)
    mount = CameraMount(
        forward_m=cfg.camera_forward_m, height_m=cfg.camera_height_m, pitch_deg=cfg.camera_pitch_deg,
        fov_deg=cfg.fov_deg, width=cfg.width, height=cfg.height,
    )
    trajectory = drive_route(route, mount, dt=cfg.dt_s, progress=True)
    trajectory_path = trajectory.save(out_dir / "trajectory.safetensors")
    renderer = GroundTruthRenderer(dress_scene(road_map, cfg.seed), device=cfg.device)

    steps = np.arange(0, len(trajectory), cfg.frame_stride)
    poses = torch.as_tensor(trajectory.cam_to_world[steps])
    K = torch.as_tensor(trajectory.intrinsics).expand(len(steps), 3, 3)
    panels = []
    for start in tqdm(range(0, len(steps), cfg.batch_size), desc="rendering", unit="batch"):
        batch = slice(start, start + cfg.batch_size)
        out = renderer.render(poses[batch], K[batch], cfg.height, cfg.width)
        depth = colourise_depth(out.depth[:, 0].cpu().numpy())
        labels = colourise_semantic(out.semantic.cpu().numpy())
        panels.append(np.concatenate([out.rgb.cpu().numpy(), depth, labels], axis=2))
    frames = np.concatenate(panels)
    video_path = write_video(out_dir / "drive.mp4", frames, fps=1.0 / (cfg.dt_s * cfg.frame_stride))

    chosen = np.linspace(0, len(frames) - 1, min(cfg.sheet_frames, len(frames))).round().astype(int)
    captions = [f"t={trajectory.timestamps[steps[i]]:.1f}s v={trajectory.ego[steps[i], 3]:.1f}m/s" for i in chosen]
    title = f"{road_map.name}, seed {cfg.seed}: route {route.length:.0f} m (RGB | depth | labels)"
    sheet_path = out_dir / "contact_sheet.png"
    contact_sheet(frames[chosen], captions, columns=2, title=title).save(sheet_path)

    summary = {
        "map": road_map.name,
        "seed": cfg.seed,
        "route_length_m": round(route.length, 1),
        "frames": len(frames),
        "duration_s": float(trajectory.timestamps[-1]),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "video": str(video_path),
        "contact_sheet": str(sheet_path),
        "trajectory": str(trajectory_path),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


COMMANDS = {"demo": demo}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0
    name, overrides = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mirage: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    show_help = any(arg in ("-h", "--help") for arg in overrides)
    overrides = [arg for arg in overrides if arg not in ("-h", "--help")]
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    if show_help:
        print(f"mirage {name}: {COMMANDS[name].__doc__}\n\nconfig (override with key=value):")
        print(OmegaConf.to_yaml(cfg))
        return 0
    COMMANDS[name](cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
