"""Training clips for the world model, rendered by the ground-truth renderer from procedural towns.

A clip is a camera trajectory through one town: the route expert drives a random route, and the
camera is perturbed around the mount by smooth random lateral offsets, height, yaw and pitch
(so the model sees views an agent's pose actions reach, not only the lane centre), sampled
every one to three expert steps (0.1 s each). Clips keep RGB, metric depth, semantic labels,
poses and the road layout on the latent grid at every frame. Towns come from training seeds
only: held-out seeds (:data:`mirage_env.towns.HELDOUT_SEEDS`) and Town01 are refused.

Each town's clips go into one safetensors shard (``town_<seed>.safetensors``) that records the
:class:`ClipConfig` it was rendered with; generation skips shards that exist with the same
settings, so an interrupted run resumes where it stopped, and refuses ones made with others.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mirage_env.expert import drive_route
from mirage_env.layout import LayoutRasteriser
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import load_road_map
from mirage_env.scene import dress_scene
from mirage_env.towns import is_heldout
from mirage_env.vehicle import CameraMount
from world_model.camera import camera_pose

FORMAT = "mirage-world-model-clips/1"


@dataclass
class ClipConfig:
    """How training clips are made (units in comments)."""

    size: int = 128  # [px] square images
    fov_deg: float = 90.0  # [deg] horizontal field of view
    frames: int = 32  # frames per clip
    clips_per_town: int = 4
    max_stride: int = 3  # [expert steps of 0.1 s] between frames, drawn per clip in [1, max_stride]
    lateral_m: float = 1.5  # [m] max camera offset across the lane
    height_m: tuple[float, float] = (1.2, 2.2)  # [m] camera height range
    yaw_deg: float = 30.0  # [deg] max look left / right
    pitch_deg: tuple[float, float] = (-15.0, 5.0)  # [deg] pitch range
    layout_downsample: int = 4  # image pixels per layout cell (the autoencoder's factor)
    antialias: int = 1  # colour rays per pixel side (see mirage_env.renderer.GroundTruthRenderer)


def _smooth_noise(rng: np.random.Generator, count: int, knots: int = 4) -> np.ndarray:
    """(count,) a smooth random curve in [-1, 1]: random knots, linearly interpolated."""
    values = rng.uniform(-1, 1, knots)
    return np.interp(np.linspace(0, knots - 1, count), np.arange(knots), values)


def render_town_clips(seed: int, config: ClipConfig | None = None) -> dict[str, torch.Tensor]:
    """Clips of procedural town ``seed``; see the module doc. Tensors, N clips of T frames:
    ``rgb`` (N, T, H, W, 3) uint8, ``depth`` (N, T, 1, H, W) float16 [m] (0: sky), ``semantic``
    (N, T, H, W) uint8, ``cam_to_world`` (N, T, 4, 4), ``K`` (3, 3), ``layout`` (N, T, 3, h, w)
    uint8 (fractions x 255)."""
    config = config or ClipConfig()
    if is_heldout(seed):
        raise ValueError(f"town seed {seed} is held out for evaluation; train on other seeds")
    rng = np.random.default_rng([seed, 0xC11B])
    road_map = load_road_map(f"town:{seed}")
    scene = dress_scene(road_map, seed)
    renderer = GroundTruthRenderer(scene, antialias=config.antialias)
    layout = LayoutRasteriser(scene.ground)
    mount = CameraMount(fov_deg=config.fov_deg, width=config.size, height=config.size)
    K = mount.intrinsics()
    clips = {name: [] for name in ("rgb", "depth", "semantic", "cam_to_world", "layout")}
    for _ in range(config.clips_per_town):
        stride = int(rng.integers(1, config.max_stride + 1))
        route = road_map.random_route(rng, min_length_m=60.0, max_length_m=400.0)
        ego = drive_route(route, mount, max_steps=4000).ego
        span = (config.frames - 1) * stride + 1
        if len(ego) < span:
            ego = np.concatenate([ego, np.repeat(ego[-1:], span - len(ego), axis=0)])
        start = int(rng.integers(0, len(ego) - span + 1))
        ego = ego[start : start + span : stride]
        poses = _perturbed_poses(ego, mount, config, rng)
        out = renderer.render(poses, K.expand(len(poses), 3, 3), config.size, config.size)
        clips["rgb"].append(out.rgb)
        clips["depth"].append(out.depth.half())
        clips["semantic"].append(out.semantic.to(torch.uint8))
        clips["cam_to_world"].append(poses)
        fractions = layout(poses, K.expand(len(poses), 3, 3), config.size, config.size, config.layout_downsample)
        clips["layout"].append((fractions * 255 + 0.5).to(torch.uint8))
    tensors = {name: torch.stack(values) for name, values in clips.items()}
    tensors["K"] = K
    return tensors


def _perturbed_poses(ego: np.ndarray, mount: CameraMount, config: ClipConfig, rng: np.random.Generator) -> torch.Tensor:
    count = len(ego)
    lateral = config.lateral_m * _smooth_noise(rng, count)
    height = np.interp(_smooth_noise(rng, count), [-1, 1], config.height_m)
    yaw = ego[:, 2] + math.radians(config.yaw_deg) * _smooth_noise(rng, count)
    pitch = np.radians(np.interp(_smooth_noise(rng, count), [-1, 1], config.pitch_deg))
    forward = np.stack([np.cos(ego[:, 2]), np.sin(ego[:, 2])], 1)
    left = np.stack([-forward[:, 1], forward[:, 0]], 1)
    xy = ego[:, :2] + mount.forward_m * forward + lateral[:, None] * left
    position = torch.tensor(np.concatenate([xy, height[:, None]], 1), dtype=torch.float32)
    return camera_pose(position, torch.tensor(yaw, dtype=torch.float32), torch.tensor(pitch, dtype=torch.float32))


def generate_shards(directory: str | Path, seeds, config: ClipConfig | None = None) -> list[Path]:
    """Render the clips of every town in ``seeds`` into ``directory``, one shard per town,
    skipping shards already there. Returns all shard paths."""
    config = config or ClipConfig()
    return write_town_shards(directory, seeds, lambda seed: render_town_clips(seed, config), FORMAT,
                             "rendering training towns", asdict(config))


def load_shards(paths) -> dict[str, torch.Tensor]:
    """Concatenate shards into one set of clips (the ``K`` of the first; all must agree)."""
    return read_town_shards(paths, "training shard", "ClipConfig")


def write_town_shards(directory: str | Path, seeds, render, format: str, desc: str, settings: dict) -> list[Path]:
    """``render(seed)`` (a dict of tensors) of every town in ``seeds`` saved as
    ``directory/town_<seed>.safetensors`` with the ``settings`` it was rendered with; shards
    already there are reused if they were made with the same settings, else refused (a
    ``ValueError`` naming the settings that differ). Returns all shard paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recorded = json.dumps(settings, sort_keys=True)
    paths = []
    for seed in tqdm(list(seeds), desc=desc, unit="town"):
        path = directory / f"town_{seed}.safetensors"
        if path.exists():
            _check_settings(path, recorded)
        else:
            tensors = render(int(seed))
            partial = path.with_suffix(".partial")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial),
                      metadata={"format": format, "seed": str(seed), "settings": recorded})
            partial.rename(path)  # a shard appears whole or not at all
        paths.append(path)
    return paths


def _check_settings(path: Path, recorded: str) -> None:
    """Refuse to reuse the shard ``path`` unless it was rendered with the settings ``recorded``
    (as JSON)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ValueError(f"{path} is unreadable ({error}); delete it to re-render") from error
    if "settings" not in metadata:
        raise ValueError(f"{path} does not record the settings it was rendered with (an older shard); delete it "
                         f"to re-render, or render into another directory")
    before, now = json.loads(metadata["settings"]), json.loads(recorded)
    differ = {key: (before.get(key), now.get(key)) for key in sorted(set(before) | set(now))
              if before.get(key) != now.get(key)}
    if differ:
        changes = ", ".join(f"{key}: {old!r} there, {new!r} asked" for key, (old, new) in differ.items())
        raise ValueError(f"{path} was rendered with other settings ({changes}); render into another directory "
                         f"or delete it to re-render")


def read_town_shards(paths, what: str, config_name: str, keys=None) -> dict[str, torch.Tensor]:
    """Shards concatenated along their first axis (``keys``, default all), with the ``K`` they
    share; ``what`` and ``config_name`` name them in errors."""
    paths = list(paths)
    if not paths:
        raise ValueError(f"no {what}s given")
    parts = []
    for path in paths:
        try:
            parts.append(load_file(str(path)))
        except Exception as error:  # safetensors raises several types for corrupt files
            raise ValueError(f"{what} {path} is unreadable ({error}); delete it to re-render") from error
    K = parts[0]["K"]
    if any(not torch.equal(part["K"], K) for part in parts):
        raise ValueError(f"{what}s were rendered with different intrinsics; use one {config_name}")
    keys = [name for name in parts[0] if name != "K"] if keys is None else keys
    merged = {name: torch.cat([part[name] for part in parts]) for name in keys}
    merged["K"] = K
    return merged
