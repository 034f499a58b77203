"""Wan2.2 + LoRA backbone for GPU users: diffusers' Wan classes behind the backbone interface.

Loads a local folder laid out like a diffusers Wan2.2 repository (``vae/``, ``transformer/``,
``scheduler/``, ``text_encoder/``, ``tokenizer/``); nothing is downloaded. The defaults follow
the published latent-memory method (arXiv 2606.09828): Wan2.2-TI2V-5B, LoRA rank 32, 33-frame
chunks.

Frames and latents
    Every frame is its own latent frame: :meth:`WanBackbone.encode` runs each image through the
    causal VAE as a one-frame video and :meth:`WanBackbone.decode` decodes each latent frame on
    its own the same way. The VAE's joint decoding of a latent sequence (4 frames per latent
    frame after the first) is not used, because the memory stores, reads and writes one latent
    frame per camera pose. Latents are normalised with the VAE's ``latents_mean`` /
    ``latents_std``, as Wan pipelines do before the transformer.
Conditioning
    The memory read of each target frame (projected cache latents, validity mask and, for map
    scenarios, the road layout) is concatenated to the target's noisy latents along channels
    and enters through the transformer's ``patch_embedding``, widened for these channels with
    zero-initialised new weights, so a pretrained transformer's output is unchanged until the
    widened embedding and the LoRA are fine-tuned. Channel concatenation rather than a control
    branch: it is the cheapest (no extra transformer blocks, the new weights are one
    convolution's input slice) and it is what the published latent-memory method does. The
    camera ``motion`` of :class:`~world_model.backbone.Conditioning` is not an input: as in the
    published method, the camera reaches the model through the memory read at the target pose.
Context and chunks
    A call to :meth:`WanBackbone.generate` denoises a chunk of T target latent frames jointly,
    one video (B, C, N + T, h, w) whose first N frames are the clean context latents (the
    latest generated frames, i.e. the overlap with the previous chunk). The context frames get
    timestep 0 per token (Wan2.2 TI2V's mechanism for its clean first frame) and never pass
    through the scheduler, so they are exactly the given latents at every step and the chunk is
    stitched to the previous one by that overlap.
Scheduler
    The flow-matching scheduler stored in ``scheduler/`` (Wan2.2 ships
    ``UniPCMultistepScheduler`` with flow sigmas; ``FlowMatchEulerDiscreteScheduler`` works
    too), ``num_inference_steps`` steps per chunk, one transformer call per step: no
    classifier-free guidance, since the prompt is fixed (empty by default, encoded once at load;
    the text encoder is released afterwards) and the memory is what conditions the frames.
    Noise is drawn on the CPU from the caller's ``torch.Generator`` (one per environment
    allowed), and the scheduler steps are deterministic, so a seed fixes the output.
Depth
    Wan has no depth head. :meth:`WanBackbone.estimate_depth` decodes the latents and runs an
    injected image-to-depth model (e.g. :class:`world_model.depth.TransformersDepth`); passing
    that model to ``WorldModel(depth_model=...)`` instead saves the second decode.
LoRA
    peft adapters on every attention projection (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)
    of the transformer, trained together with the widened patch embedding; both are saved in
    one safetensors file (:meth:`WanBackbone.save_lora`, :meth:`WanBackbone.load_lora`). See
    ``scripts/finetune_wan_lora.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import diffusers
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from tqdm.auto import tqdm

from world_model.backbone import Conditioning
from world_model.memory import token_depth
from world_model.tiny_backbone import sample_noise
from world_model.world_model import DepthModel

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections of every Wan block
LORA_FORMAT = "mirage-wan-lora/1"
# Each part of a diffusers Wan2.2 folder and the file that must be in it.
PARTS = {
    "vae": "config.json",
    "transformer": "config.json",
    "scheduler": "scheduler_config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
}


@dataclass
class WanBackboneConfig:
    """Settings of the Wan backbone (units in comments).

    ``chunk_frames`` is the most target frames one :meth:`WanBackbone.generate` call denoises
    jointly. It is the world model's chunk: run ``WorldModel`` with
    ``WorldModelConfig(chunk_length=config.chunk_frames)`` for the published segment mode, or
    any smaller chunk length (1 is the env's per-step mode). Every frame is one latent frame
    here (no temporal compression, see the module doc), so 33 frames are 33 latent frames.
    """

    chunk_frames: int = 33  # [frames] most targets per generate call (the published chunk)
    context_frames: int = 1  # [frames] clean latest frames ahead of each chunk (the overlap)
    layout_channels: int = 0  # road-layout channels in the conditioning (0: none, layouts ignored; 3 for maps)
    num_inference_steps: int = 50  # scheduler steps per chunk (Wan2.2's default)
    prompt: str = ""  # fixed text prompt, encoded once at load
    max_sequence_length: int = 512  # [tokens] prompt padding length (Wan2.2 uses 512)
    lora_rank: int = 32  # rank of the LoRA adapters (the published method's)
    progress: bool = True  # progress bar over the denoising steps

    def __post_init__(self) -> None:
        for name in ("chunk_frames", "context_frames", "num_inference_steps", "max_sequence_length", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.layout_channels < 0:
            raise ValueError(f"`layout_channels` must be >= 0, got {self.layout_channels}")


class WanBackbone:
    """Wan2.2 as a :class:`world_model.backbone.Backbone` (see the module doc).

    Args:
        vae: the Wan VAE (its ``z_dim`` is the latent channels C).
        transformer: a Wan transformer taking C input channels (a base checkpoint; its patch
            embedding is widened here) or already widened for this config's conditioning.
        scheduler: a flow-matching scheduler.
        prompt_embeds: (1, L, text_dim) the fixed prompt's text-encoder states (see
            :func:`encode_prompt`).
        config: see :class:`WanBackboneConfig`.
        depth_model: image-to-depth model behind :meth:`estimate_depth` (optional).
    """

    def __init__(self, vae: AutoencoderKLWan, transformer: WanTransformer3DModel, scheduler: SchedulerMixin,
                 prompt_embeds: torch.Tensor, config: WanBackboneConfig | None = None,
                 depth_model: DepthModel | None = None):
        self.config = config or WanBackboneConfig()
        # Frozen until add_lora(); the VAE works one frame at a time (a 720p frame's decoder
        # activations take gigabytes, a 33-frame chunk's at once would not fit).
        self.vae, self.transformer, self.scheduler = vae.eval().requires_grad_(False), transformer.eval(), scheduler
        self.transformer.requires_grad_(False)
        self.vae.enable_slicing()
        self.depth_model = depth_model
        self.latent_channels = vae.config.z_dim
        self.downsample = vae.config.scale_factor_spatial
        self.layout_channels = self.config.layout_channels
        self.context_frames = self.config.context_frames
        self.conditioning_channels = self.latent_channels + 1 + self.layout_channels  # memory latents, valid, layout
        if tuple(transformer.config.patch_size)[0] != 1:
            raise ValueError(f"the transformer's temporal patch size must be 1 (one token row per latent frame), "
                             f"got patch_size={transformer.config.patch_size}")
        if transformer.config.out_channels != self.latent_channels:
            raise ValueError(f"transformer predicts {transformer.config.out_channels} channels but the VAE has "
                             f"{self.latent_channels} latent channels")
        if not _is_flow_matching(scheduler):
            raise ValueError(f"{type(scheduler).__name__} is not a flow-matching scheduler; use "
                             "FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler with "
                             "prediction_type='flow_prediction' and use_flow_sigmas=True, as Wan2.2 ships")
        text_dim = transformer.config.text_dim
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 or prompt_embeds.shape[2] != text_dim:
            raise ValueError(f"`prompt_embeds` must be (1, L, {text_dim}), got "
                             f"{tuple(prompt_embeds.shape)}")
        self.prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        self._widen_patch_embedding()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        config: WanBackboneConfig | None = None, depth_model: DepthModel | None = None) -> WanBackbone:
        """Load a local diffusers Wan2.2 folder (see the module doc). The transformer and text
        encoder load in ``dtype`` (bfloat16 on a GPU), the VAE in float32 (as diffusers' Wan
        examples load it). The prompt is encoded here and the text encoder released."""
        config = config or WanBackboneConfig()
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"Wan model folder not found: {root} (a local diffusers Wan2.2 folder with "
                                    f"{', '.join(f'{part}/' for part in PARTS)})")
        vae = _load_part(root, "vae", lambda folder: AutoencoderKLWan.from_pretrained(
            folder, torch_dtype=torch.float32, local_files_only=True))
        transformer = _load_part(root, "transformer", lambda folder: WanTransformer3DModel.from_pretrained(
            folder, torch_dtype=dtype, local_files_only=True))
        scheduler = _load_part(root, "scheduler", _load_scheduler)
        tokenizer = _load_part(root, "tokenizer", lambda folder: transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True))
        text_encoder = _load_part(root, "text_encoder", lambda folder: transformers.UMT5EncoderModel.from_pretrained(
            folder, dtype=dtype, local_files_only=True))
        prompt_embeds = encode_prompt(text_encoder.to(device), tokenizer, config.prompt, config.max_sequence_length)
        del text_encoder  # the UMT5-XXL encoder is ~11 GB in bfloat16 and a fixed prompt needs it once
        return cls(vae.to(device), transformer.to(device), scheduler, prompt_embeds, config, depth_model)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def _widen_patch_embedding(self) -> None:
        """Give the patch embedding the conditioning's input channels, new weights zero."""
        embedding = self.transformer.patch_embedding
        widened = self.latent_channels + self.conditioning_channels
        if embedding.in_channels == widened:
            return
        if embedding.in_channels != self.latent_channels:
            raise ValueError(f"transformer takes {embedding.in_channels} input channels; expected the VAE's "
                             f"{self.latent_channels} (a base checkpoint) or {widened} (widened for this config)")
        new = nn.Conv3d(widened, embedding.out_channels, embedding.kernel_size, embedding.stride,
                        device=embedding.weight.device, dtype=embedding.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : self.latent_channels] = embedding.weight
            new.bias.copy_(embedding.bias)
        self.transformer.patch_embedding = new
        self.transformer.register_to_config(in_channels=widened)

    # ------------------------------------------------------------------ backbone interface
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> normalised latents (B, C, H / downsample, W / downsample),
        each image encoded as a one-frame video."""
        multiple = self.downsample * self.transformer.config.patch_size[1]
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"`images` must be float (B, 3, H, W) in [0, 1], got {tuple(images.shape)} {images.dtype}")
        if images.shape[-2] % multiple or images.shape[-1] % multiple:
            raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of {multiple} (VAE factor "
                             f"{self.downsample} x transformer patch {self.transformer.config.patch_size[1]})")
        video = (images.to(self.vae.device, self.vae.dtype) * 2 - 1)[:, :, None]
        latents = self.vae.encode(video).latent_dist.mode()[:, :, 0]
        mean, std = self._latent_statistics(latents)
        return ((latents - mean) / std).float()

    def reencode(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` (Wan has no cheaper encoder)."""
        return self.encode(images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 3, h * downsample, w * downsample) in [0, 1],
        each latent frame decoded on its own as a one-frame video (see the module doc)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"`latents` must be (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        latents = latents.to(self.vae.device, self.vae.dtype)
        mean, std = self._latent_statistics(latents)
        video = self.vae.decode((latents * std + mean)[:, :, None]).sample
        return ((video[:, :, 0].float() + 1) / 2).clamp(0, 1)

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, (1, C, 1, 1) each."""
        mean = torch.tensor(self.vae.config.latents_mean, device=like.device, dtype=like.dtype)
        std = torch.tensor(self.vae.config.latents_std, device=like.device, dtype=like.dtype)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    @torch.no_grad()
    def estimate_depth(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token depth (B, 1, h, w) [m] from the injected depth model on the decoded frames,
        and confidence 1 (the depth model gives none). Wan has no depth head of its own."""
        if self.depth_model is None:
            raise RuntimeError("Wan has no depth head: pass `depth_model` (e.g. world_model.depth.TransformersDepth) "
                               "to WanBackbone or to WorldModel, or give ground-truth depth")
        depth = token_depth(self.depth_model(self.decode(latents)), self.downsample)
        return depth, torch.ones_like(depth)

    @torch.no_grad()
    def generate(self, conditioning: Conditioning, generator=None) -> torch.Tensor:
        """Normalised latents (B*T, C, h, w) of the T targets of ``conditioning``, denoised as one
        chunk after the clean context frames (see the module doc). ``generator``: a
        ``torch.Generator`` or a list of B (one per batch entry)."""
        batch, targets = conditioning.check(self.latent_channels)
        if targets > self.config.chunk_frames:
            raise ValueError(f"{targets} target frames exceed chunk_frames={self.config.chunk_frames}; "
                             f"render with WorldModelConfig(chunk_length <= {self.config.chunk_frames})")
        context = conditioning.context.to(self.device, torch.float32)
        channels, height, width = context.shape[2:]
        conditioning_input = self._conditioning_input(conditioning, batch, targets)
        latents = sample_noise((channels, targets, height, width), batch, generator).to(self.device)
        self.scheduler.set_timesteps(self.config.num_inference_steps, device=self.device)
        self.scheduler.set_begin_index(0)
        for timestep in tqdm(self.scheduler.timesteps, desc="denoising", unit="step", leave=False,
                             disable=not self.config.progress):
            velocity = self._velocity(context, latents, conditioning_input, timestep.expand(batch))
            # Only the targets go through the scheduler: the context frames are never noised
            # or updated, so every step sees them exactly clean.
            latents = self.scheduler.step(velocity, timestep, latents, return_dict=False)[0]
        return latents.permute(0, 2, 1, 3, 4).reshape(batch * targets, channels, height, width)

    # ------------------------------------------------------------------ the transformer call
    def _conditioning_input(self, conditioning: Conditioning, batch: int, targets: int) -> torch.Tensor:
        """(B, C + 1 + L, N + T, h, w): each target's memory latents, validity and layout; zeros
        on the context frames (they are given whole, clean)."""
        memory = conditioning.memory
        parts = [memory.latents.float(), memory.valid.float()]
        if self.layout_channels:
            layout = conditioning.layout
            if layout is None:
                layout = torch.zeros(memory.latents.shape[0], self.layout_channels, *memory.latents.shape[-2:])
            elif layout.shape[1] != self.layout_channels:
                raise ValueError(f"`layout` must have {self.layout_channels} channels, got {layout.shape[1]}")
            parts.append(layout.float().to(memory.latents.device))
        per_target = torch.cat(parts, dim=1).to(self.device)
        grid = per_target.shape[-2:]
        per_target = per_target.view(batch, targets, -1, *grid).permute(0, 2, 1, 3, 4)
        context = per_target.new_zeros(batch, per_target.shape[1], conditioning.context.shape[1], *grid)
        return torch.cat([context, per_target], dim=2)

    def _velocity(self, context: torch.Tensor, noisy: torch.Tensor, conditioning_input: torch.Tensor,
                  timestep: torch.Tensor) -> torch.Tensor:
        """The transformer's flow prediction (noise - clean) (B, C, T, h, w) float32 for the noisy
        targets ``noisy`` (B, C, T, h, w) at ``timestep`` (B,) [training steps], after the clean
        ``context`` (B, N, C, h, w), with ``conditioning_input`` (B, E, N + T, h, w)."""
        patch_h, patch_w = self.transformer.config.patch_size[1:]
        height, width = noisy.shape[-2:]
        if height % patch_h or width % patch_w:
            raise ValueError(f"latent grid {height}x{width} must be a multiple of the patch {patch_h}x{patch_w}")
        frames = torch.cat([context.permute(0, 2, 1, 3, 4), noisy], dim=2)
        hidden = torch.cat([frames, conditioning_input], dim=1).to(self.dtype)
        batch, context_count, target_count = noisy.shape[0], context.shape[1], noisy.shape[2]
        tokens_per_frame = (height // patch_h) * (width // patch_w)
        # One timestep per token (Wan2.2 TI2V's clean-first-frame mechanism): 0 on the context.
        per_token = torch.cat([
            timestep.new_zeros(batch, context_count * tokens_per_frame),
            timestep[:, None].expand(batch, target_count * tokens_per_frame),
        ], dim=1)
        output = self.transformer(hidden_states=hidden, timestep=per_token,
                                  encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1),
                                  return_dict=False)[0]
        return output[:, :, context_count:].float()

    def flow_matching_loss(self, conditioning: Conditioning, targets: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss: mean squared error of the predicted velocity (noise - clean) for the
        clean target latents ``targets`` (B*T, C, h, w) of ``conditioning``, noised to one random
        level per batch entry (uniform, shifted by the scheduler's flow shift as at inference).
        Random draws come from ``generator`` (CPU)."""
        batch, count = conditioning.check(self.latent_channels)
        if targets.shape != conditioning.memory.latents.shape:
            raise ValueError(f"`targets` must be {tuple(conditioning.memory.latents.shape)} like the memory read, "
                             f"got {tuple(targets.shape)}")
        clean = targets.to(self.device, torch.float32).view(batch, count, *targets.shape[1:]).permute(0, 2, 1, 3, 4)
        noise = torch.randn(clean.shape, generator=generator).to(self.device)
        shift = self.scheduler.config.get("flow_shift", self.scheduler.config.get("shift", 1.0))
        uniform = torch.rand(batch, generator=generator).to(self.device)
        sigma = shift * uniform / (1 + (shift - 1) * uniform)
        level = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - level) * clean + level * noise
        velocity = self._velocity(conditioning.context.to(self.device, torch.float32), noisy,
                                  self._conditioning_input(conditioning, batch, count),
                                  sigma * self.scheduler.config.num_train_timesteps)
        return F.mse_loss(velocity, noise - clean)

    # ------------------------------------------------------------------ LoRA
    @property
    def has_lora(self) -> bool:
        return "default" in getattr(self.transformer, "peft_config", {})

    def add_lora(self, rank: int | None = None) -> None:
        """Freeze the transformer, add LoRA adapters of ``rank`` (default: the config's) to its
        attention projections and make them and the widened patch embedding trainable."""
        if self.has_lora:
            raise RuntimeError("the transformer already has a LoRA adapter")
        rank = rank or self.config.lora_rank
        self.transformer.requires_grad_(False)
        self.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS),
                                                init_lora_weights=True))
        self.transformer.patch_embedding.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA weights and the patch embedding (after :meth:`add_lora`)."""
        return [parameter for parameter in self.transformer.parameters() if parameter.requires_grad]

    def save_lora(self, path: str | Path) -> Path:
        """Write the LoRA weights and the widened patch embedding to one safetensors file."""
        if not self.has_lora:
            raise RuntimeError("no LoRA to save: call add_lora() (and train) first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"lora.{key}": value for key, value in get_peft_model_state_dict(self.transformer).items()}
        tensors.update({f"patch_embedding.{key}": value
                        for key, value in self.transformer.patch_embedding.state_dict().items()})
        metadata = {"format": LORA_FORMAT, "rank": str(self.transformer.peft_config["default"].r),
                    "latent_channels": str(self.latent_channels), "layout_channels": str(self.layout_channels)}
        save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()}, str(path), metadata)
        return path

    def load_lora(self, path: str | Path) -> None:
        """Load a file written by :meth:`save_lora` (adds the adapter if there is none yet)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises several types for corrupt files
            raise ValueError(f"{path} is not a readable LoRA file ({error})") from error
        if metadata.get("format") != LORA_FORMAT:
            raise ValueError(f"{path} is not a Wan LoRA file of this project (format={metadata.get('format')!r})")
        saved = (int(metadata["latent_channels"]), int(metadata["layout_channels"]))
        if saved != (self.latent_channels, self.layout_channels):
            raise ValueError(f"{path} was trained for (latent, layout) channels {saved}, this backbone has "
                             f"{(self.latent_channels, self.layout_channels)}")
        rank = int(metadata["rank"])
        if not self.has_lora:
            self.add_lora(rank)
        elif self.transformer.peft_config["default"].r != rank:
            raise ValueError(f"{path} has rank {rank}, the backbone's adapter rank "
                             f"{self.transformer.peft_config['default'].r}")
        lora = {key[len("lora."):]: value for key, value in tensors.items() if key.startswith("lora.")}
        result = set_peft_model_state_dict(self.transformer, lora)
        if result.unexpected_keys:
            raise ValueError(f"{path} holds LoRA weights this transformer lacks: {result.unexpected_keys[:4]}")
        embedding = {key[len("patch_embedding."):]: value for key, value in tensors.items()
                     if key.startswith("patch_embedding.")}
        self.transformer.patch_embedding.load_state_dict(embedding)


def encode_prompt(text_encoder: nn.Module, tokenizer, prompt: str, max_sequence_length: int) -> torch.Tensor:
    """(1, max_sequence_length, text_dim) UMT5 states of ``prompt``, zero past its tokens (as
    Wan pipelines pad them)."""
    tokens = tokenizer([prompt], padding="max_length", max_length=max_sequence_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        states = text_encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
    return states * tokens.attention_mask.to(device)[:, :, None].to(states.dtype)


def _is_flow_matching(scheduler: SchedulerMixin) -> bool:
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return True
    return (isinstance(scheduler, UniPCMultistepScheduler) and scheduler.config.prediction_type == "flow_prediction"
            and scheduler.config.use_flow_sigmas)


def _load_scheduler(folder: str) -> SchedulerMixin:
    """The scheduler class named in ``scheduler_config.json``, from diffusers."""
    name = json.loads((Path(folder) / PARTS["scheduler"]).read_text()).get("_class_name")
    scheduler_class = getattr(diffusers, str(name), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ValueError(f"`_class_name` {name!r} is not a diffusers scheduler")
    return scheduler_class.from_pretrained(folder, local_files_only=True)


def _load_part(root: Path, name: str, load: Callable[[str], object]):
    folder = root / name
    required = folder / PARTS[name]
    if not required.is_file():
        raise FileNotFoundError(f"Wan model folder {root} is incomplete: {required} is missing")
    try:
        return load(str(folder))
    except Exception as error:  # diffusers/transformers/safetensors raise many types for bad files
        raise ValueError(f"could not load the Wan {name} from {folder}: {error}") from error


# ---------------------------------------------------------------------- tiny test model
def make_tiny_wan(path: str | Path, seed: int = 0, latent_channels: int = 8) -> Path:
    """Write a tiny random Wan2.2-style folder (the layout ``from_pretrained`` reads) to ``path``
    for tests: a residual, patchifying VAE with a spatial factor of 4, a 2-layer transformer,
    a 1-layer UMT5 encoder, a word-level tokenizer built offline and the flow UniPC scheduler
    Wan2.2 ships (flow shift 5)."""
    root = Path(path)
    torch.manual_seed(seed)
    # Wan2.2's VAE layout (is_residual, pixel patch 2, 12 = 3 x 2 x 2 input channels), one
    # spatial downsampling: factor 2 x 2 = 4.
    AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=latent_channels, dim_mult=[1, 1], num_res_blocks=1,
        temperal_downsample=[True], latents_mean=[0.0] * latent_channels, latents_std=[1.0] * latent_channels,
        is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=4,
    ).save_pretrained(str(root / "vae"))
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=latent_channels,
        out_channels=latent_channels, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64,
    ).save_pretrained(str(root / "transformer"))
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                            num_train_timesteps=1000).save_pretrained(str(root / "scheduler"))
    words = ["<pad>", "</s>", "<unk>", "a", "street", "road", "car", "city", "driving", "view", "sunny", "day"]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(str(root / "tokenizer"))
    transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )).save_pretrained(str(root / "text_encoder"))
    return root

