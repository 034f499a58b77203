"""Render assets at camera poses and composite them into frames, with labels.

Assets are drawn by casting one ray per pixel centre (camera conventions of
:mod:`world_model.camera`) against every box of every asset (slab test), so their depth is exact
z-depth like the frame's. Compositing is a per-pixel depth test against the frame's depth map:
the nearer surface wins, so a building in the frame hides an asset behind it and an asset hides
the road behind it; pixels with no surface (sky, depth 0) always lose. A soft contact shadow
darkens the frame's surface under and around each asset's footprint. Every inserted asset pixel,
and every pixel its shadow darkens, is reported in a ``dynamic`` mask, which the caller passes to
the world model so those tokens never enter the latent cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from editors.assets import Asset
from world_model.camera import camera_rays, check_intrinsics, check_poses, invert_pose, unproject_depth

SUN_DIRECTION = (0.35, 0.25, 0.9)  # towards the sun in the world frame (normalised on use)
_AMBIENT, _DIFFUSE = 0.45, 0.55  # Lambert shading: ambient + diffuse * max(0, n . sun)
SHADOW_STRENGTH = 0.5  # darkening of the ground right under an asset (0 none, 1 black)
SHADOW_SOFTNESS_M = 0.3  # [m] the shadow fades over about this distance outside the footprint
SHADOW_HEIGHT_M = 0.25  # [m] only surfaces this close to the asset's base height are shadowed
SHADOW_DYNAMIC_MIN = 0.02  # shadow darker than this fraction counts as dynamic (kept out of the cache)


@dataclass
class AssetInstance:
    """An asset in a batch of frames: ``poses`` (B, 4) ``[x, y, z, yaw]`` [m, rad] of its origin
    in each frame (e.g. a :class:`editors.motion.Track` row with its placed height)."""

    asset: Asset
    track_id: int
    poses: torch.Tensor


@dataclass
class AssetRender:
    """Assets rendered alone: ``rgb`` (B, 3, H, W) in [0, 1] (0 where none), ``depth``
    (B, 1, H, W) [m] (0 where none), ``instance`` (B, 1, H, W) long index into the instances
    (-1 where none), ``alone`` (B, N, H, W) bool: the pixels each instance covers when rendered by itself."""

    rgb: torch.Tensor
    depth: torch.Tensor
    instance: torch.Tensor
    alone: torch.Tensor


@dataclass
class AssetLabel:
    """Label of one asset in one frame. ``box_2d`` ``(x0, y0, x1, y1)`` [px, pixel edges] bounds
    the visible pixels (None if none are visible); ``corners_world`` and ``corners_camera`` (8, 3)
    are the asset's 3D bounding box corners [m] (corner order of
    :meth:`editors.assets.Asset.bounding_corners`); ``mask`` (H, W) bool its visible pixels;
    ``occlusion`` the fraction of its pixels (rendered alone, in this view) that the frame or
    other assets hide, 0 when it is out of view."""

    kind: str
    track_id: int
    box_2d: tuple[int, int, int, int] | None
    corners_world: np.ndarray
    corners_camera: np.ndarray
    mask: torch.Tensor
    occlusion: float


@dataclass
class Composite:
    """Frames with assets inserted: ``rgb`` (B, 3, H, W) in [0, 1], ``depth`` (B, 1, H, W) [m],
    ``instance`` (B, 1, H, W) long (-1 where no asset is visible), ``dynamic`` (B, 1, H, W) bool
    (every visible asset pixel and its shadow), ``shadow`` (B, 1, H, W) the contact shadow's
    darkening of the frame in [0, 1], ``labels[b]`` one :class:`AssetLabel` per instance."""

    rgb: torch.Tensor
    depth: torch.Tensor
    instance: torch.Tensor
    dynamic: torch.Tensor
    shadow: torch.Tensor
    labels: list[list[AssetLabel]]


def render_assets(instances: list[AssetInstance], K: torch.Tensor, cam_to_world: torch.Tensor,
                  height: int, width: int) -> AssetRender:
    """Ray-cast every box of ``instances`` for cameras ``cam_to_world`` (B, 4, 4) with
    intrinsics ``K`` (B, 3, 3) at ``height`` x ``width``; see :class:`AssetRender`."""
    check_intrinsics(K)
    check_poses(cam_to_world, batch=K.shape[0])
    batch, device = K.shape[0], K.device
    _check_instances(instances, batch)
    origins, directions = camera_rays(K.float(), cam_to_world.float(), height, width)
    directions = directions.reshape(batch, -1, 3)
    rays = directions.shape[1]
    sun = torch.tensor(SUN_DIRECTION, device=device)
    sun = sun / sun.norm()
    inf = torch.full((batch, rays), float("inf"), device=device)
    nearest, index = inf.clone(), torch.full((batch, rays), -1, dtype=torch.long, device=device)
    colour = torch.zeros(batch, rays, 3, device=device)
    alone = torch.zeros(batch, len(instances), rays, dtype=torch.bool, device=device)
    in_view = _in_view(instances, K, cam_to_world, height, width)
    for i, instance in enumerate(instances):
        if not in_view[i]:
            continue  # no ray can hit it: skip its boxes
        pose = instance.poses.to(device, torch.float32)
        cos, sin = torch.cos(pose[:, 3]), torch.sin(pose[:, 3])
        for centre, size, box_colour in zip(instance.asset.centres, instance.asset.sizes, instance.asset.colours):
            centre = torch.as_tensor(centre, dtype=torch.float32, device=device)
            half = torch.as_tensor(size / 2, dtype=torch.float32, device=device)
            t, axis, sign = _intersect_box(origins, directions, pose, cos, sin, centre, half)
            alone[:, i] |= torch.isfinite(t)
            nearer = t < nearest
            nearest = torch.where(nearer, t, nearest)
            index = torch.where(nearer, torch.full_like(index, i), index)
            # Face normal in the asset frame, turned by the asset's yaw into the world.
            local = torch.zeros(batch, rays, 3, device=device).scatter_(2, axis[..., None], sign[..., None])
            normal = torch.stack([cos[:, None] * local[..., 0] - sin[:, None] * local[..., 1],
                                  sin[:, None] * local[..., 0] + cos[:, None] * local[..., 1], local[..., 2]], -1)
            shade = _AMBIENT + _DIFFUSE * (normal @ sun).clamp(min=0)
            lit = torch.as_tensor(box_colour, dtype=torch.float32, device=device) * shade[..., None]
            colour = torch.where(nearer[..., None], lit, colour)
    hit = torch.isfinite(nearest)
    return AssetRender(
        rgb=colour.view(batch, height, width, 3).permute(0, 3, 1, 2).contiguous(),
        depth=torch.where(hit, nearest, torch.zeros_like(nearest)).view(batch, 1, height, width),
        instance=index.view(batch, 1, height, width),
        alone=alone.view(batch, len(instances), height, width),
    )


def composite(rgb: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor,
              instances: list[AssetInstance]) -> Composite:
    """Insert ``instances`` into frames ``rgb`` (B, 3, H, W) in [0, 1] with z-depth ``depth``
    (B, 1, H, W) [m] (0 = no surface), seen by cameras ``cam_to_world`` (B, 4, 4) with
    intrinsics ``K`` (B, 3, 3). See the module doc and :class:`Composite`."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"`rgb` must be (B, 3, H, W), got {tuple(rgb.shape)}")
    if depth.shape != (rgb.shape[0], 1, *rgb.shape[2:]):
        raise ValueError(f"`depth` must be (B, 1, H, W) matching `rgb` {tuple(rgb.shape)}, got {tuple(depth.shape)}")
    batch, _, height, width = rgb.shape
    check_intrinsics(K, batch=batch)
    render = render_assets(instances, K, cam_to_world, height, width)
    scene_depth = torch.where(depth > 0, depth, torch.full_like(depth, float("inf")))
    wins = (render.instance >= 0) & (render.depth < scene_depth)
    shadow = _contact_shadow(instances, depth, K, cam_to_world)
    shadowed = rgb * (1.0 - shadow)
    world_to_cam = invert_pose(cam_to_world.float()).double().cpu().numpy()
    labels = []
    for b in range(batch):
        frame_labels = []
        for i, instance in enumerate(instances):
            mask = wins[b, 0] & (render.instance[b, 0] == i)
            alone = int(render.alone[b, i].sum())
            x, y, z, yaw = instance.poses[b].tolist()
            c, s = np.cos(yaw), np.sin(yaw)
            corners = instance.asset.bounding_corners() @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [x, y, z]
            camera = corners @ world_to_cam[b, :3, :3].T + world_to_cam[b, :3, 3]
            frame_labels.append(AssetLabel(
                kind=instance.asset.kind,
                track_id=instance.track_id,
                box_2d=_box_2d(mask),
                corners_world=corners,
                corners_camera=camera,
                mask=mask,
                occlusion=1.0 - int(mask.sum()) / alone if alone else 0.0,
            ))
        labels.append(frame_labels)
    return Composite(
        rgb=torch.where(wins, render.rgb, shadowed),
        depth=torch.where(wins, render.depth, depth),
        instance=torch.where(wins, render.instance, torch.full_like(render.instance, -1)),
        dynamic=wins | (shadow > SHADOW_DYNAMIC_MIN),  # shadows move with their assets too
        shadow=torch.where(wins, torch.zeros_like(shadow), shadow),
        labels=labels,
    )


def _in_view(instances: list[AssetInstance], K: torch.Tensor, cam_to_world: torch.Tensor, height: int,
             width: int) -> list[bool]:
    """Per instance, whether its bounding box may cover a pixel in any frame: not entirely
    behind the camera nor entirely beyond one image edge (a conservative test)."""
    world_to_cam = invert_pose(cam_to_world.float()).double().cpu().numpy()
    intrinsics = K.double().cpu().numpy()
    out = []
    for instance in instances:
        visible = False
        for b, (x, y, z, yaw) in enumerate(instance.poses.double().cpu().numpy()):
            c, s = np.cos(yaw), np.sin(yaw)
            corners = instance.asset.bounding_corners() @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [x, y, z]
            camera = corners @ world_to_cam[b, :3, :3].T + world_to_cam[b, :3, 3]
            if (camera[:, 2] <= 1e-6).all():
                continue
            if (camera[:, 2] <= 1e-6).any():  # straddles the camera plane: cannot bound it on screen
                visible = True
                break
            u = intrinsics[b, 0, 0] * camera[:, 0] / camera[:, 2] + intrinsics[b, 0, 2]
            v = intrinsics[b, 1, 1] * camera[:, 1] / camera[:, 2] + intrinsics[b, 1, 2]
            if not ((u < 0).all() or (u > width).all() or (v < 0).all() or (v > height).all()):
                visible = True
                break
        out.append(visible)
    return out


def _check_instances(instances: list[AssetInstance], batch: int) -> None:
    for instance in instances:
        poses = instance.poses
        if not isinstance(poses, torch.Tensor) or poses.shape != (batch, 4):
            raise ValueError(f"track {instance.track_id}: `poses` must be a ({batch}, 4) tensor [x, y, z, yaw], "
                             f"got {getattr(poses, 'shape', type(poses).__name__)}")
        if not torch.isfinite(poses).all():
            raise ValueError(f"track {instance.track_id}: `poses` contains NaN or inf")


def _intersect_box(origins, directions, pose, cos, sin, centre, half):
    """Slab test of rays ``origins`` (B, 3) + t ``directions`` (B, R, 3) against one box of an
    asset at ``pose`` (B, 4) (``cos``, ``sin`` of its yaw (B,)), the box at ``centre`` (3,) with
    half sizes ``half`` (3,) in the asset frame. Returns the entry ``t`` (B, R) (inf for a miss or
    a box around the camera), the entered face's axis (B, R) and its outward sign (B, R)."""
    c, s = cos[:, None], sin[:, None]
    offset = origins - pose[:, :3]  # (B, 3): camera in the asset frame, before the yaw
    local_origin = torch.stack([c[:, 0] * offset[:, 0] + s[:, 0] * offset[:, 1],
                                -s[:, 0] * offset[:, 0] + c[:, 0] * offset[:, 1], offset[:, 2]], -1) - centre
    d = directions
    local_dir = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], -1)
    safe = torch.where(local_dir.abs() < 1e-12, torch.full_like(local_dir, 1e-12), local_dir)
    t_low = (-half - local_origin[:, None, :]) / safe
    t_high = (half - local_origin[:, None, :]) / safe
    t_enter, axis = torch.minimum(t_low, t_high).max(dim=-1)
    t_exit = torch.maximum(t_low, t_high).min(dim=-1).values
    t = torch.where((t_enter <= t_exit) & (t_enter > 1e-6), t_enter, torch.full_like(t_enter, float("inf")))
    sign = -torch.sign(local_dir.gather(-1, axis[..., None])[..., 0])
    return t, axis, sign


def _contact_shadow(instances: list[AssetInstance], depth, K, cam_to_world) -> torch.Tensor:
    """(B, 1, H, W) darkening in [0, SHADOW_STRENGTH] of frame pixels near each asset's base."""
    points = unproject_depth(depth.float(), K.float(), cam_to_world.float())  # (B, H, W, 3)
    darkness = torch.zeros(depth.shape, device=depth.device)
    for instance in instances:
        pose = instance.poses.to(points.device, torch.float32).view(-1, 1, 1, 4)
        offset = points - pose[..., :3]
        c, s = torch.cos(pose[..., 3]), torch.sin(pose[..., 3])
        lx, ly = c * offset[..., 0] + s * offset[..., 1], -s * offset[..., 0] + c * offset[..., 1]
        lower, upper = instance.asset.lower, instance.asset.upper
        # Distance outside the footprint rectangle: 0 under the asset.
        ex = torch.clamp(torch.maximum(lower[0] - lx, lx - upper[0]), min=0)
        ey = torch.clamp(torch.maximum(lower[1] - ly, ly - upper[1]), min=0)
        near_base = (offset[..., 2].abs() < SHADOW_HEIGHT_M) & (depth[:, 0] > 0)
        strength = SHADOW_STRENGTH * torch.exp(-(ex**2 + ey**2) / SHADOW_SOFTNESS_M**2) * near_base
        darkness = torch.maximum(darkness, strength[:, None])
    return darkness


def _box_2d(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` pixel-edge bounds of the set pixels of ``mask`` (H, W), or None."""
    rows, cols = mask.nonzero(as_tuple=True)
    if len(rows) == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
