"""The ``mirage`` command: ``mirage <command> [hydra overrides...]``.

Each command has a Hydra config ``configs/<command>.yaml``; override any key on the command
line (``mirage demo seed=3 map=town:7``). ``mirage <command> --help`` prints the config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mirage_env.trajectory import Trajectory
from mirage_env.visualize import colourise_depth, colourise_semantic, contact_sheet, write_video


def demo(cfg: DictConfig) -> dict:
    """The expert drives a route in MirageDrive-v0; writes an mp4 (frames | ground truth, with a
    HUD), per-step metrics, a contact sheet and the trajectory."""
    from mirage_env.envs import MirageDriveEnv
    from mirage_env.expert import RouteExpert
    from world_model.metrics import psnr, ssim

    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    env = MirageDriveEnv(
        map=cfg.map, renderer=cfg.renderer, world_model_path=cfg.world_model_path, memory=cfg.memory,
        width=cfg.width, height=cfg.height, fov_deg=cfg.fov_deg, camera_height_m=cfg.camera_height_m,
        camera_pitch_deg=cfg.camera_pitch_deg, camera_forward_m=cfg.camera_forward_m, dt_s=cfg.dt_s,
        max_steps=cfg.max_steps, route_min_length_m=cfg.route_min_length_m,
        route_max_length_m=cfg.route_max_length_m, scene_seed=cfg.seed, terminate_on_collision=False,
        device=cfg.device, **_env_overrides(cfg),
    )
    observation, info = env.reset(seed=cfg.seed)
    route, truth_renderer = env.scenario.route, env.scenario.assets.renderer
    expert = RouteExpert(route, env.model)
    generated = cfg.renderer == "world_model"

    def truth_panels(pose: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        out = truth_renderer.render(pose[None], env.K[None], cfg.height, cfg.width)
        rgb = out.rgb[0].cpu().numpy()
        if generated:
            return rgb, [rgb]
        return rgb, [colourise_depth(out.depth[0, 0].cpu().numpy()), colourise_semantic(out.semantic[0].cpu().numpy())]

    frames, steps, ego = [], [], []
    bar = tqdm(total=cfg.max_steps, desc=f"driving {env.scenario.name} ({cfg.renderer})", unit="step")
    for step in range(cfg.max_steps + 1):
        if step:
            steer, throttle = expert.act(env.state, env.traffic_boxes())
            observation, _, terminated, truncated, info = env.step(np.array([steer, throttle], dtype=np.float32))
            bar.update(1)
        truth, extra = truth_panels(env._camera_pose())
        frame = observation["rgb"]
        record = {"step": step, "time_s": round(step * cfg.dt_s, 2), "speed_mps": round(env.state.speed, 2),
                  "route_completion": round(info["route_completion"], 1)}
        if generated:
            as_float = [torch.as_tensor(x).permute(2, 0, 1)[None].float() / 255 for x in (frame, truth)]
            record["psnr_db"] = round(float(psnr(*as_float)), 2)
            record["ssim"] = round(float(ssim(*as_float)), 3)
        steps.append(record)
        ego.append(env.state.as_array())
        frames.append(_with_hud(np.concatenate([frame, *extra], axis=1), record))
        if step and (terminated or truncated or expert.done(env.state)):
            break
    bar.close()
    video_path = write_video(out_dir / "drive.mp4", frames, fps=1.0 / cfg.dt_s)
    (out_dir / "steps.json").write_text(json.dumps(steps, indent=1))
    mount = env.mount
    trajectory = Trajectory(map_name=env.scenario.name, timestamps=np.arange(len(ego)) * cfg.dt_s, ego=np.stack(ego),
                            controls=np.zeros((len(ego), 2)), cam_to_world=mount.poses(np.stack(ego)).numpy(),
                            intrinsics=mount.intrinsics().numpy(), mount=mount)
    trajectory_path = trajectory.save(out_dir / "trajectory.safetensors")

    chosen = np.linspace(0, len(frames) - 1, min(cfg.sheet_frames, len(frames))).round().astype(int)
    panels = "generated | ground truth" if generated else "RGB | depth | labels"
    title = f"{env.scenario.name}, seed {cfg.seed}: route {route.length:.0f} m ({panels})"
    sheet_path = out_dir / "contact_sheet.png"
    contact_sheet(np.stack(frames)[chosen], [f"t={steps[i]['time_s']:.1f}s" for i in chosen], columns=2,
                  title=title).save(sheet_path)
    summary = {
        "map": env.scenario.name,
        "renderer": cfg.renderer,
        "seed": cfg.seed,
        "route_length_m": round(route.length, 1),
        "frames": len(frames),
        "route_completion": round(info["route_completion"], 1),
        "infractions": {k: v for k, v in info["infractions"].items() if v},
        **({"mean_psnr_db": round(float(np.mean([s["psnr_db"] for s in steps[1:]])), 2),
            "mean_ssim": round(float(np.mean([s["ssim"] for s in steps[1:]])), 3)} if generated and len(steps) > 1 else {}),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "video": str(video_path),
        "contact_sheet": str(sheet_path),
        "steps": str(out_dir / "steps.json"),
        "trajectory": str(trajectory_path),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def _env_overrides(cfg: DictConfig) -> dict:
    """``env_settings`` of a command's config: any env setting (``mirage_env/envs/config.py``),
    e.g. ``mirage play +env_settings.speed_limit_mps=8``; unknown names fail with a hint."""
    settings = cfg.get("env_settings")
    return OmegaConf.to_container(settings, resolve=True) if settings else {}


def _with_hud(frame: np.ndarray, record: dict) -> np.ndarray:
    """``frame`` with a strip of text below: time, speed, route completion, PSNR when known."""
    from PIL import Image, ImageDraw

    text = f"t={record['time_s']:.1f}s  {record['speed_mps']:.1f} m/s  route {record['route_completion']:.0f}%"
    if "psnr_db" in record:
        text += f"  PSNR {record['psnr_db']:.1f} dB"
    strip = Image.new("RGB", (frame.shape[1], 16), "black")  # 16: keeps heights multiples of 8 for H.264
    ImageDraw.Draw(strip).text((2, 1), text, fill="white")
    return np.concatenate([frame, np.asarray(strip)], axis=0)


def train_world_model(cfg: DictConfig) -> dict:
    """Train the default world-model backbone on clips rendered from procedural towns."""
    from mirage_env.world_model_data import ClipConfig, generate_shards, load_shards
    from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator
    from world_model.training import (StageConfig, decoder_student, generator_student, train_autoencoder,
                                      train_decoder, train_generator, train_reencoder, with_reencoder)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir, data = Path(cfg.out_dir), cfg.data
    base = cfg.get("base_model")
    base_rows, base_history = {}, []
    if base:  # a trained model: only the re-encoder stage runs on it
        if not cfg.reencoder.steps:
            raise ValueError("base_model= runs only the re-encoder stage on a trained model: set reencoder.steps > 0")
        autoencoder, generator = _load_trained(Path(base), TinyAutoencoder, TinyGenerator)
        base_rows, base_history = _card_parts(Path(base) / "MODEL_CARD.md")
        # Commands without reencoder.steps predate that stage, which now trains by default.
        base_history = [line if "reencoder.steps=" in line else f"{line} reencoder.steps=0" for line in base_history]
    downsample = autoencoder.downsample if base else 2 ** len(cfg.autoencoder.encoder_channels)
    clip_config = ClipConfig(size=data.size, frames=data.frames, clips_per_town=data.clips_per_town,
                             layout_downsample=downsample, antialias=data.antialias)
    train_seeds = range(data.towns)
    validation_seeds = range(900_000, 900_000 + data.validation_towns)
    command = "mirage train-world-model " + " ".join(f"{k}={v}" for k, v in _overrides(cfg))
    history = _command_history(out_dir, command)
    history = [*base_history, *(line for line in history if line not in base_history)]
    clips = load_shards(generate_shards(data.dir, train_seeds, clip_config))
    validation = load_shards(generate_shards(data.dir, validation_seeds, clip_config))

    def stage(section: DictConfig) -> StageConfig:
        """The section's StageConfig fields (the rest of it sizes the networks)."""
        fields = {field.name for field in dataclasses.fields(StageConfig)}
        return StageConfig(**{key: section[key] for key in section if key in fields},
                           checkpoint_every=cfg.checkpoint_every)

    if base:
        stages = []
    else:
        ae = cfg.autoencoder
        autoencoder = TinyAutoencoder(latent_channels=ae.latent_channels, encoder_channels=tuple(ae.encoder_channels),
                                      decoder_channels=tuple(ae.decoder_channels),
                                      decoder_blocks=tuple(ae.decoder_blocks))
        train_autoencoder(autoencoder, clips, stage(ae), out_dir, validation)
        gen = cfg.generator
        generator = TinyGenerator(latent_channels=ae.latent_channels, layout_channels=3,
                                  block_out_channels=tuple(gen.block_out_channels),
                                  layers_per_block=gen.layers_per_block, context_noise=gen.context_noise)
        train_generator(autoencoder, generator, clips, stage(gen), out_dir, validation)
        stages = ["autoencoder", "generator"]
        if cfg.decoder.steps:
            student = None
            if cfg.decoder.channels is not None:
                student = decoder_student(autoencoder, tuple(cfg.decoder.channels), tuple(cfg.decoder.blocks))
            autoencoder = train_decoder(autoencoder, generator, clips, stage(cfg.decoder), out_dir, validation, student)
            stages.append("decoder")
        distil = cfg.generator_student
        if distil.steps:
            student = generator_student(generator, tuple(distil.block_out_channels), distil.layers_per_block)
            generator = train_generator(autoencoder, student, clips, stage(distil), out_dir, validation,
                                        teacher=generator)
            stages.append("generator_student")
    if cfg.reencoder.steps:
        autoencoder = with_reencoder(autoencoder, tuple(cfg.reencoder.channels))
        autoencoder = train_reencoder(autoencoder, generator, clips, stage(cfg.reencoder), out_dir, validation)
        stages.append("reencoder")
    model_dir = TinyBackbone(autoencoder, generator).save_pretrained(out_dir / "model")
    logs = {name: json.loads((out_dir / f"{name}_log.json").read_text()) for name in stages}
    summary = {
        "model": str(model_dir),
        "training_frames": int(clips["rgb"].shape[0] * clips["rgb"].shape[1]),
        "train_towns": f"procedural seeds 0-{data.towns - 1}",
        "validation_towns": f"procedural seeds {validation_seeds.start}-{validation_seeds.stop - 1}",
        "image_size": data.size,
        **{key: value for key, value in base_rows.items() if key not in ("training_frames", "train_towns",
                                                                          "validation_towns", "image_size")},
        **{f"{name}_steps": log[-1]["step"] for name, log in logs.items()},
        **{f"{name}_training_minutes": round(log[-1]["seconds"] / 60, 1) for name, log in logs.items()},
        **{f"{name}_{key}": round(value, 2) for name, log in logs.items() for key, value in log[-1].items()
           if key.startswith("val_")},
    }
    from world_model.pretrained import DEFAULT_MODEL_DIR

    return _card_and_ship(model_dir, _model_card(summary, cfg, history), summary,
                          DEFAULT_MODEL_DIR if cfg.ship else None)


def _load_trained(path: Path, autoencoder_class, generator_class):
    """The autoencoder and generator of the trained model folder ``path``."""
    parts = []
    for name, model_class in (("autoencoder", autoencoder_class), ("generator", generator_class)):
        if not (path / name / "config.json").is_file():
            raise FileNotFoundError(f"base_model={path} is not a trained world model: {path / name / 'config.json'} "
                                    f"is missing (give a folder `mirage train-world-model` wrote, e.g. "
                                    f"runs/world_model/model or world_model/weights/tiny)")
        loaded = model_class.from_pretrained(str(path / name))
        # A fresh model from its settings, so the one saved does not record this folder as its origin.
        model = model_class.from_config({key: value for key, value in loaded.config.items() if key[0] != "_"})
        model.load_state_dict(loaded.state_dict())
        parts.append(model)
    return parts


def _card_parts(path: Path) -> tuple[dict[str, str], list[str]]:
    """The table rows (key -> value) and the reproduce commands of a model card :func:`_model_card` wrote."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: base_model needs the model card that records how it was trained")
    rows, commands = {}, []
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1]
        elif line.startswith("    mirage train-world-model "):
            commands.append(line.strip())
    return rows, commands


def _command_history(out_dir: Path, command: str) -> list[str]:
    """The training commands run in ``out_dir``, oldest first, ``command`` (this run's) added
    unless it repeats the last. Stages resume from their checkpoints, so a model whose training
    was continued with other settings is reproduced by running these in order."""
    path = out_dir / "commands.json"
    history = json.loads(path.read_text()) if path.exists() else []
    if history[-1:] != [command]:
        history.append(command)
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(history, indent=1) + "\n")
    return history


def _model_card(summary: dict, cfg: DictConfig, history: list[str]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items() if key != "model")
    distilled = cfg.decoder.get("channels") is not None
    tuned = ("the smaller decoder distilled from the autoencoder's, the one shipped" if distilled
             else "the decoder fine-tuned alone on its latents")
    original = "; `autoencoder_val_psnr` is the original decoder's reconstruction" if distilled else ""
    decoder = (f"; `decoder_val_*` measure the generator's frames through {tuned} (the sharpness ratio is "
               f"their Laplacian variance over the truth's{original})" if "decoder_steps" in summary else "")
    if "generator_student_steps" in summary:
        decoder += ("; `generator_student_val_*` measure the generator distilled into a smaller UNet, the one "
                    "shipped (`generator_val_*` are its teacher's)")
    if "reencoder_steps" in summary:
        decoder += ("; `reencoder_val_*` measure the smaller encoder distilled from the encoder for the frames the "
                    "model generates (their latents' mean error in latent standard deviations, and their decoded "
                    "PSNR against the encoder's latents decoded)")
    reproduce = "; run these in order, each continues what the one before trained" if len(history) > 1 else ""
    if any("base_model=" in command for command in history):
        reproduce += "; `base_model=` is the model the commands before it trained"
    commands = "\n".join(f"    {command}" for command in history)
    return f"""# Mirage Env default world model (TinyBackbone)

A small autoencoder with a co-trained depth head and a one-step UNet2DModel generator
(`world_model/tiny_backbone.py`), trained on this CPU-only project's own data: clips rendered by
the ground-truth renderer from procedural towns (Town01 and the held-out procedural seeds
1000000-1000015 are never trained on). Metrics are on the validation towns; `val_psnr` of the
generator is whole-frame, `val_psnr_covered` on the cells the memory covered, beside
`val_psnr_repeat_previous` (showing the previous frame again){decoder}. Training minutes are wall
time on a 2-core CPU (shared with other work), pauses excluded.

| | |
|---|---|
{rows}

Reproduce (resumes from checkpoints in `out_dir`{reproduce}):

{commands}

Config:

```yaml
{OmegaConf.to_yaml(cfg)}```
"""


def _overrides(cfg: DictConfig) -> list[tuple[str, object]]:
    """The settings of a ``train-world-model`` run as command-line overrides: the town count and
    the stages' steps always, then every other key whose value differs from
    ``configs/train_world_model.yaml`` or that the file lacks."""
    from importlib.resources import files

    defaults = _flat(OmegaConf.to_container(OmegaConf.load(files("configs") / "train_world_model.yaml")))
    settings = _flat(OmegaConf.to_container(cfg))
    always = ["data.towns", "autoencoder.steps", "generator.steps", "decoder.steps", "reencoder.steps"]
    changed = [key for key, value in settings.items()
               if key not in always and (key not in defaults or defaults[key] != value)]
    # A key the file does not have was added with Hydra's "+".
    return [(key if key in defaults else f"+{key}", _hydra_value(settings[key])) for key in always + changed]


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one dict of dotted keys (lists stay values)."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hydra_value(value) -> str:
    """A value as Hydra's command line reads it back: ``null``, ``true``, ``[32,16]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return f"[{','.join(_hydra_value(item) for item in value)}]"
    return str(value)


def train_editor(cfg: DictConfig) -> dict:
    """Train the asset editor's one-step refiner on pairs rendered from procedural towns."""
    from editors.refiner import DEFAULT_REFINER_DIR, AssetRefiner
    from editors.refiner_training import RefinerTrainingConfig, evaluate, train_refiner
    from mirage_env.editor_data import PairConfig, generate_pair_shards, load_pair_shards

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir, data = Path(cfg.out_dir), cfg.data
    pair_config = PairConfig(size=data.size, fov_deg=data.fov_deg, frames=data.frames,
                             clips_per_town=data.clips_per_town)
    validation_seeds = range(900_000, 900_000 + data.validation_towns)
    pairs = load_pair_shards(generate_pair_shards(data.dir, range(data.towns), pair_config))
    validation = load_pair_shards(generate_pair_shards(data.dir, validation_seeds, pair_config))
    model = AssetRefiner(channels=tuple(cfg.model.channels), detail_channels=cfg.model.detail_channels,
                         band_px=cfg.model.band_px)
    config = RefinerTrainingConfig(steps=cfg.steps, batch_size=cfg.batch_size, crop_px=cfg.crop_px, lr=cfg.lr,
                                   checkpoint_every=cfg.checkpoint_every)
    train_refiner(model, pairs, config, out_dir, validation)
    model_dir = out_dir / "model"
    model.save_pretrained(str(model_dir))
    log = json.loads((out_dir / "refiner_log.json").read_text())
    final = evaluate(model, validation, config, model.config.band_px)
    summary = {
        "model": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_clips": int(pairs["background"].shape[0]),
        "training_frames": int(pairs["background"].shape[0] * pairs["background"].shape[1]),
        "train_towns": f"procedural seeds 0-{data.towns - 1}",
        "validation_towns": f"procedural seeds {validation_seeds.start}-{validation_seeds.stop - 1}",
        "image_size": data.size,
        "steps": log[-1]["step"],
        "training_minutes": round(log[-1]["seconds"] / 60, 1),
        **{key: round(value, 2) for key, value in final.items()},
    }
    return _card_and_ship(model_dir, _refiner_card(summary, cfg), summary, DEFAULT_REFINER_DIR if cfg.ship else None)


def _card_and_ship(model_dir: Path, card: str, summary: dict, ship_to: Path | None) -> dict:
    """Write the model card beside a trained model, copy the model into the package when
    ``ship_to`` is given, print and return ``summary``."""
    (model_dir / "MODEL_CARD.md").write_text(card)
    if ship_to is not None:
        import shutil

        shutil.copytree(model_dir, ship_to, dirs_exist_ok=True)
        summary["shipped_to"] = str(ship_to)
    print(json.dumps(summary, indent=2))
    return summary


def _refiner_card(summary: dict, cfg: DictConfig) -> str:
    import os
    import platform

    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items() if key != "model")
    overrides = f"data.towns={cfg.data.towns} steps={cfg.steps} threads={cfg.threads}"
    return f"""# Mirage Env asset refiner (AssetRefiner)

The asset editor's one-step refiner (`editors/refiner.py`): a small encoder-decoder with a
causal temporal mix at its bottleneck and a per-frame 2D encoder injected into its decoder,
changing only the inserted assets and a {cfg.model.band_px}-pixel band around them. Trained by
`mirage train-editor` on this project's own data: clips rendered by the ground-truth renderer
from procedural towns (Town01 and the held-out seeds are never trained on), each frame as the
editor's naive composite and as the scene rendered with the assets as real geometry, under
random frame looks (blur, colour gain, gamma; `editors/refiner_training.py`). Metrics: PSNR [dB]
over the edited region (asset masks grown by the band) on the validation towns, naive
composite vs refined, against the truth; `training_minutes` is the wall time of the training
steps with `threads={cfg.threads}` (0: torch's default) on the training machine ({platform.machine()},
{os.cpu_count()} cores, shared). Held-out figures: `python benchmarks/editor.py`
(`benchmarks/results/editor.json`).

| | |
|---|---|
{rows}

Reproduce (resumes from the checkpoint in `out_dir`):

    OMP_NUM_THREADS=1 mirage train-editor {overrides}

Config:

```yaml
{OmegaConf.to_yaml(cfg)}```
"""


def edit(cfg: DictConfig) -> dict:
    """Insert vehicles and pedestrians into a clip (frames, depth, poses, intrinsics); write the
    edited clip as mp4 with per-frame labels (2D/3D boxes, masks, occlusion, track ids)."""
    from editors.refiner import load_refiner
    from mirage_env.editor_data import clip_tracks, demo_clip, edit_clip, load_clip, map_spec, save_clip
    from mirage_env.road_map import load_road_map

    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    if cfg.map:  # the user's map must load; only a clip's own map may be missing
        try:
            load_road_map(cfg.map)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"map={cfg.map!r} cannot be loaded ({error}); give town:<seed>, Town01 or the path "
                              "of an .xodr file, or leave it null to use the clip's own map") from error
    if cfg.clip is None:
        trajectory, rgb, depth = demo_clip(cfg.demo.map, cfg.seed, cfg.demo.frames, cfg.demo.size, cfg.demo.fov_deg)
        clip_dir = save_clip(out_dir / "clip", trajectory, rgb, depth)
        spec = cfg.map or cfg.demo.map
    else:
        clip_dir = Path(cfg.clip)
        trajectory, rgb, depth = load_clip(clip_dir)
        spec = cfg.map or map_spec(trajectory.map_name)
        if not cfg.map:
            try:
                load_road_map(spec)
            except (FileNotFoundError, ValueError):
                spec = None  # a clip whose own map cannot be loaded: explicit assets only
    explicit = OmegaConf.to_container(cfg.assets, resolve=True) if cfg.assets else []
    assets, tracks = clip_tracks(trajectory, spec, cfg.seed, cfg.vehicles, cfg.pedestrians, explicit)
    refiner = load_refiner(cfg.refiner_path) if cfg.refine else None
    result = edit_clip(trajectory, rgb, depth, assets, tracks, refiner)
    video = write_video(out_dir / "edited.mp4", list(result.rgb.numpy()), fps=cfg.fps)
    side = write_video(out_dir / "side_by_side.mp4",
                       list(torch.cat([rgb, result.naive, result.rgb], dim=2).numpy()), fps=cfg.fps)
    labels = [{"frame": t, "time_s": round(float(trajectory.timestamps[t]), 3), "assets": frame}
              for t, frame in enumerate(result.labels)]
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    np.savez_compressed(out_dir / "instances.npz", instance=result.instance.numpy(),
                        dynamic=result.dynamic[:, 0].numpy())
    frames = len(result.labels)
    residuals = [a["alignment_residual_px"] for frame in result.labels for a in frame
                 if a["alignment_residual_px"] is not None]
    summary = {
        "clip": str(clip_dir),
        "map": spec,
        "frames": frames,
        "assets": {kind: sum(a.kind == kind for a in assets) for kind in sorted({a.kind for a in assets})},
        "refined": refiner is not None,
        "mean_alignment_residual_px": round(float(np.mean(residuals)), 3) if residuals else None,
        "ms_per_frame": {stage: round(1000 * value / frames, 2) for stage, value in result.seconds.items()},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "video": str(video),
        "side_by_side": str(side),
        "labels": str(out_dir / "labels.json"),
        "instances": str(out_dir / "instances.npz"),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


KEYBOARD_HELP = """keys (then Enter; several at once repeat): w faster, s brake, a left, d right, space coast, q quit
MirageWorld-v0: w/s forward/back, a/d turn, r/f up/down"""


def _keyboard_action(env_id: str, keys: str) -> np.ndarray | None:
    """Action for typed ``keys`` (see KEYBOARD_HELP); None quits."""
    if "q" in keys:
        return None
    if env_id == "MirageDrive-v0":
        steer = 0.5 * (keys.count("a") - keys.count("d"))
        throttle = 0.5 * (keys.count("w") - keys.count("s"))
        return np.clip(np.array([steer, throttle], dtype=np.float32), -1, 1)
    # Camera frame: x right, y down, z forward; rotation vector (pitch up, yaw right, roll right).
    action = np.zeros(6, dtype=np.float32)
    action[2] = keys.count("w") - keys.count("s")
    action[1] = keys.count("f") - keys.count("r")
    action[4] = 0.5 * (keys.count("d") - keys.count("a"))
    return np.clip(action, -1, 1)


def play(cfg: DictConfig) -> dict:
    """Step an env with a scripted policy or the keyboard; save the video of ``render()``."""
    import gymnasium as gym

    from mirage_env.expert import RouteExpert

    if cfg.policy not in ("expert", "random", "straight", "keyboard"):
        raise SystemExit(f"mirage play: policy must be expert, random, straight or keyboard, got {cfg.policy!r}")
    if cfg.policy == "expert" and cfg.env != "MirageDrive-v0":
        raise SystemExit("mirage play: the expert drives MirageDrive-v0; use policy=random/straight/keyboard")
    env = gym.make(cfg.env, render_mode="rgb_array", map=cfg.map, renderer=cfg.renderer,
                   world_model_path=cfg.world_model_path, width=cfg.width, height=cfg.height,
                   render_size=cfg.render_size, **_env_overrides(cfg))
    env.reset(seed=cfg.seed)
    inner = env.unwrapped
    expert = RouteExpert(inner.scenario.route, inner.model) if cfg.policy == "expert" else None
    if cfg.policy == "keyboard":
        print(KEYBOARD_HELP)
    frames, total, info, played = [env.render()], 0.0, {}, 0
    for _ in tqdm(range(cfg.steps), desc=f"{cfg.env} ({cfg.policy})", unit="step", disable=cfg.policy == "keyboard"):
        if expert is not None:
            action = np.array(expert.act(inner.state, inner.traffic_boxes()), dtype=np.float32)
        elif cfg.policy == "random":
            action = env.action_space.sample()
        elif cfg.policy == "straight":
            action = np.zeros(env.action_space.shape, dtype=np.float32)
            action[1 if cfg.env == "MirageDrive-v0" else 2] = 0.5
        else:
            action = _keyboard_action(cfg.env, input("> ").lower())
            if action is None:
                break
        _, reward, terminated, truncated, info = env.step(action)
        played, total = played + 1, total + reward
        frames.append(env.render())
        if terminated or truncated:
            break
    video = write_video(cfg.out, frames, fps=env.metadata["render_fps"])
    summary = {"env": cfg.env, "policy": cfg.policy, "steps": played, "return": round(total, 2),
               "termination": info.get("termination_reason", ""),
               "infractions": {k: v for k, v in info.get("infractions", {}).items() if v}, "video": str(video)}
    print(json.dumps(summary, indent=2))
    return summary


COMMANDS = {"demo": demo, "play": play, "train-world-model": train_world_model, "train-editor": train_editor,
            "edit": edit}


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
