"""Two-stage alignment of an asset to a frame: coarse 3D, then fine 2D.

Coarse 3D (:func:`place_on_ground`)
    The caller picks a map location and the lane's yaw (from the road map). The asset's origin
    (its ground contact centre) goes there; its height is the ground height seen by the frame's
    depth map under the asset's footprint: footprint sample points (on the plane z = 0) are
    projected into the frame and the depth pixels they fall on are unprojected to world points.
    Only points whose world ``x, y`` lie inside the footprint rectangle (at the asset's yaw,
    grown by the stretch of ground one pixel spans there) are the ground under the asset; points
    of something in front of it (a building, a car) land elsewhere and are dropped. The median
    height of the kept points wins. A footprint entirely outside the view falls back to z = 0;
    a footprint in view with no kept point (sky, off the map, hidden) is an error. Ground far
    above or below z = 0 shifts the points along the view and may leave few of them inside.
Fine 2D (:func:`refine_placement`)
    The asset's ground-contact points are projected into the frame. Where the asset rests on the
    scene's ground, each contact point's depth equals the depth map's at its pixel. Inverse depth
    is affine in the pixel coordinates on a plane, so the disagreement ``1/z_contact -
    1/z_map`` divided by the gradient of the map's inverse depth is the distance in pixels to
    the pixel whose ground is at the contact depth. A least-squares 2D image shift removes the
    common part of those disagreements; the placement is lifted back to 3D by unprojecting the
    shifted anchor pixel with the depth map. Contact points whose disagreement after the fit
    is far larger than the others' (more than 1 px and 3x their median: something in front of
    them in the frame, or a kerb) are dropped and the shift refitted once. The mean remaining
    disagreement of the kept points is the residual [px].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from editors.assets import Asset
from world_model.camera import check_intrinsics, check_poses, project_points, unproject_depth

_FOOTPRINT_SAMPLES = 7  # per side of the footprint grid used to read the depth map
_GRADIENT_STEP_PX = 1.0  # central differences of inverse depth over +-1 px


@dataclass(frozen=True)
class Placement:
    """An asset's pose in the world: origin at ``(x, y, z)`` [m], heading ``yaw`` [rad]."""

    x: float
    y: float
    z: float
    yaw: float

    def as_tensor(self) -> torch.Tensor:
        """(4,) ``[x, y, z, yaw]``."""
        return torch.tensor([self.x, self.y, self.z, self.yaw], dtype=torch.float32)

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """World coordinates (N, 3) of asset-frame ``points`` (N, 3)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return np.asarray(points, dtype=float) @ rotation.T + np.array([self.x, self.y, self.z])


@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine_placement`: the refined ``placement``, the image ``shift_px`` (2,)
    applied to the anchor, the mean contact disagreement [px] of the kept contact points before
    and after the shift, and how many ``outliers`` were dropped (occluded contact points)."""

    placement: Placement
    shift_px: tuple[float, float]
    initial_residual_px: float
    residual_px: float
    outliers: int = 0


def footprint_points(asset: Asset, samples: int = _FOOTPRINT_SAMPLES) -> np.ndarray:
    """(samples**2, 3) grid over the asset's ground footprint (its bounding box at z = 0)."""
    lower, upper = asset.lower, asset.upper
    xs, ys = np.linspace(lower[0], upper[0], samples), np.linspace(lower[1], upper[1], samples)
    x, y = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)


def place_on_ground(asset: Asset, x: float, y: float, yaw: float, depth: torch.Tensor, K: torch.Tensor,
                    cam_to_world: torch.Tensor) -> Placement:
    """Coarse 3D placement (see the module doc) of ``asset`` at map location ``(x, y)`` [m] facing
    ``yaw`` [rad], for one frame: ``depth`` (1, 1, H, W) [m], ``K`` (1, 3, 3), ``cam_to_world``
    (1, 4, 4). Raises ``ValueError`` where the footprint is in view but the depth map has no
    surface under it (no unprojected depth point inside the footprint)."""
    _check_frame(depth, K, cam_to_world)
    flat = Placement(float(x), float(y), 0.0, float(yaw))
    points = torch.as_tensor(flat.to_world(footprint_points(asset)), dtype=torch.float32)[None]
    uv, z = project_points(points, K, cam_to_world)
    height, width = depth.shape[-2:]
    col, row = uv[0, :, 0].floor().long(), uv[0, :, 1].floor().long()
    in_view = (z[0] > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    if not in_view.any():
        return flat  # nothing in the frame to measure: the map's ground, z = 0
    pixel_depth = depth[0, 0, row[in_view], col[in_view]]
    world = unproject_depth(depth, K, cam_to_world)[0, row[in_view], col[in_view]]
    # The points in the asset's frame; a pixel centre is up to half a pixel from its sample.
    c, s = np.cos(flat.yaw), np.sin(flat.yaw)
    dx, dy = world[:, 0] - flat.x, world[:, 1] - flat.y
    local = torch.stack([c * dx + s * dy, -s * dx + c * dy], dim=1)
    slack = _pixel_ground_extent(uv[0, in_view], K, cam_to_world)[:, None]
    lower = torch.as_tensor(asset.lower[:2], dtype=torch.float32)
    upper = torch.as_tensor(asset.upper[:2], dtype=torch.float32)
    on_footprint = (pixel_depth > 0) & ((local >= lower - slack) & (local <= upper + slack)).all(dim=1)
    if not on_footprint.any():
        raise ValueError(f"cannot place the {asset.kind} at ({x:.2f}, {y:.2f}): the depth map has no surface under "
                         "its footprint (sky, off the map, or hidden by something in front of it); pick a location "
                         "on the road in view")
    ground_z = world[on_footprint, 2].median()
    return Placement(flat.x, flat.y, float(ground_z), flat.yaw)


def _pixel_ground_extent(uv: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """(N,) how far [m] on the ground plane z = 0 a point of the pixel around ``uv`` (N, 2) can
    be from the point at ``uv``: the largest ground distance to the rays through ``uv +- 0.5``
    px (inf where such a ray misses the ground, at the horizon)."""
    corners = torch.tensor([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5], [0.0, 0.0]])
    points = uv[:, None, :] + corners  # (N, 5, 2)
    fx, fy, cx, cy = K[0, 0, 0], K[0, 1, 1], K[0, 0, 2], K[0, 1, 2]
    camera = torch.stack([(points[..., 0] - cx) / fx, (points[..., 1] - cy) / fy, torch.ones_like(points[..., 0])], -1)
    directions = camera @ cam_to_world[0, :3, :3].T
    origin = cam_to_world[0, :3, 3]
    t = -origin[2] / directions[..., 2]
    hits = origin[:2] + t[..., None] * directions[..., :2]
    reach = (hits[:, :4] - hits[:, 4:]).norm(dim=-1).amax(dim=1)
    hits_ground = ((directions[..., 2] < 0) & (t > 0)).all(dim=1)
    return torch.where(hits_ground, reach, torch.full_like(reach, float("inf")))


def contact_points(asset: Asset) -> np.ndarray:
    """(P, 3) ground-contact points in the asset frame: the bottom corners and bottom-face centres
    of the boxes that rest on the ground (wheels, legs)."""
    lower = asset.centres - asset.sizes / 2
    upper = asset.centres + asset.sizes / 2
    on_ground = lower[:, 2] < 0.01
    points = []
    for lo, hi in zip(lower[on_ground], upper[on_ground]):
        points += [[x, y, 0.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])]
        points.append([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0])
    return np.array(points)


def refine_placement(asset: Asset, placement: Placement, depth: torch.Tensor, K: torch.Tensor,
                     cam_to_world: torch.Tensor) -> Refinement:
    """Fine 2D alignment (see the module doc) of ``asset`` at ``placement`` in one frame:
    ``depth`` (1, 1, H, W) [m], ``K`` (1, 3, 3), ``cam_to_world`` (1, 4, 4). Contact points off
    the image or over sky are ignored; raises ``ValueError`` when none is left."""
    _check_frame(depth, K, cam_to_world)
    height, width = depth.shape[-2:]
    points = torch.as_tensor(placement.to_world(contact_points(asset)), dtype=torch.float32)[None]
    uv, z = project_points(points, K, cam_to_world)
    uv, z = uv[0], z[0]
    inverse = torch.where(depth > 0, 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))
    step = _GRADIENT_STEP_PX
    offsets = torch.tensor([[0, 0], [step, 0], [-step, 0], [0, step], [0, -step]])
    samples = _bilinear(inverse, (uv[:, None, :] + offsets).reshape(-1, 2), height, width).view(-1, 5)
    valid = (z > 0) & (samples > 0).all(dim=1) & _inside(uv, height, width, margin=step + 0.5)
    if not valid.any():
        raise ValueError(f"no ground-contact point of the {asset.kind} lands on a pixel with depth; "
                         "it is off the image or over sky")
    gradient = torch.stack([samples[:, 1] - samples[:, 2], samples[:, 3] - samples[:, 4]], dim=1)[valid] / (2 * step)
    # Pixels along the inverse-depth gradient to the ground at the contact point's depth.
    disagreement = (1.0 / z[valid] - samples[valid, 0])
    norm = gradient.norm(dim=1).clamp(min=1e-9)
    # Least squares over the shift s: gradient_i . s = disagreement_i, each row scaled to pixels.
    # On level ground the gradients all point down the image, so the sideways shift is
    # unconstrained: the minimum-norm solution (singular values below 5 % of the largest
    # dropped) leaves such directions unshifted instead of amplifying noise.
    system, target = gradient / norm[:, None], disagreement / norm
    shift = _least_squares(system, target)
    error = (system @ shift - target).abs()
    keep = error <= torch.clamp(3 * error.median(), min=1.0)
    if 2 <= int(keep.sum()) < len(keep):
        shift = _least_squares(system[keep], target[keep])
        error = (system @ shift - target).abs()
    else:
        keep = torch.ones_like(keep)
    initial = target[keep].abs().mean()
    residual = error[keep].mean()

    anchor_uv, _ = project_points(torch.as_tensor(placement.to_world(np.zeros((1, 3))), dtype=torch.float32)[None],
                                  K, cam_to_world)
    moved = anchor_uv[0, 0] + shift
    moved_inverse = _bilinear(inverse, moved[None], height, width)[0]
    if not _inside(moved[None], height, width, margin=0.5)[0] or moved_inverse <= 0:
        raise ValueError(f"the refined anchor of the {asset.kind} at pixel {moved.tolist()} has no depth")
    anchor_depth = torch.ones(1, 1, 1, 1) / moved_inverse
    # Unproject the shifted anchor: a one-pixel depth map whose pixel centre is the anchor.
    K_anchor = K.clone()
    K_anchor[:, 0, 2] -= moved[0] - 0.5
    K_anchor[:, 1, 2] -= moved[1] - 0.5
    world = unproject_depth(anchor_depth, K_anchor, cam_to_world)[0, 0, 0]
    refined = Placement(float(world[0]), float(world[1]), float(world[2]), placement.yaw)
    return Refinement(refined, (float(shift[0]), float(shift[1])), float(initial), float(residual),
                      int((~keep).sum()))


def _least_squares(system: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minimum-norm solution (2,) of ``system`` (P, 2) @ s = ``target`` (P,), dropping singular
    values below 5 % of the largest."""
    return torch.linalg.lstsq(system.double(), target.double()[:, None], rcond=0.05,
                              driver="gelsd").solution[:, 0].float()


def _check_frame(depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> None:
    if depth.ndim != 4 or depth.shape[:2] != (1, 1):
        raise ValueError(f"`depth` must be one frame (1, 1, H, W), got {tuple(depth.shape)}")
    check_intrinsics(K, batch=1)
    check_poses(cam_to_world, batch=1)


def _inside(uv: torch.Tensor, height: int, width: int, margin: float) -> torch.Tensor:
    """(N,) whether pixel coordinates ``uv`` (N, 2) lie ``margin`` px inside the image."""
    return (uv[:, 0] >= margin) & (uv[:, 0] <= width - margin) & (uv[:, 1] >= margin) & (uv[:, 1] <= height - margin)


def _bilinear(image: torch.Tensor, uv: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N,) bilinear samples of ``image`` (1, 1, H, W) at pixel coordinates ``uv`` (N, 2). With
    ``align_corners=False``, normalised -1 is the image's left edge, matching pixel centres at
    ``col + 0.5``."""
    grid = torch.stack([2 * uv[:, 0] / width - 1, 2 * uv[:, 1] / height - 1], dim=1).view(1, 1, -1, 2)
    return F.grid_sample(image, grid, mode="bilinear", align_corners=False).view(-1)
