"""What a world-model backbone provides, so the segment loop runs on any of them.

A backbone maps images to latents and back, estimates depth from latents (to lift generated
tokens into the cache) and generates the latents of new views from their conditioning. Two
implement it: :class:`world_model.tiny_backbone.TinyBackbone` (the default CPU model we train)
and :class:`world_model.wan_backbone.WanBackbone` (Wan2.2 + LoRA for GPU users).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from world_model.memory import MemoryRead

PRECISIONS = ("float32", "bfloat16")  # precisions a backbone's networks can run in


@dataclass
class Conditioning:
    """What a backbone generates new views from; ``T`` target frames per batch entry.

    ``memory``: the memory read at the targets, batched over ``B * T`` (latents (B*T, C, h, w),
    valid, depth). ``context`` (B, N, C, h, w): clean latents of the latest generated frames,
    oldest first. ``motion`` (B*T, 6): each target's camera pose relative to the latest context
    frame (translation [m] then rotation vector [rad], in the context camera's frame).
    ``layout`` (B*T, L, h, w) or None: the road layout at the targets.
    """

    memory: MemoryRead
    context: torch.Tensor
    motion: torch.Tensor
    layout: torch.Tensor | None = None

    def check(self, channels: int) -> tuple[int, int]:
        """Validate shapes; return (B, T)."""
        if self.context.ndim != 5 or self.context.shape[2] != channels:
            raise ValueError(f"`context` must be (B, N, {channels}, h, w), got {tuple(self.context.shape)}")
        batch, grid = self.context.shape[0], self.context.shape[-2:]
        targets = self.memory.latents.shape[0]
        if targets % batch or self.memory.latents.shape[1:] != (channels, *grid):
            raise ValueError(f"memory latents must be (B*T, {channels}, {grid[0]}, {grid[1]}) for a batch of {batch}, "
                             f"got {tuple(self.memory.latents.shape)}")
        if self.motion.shape != (targets, 6):
            raise ValueError(f"`motion` must be ({targets}, 6), got {tuple(self.motion.shape)}")
        if self.layout is not None and (self.layout.shape[0] != targets or self.layout.shape[-2:] != grid):
            raise ValueError(f"`layout` must be ({targets}, L, {grid[0]}, {grid[1]}), got {tuple(self.layout.shape)}")
        return batch, targets // batch


class Backbone(Protocol):
    """The operations the world model needs. Images are float (B, 3, H, W) in [0, 1]."""

    latent_channels: int
    downsample: int  # image pixels per latent cell side
    layout_channels: int  # channels of `Conditioning.layout` it takes (0: none)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> latents (B, C, H / downsample, W / downsample)."""

    def reencode(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` for frames the backbone generated itself (the world model's
        ``reencode``): may be a cheaper approximation of it."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> images (B, 3, h * downsample, w * downsample) in [0, 1]."""

    def estimate_depth(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (B, C, h, w) -> per-token depth (B, 1, h, w) [m] (0: sky) and confidence
        (B, 1, h, w) in [0, 1]."""

    def generate(self, conditioning: Conditioning, generator=None) -> torch.Tensor:
        """Latents (B*T, C, h, w) of the targets of ``conditioning``; random draws come from
        ``generator``: a ``torch.Generator``, or a list of B (one per batch entry)."""
