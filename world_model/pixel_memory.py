"""The pixel-space baseline (Gen3C / Spatia style), for side-by-side comparison only.

Every written frame is kept as a coloured point cloud at full image resolution (one point per
pixel, after the same filters as the latent cache: dynamic, no surface, beyond range). A read
renders all points of the cache into each target view with a z-buffer (each point covers the
2 x 2 pixels around it, so near surfaces do not fall apart into dots), then encodes the rendered
image with the VAE to get conditioning latents. It is the approach the latent cache replaces:
memory grows with every frame and every read pays a full-resolution render plus a VAE encode.
"""

from __future__ import annotations

from typing import Callable

import torch

from world_model.camera import check_intrinsics, check_poses, invert_pose, unproject_depth
from world_model.memory import MemoryFrame, MemoryRead, nearest_per_cell

_NEAR_M = 1e-3


class PixelMemory:
    """Point-cloud memories for ``num_caches`` environments, read through ``encode``.

    Args:
        num_caches: independent memories, addressed by ``cache_ids``.
        encode: maps images (B, 3, H, W) in [0, 1] to latents (B, C, H / downsample, W / downsample)
            (the world model's VAE encoder).
        downsample: image pixels per latent cell side.
        max_range_m: [m] points farther than this are not stored.
    """

    def __init__(self, num_caches: int, encode: Callable[[torch.Tensor], torch.Tensor], downsample: int = 8,
                 max_range_m: float = 100.0, device: torch.device | str = "cpu"):
        self.num_caches, self.encode, self.downsample = num_caches, encode, downsample
        self.max_range_m = max_range_m
        self.device = torch.device(device)
        # One entry per write, concatenated when read: appending to one big tensor would copy
        # everything held on every write.
        self._positions: list[torch.Tensor] = []
        self._colours: list[torch.Tensor] = []
        self._caches: list[torch.Tensor] = []

    @property
    def position(self) -> torch.Tensor:
        return torch.cat(self._positions) if self._positions else torch.zeros(0, 3, device=self.device)

    @property
    def colour(self) -> torch.Tensor:
        return torch.cat(self._colours) if self._colours else torch.zeros(0, 3, dtype=torch.uint8, device=self.device)

    @property
    def cache(self) -> torch.Tensor:
        return torch.cat(self._caches) if self._caches else torch.zeros(0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return sum(len(c) for c in self._caches)

    def nbytes(self, cache_id: int | None = None) -> int:
        """Bytes of point storage (position, colour, cache id), of one cache or all."""
        points = len(self) if cache_id is None else sum(int((c == cache_id).sum()) for c in self._caches)
        per_point = 3 * 4 + 3 * 1 + 8  # float32 xyz, uint8 rgb, int64 cache id
        return points * per_point

    def clear(self, cache_ids=None) -> None:
        if cache_ids is None:
            self._positions, self._colours, self._caches = [], [], []
            return
        ids = torch.as_tensor(cache_ids, device=self.device)
        keep = [~torch.isin(c, ids) for c in self._caches]
        self._positions = [p[k] for p, k in zip(self._positions, keep)]
        self._colours = [c[k] for c, k in zip(self._colours, keep)]
        self._caches = [c[k] for c, k in zip(self._caches, keep)]

    @torch.no_grad()
    def write(self, frame: MemoryFrame, cache_ids=None) -> int:
        """Store every static, valid pixel of ``frame.rgb`` as a coloured point."""
        batch = frame.check()
        if frame.rgb is None or frame.rgb.shape[-2:] != frame.depth.shape[-2:]:
            raise ValueError("the pixel memory needs `rgb` (B, 3, H, W) at the resolution of `depth`")
        ids = torch.arange(batch, device=self.device) if cache_ids is None else torch.as_tensor(cache_ids, device=self.device)
        depth = frame.depth.to(self.device, torch.float32)
        keep = (depth[:, 0] > 0) & (depth[:, 0] <= self.max_range_m)
        if frame.dynamic is not None:
            keep &= ~frame.dynamic.to(self.device).bool()[:, 0]
        points = unproject_depth(depth, frame.K.to(self.device, torch.float32), frame.cam_to_world.to(self.device, torch.float32))
        colour = (frame.rgb.to(self.device).permute(0, 2, 3, 1).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        view = torch.arange(batch, device=self.device).view(-1, 1, 1).expand_as(keep)[keep]
        self._positions.append(points[keep])
        self._colours.append(colour[keep])
        self._caches.append(ids[view])
        return int(keep.sum())

    @torch.no_grad()
    def render(self, cam_to_world: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int], cache_ids=None):
        """Z-buffer render of the point clouds: images (B, 3, H, W) in [0, 1], valid (B, 1, H, W),
        depth (B, 1, H, W)."""
        check_intrinsics(K)
        batch = K.shape[0]
        check_poses(cam_to_world, batch)
        height, width = image_size
        ids = torch.arange(batch, device=self.device) if cache_ids is None else torch.as_tensor(cache_ids, device=self.device)
        world_to_cam = invert_pose(cam_to_world.to(self.device, torch.float32))
        K = K.to(self.device, torch.float32)
        positions, colours, caches = self.position, self.colour, self.cache
        views, points, locals_ = [], [], []
        for index in range(batch):  # a loop over views; each projects all its points at once
            point = (caches == ids[index]).nonzero(as_tuple=True)[0]
            locals_.append(positions[point] @ world_to_cam[index, :3, :3].T + world_to_cam[index, :3, 3])
            points.append(point)
            views.append(torch.full_like(point, index))
        view, point, local = torch.cat(views), torch.cat(points), torch.cat(locals_)
        z = local[:, 2]
        ahead = z > _NEAR_M
        view, point, local, z = view[ahead], point[ahead], local[ahead], z[ahead]
        u = K[view, 0, 0] * local[:, 0] / z + K[view, 0, 2]
        v = K[view, 1, 1] * local[:, 1] / z + K[view, 1, 2]
        # Each point covers the 2 x 2 pixels whose centres surround it; in its own pixel it
        # counts as slightly nearer, so a point beats its neighbours' splats on a flat surface.
        base_col, base_row = torch.floor(u - 0.5).long(), torch.floor(v - 0.5).long()
        col = torch.cat([base_col, base_col + 1, base_col, base_col + 1])
        row = torch.cat([base_row, base_row, base_row + 1, base_row + 1])
        pick = torch.arange(len(point), device=self.device).repeat(4)
        own = (col == torch.floor(u).long().repeat(4)) & (row == torch.floor(v).long().repeat(4))
        priority = z.repeat(4) * torch.where(own, 1.0, 1.01)
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        col, row, pick, priority = col[inside], row[inside], pick[inside], priority[inside]
        pixels = batch * height * width
        pixel = view[pick] * (height * width) + row * width + col
        winner = nearest_per_cell(pixel, priority, pick, pixels)
        valid = winner >= 0
        image = torch.zeros(pixels, 3, device=self.device)
        image[valid] = colours[point[winner[valid]]].float() / 255
        depth = torch.zeros(pixels, device=self.device)
        depth[valid] = z[winner[valid]]
        return (
            image.view(batch, height, width, 3).permute(0, 3, 1, 2),
            valid.view(batch, 1, height, width),
            depth.view(batch, 1, height, width),
        )

    @torch.no_grad()
    def read(self, cam_to_world: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int], cache_ids=None) -> MemoryRead:
        """Render the point clouds at the target views and encode them with the VAE."""
        image, valid, depth = self.render(cam_to_world, K, image_size, cache_ids)
        latents = self.encode(image)
        ds = self.downsample
        height, width = image_size[0] // ds, image_size[1] // ds
        blocks = valid.view(-1, 1, height, ds, width, ds)
        cell_valid = blocks.float().mean(dim=(3, 5)) >= 0.5
        cell_depth = torch.where(valid, depth, torch.full_like(depth, float("inf"))).view(-1, 1, height, ds, width, ds)
        cell_depth = cell_depth.amin(dim=(3, 5))
        cell_depth = torch.where(cell_valid, cell_depth, torch.zeros_like(cell_depth))
        return MemoryRead(latents=latents * cell_valid, valid=cell_valid, depth=cell_depth)
