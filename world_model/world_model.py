"""The world model: segment generation over a spatial memory, for a batch of environments.

``reset`` starts an environment from one frame (RGB, optional depth, intrinsics, pose): it is
encoded, lifted into the memory and becomes the first context frame. ``render`` then makes the
frames for new poses, a chunk of ``chunk_length`` poses at a time:

1. read the memory at the chunk's poses (latents, validity, depth on the latent grid);
2. generate the chunk's latents, conditioned on the read, the latest ``context_frames``
   generated frames (clean latents; the overlap between consecutive chunks), the camera motion
   since the latest of them and, for map scenarios, the road layout at each pose;
3. decode the frames and estimate their depth (the backbone's depth head by default; given
   ground-truth depth or a transformers depth model instead, see ``depth``);
4. encode the decoded frames again (the backbone's ``reencode``, which may be a cheaper encoder)
   and mix those latents into the generated ones (weight ``reencode``): what the memory and the
   context keep is then, in part, the encoding of the frames shown rather than only the
   generator's raw output;
5. filter (the caller's dynamic mask, sky / invalid depth, low confidence: the memory drops
   those tokens) and write the chunk back into the memory;
6. its last frames become the next chunk's context.

Between 2 and 3, the generated latents are pulled toward what was observed (``anchor``): the
frames given to ``reset`` are also kept on their own (in caches ``num_envs`` to ``2 num_envs - 1``
of the same memory: env ``i``'s is cache ``num_envs + i``), and where their read has a token, the
generated latent moves the ``anchor`` share of the way to it. The generator copies its memory
read only in part (on the pixels the start frame saw, decoding the read itself matches the
truth better than the generated frame does), and in the shared caches tokens of generated
frames, lifted with the depth head's guesses, can hide observed ones; the observed frames' read
has neither problem. It is made in the same call as the shared read, for twice the views: a
read's cost is mostly per call at batch 1, so the anchor adds little to a step.

Re-encoding keeps long rollouts on the latents the encoder makes, which are what the generator
was trained on. Without it the generator's small errors in latent space are fed back every
step and grow there unchecked by the decoder: on a Town01 loop the road was gone within 100
frames. Full re-encoding (1.0) blurs a little every step, so the default mixes in a part.
The memory keeps the mixed latents too: keeping the generator's raw latents there (and mixing
only the context) measured 0.28 dB lower revisit PSNR (``benchmarks/fidelity.py``, 2 seeds,
the same seeds: 11.71 against 12.00 dB).

Chunk length 1 is the per-step mode the env uses. Everything is deterministic given the
``torch.Generator`` passed to ``render``. The memory is swappable: ``"latent"`` (the latent
cache, default), ``"pixel"`` (the pixel-space baseline) or ``"none"`` (context frames only),
so the three can be measured side by side on one backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from world_model.backbone import Backbone, Conditioning
from world_model.camera import check_intrinsics, check_poses, relative_motion
from world_model.latent_cache import MAX_CACHES, LatentCache, LatentCacheConfig
from world_model.memory import MemoryFrame, MemoryRead, token_depth
from world_model.pixel_memory import PixelMemory

MEMORIES = ("latent", "pixel", "none")

DepthModel = Callable[[torch.Tensor], torch.Tensor]
"""Maps images (B, 3, H, W) in [0, 1] to metric depth (B, 1, H, W) [m], 0 for sky."""


@dataclass
class WorldModelConfig:
    """Defaults of the world model loop (units in comments)."""

    memory: str = "latent"  # latent | pixel | none
    chunk_length: int = 1  # [frames] generated per segment; 1 = per-step mode
    cache: LatentCacheConfig = field(default_factory=LatentCacheConfig)  # downsample is set from the backbone
    max_range_m: float = 100.0  # [m] the pixel baseline's range (the cache's is in `cache`)
    reencode: float = 0.25  # weight of encode(decode(generated)) in the latents kept (0: none, 1: only it)
    anchor: float = 0.5  # weight of the observed frames' read in generated latents where it has a token (0: off)

    def __post_init__(self) -> None:
        if self.memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        if self.chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {self.chunk_length}")
        for name in ("reencode", "anchor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class WorldModelOutput:
    """``rgb`` (B, T, H, W, 3) uint8; ``depth`` (B, T, 1, h, w) [m] per token as estimated (0:
    sky); ``valid`` (B, T, 1, h, w) bool: where the memory covered the view before generation."""

    rgb: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor


class WorldModel:
    """Renders ``num_envs`` independent environments with one backbone (see the module doc).

    Args:
        backbone: any :class:`world_model.backbone.Backbone`.
        num_envs: independent environments (one memory each).
        config: see :class:`WorldModelConfig`.
        depth_model: optional image-to-depth model used instead of the backbone's depth head
            (e.g. :class:`world_model.depth.TransformersDepth`).
    """

    def __init__(self, backbone: Backbone, num_envs: int = 1, config: WorldModelConfig | None = None,
                 depth_model: DepthModel | None = None):
        self.backbone, self.num_envs = backbone, num_envs
        self.config = config or WorldModelConfig()
        self.depth_model = depth_model
        self.device = torch.device(getattr(backbone, "device", "cpu"))
        self.context_frames = getattr(backbone, "context_frames", 1)
        # With an anchor, caches [num_envs, 2 num_envs) hold the frames given to `reset` alone.
        self.anchored = self.config.memory != "none" and self.config.anchor > 0
        caches_per_env = 2 if self.anchored else 1
        if self.config.memory == "latent" and num_envs * caches_per_env > MAX_CACHES:
            why = " with an anchor (each keeps its start frames in a cache of their own)" if self.anchored else ""
            raise ValueError(f"one latent-cache world model renders at most {MAX_CACHES // caches_per_env} "
                             f"environments{why}, got {num_envs}; split them over several world models "
                             f"(several vector envs)"
                             + (" or set anchor=0 (the env's world_model_anchor=0)" if self.anchored else ""))
        self.memory = self._new_memory(num_envs * caches_per_env)
        self.context: torch.Tensor | None = None  # (num_envs, N, C, h, w) latest generated latents
        self.context_pose: torch.Tensor | None = None  # (num_envs, 4, 4) pose of the latest one
        self.image_size: tuple[int, int] | None = None
        self.started = torch.zeros(num_envs, dtype=torch.bool)

    def _new_memory(self, caches: int) -> LatentCache | PixelMemory | None:
        cfg, channels, downsample = self.config, self.backbone.latent_channels, self.backbone.downsample
        if cfg.memory == "latent":
            cache_config = LatentCacheConfig(**{**cfg.cache.__dict__, "downsample": downsample})
            return LatentCache(caches, channels, cache_config, device=self.device)
        if cfg.memory == "pixel":
            return PixelMemory(caches, self.backbone.encode, downsample, cfg.max_range_m, device=self.device)
        return None

    def observed_ids(self, env_ids) -> torch.Tensor:
        """The memory's cache ids that hold only the frames given to ``reset`` of ``env_ids`` (with
        an anchor; see the module doc)."""
        if not self.anchored:
            raise ValueError("only a world model with an anchor and a memory keeps the observed frames apart")
        return torch.as_tensor(env_ids, dtype=torch.long, device=self.device).view(-1) + self.num_envs

    # ------------------------------------------------------------------ reset
    @torch.no_grad()
    def reset(self, rgb: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor, depth: torch.Tensor | None = None,
              dynamic: torch.Tensor | None = None, env_ids=None) -> None:
        """Start environments ``env_ids`` (default: the first B) from frames ``rgb`` (B, H, W, 3)
        uint8 or (B, 3, H, W) float in [0, 1], intrinsics ``K`` (B, 3, 3), poses (B, 4, 4) and
        optionally metric ``depth`` (B, 1, H, W) (else estimated) and a ``dynamic`` mask."""
        images = _as_float_images(rgb)
        batch = images.shape[0]
        check_intrinsics(K, batch)
        check_poses(cam_to_world, batch)
        ids = self._env_ids(env_ids, batch)
        size = tuple(images.shape[-2:])
        if self.image_size not in (None, size):
            raise ValueError(f"all environments share one image size {self.image_size}, got {size}")
        self.image_size = size
        if self.memory is not None:
            self.memory.clear(torch.cat([ids, self.observed_ids(ids)] if self.anchored else [ids]).to(self.memory.device))
        latents = self.backbone.encode(images.to(self.device))
        if self.context is None:
            self.context = torch.zeros(self.num_envs, self.context_frames, *latents.shape[1:], device=self.device)
            self.context_pose = torch.eye(4, device=self.device).repeat(self.num_envs, 1, 1)
        self.context[ids] = latents[:, None].expand(-1, self.context_frames, -1, -1, -1)
        self.context_pose[ids] = cam_to_world.to(self.device, torch.float32)
        self._write(latents, images, K, cam_to_world, depth, dynamic, ids, observed=True)
        self.started[ids.cpu()] = True

    # ------------------------------------------------------------------ render
    @torch.no_grad()
    def render(self, cam_to_world: torch.Tensor, K: torch.Tensor, layout: torch.Tensor | None = None,
               dynamic: torch.Tensor | None = None, depth: torch.Tensor | None = None,
               generator=None, env_ids=None) -> WorldModelOutput:
        """Frames of environments ``env_ids`` at poses ``cam_to_world`` (B, T, 4, 4) (or (B, 4, 4)
        for T = 1) with intrinsics ``K`` (B, 3, 3) of the reset image size.

        Optional, per pose: ``layout`` (B, T, L, h, w) road layout on the latent grid;
        ``dynamic`` (B, T, 1, H, W) bool, what moves (never written to memory); ``depth``
        (B, T, 1, H, W) ground-truth depth to lift generated tokens with (analysis only).
        ``generator``: a ``torch.Generator`` or a list of B (one per environment).
        """
        poses = cam_to_world[:, None] if cam_to_world.ndim == 3 else cam_to_world
        if poses.ndim != 4 or poses.shape[-2:] != (4, 4):
            raise ValueError(f"`cam_to_world` must be (B, T, 4, 4) or (B, 4, 4), got {tuple(cam_to_world.shape)}")
        batch, steps = poses.shape[:2]
        check_intrinsics(K, batch)
        check_poses(poses.reshape(-1, 4, 4))
        ids = self._env_ids(env_ids, batch)
        if not self.started[ids.cpu()].all():
            raise RuntimeError(f"reset environments {ids[~self.started[ids.cpu()]].tolist()} before rendering them")
        for name, value in (("layout", layout), ("dynamic", dynamic), ("depth", depth)):
            if value is not None and (value.ndim != 5 or value.shape[:2] != (batch, steps)):
                raise ValueError(f"`{name}` must be (B, T, ...) = ({batch}, {steps}, ...), got {tuple(value.shape)}")
        outputs = []
        for start in range(0, steps, self.config.chunk_length):
            chunk = slice(start, min(start + self.config.chunk_length, steps))
            outputs.append(self._render_chunk(
                poses[:, chunk].to(self.device, torch.float32), K.to(self.device, torch.float32),
                *(None if value is None else value[:, chunk] for value in (layout, dynamic, depth)),
                generator, ids,
            ))
        return WorldModelOutput(*(torch.cat(parts, dim=1) for parts in zip(*outputs)))

    def _render_chunk(self, poses, K, layout, dynamic, depth, generator, ids) -> tuple[torch.Tensor, ...]:
        batch, steps = poses.shape[:2]
        flat_poses, flat_K = poses.reshape(-1, 4, 4), K.repeat_interleave(steps, dim=0)
        conditioning, observed = self._conditioning(flat_poses, flat_K, layout, ids, steps, self.anchored)
        latents = self._anchor(self.backbone.generate(conditioning, generator), observed)
        rgb, token_depth = self._commit(latents, poses, K, dynamic, depth, ids)
        grid = latents.shape[-2:]
        return rgb, token_depth, conditioning.memory.valid.view(batch, steps, 1, *grid)

    def _commit(self, latents, poses, K, dynamic, depth, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the generated ``latents`` of poses (B, T, 4, 4), write them (re-encoded when
        ``config.reencode``) into the memory and make the last T the next context; returns uint8
        frames (B, T, H, W, 3) and per-token depth (B, T, 1, h, w)."""
        batch, steps = poses.shape[:2]
        images = self.backbone.decode(latents)
        if self.config.reencode:
            latents = torch.lerp(latents, self.backbone.reencode(images), self.config.reencode)
        token_depth = self._write(
            latents, images, K.repeat_interleave(steps, dim=0), poses.reshape(-1, 4, 4),
            None if depth is None else depth.reshape(-1, *depth.shape[2:]),
            None if dynamic is None else dynamic.reshape(-1, *dynamic.shape[2:]),
            ids.repeat_interleave(steps),
        )
        # The chunk's last frames are the next chunk's clean context (the overlap).
        chunk_latents = latents.view(batch, steps, *latents.shape[1:])
        self.context[ids] = torch.cat([self.context[ids], chunk_latents], dim=1)[:, -self.context_frames:]
        self.context_pose[ids] = poses[:, -1]
        rgb = (images.permute(0, 2, 3, 1) * 255 + 0.5).to(torch.uint8)
        return rgb.view(batch, steps, *rgb.shape[1:]), token_depth.view(batch, steps, 1, *latents.shape[-2:])

    @torch.no_grad()
    def observe(self, latents: torch.Tensor, cam_to_world: torch.Tensor, K: torch.Tensor, env_ids=None) -> None:
        """Take ``latents`` (B, C, h, w), generated elsewhere for poses ``cam_to_world`` (B, 4, 4),
        as the next frames of environments ``env_ids``: pulled toward the observed frames,
        decoded, lifted into the memory and made the context, exactly as ``render`` does with its
        own. Training rolls out the generator it is training this way, without generating twice."""
        check_intrinsics(K, cam_to_world.shape[0])
        check_poses(cam_to_world)
        ids = self._env_ids(env_ids, cam_to_world.shape[0])
        if not self.started[ids.cpu()].all():
            raise RuntimeError(f"reset environments {ids[~self.started[ids.cpu()]].tolist()} first")
        expected = (cam_to_world.shape[0], *self.context.shape[2:])
        if tuple(latents.shape) != expected:
            raise ValueError(f"`latents` must be {expected}, got {tuple(latents.shape)}")
        poses, K = cam_to_world.to(self.device, torch.float32), K.to(self.device, torch.float32)
        observed = self._read(poses, K, self.observed_ids(ids)) if self.anchored else None
        self._commit(self._anchor(latents.detach().to(self.device), observed), poses[:, None], K, None, None, ids)

    @torch.no_grad()
    def conditioning(self, cam_to_world: torch.Tensor, K: torch.Tensor, layout: torch.Tensor | None = None,
                     env_ids=None) -> Conditioning:
        """What the backbone would be given to generate the next frame of environments
        ``env_ids`` at poses ``cam_to_world`` (B, 4, 4): the memory read, the context frames,
        the motion since the latest of them and the ``layout`` (B, L, h, w). Nothing changes
        state; training uses it to learn from the model's own rollouts."""
        check_intrinsics(K, cam_to_world.shape[0])
        check_poses(cam_to_world)
        ids = self._env_ids(env_ids, cam_to_world.shape[0])
        if not self.started[ids.cpu()].all():
            raise RuntimeError(f"reset environments {ids[~self.started[ids.cpu()]].tolist()} first")
        return self._conditioning(cam_to_world.to(self.device, torch.float32), K.to(self.device, torch.float32),
                                  None if layout is None else layout[:, None], ids, 1)[0]

    def _conditioning(self, flat_poses, flat_K, layout, ids, steps: int,
                      observed: bool = False) -> tuple[Conditioning, MemoryRead | None]:
        """Conditioning of ``steps`` consecutive poses per environment (flattened B * steps) and,
        when ``observed``, the observed frames' read at those poses, made in the same call."""
        flat_ids = ids.repeat_interleave(steps)
        observed_read = None
        if observed:
            count = len(flat_ids)
            both = self._read(flat_poses.repeat(2, 1, 1), flat_K.repeat(2, 1, 1),
                              torch.cat([flat_ids, self.observed_ids(flat_ids)]))
            shared, observed_read = (MemoryRead(both.latents[half], both.valid[half], both.depth[half])
                                     for half in (slice(None, count), slice(count, None)))
        else:
            shared = self._read(flat_poses, flat_K, flat_ids)
        conditioning = Conditioning(
            memory=shared,
            context=self.context[ids],
            motion=relative_motion(self.context_pose[ids].repeat_interleave(steps, dim=0), flat_poses),
            layout=None if layout is None else layout.reshape(-1, *layout.shape[2:]).to(self.device),
        )
        return conditioning, observed_read

    # ------------------------------------------------------------------ memory
    def _read(self, poses: torch.Tensor, K: torch.Tensor, ids: torch.Tensor) -> MemoryRead:
        """The memory's caches ``ids`` read at ``poses`` (an empty read without a memory)."""
        if self.memory is None:
            grid = (self.image_size[0] // self.backbone.downsample, self.image_size[1] // self.backbone.downsample)
            shape = (poses.shape[0], 1, *grid)
            return MemoryRead(
                latents=torch.zeros(poses.shape[0], self.backbone.latent_channels, *grid, device=self.device),
                valid=torch.zeros(shape, dtype=torch.bool, device=self.device),
                depth=torch.zeros(shape, device=self.device),
            )
        return self.memory.read(poses, K, self.image_size, cache_ids=ids.to(self.memory.device))

    def _anchor(self, latents: torch.Tensor, read: MemoryRead | None) -> torch.Tensor:
        """Generated ``latents`` (N, C, h, w) moved ``config.anchor`` of the way toward the
        observed frames' ``read`` at their poses where it has a token (see the module doc)."""
        if read is None:
            return latents
        pulled = torch.lerp(latents, read.latents.to(latents.device, latents.dtype), self.config.anchor)
        return torch.where(read.valid.to(latents.device), pulled, latents)

    def _write(self, latents, images, K, cam_to_world, depth, dynamic, ids, observed: bool = False) -> torch.Tensor:
        """Write frames into the memory (and, when ``observed`` and anchored, into the observed
        frames' caches too); returns the per-token depth used (B, 1, h, w)."""
        confidence = None
        if depth is not None:
            depth = depth.to(self.device, torch.float32)
        elif self.depth_model is not None:
            depth = self.depth_model(images)
        else:
            depth, confidence = self.backbone.estimate_depth(latents)
        memory_depth = depth
        if isinstance(self.memory, PixelMemory) and depth.shape[-2:] != images.shape[-2:]:
            # The pixel baseline lifts every pixel: give it the per-token depth at image
            # resolution, without the tokens the latent cache would drop as unsure.
            if confidence is not None:
                memory_depth = torch.where(confidence >= self.config.cache.min_confidence, depth, torch.zeros_like(depth))
            memory_depth = F.interpolate(memory_depth, size=images.shape[-2:], mode="nearest")
        frame = MemoryFrame(latents, memory_depth, K, cam_to_world.to(self.device, torch.float32), rgb=images,
                            dynamic=None if dynamic is None else dynamic.to(self.device), confidence=confidence)
        if self.memory is not None:
            self.memory.write(frame, cache_ids=ids.to(self.memory.device))
            if observed and self.anchored:
                self.memory.write(frame, cache_ids=self.observed_ids(ids).to(self.memory.device))
        grid = latents.shape[-2:]
        if depth.shape[-2:] == grid:
            return depth
        return token_depth(depth, self.backbone.downsample)

    def _env_ids(self, env_ids, batch: int) -> torch.Tensor:
        if env_ids is None:
            if batch > self.num_envs:
                raise ValueError(f"batch of {batch} for {self.num_envs} environments; pass `env_ids`")
            return torch.arange(batch, device=self.device)
        ids = torch.as_tensor(env_ids, dtype=torch.long, device=self.device).view(-1)
        if ids.numel() != batch or (ids.numel() and (ids.min() < 0 or ids.max() >= self.num_envs)):
            raise ValueError(f"`env_ids` must be {batch} ids in [0, {self.num_envs}), got {ids.tolist()}")
        if ids.unique().numel() != ids.numel():
            raise ValueError(f"`env_ids` must not repeat, got {ids.tolist()}")
        return ids


def _as_float_images(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] from (B, H, W, 3) uint8 or (B, 3, H, W) float."""
    rgb = torch.as_tensor(rgb)
    if rgb.ndim == 4 and rgb.dtype == torch.uint8 and rgb.shape[-1] == 3:
        return rgb.permute(0, 3, 1, 2).float() / 255
    if rgb.ndim == 4 and rgb.is_floating_point() and rgb.shape[1] == 3:
        if rgb.min() < 0 or rgb.max() > 1:
            raise ValueError("float `rgb` must be in [0, 1]")
        return rgb.float()
    raise ValueError(f"`rgb` must be (B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1], got "
                     f"{tuple(rgb.shape)} {rgb.dtype}")
