"""What every spatial memory takes and returns, so the world model and benchmarks can swap them.

A memory is written with :class:`MemoryFrame` batches and read at target poses, returning a
:class:`MemoryRead` on the latent grid: conditioning latents, where they are valid, and their
depth. Implementations: :class:`world_model.latent_cache.LatentCache` (the method) and
:class:`world_model.pixel_memory.PixelMemory` (the pixel-space baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from world_model.camera import check_intrinsics, check_poses


@dataclass
class MemoryFrame:
    """One batch of observed frames, one per cache (``cache_ids``).

    ``latents`` (B, C, h, w): the VAE latents of the frames (the latent cache stores these).
    ``rgb`` (B, 3, H, W) float in [0, 1]: the frames (the pixel baseline stores these).
    ``depth`` (B, 1, H, W) [m] metric z-depth at image resolution, or (B, 1, h, w) per token;
    values <= 0 mean no surface (sky).
    ``K`` (B, 3, 3): intrinsics of the (H, W) image; ``cam_to_world`` (B, 4, 4).
    ``dynamic`` (B, 1, H, W) or (B, 1, h, w) bool, optional: moving things; never stored.
    ``confidence`` (B, 1, h, w) in [0, 1], optional: the caller's trust in each token (e.g.
    from a depth head); multiplied with the memory's own estimate.
    """

    latents: torch.Tensor | None
    depth: torch.Tensor
    K: torch.Tensor
    cam_to_world: torch.Tensor
    rgb: torch.Tensor | None = None
    dynamic: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    def check(self) -> int:
        """Validate shapes; return the batch size."""
        if self.depth.ndim != 4 or self.depth.shape[1] != 1:
            raise ValueError(f"`depth` must be (B, 1, H, W), got {tuple(self.depth.shape)}")
        batch = self.depth.shape[0]
        check_intrinsics(self.K, batch)
        check_poses(self.cam_to_world, batch)
        for name in ("latents", "rgb", "dynamic", "confidence"):
            value = getattr(self, name)
            if value is not None and (value.ndim != 4 or value.shape[0] != batch):
                raise ValueError(f"`{name}` must be a 4-D tensor with batch {batch}, got {tuple(value.shape)}")
        if self.rgb is not None and self.rgb.shape[1] != 3:
            raise ValueError(f"`rgb` must be (B, 3, H, W), got {tuple(self.rgb.shape)}")
        if not torch.isfinite(self.depth).all():
            raise ValueError("`depth` contains NaN or inf; mark missing depth with 0 (no surface)")
        return batch


@dataclass
class MemoryRead:
    """``latents`` (B, C, h, w) (zero where invalid), ``valid`` (B, 1, h, w) bool, ``depth``
    (B, 1, h, w) [m] of the surface each valid cell shows (0 where invalid)."""

    latents: torch.Tensor
    valid: torch.Tensor
    depth: torch.Tensor


def token_depth(depth: torch.Tensor, downsample: int) -> torch.Tensor:
    """Per-token depth (B, 1, H / downsample, W / downsample) of an image depth map (B, 1, H, W):
    the nearest valid (> 0) depth among the pixels at each cell's centre (the central 2 x 2 for
    an even ``downsample``), 0 if none. Nearest, so a token on an object edge lands on the
    object instead of floating between it and the background."""
    batch, _, height, width = depth.shape
    ds = downsample
    if ds == 1:
        return depth.float()
    centre = slice(ds // 2 - 1, ds // 2 + 1) if ds % 2 == 0 else slice(ds // 2, ds // 2 + 1)
    blocks = depth.float().view(batch, 1, height // ds, ds, width // ds, ds)[:, :, :, centre, :, centre]
    nearest = torch.where(blocks > 0, blocks, torch.full_like(blocks, float("inf"))).amin(dim=(3, 5))
    return torch.where(torch.isfinite(nearest), nearest, torch.zeros_like(nearest))


def nearest_per_cell(cell: torch.Tensor, priority: torch.Tensor, candidate: torch.Tensor, cells: int) -> torch.Tensor:
    """Z-buffer: for each of ``cells`` cells, the ``candidate`` (n,) of the entries landing in
    it (``cell`` (n,)) with the lowest ``priority`` (n,) (nearest), ties to the highest
    candidate; -1 where nothing lands."""
    nearest = torch.full((cells,), float("inf"), device=cell.device).scatter_reduce(0, cell, priority, reduce="amin")
    tied = priority == nearest[cell]
    winner = torch.full((cells,), -1, dtype=torch.long, device=cell.device)
    return winner.scatter_reduce(0, cell[tied], candidate[tied], reduce="amax")
