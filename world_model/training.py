"""Training loops of the default backbone: tensors in, checkpoints and loss curves out.

Stages, each resumable from its last checkpoint:

``train_autoencoder``
    Frames -> latents -> frames with an L1 loss, a small latent-magnitude penalty, random
    latent noise before decoding (so the decoder tolerates the generator's small errors), an
    adversarial hinge loss from a patch discriminator after a warm-up (so textures come out
    sharp instead of averaged), and the depth head's loss on the latents: a Laplace negative
    log-likelihood of log depth (which also teaches the head its own expected error, the
    confidence the cache filters on) plus a sky classification.
``train_generator``
    For a target frame of a clip, memory frames drawn around it (the previous frame among them,
    as in the env, unless ``previous_frame_dropout`` leaves it out) are written into a latent
    cache with the depth head's depth and confidence, as at run time, and read at the target
    pose. The generator predicts the target's latents from that read, the previous frame's
    latents, the camera motion and the road layout, with an L1 loss plus a hinge adversarial
    loss from a discriminator on latent maps (the autoencoder's decoder was trained
    adversarially to turn real-looking latents into sharp frames). A share ``memory_dropout`` of
    the samples get an empty memory instead: in a rollout the depth head is unsure of generated
    frames, so the cache soon holds nothing sure about the view and the generator works from the
    context frame alone, which it must learn too. From ``rollout_start`` on, a share of the
    batches come from the model's own rollouts instead (:class:`RolloutWorlds`): memory and
    context are then its own generated frames, as in the env, so it learns to correct its drift
    instead of compounding it. From ``noise_augmentation_start`` on, memory and context latents
    get Gaussian noise of a random level, which the generator is told
    (:func:`world_model.tiny_backbone.noised`), so that it learns to see through corrupted
    inputs rather than copy them.
``train_decoder`` (optional)
    Fine-tunes the decoder alone on the generator's latents against the true frames, or
    distils it into a smaller student decoder (decoding is a per-step cost), each with an
    adversarial loss against true frames.
``train_generator`` with a ``teacher`` (optional)
    Distils the trained generator into one with a smaller UNet (the largest per-step cost).
``train_reencoder`` (optional)
    Distils the encoder into a smaller re-encoder (:func:`with_reencoder`) for the frames the
    model shows: the world model encodes each generated frame again, a per-step cost as large
    as decoding. It learns the encoder's latents of decoded generated latents and of decoded
    true latents with noise, the frames it will see.

Clips are the tensors of :func:`mirage_env.world_model_data.load_shards` (any source with the
same keys works). Progress bars, a JSON log, checkpoints and a loss-curve PNG go to ``out_dir``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from world_model.backbone import Conditioning
from world_model.camera import relative_motion
from world_model.latent_cache import LatentCache, LatentCacheConfig
from world_model.memory import MemoryFrame, token_depth
from world_model.metrics import laplacian_variance, psnr
from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator, noised
from world_model.world_model import WorldModel


@dataclass
class StageConfig:
    """One training stage (units in comments)."""

    steps: int = 4000
    batch_size: int = 16
    lr: float = 5e-4
    adversarial_weight: float = 0.1  # times the adaptive scale (see `adversarial_scale`)
    adversarial_start: int = 1000  # [steps] adversarial loss off before this
    adversarial_ramp: int = 500  # [steps] to reach the full adversarial weight
    checkpoint_every: int = 200  # [steps]
    log_every: int = 20  # [steps]
    seed: int = 0
    rollout_start: int | None = None  # [steps] generator only: learn from its own rollouts from here (None: never)
    rollout_probability: float = 0.5  # share of those batches that are rollouts
    rollout_steps: int = 8  # [frames] longest rollout (targets per start)
    noise_augmentation_start: int | None = None  # [steps] generator only: noised inputs from here (None: never)
    noise_augmentation_max: float = 1.0  # highest noise level (in latent standard deviations), drawn uniformly
    memory_dropout: float = 0.0  # generator only: share of samples whose memory is empty (context only)
    memory_window: int = 12  # [frames] generator only: memory frames are drawn this far around the target
    previous_frame_dropout: float = 0.0  # generator only: share of samples whose memory leaves out the previous frame


class PatchDiscriminator(nn.Module):
    """Strided convolutions to a map of real/fake scores, one per patch."""

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (32, 64, 128), first_stride: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 4, stride=first_stride if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, width) if i else nn.Identity(), nn.LeakyReLU(0.2)]
            previous = width
        layers.append(nn.Conv2d(previous, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adversarial_scale(reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                      weight: float, ramp: float) -> torch.Tensor:
    """The weight of the adversarial loss: ``weight * ramp`` times the ratio of the gradient
    norms of the reconstruction and adversarial losses at the model's last layer (as in VQGAN),
    so the critic can sharpen the output but never outvote the reconstruction; a fixed weight
    let an over-confident critic wreck the reconstruction in our runs."""
    reconstruction_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    ratio = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return (weight * ramp * ratio.clamp(max=1e4)).detach()


def depth_head_loss(autoencoder: TinyAutoencoder, latents: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Laplace NLL of log depth on surface tokens plus sky BCE; ``depth`` (B, 1, H, W) [m]."""
    target = token_depth(depth, autoencoder.downsample)
    sky = target <= 0
    log_depth, log_error, sky_logit = autoencoder.depth_outputs(latents)
    sky_loss = F.binary_cross_entropy_with_logits(sky_logit, sky.float())
    surface = ~sky
    if not surface.any():
        return sky_loss
    error = (log_depth - target.clamp(min=1e-3).log()).abs()
    nll = error / log_error.exp() + log_error
    return sky_loss + nll[surface].mean()


class _Stage:
    """Checkpointing, logging, the loss curve and the adversarial step shared by the stages."""

    def __init__(self, name: str, out_dir: Path, modules: dict[str, nn.Module], optimizers: dict, config: StageConfig):
        self.name, self.out_dir, self.modules, self.optimizers, self.config = name, Path(out_dir), modules, optimizers, config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / f"{name}_checkpoint.pt"
        self.step, self.log, self.seconds = 0, [], 0.0  # seconds: training time over all runs
        self.meta: dict = {}  # what a finished stage must remember besides its weights
        self.clock = time.perf_counter()
        if self.path.exists():
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            for key, module in modules.items():
                try:
                    module.load_state_dict(state["modules"][key])
                except RuntimeError as error:  # a checkpoint of other network sizes
                    raise ValueError(
                        f"{self.path} holds a {name} stage of a different network size than this config asks "
                        f"for, so it cannot resume: train into a new out_dir, or delete the file to retrain "
                        f"this stage. ({str(error).splitlines()[0]})"
                    ) from error
            for key, optimizer in optimizers.items():
                optimizer.load_state_dict(state["optimizers"][key])
            self.step, self.log, self.seconds = state["step"], state["log"], state["seconds"]
            self.meta = state.get("meta", {})
            torch.set_rng_state(state["torch_rng"])

    @property
    def done(self) -> bool:
        """Whether the stage has trained all its steps (in this run or an earlier one)."""
        return self.step >= self.config.steps

    @classmethod
    def adversarial(cls, name: str, out_dir: Path, model: nn.Module, discriminator: nn.Module,
                    config: StageConfig) -> _Stage:
        """A stage training ``model`` with the patch critic ``discriminator`` (see :meth:`optimise`)."""
        optimizers = {
            "model": torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4),
            "discriminator": torch.optim.AdamW(discriminator.parameters(), lr=config.lr, betas=(0.5, 0.9)),
        }
        return cls(name, out_dir, {"model": model, "discriminator": discriminator}, optimizers, config)

    def optimise(self, losses: dict, reconstruction: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                 last_layer: torch.Tensor, critic_input=lambda x: x) -> None:
        """One step of an adversarial stage: from ``adversarial_start`` on, ``losses`` gain the
        adaptively weighted hinge loss of ``fake`` (scaled against ``reconstruction`` at
        ``last_layer``); the model steps on their sum (gradients clipped to norm 1); then the
        critic, warmed up for 200 steps before that, learns ``real`` vs ``fake`` (both through
        ``critic_input``). Adds ``generator_adv`` and ``critic`` to ``losses``."""
        config, discriminator = self.config, self.modules["discriminator"]
        if self.step >= config.adversarial_start:
            fool = -discriminator(critic_input(fake)).mean()
            scale = adversarial_scale(reconstruction, fool, last_layer, config.adversarial_weight,
                                      _ramp(self.step, config))
            losses["generator_adv"] = scale * fool
        self.optimizers["model"].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(self.modules["model"].parameters(), 1.0)
        self.optimizers["model"].step()
        if self.step >= config.adversarial_start - 200:  # warm the critic up first
            real_score = discriminator(critic_input(real))
            fake_score = discriminator(critic_input(fake.detach()))
            d_loss = F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            self.optimizers["discriminator"].step()
            losses["critic"] = d_loss

    def save(self) -> None:
        state = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "step": self.step, "log": self.log, "seconds": self.seconds, "torch_rng": torch.get_rng_state(),
            "config": asdict(self.config), "meta": self.meta,
        }
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.path)  # never leave a half-written checkpoint behind
        (self.out_dir / f"{self.name}_log.json").write_text(json.dumps(self.log, indent=1))
        plot_losses(self.log, self.out_dir / f"{self.name}_losses.png", self.name)


def plot_losses(log: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        return
    keys = [k for k in log[0] if k not in ("step", "seconds")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), dpi=100, squeeze=False)
    steps = [entry["step"] for entry in log]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [entry.get(key, math.nan) for entry in log])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _frames(clips: dict, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) in [0, 1] and depth (B, 1, H, W) of flat frame indices."""
    clip, frame = index // clips["rgb"].shape[1], index % clips["rgb"].shape[1]
    rgb = clips["rgb"][clip, frame].permute(0, 3, 1, 2).float() / 255
    return rgb, clips["depth"][clip, frame].float()


def train_autoencoder(autoencoder: TinyAutoencoder, clips: dict, config: StageConfig, out_dir: str | Path,
                      validation: dict | None = None) -> TinyAutoencoder:
    """Train the autoencoder and its depth head on the frames of ``clips`` (see the module doc)."""
    torch.manual_seed(config.seed)
    discriminator = PatchDiscriminator(3)
    stage = _Stage.adversarial("autoencoder", out_dir, autoencoder, discriminator, config)
    frames = clips["rgb"].shape[0] * clips["rgb"].shape[1]
    val_rgb = _frames(validation, torch.arange(0, validation["rgb"].shape[0] * validation["rgb"].shape[1], 7)[:64])[0] \
        if validation else None
    autoencoder.train()
    bar = tqdm(total=config.steps, initial=stage.step, desc="autoencoder", unit="step")
    sums: dict = {}
    while stage.step < config.steps:
        rgb, depth = _frames(clips, torch.randint(frames, (config.batch_size,)))
        mirror = torch.rand(rgb.shape[0], 1, 1, 1) < 0.5  # left-right mirrored towns are towns too
        rgb, depth = torch.where(mirror, rgb.flip(-1), rgb), torch.where(mirror, depth.flip(-1), depth)
        latents = autoencoder.encode(rgb)
        noisy = latents + torch.randn_like(latents) * 0.1 * torch.rand(latents.shape[0], 1, 1, 1)
        recon = autoencoder.decode_raw(noisy)
        target = rgb * 2 - 1
        losses = {
            "l1": (recon - target).abs().mean(),
            "latent_l2": 1e-3 * latents.pow(2).mean(),
            "depth": 0.2 * depth_head_loss(autoencoder, latents, depth),
        }
        stage.optimise(losses, losses["l1"], recon, target, autoencoder.decoder[-2].weight)
        _log_step(stage, losses, sums, bar, lambda: {"val_psnr": reconstruction_psnr(autoencoder, val_rgb)}
                  if val_rgb is not None else {})
    bar.close()
    stage.save()
    return autoencoder.eval()


def _ramp(step: int, config: StageConfig) -> float:
    return min(1.0, (step - config.adversarial_start + 1) / max(1, config.adversarial_ramp))


def _log_step(stage: _Stage, losses: dict, sums: dict, bar, evaluate) -> None:
    """Advance the step; every ``log_every`` steps log mean losses (and ``evaluate()``'s
    metrics), every ``checkpoint_every`` steps save."""
    for key, value in losses.items():
        sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
    sums["_count"] = sums.get("_count", 0) + 1
    stage.step += 1
    bar.update(1)
    config = stage.config
    if stage.step % config.log_every == 0 or stage.step == config.steps:
        count = sums.pop("_count")
        entry = {"step": stage.step, **{k: v / count for k, v in sums.items()}}
        sums.clear()
        if stage.step % config.checkpoint_every == 0 or stage.step == config.steps:
            entry.update(evaluate())
        now = time.perf_counter()
        # Training time, not wall time: more than 10 s per step means the process was paused.
        stage.seconds += min(now - stage.clock, 10.0 * config.log_every)
        stage.clock = now
        entry["seconds"] = round(stage.seconds, 1)
        stage.log.append(entry)
        bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k not in ("step", "seconds")})
    if stage.step % config.checkpoint_every == 0:
        stage.save()


@torch.no_grad()
def reconstruction_psnr(autoencoder: TinyAutoencoder, rgb: torch.Tensor) -> float:
    autoencoder.eval()
    value = float(psnr(autoencoder.decode(autoencoder.encode(rgb)), rgb).mean())
    autoencoder.train()
    return value


@torch.no_grad()
def encode_clips(autoencoder: TinyAutoencoder, clips: dict, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Latents (N, T, C, h, w) float16 and the depth head's per-token depth and confidence
    (N, T, 1, h, w) of every frame of ``clips``."""
    autoencoder.eval()
    count, length = clips["rgb"].shape[:2]
    flat = torch.arange(count * length)
    parts: dict[str, list] = {"latents": [], "depth": [], "confidence": []}
    for start in tqdm(range(0, len(flat), batch_size), desc="encoding clips", unit="batch"):
        rgb, _ = _frames(clips, flat[start : start + batch_size])
        latents = autoencoder.encode(rgb)
        depth, confidence = autoencoder.estimate_depth(latents)
        parts["latents"].append(latents.half())
        parts["depth"].append(depth)
        parts["confidence"].append(confidence.half())
    return {k: torch.cat(v).view(count, length, *v[0].shape[1:]) for k, v in parts.items()}


def latent_std(latents: torch.Tensor) -> float:
    """Standard deviation of encoded clip latents (over the first 8 clips): the unit of the
    latent noise levels in training and of the generator's ``latent_std``."""
    return float(latents[:8].float().std())


def generator_batch(clips: dict, encoded: dict, batch_size: int, downsample: int, generator: torch.Generator,
                    window: int = 12, max_memory_frames: int = 5, latent_noise: float = 0.1,
                    memory_dropout: float = 0.0, previous_frame_dropout: float = 0.0):
    """A training batch for the generator: ``(conditioning, target latents (B, C, h, w), target
    images (B, 3, H, W))``; see the module doc. Memory frames are written in time order into
    one cache per sample, with ground-truth depth for half the samples and the depth head's
    depth and confidence for the rest; memory and context latents get relative noise of up to
    ``latent_noise`` (generated latents are never exact). A share ``memory_dropout`` of the
    samples get an empty memory: the generator then has only the context frame, the camera
    motion and the layout, as in a rollout once the memory holds nothing sure about the view.
    Other memory frames are drawn within ``window`` frames of the target; a share
    ``previous_frame_dropout`` of the memories leave the previous frame out (only frames
    further away, or none)."""
    count, length = clips["rgb"].shape[:2]
    latents_all = encoded["latents"]
    channels = latents_all.shape[2]
    # The shipped generator was trained on reads without the unsure-depth penalty (the default
    # since); kept so that its training command still reproduces it.
    cache = LatentCache(batch_size, channels, LatentCacheConfig(downsample=downsample, unsure_depth_penalty=0.0))
    K = clips["K"][None]
    image_size = tuple(clips["rgb"].shape[2:4])
    scale = latent_std(latents_all)

    def rand(high: int, low: int = 0) -> int:
        return int(torch.randint(low, high, (1,), generator=generator))

    def noisy(latents: torch.Tensor) -> torch.Tensor:
        sigma = latent_noise * scale * float(torch.rand(1, generator=generator))
        return latents.float() + sigma * torch.randn(latents.shape, generator=generator)

    targets, contexts, target_poses, context_poses, layouts, images = [], [], [], [], [], []
    memories: list[tuple[int, list[int], bool]] = []  # (clip, memory frames in time order, ground-truth depth)
    for sample in range(batch_size):
        clip, t = rand(count), rand(length, 1)
        others = [f for f in range(max(0, t - window), min(length, t + window + 1)) if f not in (t, t - 1)]
        chosen = sorted(others[i] for i in torch.randperm(len(others), generator=generator)[:rand(max_memory_frames + 1)])
        frames = sorted(set(chosen + [t - 1]))
        if previous_frame_dropout and float(torch.rand(1, generator=generator)) < previous_frame_dropout:
            frames = chosen  # sorted; nothing but frames further away, maybe none
        if memory_dropout and float(torch.rand(1, generator=generator)) < memory_dropout:
            frames = []
        memories.append((clip, frames, rand(2) == 0))
        targets.append(latents_all[clip, t].float())
        contexts.append(noisy(latents_all[clip, t - 1]))
        target_poses.append(clips["cam_to_world"][clip, t])
        context_poses.append(clips["cam_to_world"][clip, t - 1])
        layouts.append(clips["layout"][clip, t].float() / 255)
        images.append(clips["rgb"][clip, t].permute(2, 0, 1).float() / 255)
    # Round r writes every sample's r-th memory frame in one batched call, so each sample's
    # cache still sees its frames in time order.
    for round_ in range(max(len(frames) for _, frames, _ in memories)):  # no rounds if every memory is empty
        samples = [s for s, (_, frames, _) in enumerate(memories) if round_ < len(frames)]
        latents, depths, confidences = [], [], []
        for sample in samples:
            clip, frames, ground_truth = memories[sample]
            frame = frames[round_]
            latents.append(noisy(latents_all[clip, frame]))
            if ground_truth:
                depths.append(token_depth(clips["depth"][clip, frame][None].float(), downsample)[0])
                confidences.append(torch.ones_like(depths[-1]))
            else:
                depths.append(encoded["depth"][clip, frame].float())
                confidences.append(encoded["confidence"][clip, frame].float())
        poses = torch.stack([clips["cam_to_world"][memories[s][0], memories[s][1][round_]] for s in samples])
        cache.write(MemoryFrame(torch.stack(latents), torch.stack(depths), K.expand(len(samples), 3, 3), poses,
                                confidence=torch.stack(confidences)), cache_ids=samples)
    target_poses = torch.stack(target_poses)
    read = cache.read(target_poses, K.expand(batch_size, 3, 3), image_size, cache_ids=torch.arange(batch_size))
    conditioning = Conditioning(
        memory=read,
        context=torch.stack(contexts)[:, None],
        motion=relative_motion(torch.stack(context_poses), target_poses),
        layout=torch.stack(layouts),
    )
    return conditioning, torch.stack(targets), torch.stack(images)


class RolloutWorlds:
    """``batch_size`` world models, each driving along a training clip on generated frames, as
    in the env: a world starts from a clip frame (with ground-truth depth for half the starts,
    the depth head's for the others) and lives for a horizon of up to ``longest`` frames
    (exactly ``longest`` with ``exact``), then starts again elsewhere. ``targets`` gives the
    conditioning for every world's next pose with the true latents and image there;
    ``advance`` takes the frames generated for it. Training advances the worlds with the
    very predictions it learns from, so rolling out costs no extra generation; learning to
    pull them back to the truth keeps long rollouts from drifting (exposure bias)."""

    def __init__(self, clips: dict, encoded: dict, backbone: TinyBackbone, batch_size: int,
                 generator: torch.Generator, longest: int, exact: bool = False):
        self.clips, self.encoded, self.generator, self.exact = clips, encoded, generator, exact
        self.count, self.length = clips["rgb"].shape[:2]
        if not 1 <= longest < self.length:
            raise ValueError(f"rollouts must last 1 to {self.length - 1} frames for clips of {self.length}, got {longest}")
        self.longest = longest
        self.K = clips["K"][None].expand(batch_size, 3, 3)
        self.world = WorldModel(backbone, batch_size)
        self.clip = torch.zeros(batch_size, dtype=torch.long)
        self.frame = torch.zeros(batch_size, dtype=torch.long)  # the latest frame each world has
        self.left = torch.zeros(batch_size, dtype=torch.long)  # targets left before it starts again
        self._start(torch.arange(batch_size))

    def _start(self, ids: torch.Tensor) -> None:
        count, g = len(ids), self.generator
        clip = torch.randint(0, self.count, (count,), generator=g)
        horizon = (torch.full((count,), self.longest) if self.exact
                   else torch.randint(1, self.longest + 1, (count,), generator=g))
        start = (torch.rand(count, generator=g) * (self.length - horizon)).long()
        ground_truth = bool(torch.randint(0, 2, (1,), generator=g))
        depth = self.clips["depth"][clip, start].float() if ground_truth else None
        self.world.reset(self.clips["rgb"][clip, start], self.K[:count], self.clips["cam_to_world"][clip, start],
                         depth=depth, env_ids=ids)
        self.clip[ids], self.frame[ids], self.left[ids] = clip, start, horizon

    def targets(self) -> tuple[Conditioning, torch.Tensor, torch.Tensor]:
        """Conditioning for every world's next frame, its true latents (B, C, h, w) and image
        (B, 3, H, W); what :func:`generator_batch` returns."""
        clip, target = self.clip, self.frame + 1
        layout = self.clips["layout"][clip, target].float() / 255
        conditioning = self.world.conditioning(self.clips["cam_to_world"][clip, target], self.K, layout=layout)
        images = self.clips["rgb"][clip, target].permute(0, 3, 1, 2).float() / 255
        return conditioning, self.encoded["latents"][clip, target].float(), images

    def advance(self, latents: torch.Tensor) -> None:
        """Take ``latents`` as every world's next frame; worlds at the end of their horizon start again."""
        self.frame += 1
        self.left -= 1
        self.world.observe(latents, self.clips["cam_to_world"][self.clip, self.frame], self.K)
        done = (self.left == 0).nonzero().flatten()
        if len(done):
            self._start(done)


@torch.no_grad()
def rollout_batch(clips: dict, encoded: dict, backbone: TinyBackbone, batch_size: int, generator: torch.Generator,
                  steps: int):
    """A batch at the end of rollouts of ``steps`` frames: worlds start from clip frames,
    ``backbone`` generates ``steps - 1`` frames along the clips' poses, and the batch is the
    conditioning for the next pose with the truth there (see :class:`RolloutWorlds`)."""
    worlds = RolloutWorlds(clips, encoded, backbone, batch_size, generator, steps, exact=True)
    for _ in range(steps - 1):
        worlds.advance(backbone.generate(worlds.targets()[0], generator))
    return worlds.targets()


VALIDATION_ROLLOUT = 16  # [frames] `val_psnr_rollout` is measured on the frame after 15 generated ones


def train_generator(autoencoder: TinyAutoencoder, generator: TinyGenerator, clips: dict, config: StageConfig,
                    out_dir: str | Path, validation: dict | None = None,
                    teacher: TinyGenerator | None = None) -> TinyGenerator:
    """Train the one-step generator on ``clips`` with a frozen ``autoencoder`` (see the module doc).

    With ``teacher`` (a trained generator), ``generator`` is a smaller student distilled from it:
    its L1 loss is against the teacher's latents for the same inputs and noise (one fixed
    target per draw, where the truth is one of many) while the critic still compares it with
    true latents. Its stage checkpoints as ``generator_student``."""
    torch.manual_seed(config.seed)
    autoencoder.eval().requires_grad_(False)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    cfg = generator.config
    discriminator = PatchDiscriminator(cfg.latent_channels + 1 + cfg.layout_channels, channels=(64, 128), first_stride=1)
    stage = _Stage.adversarial("generator" if teacher is None else "generator_student", out_dir, generator,
                               discriminator, config)
    if stage.done and "latent_std" in stage.meta:  # trained in an earlier run: skip encoding the clips
        generator.register_to_config(latent_std=stage.meta["latent_std"])
        return generator.eval()
    encoded = encode_clips(autoencoder, clips)
    # The unit of noise levels, saved with the generator for the backbone's `context_noise`.
    stage.meta["latent_std"] = round(latent_std(encoded["latents"]), 4)
    generator.register_to_config(latent_std=stage.meta["latent_std"])
    downsample = autoencoder.downsample
    sampler = torch.Generator().manual_seed(config.seed + stage.step)
    backbone = TinyBackbone(autoencoder, generator)  # the rollouts' renderer, sharing the trained weights
    if validation is None:
        evaluate = dict  # no validation data: no metrics
    else:
        val_encoded = encode_clips(autoencoder, validation)
        val_batch = generator_batch(validation, val_encoded, 32, downsample, torch.Generator().manual_seed(1234),
                                    latent_noise=0.0)

        def evaluate() -> dict[str, float]:
            metrics = _generator_metrics(autoencoder, generator, val_batch)
            # A frame after a run of generated ones, as in the env (same starts every time).
            generator.eval()
            steps = min(VALIDATION_ROLLOUT, validation["rgb"].shape[1] - 1)
            conditioning, _, images = rollout_batch(validation, val_encoded, backbone, 32,
                                                    torch.Generator().manual_seed(1234), steps)
            metrics["val_psnr_rollout"] = _generated_psnr(autoencoder, generator, conditioning, images)
            generator.train()
            return metrics

    def critic_input(latents: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        return torch.cat([latents, conditioning.memory.valid.float(), conditioning.layout], dim=1)

    worlds = None  # the rollouts, started at the first rollout batch
    generator.train()
    bar = tqdm(total=config.steps, initial=stage.step, desc=stage.name, unit="step")
    sums: dict = {}
    while stage.step < config.steps:
        rollout = (config.rollout_start is not None and stage.step >= config.rollout_start
                   and float(torch.rand(1, generator=sampler)) < config.rollout_probability)
        if rollout:
            if worlds is None:
                longest = min(config.rollout_steps, clips["rgb"].shape[1] - 1)
                worlds = RolloutWorlds(clips, encoded, backbone, config.batch_size, sampler, longest)
            conditioning, target, _ = worlds.targets()
        else:
            conditioning, target, _ = generator_batch(clips, encoded, config.batch_size, downsample, sampler,
                                                      window=config.memory_window,
                                                      memory_dropout=config.memory_dropout,
                                                      previous_frame_dropout=config.previous_frame_dropout)
        level = None
        if config.noise_augmentation_start is not None and stage.step >= config.noise_augmentation_start:
            level = torch.rand(target.shape[0], generator=sampler) * config.noise_augmentation_max
            conditioning = noised(conditioning, level, generator.config.latent_std, sampler)
        noise = torch.randn(target.shape[0], cfg.noise_channels, *target.shape[-2:])
        prediction = generator(conditioning, noise, level)
        if rollout:
            worlds.advance(prediction)
        goal = target
        if teacher is not None:
            with torch.no_grad():
                goal = teacher(conditioning, noise, level)
        losses = {"l1": (prediction - goal).abs().mean()}
        stage.optimise(losses, losses["l1"], prediction, target, generator.unet.conv_out.weight,
                       critic_input=lambda latents: critic_input(latents, conditioning))
        _log_step(stage, losses, sums, bar, evaluate)
    bar.close()
    stage.save()
    return generator.eval()


def _generated_and_noised(generator: TinyGenerator, conditioning: Conditioning, latents: torch.Tensor,
                          scale, sampler: torch.Generator) -> torch.Tensor:
    """The generator's latents for the first half of a batch, the true ``latents`` with noise of
    up to 0.1 ``scale`` for the rest: what a decoder or re-encoder stage trains on."""
    half = latents.shape[0] // 2
    noise = torch.randn(latents.shape[0], generator.config.noise_channels, *latents.shape[-2:], generator=sampler)
    generated = generator(conditioning, noise)
    latents = latents + 0.1 * scale * torch.rand(latents.shape[0], 1, 1, 1, generator=sampler) \
        * torch.randn(latents.shape, generator=sampler)
    return torch.cat([generated[:half], latents[half:]])


def laplacian_pyramid_loss(prediction: torch.Tensor, target: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """Mean L1 distance of the band-pass levels (each image minus its blurred, 2x-downsampled
    and re-upsampled self) of two image batches: it weighs fine detail the way plain L1 on the
    pixels, dominated by smooth areas, does not."""
    loss = prediction.new_zeros(())
    for _ in range(levels):
        small_p, small_t = F.avg_pool2d(prediction, 2), F.avg_pool2d(target, 2)
        band_p = prediction - F.interpolate(small_p, scale_factor=2, mode="bilinear", align_corners=False)
        band_t = target - F.interpolate(small_t, scale_factor=2, mode="bilinear", align_corners=False)
        loss = loss + (band_p - band_t).abs().mean()
        prediction, target = small_p, small_t
    return loss


def train_decoder(autoencoder: TinyAutoencoder, generator: TinyGenerator, clips: dict, config: StageConfig,
                  out_dir: str | Path, validation: dict | None = None,
                  student: TinyAutoencoder | None = None) -> TinyAutoencoder:
    """Fine-tune the autoencoder's decoder alone on the latents the trained generator makes
    (and, for half of each batch, on true latents with noise), against the true frames: L1,
    a Laplacian-pyramid loss and a hinge adversarial loss. The encoder, depth head and
    generator stay frozen, so the latent space and the generator remain valid; only the
    frames get sharper. Validation logs the sharpness ratio (Laplacian variance of decoded
    generated frames over the truth's) and their PSNR.

    With ``student`` (an autoencoder with the same encoder and depth head and a smaller
    decoder, see :func:`decoder_student`), its decoder is trained instead, on the same inputs,
    to reproduce the autoencoder's decoded frames (distillation: L1 and pyramid losses against
    them) while the critic still tells its frames from true ones; returns the student."""
    torch.manual_seed(config.seed)
    autoencoder.eval().requires_grad_(False)
    generator.eval().requires_grad_(False)
    trained = autoencoder if student is None else student.eval().requires_grad_(False)
    decoder = trained.decoder.requires_grad_(True)
    discriminator = PatchDiscriminator(3)
    stage = _Stage.adversarial("decoder", out_dir, decoder, discriminator, config)
    if stage.done:  # trained in an earlier run: skip encoding the clips
        decoder.requires_grad_(False)
        return trained.eval()
    encoded = encode_clips(autoencoder, clips)
    downsample = autoencoder.downsample
    sampler = torch.Generator().manual_seed(config.seed + stage.step)
    if validation is None:
        evaluate = dict  # no validation data: no metrics
    else:
        val_encoded = encode_clips(autoencoder, validation)
        val_conditioning, _, val_images = generator_batch(validation, val_encoded, 32, downsample,
                                                          torch.Generator().manual_seed(1234), latent_noise=0.0)

        def evaluate() -> dict[str, float]:
            decoder.eval()
            frames = _generated(trained, generator, val_conditioning)
            decoder.train()
            return {"val_psnr": float(psnr(frames, val_images).mean()),
                    "val_sharpness_ratio": float(laplacian_variance(frames).mean() / laplacian_variance(val_images).mean())}

    decoder.train()
    bar = tqdm(total=config.steps, initial=stage.step, desc="decoder" if student is None else "decoder student",
               unit="step")
    sums: dict = {}
    while stage.step < config.steps:
        conditioning, latents, images = generator_batch(clips, encoded, config.batch_size, downsample, sampler)
        with torch.no_grad():
            inputs = _generated_and_noised(generator, conditioning, latents, latents.std(), sampler)
            real = images * 2 - 1
            target = real if student is None else autoencoder.decode_raw(inputs)
        recon = trained.decode_raw(inputs)
        losses = {"l1": (recon - target).abs().mean(), "pyramid": laplacian_pyramid_loss(recon, target)}
        stage.optimise(losses, losses["l1"] + losses["pyramid"], recon, real, decoder[-2].weight)
        _log_step(stage, losses, sums, bar, evaluate)
    bar.close()
    stage.save()
    decoder.requires_grad_(False)
    return trained.eval()


def generator_student(teacher: TinyGenerator, block_out_channels: tuple[int, ...],
                      layers_per_block: int) -> TinyGenerator:
    """An untrained generator taking the same inputs as ``teacher`` with a smaller UNet of
    ``block_out_channels`` / ``layers_per_block``: for :func:`train_generator` to distil the
    teacher into, as the UNet is the largest per-step cost."""
    config = teacher.config
    return TinyGenerator(latent_channels=config.latent_channels, context_frames=config.context_frames,
                         layout_channels=config.layout_channels, noise_channels=config.noise_channels,
                         block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                         norm_groups=config.norm_groups, latent_std=config.latent_std,
                         context_noise=config.context_noise)


def decoder_student(autoencoder: TinyAutoencoder, decoder_channels: tuple[int, ...],
                    decoder_blocks: tuple[int, ...]) -> TinyAutoencoder:
    """An autoencoder with ``autoencoder``'s encoder and depth head (copied) and a new, untrained
    decoder of ``decoder_channels`` / ``decoder_blocks``: for :func:`train_decoder` to distil
    the decoder into, as decoding is a per-step cost."""
    config = autoencoder.config
    student = TinyAutoencoder(latent_channels=config.latent_channels, encoder_channels=tuple(config.encoder_channels),
                              decoder_channels=tuple(decoder_channels), decoder_blocks=tuple(decoder_blocks),
                              depth_channels=config.depth_channels, norm_groups=config.norm_groups)
    student.encoder.load_state_dict(autoencoder.encoder.state_dict())
    student.depth_head.load_state_dict(autoencoder.depth_head.state_dict())
    return student


def with_reencoder(autoencoder: TinyAutoencoder, channels: tuple[int, ...]) -> TinyAutoencoder:
    """``autoencoder`` (weights copied) with a new, untrained re-encoder of ``channels`` per
    level, for :func:`train_reencoder` to distil the encoder into."""
    config = {key: autoencoder.config[key] for key in ("latent_channels", "encoder_channels", "decoder_channels",
                                                       "decoder_blocks", "depth_channels", "norm_groups")}
    copy = TinyAutoencoder(**config, reencoder_channels=tuple(channels))
    weights = {key: value for key, value in autoencoder.state_dict().items() if not key.startswith("reencoder.")}
    copy.load_state_dict(weights, strict=False)  # all but the re-encoder
    return copy


def train_reencoder(autoencoder: TinyAutoencoder, generator: TinyGenerator, clips: dict, config: StageConfig,
                    out_dir: str | Path, validation: dict | None = None) -> TinyAutoencoder:
    """Train ``autoencoder.reencoder`` (see :func:`with_reencoder`) to give the encoder's latents
    for the frames the world model re-encodes: half of each batch decoded generator latents,
    half decoded true latents with noise of up to 0.1 latent standard deviations. L1 loss in
    units of the latents' standard deviation. Validation logs that error on generated frames
    (``val_latent_error``) and the PSNR of their re-encoder latents decoded against their
    encoder latents decoded (``val_psnr_vs_encoder``). Everything else stays frozen."""
    if autoencoder.reencoder is None:
        raise ValueError("the autoencoder has no re-encoder to train: make one with with_reencoder()")
    torch.manual_seed(config.seed)
    autoencoder.eval().requires_grad_(False)
    generator.eval().requires_grad_(False)
    reencoder = autoencoder.reencoder.requires_grad_(True)
    stage = _Stage("reencoder", out_dir, {"model": reencoder},
                   {"model": torch.optim.AdamW(reencoder.parameters(), lr=config.lr, weight_decay=1e-4)}, config)
    if stage.done:
        reencoder.requires_grad_(False)
        return autoencoder
    encoded = encode_clips(autoencoder, clips)
    scale = latent_std(encoded["latents"])
    downsample = autoencoder.downsample
    sampler = torch.Generator().manual_seed(config.seed + stage.step)
    if validation is None:
        evaluate = dict
    else:
        val_conditioning = generator_batch(validation, encode_clips(autoencoder, validation), 32, downsample,
                                           torch.Generator().manual_seed(1234), latent_noise=0.0)[0]
        val_frames = _generated(autoencoder, generator, val_conditioning)
        val_target = autoencoder.encode(val_frames)

        @torch.no_grad()
        def evaluate() -> dict[str, float]:
            reencoder.eval()
            latents = autoencoder.reencode(val_frames)
            reencoder.train()
            return {"val_latent_error": float((latents - val_target).abs().mean() / scale),
                    "val_psnr_vs_encoder": float(psnr(autoencoder.decode(latents),
                                                      autoencoder.decode(val_target)).mean())}

    reencoder.train()
    bar = tqdm(total=config.steps, initial=stage.step, desc="re-encoder", unit="step")
    sums: dict = {}
    optimizer = stage.optimizers["model"]
    while stage.step < config.steps:
        conditioning, latents, _ = generator_batch(clips, encoded, config.batch_size, downsample, sampler)
        with torch.no_grad():
            images = autoencoder.decode(_generated_and_noised(generator, conditioning, latents, scale, sampler))
            target = autoencoder.encode(images)
        losses = {"l1": (autoencoder.reencode(images) - target).abs().mean() / scale}
        optimizer.zero_grad(set_to_none=True)
        losses["l1"].backward()
        torch.nn.utils.clip_grad_norm_(reencoder.parameters(), 1.0)
        optimizer.step()
        _log_step(stage, losses, sums, bar, evaluate)
    bar.close()
    stage.save()
    reencoder.requires_grad_(False)
    return autoencoder.eval()


@torch.no_grad()
def _generator_metrics(autoencoder: TinyAutoencoder, generator: TinyGenerator, batch) -> dict[str, float]:
    """Validation PSNR of generated frames vs ground truth, on the whole frame and on the cells
    the memory covered, beside repeating the previous frame (decoded context)."""
    conditioning, _, images = batch
    generator.eval()
    frames = _generated(autoencoder, generator, conditioning)
    generator.train()
    covered = F.interpolate(conditioning.memory.valid.float(), size=images.shape[-2:], mode="nearest") > 0
    previous = autoencoder.decode(conditioning.context[:, -1])
    return {
        "val_psnr": float(psnr(frames, images).mean()),
        "val_psnr_covered": float(psnr(frames, images, covered).nanmean()),
        "val_psnr_repeat_previous": float(psnr(previous, images).mean()),
    }


@torch.no_grad()
def _generated(autoencoder: TinyAutoencoder, generator: TinyGenerator, conditioning: Conditioning) -> torch.Tensor:
    """Decoded frames the generator makes from ``conditioning`` with fixed noise."""
    noise = torch.randn(conditioning.memory.latents.shape[0], generator.config.noise_channels,
                        *conditioning.memory.latents.shape[-2:], generator=torch.Generator().manual_seed(0))
    return autoencoder.decode(generator(conditioning, noise))


def _generated_psnr(autoencoder: TinyAutoencoder, generator: TinyGenerator, conditioning: Conditioning,
                    images: torch.Tensor) -> float:
    return float(psnr(_generated(autoencoder, generator, conditioning), images).mean())
