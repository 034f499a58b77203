"""Training loop of the one-step refiner: pairs in, checkpoints, logs and a loss curve out.

Pairs are the tensors of :func:`mirage_env.editor_data.load_pair_shards` (any source with the
same keys works): per clip of T frames the ``background`` (no assets), the ``naive`` composite,
the ``truth`` (assets rendered as scene geometry), both asset masks and the contact ``shadow``.

Each step draws a batch of (previous, current) frame pairs and a random **frame look** per
sample, the same for both frames (Gaussian blur, per-channel gain, gamma; none for a quarter of
the samples): the look stands for whatever renderer made the frame (the ground-truth renderer,
the world model's softer and colour-shifted frames). The input is the naive asset pasted onto
the background *with* that look; the target is the truth with the contact shadow, the look
applied to everything, assets included. So the refiner learns to give the asset the scene's
lighting, colour and sharpness. The loss is the L1 error over the refiner's edit region (asset
masks grown by ``band_px``), on both frames, the current one seeing the previous one's state
(the causal temporal path).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from editors.refiner import AssetRefiner, edit_region


@dataclass
class RefinerTrainingConfig:
    """Settings of :func:`train_refiner` (units in comments)."""

    steps: int = 3000
    batch_size: int = 8
    crop_px: int = 48  # [px] square crops around an asset pixel (0: whole frames); a multiple of 4
    lr: float = 1e-3
    checkpoint_every: int = 250  # [steps]
    log_every: int = 25  # [steps]
    max_blur_px: float = 1.2  # [px] largest Gaussian sigma of the frame look
    max_gain: float = 0.15  # per-channel gain drawn in [1 - max_gain, 1 + max_gain]
    max_gamma: float = 0.25  # gamma drawn in [1 - max_gamma, 1 + max_gamma]
    plain_fraction: float = 0.25  # samples with no look at all (ground-truth frames)
    seed: int = 0


@dataclass
class Look:
    """A frame look per sample: ``blur`` (B,) [px], ``gain`` (B, 3), ``gamma`` (B,)."""

    blur: torch.Tensor
    gain: torch.Tensor
    gamma: torch.Tensor

    @classmethod
    def random(cls, batch: int, config: RefinerTrainingConfig, generator: torch.Generator | None = None) -> Look:
        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator) * 2 - 1

        plain = torch.rand(batch, generator=generator) < config.plain_fraction
        blur = torch.rand(batch, generator=generator) * config.max_blur_px
        gain = 1 + config.max_gain * uniform(batch, 3)
        gamma = 1 + config.max_gamma * uniform(batch)
        return cls(torch.where(plain, 0.0, blur), torch.where(plain[:, None], 1.0, gain),
                   torch.where(plain, 1.0, gamma))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (B, 3, H, W) in [0, 1] with this look."""
        radius = 3
        offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
        sigma = self.blur.clamp(min=1e-3)[:, None]
        kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma**2))
        kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 7); sigma ~ 0 is the identity
        batch, channels, height, width = images.shape
        x = images.reshape(1, batch * channels, height, width)
        weights = kernel.repeat_interleave(channels, 0)
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, weights[:, None, None, :], groups=batch * channels)
        x = F.conv2d(x, weights[:, None, :, None], groups=batch * channels)
        x = x.reshape(batch, channels, height, width)
        return (x.clamp(0, 1) ** self.gamma[:, None, None, None] * self.gain[:, :, None, None]).clamp(0, 1)


def pair_batch(pairs: dict, clip: torch.Tensor, frame: torch.Tensor, look: Look | None):
    """Input, mask and target of frames ``frame`` (B,) of clips ``clip`` (B,): ``(rgb (B, 3, H,
    W), naive_mask (B, 1, H, W), target (B, 3, H, W), region (B, 1, H, W) mask of changed pixels)``."""
    def image(key: str) -> torch.Tensor:
        return pairs[key][clip, frame].permute(0, 3, 1, 2).float() / 255

    background, naive, truth = image("background"), image("naive"), image("truth")
    naive_mask = pairs["naive_mask"][clip, frame].bool()
    truth_mask = pairs["truth_mask"][clip, frame].bool()
    shadowed = background * (1 - pairs["shadow"][clip, frame].float())
    target = torch.where(truth_mask, truth, shadowed)
    scene = shadowed
    if look is not None:
        scene, target = look(shadowed), look(target)
    rgb = torch.where(naive_mask, naive, scene)
    return rgb, naive_mask, target, naive_mask | truth_mask


def _crop_around_assets(tensors: tuple, region: torch.Tensor, size: int) -> tuple:
    """The same ``size`` square crop of every tensor (B, C, H, W), per sample centred on a random
    pixel of ``region`` (B, 1, H, W) (anywhere when a sample has none), kept inside the frame."""
    batch, _, height, width = region.shape
    if size % 4 or size > min(height, width):
        raise ValueError(f"`crop_px` must be a multiple of 4 no larger than the frames {height}x{width}, got {size}")
    weights = region.flatten(1).float() + 1e-6
    pixel = torch.multinomial(weights, 1)[:, 0]
    rows = (pixel // width - size // 2).clamp(0, height - size)
    cols = (pixel % width - size // 2).clamp(0, width - size)
    return tuple(torch.stack([x[b, :, rows[b]:rows[b] + size, cols[b]:cols[b] + size] for b in range(batch)])
                 for x in tensors)


def region_psnr(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR [dB] over the pixels of ``region`` (B, 1, H, W), images in [0, 1]."""
    weight = region.float().expand_as(prediction)
    mse = ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp(min=1)
    return float(10 * torch.log10(1 / mse.clamp(min=1e-10)))


def evaluate(model: AssetRefiner, pairs: dict, config: RefinerTrainingConfig, band_px: int) -> dict:
    """Region PSNR of the naive composite and of the refined frames on every second frame of
    ``pairs`` (previous frame as the temporal state), with looks drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(12345)
    clips, frames = pairs["background"].shape[:2]
    clip = torch.arange(clips)
    look = Look.random(clips, config, generator)
    model.eval()
    with torch.no_grad():
        previous_rgb, previous_mask, _, _ = pair_batch(pairs, clip, torch.zeros(clips, dtype=torch.long), look)
        state = model(previous_rgb, previous_mask).state
        rgb, mask, target, region = pair_batch(pairs, clip, torch.ones(clips, dtype=torch.long), look)
        refined = model(rgb, mask, state).rgb
    model.train()
    region = edit_region(region, band_px) > 0
    return {"val_psnr_naive": region_psnr(rgb, target, region), "val_psnr_refined": region_psnr(refined, target, region)}


def train_refiner(model: AssetRefiner, pairs: dict, config: RefinerTrainingConfig, out_dir: str | Path,
                  validation: dict | None = None) -> AssetRefiner:
    """Train ``model`` on ``pairs`` (see the module doc); resumes from ``out_dir/refiner_checkpoint.pt``."""
    from world_model.training import plot_losses

    if pairs["background"].shape[1] < 2:
        raise ValueError("refiner pairs need clips of at least 2 frames (the temporal path sees the previous one)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "refiner_checkpoint.pt"
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    step, log, seconds = 0, [], 0.0
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, log, seconds = state["step"], state["log"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])

    def save() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "log": log,
                 "seconds": seconds, "torch_rng": torch.get_rng_state(), "config": asdict(config)}
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(path)  # never leave a half-written checkpoint behind
        (out_dir / "refiner_log.json").write_text(json.dumps(log, indent=1))
        plot_losses(log, out_dir / "refiner_losses.png", "refiner")

    clips, frames = pairs["background"].shape[:2]
    band = model.config.band_px
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc="refiner", unit="step")
    sums: dict[str, float] = {}
    clock = time.perf_counter()
    while step < config.steps:
        clip = torch.randint(clips, (config.batch_size,))
        current = torch.randint(1, frames, (config.batch_size,))
        look = Look.random(config.batch_size, config)
        losses = {}
        rgb0, mask0, target0, region0 = pair_batch(pairs, clip, current - 1, look)
        rgb1, mask1, target1, region1 = pair_batch(pairs, clip, current, look)
        tensors = (rgb0, mask0, target0, region0, rgb1, mask1, target1, region1)
        if config.crop_px:
            tensors = _crop_around_assets(tensors, region1, config.crop_px)
        mirror = torch.rand(config.batch_size, 1, 1, 1) < 0.5  # mirrored streets are streets too
        rgb0, mask0, target0, region0, rgb1, mask1, target1, region1 = (
            torch.where(mirror, x.flip(-1), x) for x in tensors)
        first = model(rgb0, mask0)
        second = model(rgb1, mask1, first.state)
        for name, out, target, region in (("l1_previous", first, target0, region0), ("l1", second, target1, region1)):
            weight = edit_region(region, band)
            losses[name] = ((out.rgb - target).abs() * weight).sum() / (3 * weight.sum()).clamp(min=1)
        loss = sum(losses.values())
        for group in optimizer.param_groups:  # cosine decay to 0 at `steps` (resumes with the step count)
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        now = time.perf_counter()
        seconds += now - clock
        clock = now
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            count = config.log_every if step % config.log_every == 0 else step % config.log_every
            entry = {"step": step, "seconds": round(seconds, 1), **{k: v / count for k, v in sums.items()}}
            sums = {}
            if validation is not None and (step % config.checkpoint_every == 0 or step == config.steps):
                entry.update(evaluate(model, validation, config, band))
            log.append(entry)
            bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k.startswith(("l1", "val"))})
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
            clock = time.perf_counter()  # checkpoint time is not training time
    bar.close()
    model.eval()
    return model
