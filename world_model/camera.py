"""Camera conventions: the one place that defines frames, intrinsics and poses.

Every other module (renderer, latent cache, env, editor) calls these functions.

World frame
    Right-handed, metres, ``x`` east, ``y`` north, ``z`` up. It is OpenDRIVE's inertial frame,
    so map coordinates read from an ``.xodr`` file are world coordinates unchanged.
Body frame (vehicles, the camera mount)
    ``x`` forward, ``y`` left, ``z`` up. ``yaw`` turns ``x`` towards ``y`` (counter-clockwise
    seen from above), ``pitch`` > 0 raises the nose, ``roll`` > 0 lowers the right side.
Camera frame
    OpenCV: ``x`` right, ``y`` down, ``z`` forward (the optical axis).
Pose
    ``cam_to_world``: (B, 4, 4) float, maps homogeneous camera-frame points to world points.
Intrinsics
    ``K``: (B, 3, 3) pinhole matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels. Pixel
    ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``; its centre is ``(col + 0.5,
    row + 0.5)``. A centred principal point is therefore ``cx = W / 2``, and resizing an image by
    ``s`` scales ``fx, fy, cx, cy`` by ``s`` exactly (see :func:`scale_intrinsics`).
Depth
    Metric z-depth along the optical axis (not the ray length), float32, (B, 1, H, W).
    ``NO_SURFACE_DEPTH`` (0.0) marks a pixel whose ray hits nothing (sky).
"""

from __future__ import annotations

import math

import torch

NO_SURFACE_DEPTH = 0.0
"""Depth value of a pixel whose ray hits no surface (sky). Valid depths are > 0."""

# Columns are the camera axes (right, down, forward) written in the body frame (fwd, left, up).
_BODY_FROM_CAMERA = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def check_intrinsics(K: torch.Tensor, batch: int | None = None) -> None:
    """Raise ``ValueError`` unless ``K`` is (B, 3, 3), finite, with positive focal lengths."""
    if not isinstance(K, torch.Tensor) or K.ndim != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"`K` must be a (B, 3, 3) tensor, got {_describe(K)}")
    if batch is not None and K.shape[0] != batch:
        raise ValueError(f"`K` has batch {K.shape[0]}, expected {batch} (one per pose)")
    if not torch.isfinite(K).all():
        raise ValueError("`K` contains NaN or inf")
    if (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        raise ValueError(
            f"focal lengths must be > 0 pixels, got fx={K[:, 0, 0].tolist()} fy={K[:, 1, 1].tolist()}"
        )


def check_poses(cam_to_world: torch.Tensor, batch: int | None = None) -> None:
    """Raise ``ValueError`` unless ``cam_to_world`` is (B, 4, 4), finite, and rigid."""
    if (
        not isinstance(cam_to_world, torch.Tensor)
        or cam_to_world.ndim != 3
        or cam_to_world.shape[-2:] != (4, 4)
    ):
        raise ValueError(f"`cam_to_world` must be a (B, 4, 4) tensor, got {_describe(cam_to_world)}")
    if batch is not None and cam_to_world.shape[0] != batch:
        raise ValueError(f"`cam_to_world` has batch {cam_to_world.shape[0]}, expected {batch}")
    if not torch.isfinite(cam_to_world).all():
        raise ValueError("`cam_to_world` contains NaN or inf")
    rotation = cam_to_world[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64, device=rotation.device)
    if (rotation @ rotation.transpose(1, 2) - eye).abs().max() > 1e-3:
        raise ValueError("`cam_to_world` rotation part is not orthonormal; poses must be rigid")


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> torch.Tensor:
    """(3, 3) intrinsics for a horizontal field of view ``fov_deg`` [deg], square pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"`fov_deg` must be in (0, 180) degrees, got {fov_deg}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor(
        [[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32
    )


def scale_intrinsics(K: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """Intrinsics of the same camera after resizing the image by (``scale_x``, ``scale_y``).

    Exact under the pixel-centre convention of this module: an image of width W resized to
    ``w = W * scale_x`` (e.g. the latent grid, ``scale = 1/8``) sees pixel centre ``u`` at
    ``u * scale_x``.
    """
    scale = torch.tensor([scale_x, scale_y, 1.0], dtype=K.dtype, device=K.device)
    return K * scale.view(*([1] * (K.ndim - 2)), 3, 1)


def rotation_from_ypr(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) world-from-body rotation for yaw, pitch, roll in radians (see module doc)."""
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    # Nose-up pitch is a negative rotation about the body's left (y) axis.
    cp, sp = torch.cos(-pitch), torch.sin(-pitch)
    # Right-side-down roll is a positive rotation about the forward (x) axis.
    cr, sr = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rz = torch.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1).view(*yaw.shape, 3, 3)
    ry = torch.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], -1).view(*yaw.shape, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cr, -sr, zero, sr, cr], -1).view(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def camera_pose(
    position: torch.Tensor,
    yaw: torch.Tensor,
    pitch: torch.Tensor | None = None,
    roll: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 4, 4) ``cam_to_world`` of cameras at ``position`` (B, 3) [m] looking along the body's
    forward axis given by ``yaw``, ``pitch``, ``roll`` (B,) [rad]."""
    position = torch.as_tensor(position, dtype=torch.float32)
    yaw = torch.as_tensor(yaw, dtype=torch.float32)
    pitch = torch.zeros_like(yaw) if pitch is None else torch.as_tensor(pitch, dtype=torch.float32)
    roll = torch.zeros_like(yaw) if roll is None else torch.as_tensor(roll, dtype=torch.float32)
    if position.ndim != 2 or position.shape[-1] != 3 or yaw.shape != position.shape[:1]:
        raise ValueError(
            f"`position` must be (B, 3) and angles (B,), got {tuple(position.shape)} and {tuple(yaw.shape)}"
        )
    world_from_body = rotation_from_ypr(yaw, pitch, roll)
    pose = torch.zeros(position.shape[0], 4, 4, dtype=torch.float32, device=position.device)
    pose[:, :3, :3] = world_from_body @ _BODY_FROM_CAMERA.to(position.device)
    pose[:, :3, 3] = position
    pose[:, 3, 3] = 1.0
    return pose


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid (..., 4, 4) transforms (``world_to_cam`` from ``cam_to_world``)."""
    rotation_t = pose[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(pose)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ pose[..., :3, 3:4]).squeeze(-1)
    inverse[..., 3, 3] = 1.0
    return inverse


def pixel_centres(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates ``(u, v)`` = ``(col + 0.5, row + 0.5)``."""
    rows = torch.arange(height, dtype=torch.float32, device=device) + 0.5
    cols = torch.arange(width, dtype=torch.float32, device=device) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([u, v], dim=-1)


def camera_rays(K: torch.Tensor, cam_to_world: torch.Tensor, height: int, width: int):
    """Rays through every pixel centre.

    Returns ``origins`` (B, 3) and ``directions`` (B, H, W, 3) in the world frame. Directions are
    scaled so that their camera-frame z component is 1: the point at ray parameter ``t`` is at
    z-depth ``t``, so a ray hit's ``t`` is the pixel's depth.
    """
    check_intrinsics(K)
    check_poses(cam_to_world, batch=K.shape[0])
    uv = pixel_centres(height, width, K.device)
    fx, fy = K[:, 0, 0].view(-1, 1, 1), K[:, 1, 1].view(-1, 1, 1)
    cx, cy = K[:, 0, 2].view(-1, 1, 1), K[:, 1, 2].view(-1, 1, 1)
    x = (uv[..., 0] - cx) / fx
    y = (uv[..., 1] - cy) / fy
    camera_dirs = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    rotation = cam_to_world[:, :3, :3]
    directions = torch.einsum("bij,bhwj->bhwi", rotation, camera_dirs)
    return cam_to_world[:, :3, 3], directions


def camera_points(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (B, H, W, 3) of every pixel centre of ``depth`` (B, 1, H, W) with
    intrinsics ``K`` (B, 3, 3); depth <= 0 (no surface) gives the camera centre."""
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"`depth` must be (B, 1, H, W), got {tuple(depth.shape)}")
    check_intrinsics(K, batch=depth.shape[0])
    uv = pixel_centres(depth.shape[2], depth.shape[3], K.device)
    z = depth[:, 0]
    x = (uv[..., 0] - K[:, 0, 2].view(-1, 1, 1)) / K[:, 0, 0].view(-1, 1, 1) * z
    y = (uv[..., 1] - K[:, 1, 2].view(-1, 1, 1)) / K[:, 1, 1].view(-1, 1, 1) * z
    return torch.stack([x, y, z], dim=-1)


def unproject_depth(depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """World points (B, H, W, 3) of every pixel centre of ``depth`` (B, 1, H, W).

    Pixels with no surface (depth <= 0) give points at the camera centre; mask them yourself.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"`depth` must be (B, 1, H, W), got {tuple(depth.shape)}")
    check_intrinsics(K, batch=depth.shape[0])
    origins, directions = camera_rays(K, cam_to_world, depth.shape[2], depth.shape[3])
    return origins.view(-1, 1, 1, 3) + directions * depth[:, 0, :, :, None]


def project_points(points: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor):
    """Project world ``points`` (B, N, 3) into cameras.

    Returns ``uv`` (B, N, 2) in pixels (pixel-centre convention) and ``depth`` (B, N), the
    z-depth in the camera; points with depth <= 0 are behind the camera and their ``uv`` is
    meaningless.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"`points` must be (B, N, 3), got {tuple(points.shape)}")
    check_intrinsics(K, batch=points.shape[0])
    check_poses(cam_to_world, batch=points.shape[0])
    world_to_cam = invert_pose(cam_to_world)
    camera_points = points @ world_to_cam[:, :3, :3].transpose(1, 2) + world_to_cam[:, None, :3, 3]
    depth = camera_points[..., 2]
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    u = K[:, None, 0, 0] * camera_points[..., 0] / safe + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * camera_points[..., 1] / safe + K[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), depth


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def relative_motion(from_pose: torch.Tensor, to_pose: torch.Tensor) -> torch.Tensor:
    """(B, 6) motion from camera ``from_pose`` to ``to_pose`` (B, 4, 4), in ``from``'s camera
    frame: translation [m] then rotation vector [rad] (axis times angle)."""
    relative = invert_pose(from_pose) @ to_pose
    return torch.cat([relative[:, :3, 3], rotation_vector(relative[:, :3, :3])], dim=1)


def rotation_vector(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3) axis-angle vectors of rotation matrices (B, 3, 3), through unit quaternions
    (stable at small angles and near pi)."""
    m = rotation
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # Quaternion magnitudes from the diagonal, signs from the off-diagonal differences.
    w = 0.5 * torch.sqrt((1 + trace).clamp(min=0))
    x = 0.5 * torch.sqrt((1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2]).clamp(min=0))
    y = 0.5 * torch.sqrt((1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2]).clamp(min=0))
    z = 0.5 * torch.sqrt((1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]).clamp(min=0))
    x = torch.copysign(x, m[:, 2, 1] - m[:, 1, 2])
    y = torch.copysign(y, m[:, 0, 2] - m[:, 2, 0])
    z = torch.copysign(z, m[:, 1, 0] - m[:, 0, 1])
    vector = torch.stack([x, y, z], dim=1)
    sine = vector.norm(dim=1, keepdim=True)
    angle = 2 * torch.atan2(sine, w[:, None])
    return vector * torch.where(sine > 1e-8, angle / sine.clamp(min=1e-12), torch.full_like(sine, 2.0))
