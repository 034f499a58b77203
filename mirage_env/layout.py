"""Road layout rasterised from the map at a camera pose: what the world model is conditioned on.

Driving world models condition on the HD map so that road revealed for the first time matches
the map that rewards and infraction checks use. Ours gets, for each target view, the fraction of
each latent cell whose pixels look at road, lane marking or sidewalk on the ground plane
(z = 0), from the same ground raster the scene is built on (:class:`mirage_env.scene.GroundTexture`,
classes only, no colours). Nothing occludes the layout: buildings and cars are not part of the
map, exactly as an HD-map raster shows the road behind a wall.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mirage_env.scene import GroundTexture, Semantic
from world_model.camera import camera_rays, check_intrinsics, check_poses

LAYOUT_CLASSES = (Semantic.ROAD, Semantic.LANE_MARKING, Semantic.SIDEWALK)
_MAX_GROUND_M = 200.0  # [m] ground farther along the ray than this counts as not seen


class LayoutRasteriser:
    """Rasterises a ground texture's classes for batches of camera poses."""

    def __init__(self, ground: GroundTexture, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.classes = torch.as_tensor(ground.classes, device=self.device)  # (rows, cols) class ids, shared
        self.origin = torch.tensor([ground.x0, ground.y0], dtype=torch.float32, device=self.device)
        self.texel = ground.texel
        self._class_ids = torch.tensor([int(c) for c in LAYOUT_CLASSES], device=self.device).view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, cam_to_world: torch.Tensor, K: torch.Tensor, height: int, width: int,
                 downsample: int = 1) -> torch.Tensor:
        """(B, len(LAYOUT_CLASSES), height / downsample, width / downsample) in [0, 1]: per cell
        the fraction of its pixels showing each layout class, for images of ``height`` x
        ``width`` with intrinsics ``K`` (B, 3, 3) at ``cam_to_world`` (B, 4, 4)."""
        return self.classify(*ground_hits(cam_to_world.to(self.device), K.to(self.device), height, width), downsample)

    @torch.no_grad()
    def classify(self, ground: torch.Tensor, seen: torch.Tensor, downsample: int = 1) -> torch.Tensor:
        """The layout (see ``__call__``) of rays that hit the ground at ``ground`` (B, H, W, 2)
        [m] where ``seen`` (B, H, W) (from :func:`ground_hits`, which may serve several maps)."""
        height, width = seen.shape[-2:]
        if height % downsample or width % downsample:
            raise ValueError(f"image size {height}x{width} is not a multiple of downsample {downsample}")
        cell = torch.floor((ground - self.origin) / self.texel).long()
        rows, cols = self.classes.shape
        inside = seen & (cell[..., 0] >= 0) & (cell[..., 0] < cols) & (cell[..., 1] >= 0) & (cell[..., 1] < rows)
        label = self.classes[cell[..., 1].clamp(0, rows - 1), cell[..., 0].clamp(0, cols - 1)]
        label = torch.where(inside, label.long(), -1)
        onehot = (label[:, None] == self._class_ids).float()
        return F.avg_pool2d(onehot, downsample)


def ground_hits(cam_to_world: torch.Tensor, K: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel's ray meets the ground plane z = 0: points (B, H, W, 2) [m] and whether
    it does within ``_MAX_GROUND_M`` (B, H, W), for images of ``height`` x ``width`` with
    intrinsics ``K`` (B, 3, 3) at ``cam_to_world`` (B, 4, 4)."""
    check_intrinsics(K)
    check_poses(cam_to_world, K.shape[0])
    origins, directions = camera_rays(K.float(), cam_to_world.float(), height, width)
    down = directions[..., 2]  # (B, H, W)
    t = -origins[:, None, None, 2] / down.clamp(max=-1e-6)
    seen = (down < -1e-6) & (t * directions.norm(dim=-1) < _MAX_GROUND_M)
    return origins[:, None, None, :2] + directions[..., :2] * t[..., None], seen
