"""The default CPU backbone: a small autoencoder with a co-trained depth head, and a one-step
generator, both built from diffusers classes and trained by ``mirage train-world-model``.

TinyAutoencoder
    Encoder: a stride-2 convolution and a diffusers ``ResnetBlock2D`` per level, 4x down to
    (8, H/4, W/4) latents. Decoder: residual blocks at the latent grid, then sub-pixel
    (pixel-shuffle) upsampling, so most of its work runs at low resolution: decoding is the
    per-step cost that bounds frames per second. The depth head reads the latents (the
    published method co-trains a depth estimator on them) and predicts, per token, log depth,
    its expected error and whether the token is sky. An optional re-encoder, an encoder of fewer
    channels distilled from the encoder (``reencoder_channels``), encodes the frames the model
    generated itself again (``WorldModelConfig.reencode``) in 40 to 50 % of the encoder's time.
TinyGenerator
    A diffusers ``UNet2DModel`` on the latent grid that generates a target frame's latents in
    one step from the memory read (latents, validity, depth), the latest context latents, the
    camera motion since them, the road layout and a few channels of noise. It predicts a
    correction to a base (the memory latents where valid, the latest context elsewhere), and is
    trained with a regression and an adversarial loss so that new content is sharp rather than
    a blurred average; the noise, drawn from the caller's ``torch.Generator``, is what lets it
    choose one texture among many. Trained with noise augmentation (:func:`noised`), it also
    takes a noise level: that of the noise added to its memory and context latents, which it
    learns to see through instead of copying, as it must with its own drifting frames.
"""

from __future__ import annotations

import contextlib
import math
from copy import deepcopy as copy_module
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from world_model.backbone import PRECISIONS, Conditioning

MIN_DEPTH_M, MAX_DEPTH_M = 0.3, 300.0  # [m] range of the depth head
DEPTH_ERROR_FOR_HALF_CONFIDENCE = 0.07  # expected |log depth error| at which confidence is 0.5
NOISE_LEVEL_TIMESTEPS = 1000.0  # UNet timestep per unit of noise level
ATTENTION_HEAD_CHANNELS = 32  # the generator's lowest UNet level attends in heads of this many channels


class ResidualBlock(nn.Module):
    """A ``ResnetBlock2D`` without a time embedding, usable in ``nn.Sequential``."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block = ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=None, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, None)


def _residuals(channels: int, count: int, groups: int) -> list[nn.Module]:
    return [ResidualBlock(channels, groups) for _ in range(count)]


def _encoder(channels: tuple[int, ...], latent_channels: int, groups: int) -> nn.Sequential:
    """Images in [-1, 1] -> latents: per level a stride-2 convolution and a residual block."""
    layers: list[nn.Module] = []
    previous = 3
    for width in channels:
        layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.SiLU(), ResidualBlock(width, groups)]
        previous = width
    layers += [nn.GroupNorm(groups, previous), nn.SiLU(), nn.Conv2d(previous, latent_channels, 3, padding=1)]
    return nn.Sequential(*layers)


class TinyAutoencoder(ModelMixin, ConfigMixin):
    """Images (B, 3, H, W) in [0, 1] <-> latents (B, latent_channels, H / 2**levels, W / 2**levels),
    plus a depth head on the latents. ``levels`` = ``len(encoder_channels)``.

    ``reencoder_channels``: also build a smaller encoder of these channels per level (as many
    levels), which :meth:`reencode` runs instead of the encoder once trained to match it
    (``world_model.training.train_reencoder``); None: :meth:`reencode` is :meth:`encode`."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        encoder_channels: tuple[int, ...] = (32, 64),
        decoder_channels: tuple[int, ...] = (64, 32),
        decoder_blocks: tuple[int, ...] = (2, 1),
        depth_channels: int = 32,
        norm_groups: int = 8,
        reencoder_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if len(decoder_channels) != len(encoder_channels) or len(decoder_blocks) != len(decoder_channels):
            raise ValueError("encoder_channels, decoder_channels and decoder_blocks must have one entry per level")
        if reencoder_channels is not None and len(reencoder_channels) != len(encoder_channels):
            raise ValueError(f"reencoder_channels must have one entry per level ({len(encoder_channels)}), "
                             f"got {tuple(reencoder_channels)}")
        self.encoder = _encoder(tuple(encoder_channels), latent_channels, norm_groups)
        self.reencoder = (None if reencoder_channels is None
                          else _encoder(tuple(reencoder_channels), latent_channels, norm_groups))

        layers = [nn.Conv2d(latent_channels, decoder_channels[0], 3, padding=1)]
        for level, (channels, blocks) in enumerate(zip(decoder_channels, decoder_blocks)):
            layers += _residuals(channels, blocks, norm_groups)
            last = level == len(decoder_channels) - 1
            out = 3 if last else decoder_channels[level + 1]
            if last:
                layers += [nn.GroupNorm(norm_groups, channels), nn.SiLU()]
            layers += [nn.Conv2d(channels, out * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*layers)

        self.depth_head = nn.Sequential(
            nn.Conv2d(latent_channels, depth_channels, 3, padding=1),
            nn.SiLU(),
            *_residuals(depth_channels, 2, norm_groups),
            nn.Conv2d(depth_channels, 3, 3, padding=1),  # log depth, log expected error, sky logit
        )

    @property
    def downsample(self) -> int:
        return 2 ** len(self.config.encoder_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.downsample)
        return self.encoder(images * 2 - 1)

    def reencode(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` through the re-encoder when there is one."""
        if self.reencoder is None:
            return self.encode(images)
        _check_images(images, self.downsample)
        return self.reencoder(images * 2 - 1)

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoder output before clamping, in [-1, 1] image units (for training losses)."""
        return self.decoder(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.decode_raw(latents) + 1) / 2).clamp(0, 1)

    def depth_outputs(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs (B, 1, h, w) each: log depth, log expected |log depth error|, sky logit."""
        out = self.depth_head(latents)
        log_depth = out[:, :1].clamp(math.log(MIN_DEPTH_M), math.log(MAX_DEPTH_M))
        return log_depth, out[:, 1:2], out[:, 2:3]

    def estimate_depth(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token depth (B, 1, h, w) [m] (0 where the head sees sky) and confidence in [0, 1]:
        ``0.5 ** (expected error / DEPTH_ERROR_FOR_HALF_CONFIDENCE)``, 0 on sky."""
        log_depth, log_error, sky_logit = self.depth_outputs(latents)
        sky = sky_logit > 0
        depth = torch.where(sky, torch.zeros_like(log_depth), log_depth.exp())
        confidence = torch.pow(0.5, log_error.exp() / DEPTH_ERROR_FOR_HALF_CONFIDENCE)
        return depth, torch.where(sky, torch.zeros_like(confidence), confidence)


class TinyGenerator(ModelMixin, ConfigMixin):
    """One-step latent generator: a ``UNet2DModel`` over the conditioning channels."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        context_frames: int = 1,
        layout_channels: int = 3,
        noise_channels: int = 2,
        block_out_channels: tuple[int, ...] = (32, 64, 96),
        layers_per_block: int = 1,
        norm_groups: int = 16,
        latent_std: float = 1.0,
        context_noise: float = 0.0,
    ):
        """``latent_std``: the standard deviation of the autoencoder's latents (training sets it),
        the unit of noise levels. ``context_noise``: the level (in ``latent_std``) of the noise
        the backbone adds to memory and context latents before generating (0: none)."""
        super().__init__()
        if block_out_channels[-1] < ATTENTION_HEAD_CHANNELS:
            raise ValueError(f"the last of block_out_channels {tuple(block_out_channels)} attends in heads of "
                             f"{ATTENTION_HEAD_CHANNELS} channels: make it at least {ATTENTION_HEAD_CHANNELS}")
        in_channels = latent_channels * (1 + context_frames) + 2 + 6 + layout_channels + noise_channels
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            in_channels=in_channels,
            out_channels=latent_channels,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            norm_num_groups=norm_groups,
            attention_head_dim=ATTENTION_HEAD_CHANNELS,
        )

    def forward(self, conditioning: Conditioning, noise: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B*T, C, h, w) for ``conditioning``; ``noise`` (B*T, noise_channels, h, w);
        ``level`` (B,): the noise level of each entry's memory and context latents (see
        :func:`noised`; default 0), given to the UNet as its timestep."""
        inputs, timestep, base = self.unet_inputs(conditioning, noise, level)
        return base + self.unet(inputs, timestep).sample

    def unet_inputs(self, conditioning: Conditioning, noise: torch.Tensor,
                    level: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What ``forward`` gives the UNet (its input channels and timesteps) and the base its
        output corrects, as ``(inputs, timestep, base)``."""
        cfg = self.config
        batch, targets = conditioning.check(cfg.latent_channels)
        memory = conditioning.memory
        if conditioning.context.shape[1] != cfg.context_frames:
            raise ValueError(f"this generator takes {cfg.context_frames} context frames, got {conditioning.context.shape[1]}")
        context = conditioning.context.flatten(1, 2).repeat_interleave(targets, dim=0)  # (B*T, N*C, h, w)
        grid = memory.latents.shape[-2:]
        valid = memory.valid.float()
        log_depth = torch.where(memory.valid, memory.depth.clamp(min=MIN_DEPTH_M).log(), torch.zeros_like(memory.depth))
        motion = conditioning.motion[:, :, None, None].expand(-1, -1, *grid)
        layout = conditioning.layout
        if cfg.layout_channels and layout is None:
            layout = torch.zeros(memory.latents.shape[0], cfg.layout_channels, *grid, device=valid.device)
        parts = [memory.latents, valid, log_depth / math.log(MAX_DEPTH_M), context, motion, noise]
        if cfg.layout_channels:
            parts.append(layout)
        inputs = torch.cat(parts, dim=1)
        latest = context[:, -cfg.latent_channels:]
        base = torch.where(memory.valid, memory.latents, latest)
        if level is None:
            timestep = torch.zeros(inputs.shape[0], device=inputs.device)
        else:
            timestep = level.to(inputs.device, torch.float32).repeat_interleave(targets) * NOISE_LEVEL_TIMESTEPS
        return inputs, timestep, base


class TinyBackbone:
    """The default backbone (see the module doc); implements :class:`world_model.backbone.Backbone`."""

    def __init__(self, autoencoder: TinyAutoencoder, generator: TinyGenerator, trace: bool = False,
                 precision: str = "float32"):
        """``trace``: run the generator's UNet, the encoder, the re-encoder, the decoder and the depth
        head as frozen TorchScript traces (one per network and input shape, made on first use): the same
        numbers with less Python overhead per step, which dominates at batch 1 on small grids.
        Only for fixed weights: a trace does not follow later training (``from_pretrained``
        traces; training does not).

        ``precision``: ``"bfloat16"`` runs the networks under bfloat16 autocast (weights
        and outputs stay float32; normalisations run in float32). On CPUs with native bfloat16
        (AMX or AVX-512 BF16) it makes batched steps faster (16 frames per step at 128 px: 142
        -> 206 frames/s; ``benchmarks/world_model_speed.py --precision``) and gains nothing at
        batch 1 (at 64 px it loses); elsewhere it is emulated and slower (a warning says so), so it is opt-in.
        Frames differ from float32 ones by rounding (UNet outputs by 0.5 %), so a rollout takes
        another path than in float32, as with another noise seed."""
        if autoencoder.config.latent_channels != generator.config.latent_channels:
            raise ValueError("autoencoder and generator disagree on latent channels")
        _check_precision(precision)
        self.autoencoder, self.generator = autoencoder.eval(), generator.eval()
        self.trace, self.precision = trace, precision
        if precision == "bfloat16" and self.device.type == "cpu" and not _cpu_has_native_bfloat16():
            warnings.warn("precision='bfloat16' on a CPU without native bfloat16 (AMX or AVX-512 BF16) is emulated "
                          "and slower than float32; use precision='float32' here", stacklevel=2)
        self._networks = {"unet": generator.unet, "encode": _Method(autoencoder, "encode"),
                          "reencode": _Method(autoencoder, "reencode"),
                          "decode": _Method(autoencoder, "decode"),
                          "estimate_depth": _Method(autoencoder, "estimate_depth")}
        self._traced: dict[tuple, torch.jit.ScriptModule] = {}
        self.latent_channels = autoencoder.config.latent_channels
        self.downsample = autoencoder.downsample
        self.layout_channels = generator.config.layout_channels
        self.context_frames = generator.config.context_frames
        self.context_noise = generator.config.context_noise  # see TinyGenerator

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu", trace: bool = True,
                        precision: str = "float32") -> TinyBackbone:
        """Load ``path/autoencoder`` and ``path/generator`` (diffusers ``save_pretrained`` folders);
        ``trace`` and ``precision``: see the constructor."""
        _check_precision(precision)
        path = Path(path)
        parts = {}
        for name, model_class in (("autoencoder", TinyAutoencoder), ("generator", TinyGenerator)):
            folder = path / name
            for required in ("config.json", "diffusion_pytorch_model.safetensors"):
                if not (folder / required).is_file():
                    raise FileNotFoundError(f"world model weights incomplete: {folder / required} is missing")
            try:
                parts[name] = model_class.from_pretrained(str(folder)).to(device)
            except Exception as error:  # diffusers/safetensors raise several types for bad files
                raise ValueError(f"could not load the {name} from {folder}: {error}") from error
        return cls(parts["autoencoder"], parts["generator"], trace=trace, precision=precision)

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.autoencoder.save_pretrained(str(path / "autoencoder"))
        self.generator.save_pretrained(str(path / "generator"))
        return path

    @property
    def device(self) -> torch.device:
        # The first parameter's device: diffusers' ModelMixin.device walks every submodule
        # (about 1 ms here), too slow to ask on every step.
        return next(self.autoencoder.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.downsample)
        return self._run("encode", images.to(self.device))

    @torch.no_grad()
    def reencode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.downsample)
        return self._run("reencode", images.to(self.device))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("decode", latents)

    @torch.no_grad()
    def estimate_depth(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("estimate_depth", latents)

    def _run(self, network: str, *inputs: torch.Tensor):
        """The ``network`` (unet, encode, reencode, decode or estimate_depth) on ``inputs``, through its trace for
        these input shapes when tracing."""
        with self._autocast():
            if not self.trace:
                return _as_float32(self._networks[network](*inputs))
            inputs = tuple(_channels_last(x) for x in inputs)
            key = (network, *((tuple(x.shape), x.device, x.dtype) for x in inputs))
            if key not in self._traced:
                self._traced[key] = _trace(self._networks[network], inputs)
            return _as_float32(self._traced[key](*inputs))

    def _autocast(self):
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def generate(self, conditioning: Conditioning, generator=None) -> torch.Tensor:
        memory = conditioning.memory
        targets = memory.latents.shape[0]
        level = None
        if self.context_noise:
            level = torch.full((conditioning.context.shape[0],), float(self.context_noise))
            conditioning = noised(conditioning, level, self.generator.config.latent_std, generator)
        shape = (self.generator.config.noise_channels, *memory.latents.shape[-2:])
        noise = sample_noise(shape, targets, generator).to(self.device)
        inputs, timestep, base = self.generator.unet_inputs(conditioning, noise, level)
        return base + self._run("unet", inputs, timestep)["sample"]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX); elsewhere oneDNN
    emulates it. Asked through torch's private CPU probes; False if they are gone."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def _as_float32(outputs):
    """Network outputs (a tensor, a tuple of them or a UNet's output dict) in float32, contiguous."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float().contiguous()
    if isinstance(outputs, tuple):
        return tuple(output.float().contiguous() for output in outputs)
    return {name: output.float().contiguous() for name, output in outputs.items()}


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


class _Method(nn.Module):
    """One method of a module as a module of its own, to trace it."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *inputs: torch.Tensor):
        return getattr(self.module, self.method)(*inputs)


def _trace(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """A frozen TorchScript trace of a channels-last copy of ``module`` for inputs of these
    shapes (``module`` itself is untouched). TorchScript is deprecated from torch 2.13 on, but
    measured faster at batch 1 than the eager modules (UNet 7.8 vs 18.9 ms, the original decoder
    4.4 vs 6.3 ms on a 16 x 16 grid, one thread) while ``torch.export`` was not (UNet 19.8 ms),
    so its deprecation warnings are silenced here, as are diffusers' shape checks that trace as
    constants. Channels-last weights and activations make oneDNN's convolutions 10 to 25 %
    faster again (UNet 2.85 -> 2.56 ms at batch 1 on a 16 x 16 grid, encoder 43.9 -> 38.0 ms at
    batch 16 on 128 px frames, 2 threads)."""
    copy = copy_module(module).eval().to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(copy, inputs, strict=False, check_trace=False)
        return torch.jit.freeze(traced.eval())


def noised(conditioning: Conditioning, level: torch.Tensor, latent_std: float, generator=None) -> Conditioning:
    """``conditioning`` with Gaussian noise of standard deviation ``level * latent_std`` (``level``
    (B,), one per batch entry) added to its context latents and to its valid memory latents.
    Noise augmentation: trained on such inputs, told their level, the generator learns to pull
    corrupted memory and context back towards real frames (with the layout's help) instead of
    copying their errors forward, as long rollouts need. Draws come from ``generator`` (see
    :func:`sample_noise`)."""
    context, memory = conditioning.context, conditioning.memory
    batch = context.shape[0]
    if level.shape != (batch,):
        raise ValueError(f"`level` must be ({batch},), one per batch entry, got {tuple(level.shape)}")
    sigma = (level.float() * latent_std).to(context.device).view(-1, 1, 1, 1, 1)
    context = context + sigma * sample_noise(tuple(context.shape[1:]), batch, generator).to(context.device)
    targets = memory.latents.shape[0]
    sigma = sigma[:, 0].repeat_interleave(targets // batch, dim=0)
    draw = sample_noise(tuple(memory.latents.shape[1:]), targets, generator).to(memory.latents.device)
    latents = torch.where(memory.valid, memory.latents + sigma * draw, memory.latents)
    return replace(conditioning, context=context, memory=replace(memory, latents=latents))


def sample_noise(shape: tuple[int, ...], count: int, generator=None) -> torch.Tensor:
    """(count, *shape) standard normal noise on the CPU from one ``torch.Generator`` or one per
    batch entry (a list, each drawing the noise of its ``count / len`` consecutive targets),
    so each environment's samples depend on its own seed only."""
    if not isinstance(generator, (list, tuple)):
        return torch.randn((count, *shape), generator=generator)
    if count % len(generator):
        raise ValueError(f"{len(generator)} generators for {count} targets")
    per = count // len(generator)
    return torch.cat([torch.randn((per, *shape), generator=g) for g in generator])


def _check_images(images: torch.Tensor, downsample: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    if images.shape[-2] % downsample or images.shape[-1] % downsample:
        raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of {downsample}")
    if images.dtype == torch.uint8:
        raise ValueError("`images` must be float in [0, 1], got uint8; divide by 255")
