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


def train_world_model(cfg: DictConfig) -> dict:
    """Train the default world-model backbone on clips rendered from procedural towns."""
    from mirage_env.world_model_data import ClipConfig, generate_shards, load_shards
    from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator
    from world_model.training import StageConfig, train_autoencoder, train_generator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir, data = Path(cfg.out_dir), cfg.data
    clip_config = ClipConfig(size=data.size, frames=data.frames, clips_per_town=data.clips_per_town,
                             layout_downsample=2 ** len(cfg.autoencoder.encoder_channels))
    train_seeds = range(data.towns)
    validation_seeds = range(900_000, 900_000 + data.validation_towns)
    clips = load_shards(generate_shards(data.dir, train_seeds, clip_config))
    validation = load_shards(generate_shards(data.dir, validation_seeds, clip_config))

    def stage(section: DictConfig) -> StageConfig:
        return StageConfig(steps=section.steps, batch_size=section.batch_size, lr=section.lr,
                           adversarial_weight=section.adversarial_weight,
                           adversarial_start=section.adversarial_start, checkpoint_every=cfg.checkpoint_every)

    ae = cfg.autoencoder
    autoencoder = TinyAutoencoder(latent_channels=ae.latent_channels, encoder_channels=tuple(ae.encoder_channels),
                                  decoder_channels=tuple(ae.decoder_channels), decoder_blocks=tuple(ae.decoder_blocks))
    train_autoencoder(autoencoder, clips, stage(ae), out_dir, validation)
    gen = cfg.generator
    generator = TinyGenerator(latent_channels=ae.latent_channels, layout_channels=3,
                              block_out_channels=tuple(gen.block_out_channels), layers_per_block=gen.layers_per_block)
    train_generator(autoencoder, generator, clips, stage(gen), out_dir, validation)
    model_dir = TinyBackbone(autoencoder, generator).save_pretrained(out_dir / "model")
    logs = {name: json.loads((out_dir / f"{name}_log.json").read_text()) for name in ("autoencoder", "generator")}
    summary = {
        "model": str(model_dir),
        "training_frames": int(clips["rgb"].shape[0] * clips["rgb"].shape[1]),
        "train_towns": f"procedural seeds 0-{data.towns - 1}",
        "validation_towns": f"procedural seeds {validation_seeds.start}-{validation_seeds.stop - 1}",
        "image_size": data.size,
        **{f"{name}_steps": log[-1]["step"] for name, log in logs.items()},
        **{f"{name}_training_minutes": round(log[-1]["seconds"] / 60, 1) for name, log in logs.items()},
        **{f"{name}_{key}": round(value, 2) for name, log in logs.items() for key, value in log[-1].items()
           if key.startswith("val_")},
    }
    (model_dir / "MODEL_CARD.md").write_text(_model_card(summary, cfg))
    if cfg.ship:
        import shutil

        from world_model.pretrained import DEFAULT_MODEL_DIR

        shutil.copytree(model_dir, DEFAULT_MODEL_DIR, dirs_exist_ok=True)
        summary["shipped_to"] = str(DEFAULT_MODEL_DIR)
    print(json.dumps(summary, indent=2))
    return summary


def _model_card(summary: dict, cfg: DictConfig) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items() if key != "model")
    return f"""# Mirage Env default world model (TinyBackbone)

A small autoencoder with a co-trained depth head and a one-step UNet2DModel generator
(`world_model/tiny_backbone.py`), trained on this CPU-only project's own data: clips rendered by
the ground-truth renderer from procedural towns (Town01 and the held-out procedural seeds
1000000-1000015 are never trained on). Metrics are on the validation towns; `val_psnr` of the
generator is whole-frame, `val_psnr_covered` on the cells the memory covered, beside
`val_psnr_repeat_previous` (showing the previous frame again).

| | |
|---|---|
{rows}

Reproduce (resumes from checkpoints in `out_dir`):

    mirage train-world-model {" ".join(f"{k}={v}" for k, v in _overrides(cfg))}

Config:

```yaml
{OmegaConf.to_yaml(cfg)}```
"""


def _overrides(cfg: DictConfig) -> list[tuple[str, object]]:
    return [("data.towns", cfg.data.towns), ("autoencoder.steps", cfg.autoencoder.steps),
            ("generator.steps", cfg.generator.steps)]


COMMANDS = {"demo": demo, "train-world-model": train_world_model}


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
        cfg = compose(config_name=name.replace("-", "_"), overrides=overrides)
    if show_help:
        print(f"mirage {name}: {COMMANDS[name].__doc__}\n\nconfig (override with key=value):")
        print(OmegaConf.to_yaml(cfg))
        return 0
    COMMANDS[name](cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
