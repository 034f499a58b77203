"""Ground-truth renderer: exact RGB, metric depth and semantic labels of a :class:`Scene`.

One ray per pixel centre (camera conventions of :mod:`world_model.camera`) is intersected
analytically with the ground plane z = 0, oriented boxes (slab test) and spheres; the nearest hit
wins. Depth is therefore exact z-depth, so a point seen at depth d in one view reprojects exactly
into any other view. Pixels whose ray hits nothing within ``far_m`` are sky: depth
``NO_SURFACE_DEPTH`` (0.0) and label ``Semantic.SKY``. With ``antialias`` > 1 each pixel's
colour is the mean of a grid of rays over its area (a camera's pixel integrates light), while
depth and labels stay those of the centre ray.

Colours are a deterministic function of the hit point: the ground texture's class colour with
a texel-hash grain, window patterns on building sides, Lambertian shading from the scene's sun.
Works on any torch device; rays are processed in chunks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mirage_env.scene import Primitives, Scene, Semantic
from world_model.camera import (NO_SURFACE_DEPTH, camera_rays, check_intrinsics, check_poses, invert_pose,
                                scale_intrinsics)

_PAIRS_PER_CHUNK = 2_000_000  # ray-object pairs intersected at once (bounds peak memory)
_RAYS_PER_CALL = 65_536  # rays shaded at once
_AMBIENT = 0.45
_DIFFUSE = 0.55


@dataclass
class RenderOutput:
    """``rgb`` (B, H, W, 3) uint8, ``depth`` (B, 1, H, W) float32 [m] (0 = no surface),
    ``semantic`` (B, H, W) uint8 :class:`Semantic` labels."""

    rgb: torch.Tensor
    depth: torch.Tensor
    semantic: torch.Tensor


class GroundTruthRenderer:
    """Renders a :class:`Scene` for batches of camera poses and pinhole intrinsics.

    Args:
        scene: what to draw.
        device: torch device for the scene tensors and rendering.
        far_m: [m] rays that hit nothing nearer (z-depth) are sky.
        antialias: colour rays per pixel side: each pixel's colour is the mean of
            ``antialias**2`` rays spread evenly over its area, as a camera's pixel integrates the
            light falling on it (1: one ray through the centre, which aliases: edges turn into
            stair steps and sub-pixel detail into noise that jumps as the camera moves). Depth and
            labels always come from the centre ray, so depth stays exact at pixel centres. Costs
            about ``antialias**2 + 1`` times the rays of 1.
    """

    def __init__(self, scene: Scene, device: torch.device | str = "cpu", far_m: float = 500.0,
                 antialias: int = 1):
        if not isinstance(antialias, int) or isinstance(antialias, bool) or antialias < 1:
            raise ValueError(f"antialias must be a whole number of rays per pixel side >= 1, got {antialias!r}")
        self.scene = scene
        self.device = torch.device(device)
        self.far_m = far_m
        self.antialias = antialias
        f32 = dict(dtype=torch.float32, device=self.device)
        ground = scene.ground
        # uint8 like the scene's arrays (shared with them on the CPU): Town01's ground is 23 M
        # texels, 180 MB per env as int64.
        self.ground_classes = torch.as_tensor(ground.classes, dtype=torch.uint8, device=self.device)
        self.ground_paint = torch.as_tensor(ground.paint, dtype=torch.uint8, device=self.device)
        self.ground_origin = torch.tensor([ground.x0, ground.y0], **f32)
        self.class_colour = torch.as_tensor(scene.class_colour, **f32)
        self.paint_colour = torch.as_tensor(scene.paint_colour, **f32)
        self.sky = torch.as_tensor(np.stack([scene.sky_horizon, scene.sky_zenith]), **f32)
        self.sun = torch.as_tensor(scene.sun_direction / np.linalg.norm(scene.sun_direction), **f32)
        self.objects = _ObjectTensors(scene.objects, self.device)

    @torch.no_grad()
    def render(
        self,
        cam_to_world: torch.Tensor,
        K: torch.Tensor,
        height: int,
        width: int,
        actors: Primitives | None = None,
    ) -> RenderOutput:
        """Render ``cam_to_world`` (B, 4, 4) with intrinsics ``K`` (B, 3, 3) at ``height`` x
        ``width``. ``actors`` are extra primitives (moving vehicles, pedestrians) drawn in this
        call only.

        Each object is only tested against the pixels inside its projected screen rectangle
        (from its box corners or bounding sphere), so cost grows with the image area objects
        cover, not with pixels x objects.
        """
        check_intrinsics(K)
        check_poses(cam_to_world, batch=K.shape[0])
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got height={height} width={width}")
        cam_to_world = cam_to_world.to(self.device, torch.float32)
        K = K.to(self.device, torch.float32)
        objects = self.objects if actors is None else self.objects.extended(actors)
        batch = K.shape[0]
        colour, t, label = self._cast_pixels(cam_to_world, K, height, width, objects)
        colour = colour.view(batch, height, width, 3)
        if self.antialias > 1:
            # The same camera on a grid `antialias` times finer: its pixel centres spread evenly
            # over each pixel (see `scale_intrinsics`); their mean is the pixel's colour.
            k = self.antialias
            fine = self._cast_pixels(cam_to_world, scale_intrinsics(K, k, k), height * k, width * k, objects)[0]
            colour = fine.view(batch, height, k, width, k, 3).mean(dim=(2, 4))
        rgb = (colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return RenderOutput(rgb=rgb, depth=t.view(batch, 1, height, width), semantic=label.view(batch, height, width))

    def _cast_pixels(self, cam_to_world: torch.Tensor, K: torch.Tensor, height: int, width: int,
                     objects: _ObjectTensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Colour (B * H * W, 3), ``t`` and labels of one ray through each pixel centre."""
        box_corners, sphere_corners = objects.box_corners, objects.sphere_corners
        # Views are rendered a few at a time: working sets beyond the CPU caches cost more
        # than the extra calls.
        views = max(1, _RAYS_PER_CALL // (height * width))
        parts = []
        for start in range(0, K.shape[0], views):
            pose, intrinsics = cam_to_world[start : start + views], K[start : start + views]
            origins, directions = camera_rays(intrinsics, pose, height, width)
            box_pairs = _screen_pairs(box_corners, pose, intrinsics, height, width, self.far_m)
            sphere_pairs = _screen_pairs(sphere_corners, pose, intrinsics, height, width, self.far_m)
            ray_origins = origins.repeat_interleave(height * width, dim=0)
            parts.append(self._shade(ray_origins, directions.reshape(-1, 3), objects, box_pairs, sphere_pairs))
        return tuple(torch.cat(tensors) for tensors in zip(*parts))

    @torch.no_grad()
    def cast(self, origins: torch.Tensor, directions: torch.Tensor):
        """Intersect arbitrary rays ``origins`` (R, 3), ``directions`` (R, 3) with every object.

        ``t`` of a hit is in units of the direction's length (z-depth for :func:`camera_rays`).
        Returns colour (R, 3) in [0, 1], ``t`` (R,) with ``NO_SURFACE_DEPTH`` for no hit, and
        labels (R,) uint8. Slower than :meth:`render` (no screen-space culling).
        """
        origins = origins.to(self.device, torch.float32)
        directions = directions.to(self.device, torch.float32)
        rays = torch.arange(len(directions), device=self.device)

        def every_pair(count: int) -> tuple[torch.Tensor, torch.Tensor]:
            return rays.repeat_interleave(count), torch.arange(count, device=self.device).repeat(len(rays))

        objects = self.objects
        return self._shade(origins, directions, objects, every_pair(objects.box_count), every_pair(objects.sphere_count))

    def _shade(self, origins, directions, objects: _ObjectTensors, box_pairs, sphere_pairs):
        rays = directions.shape[0]
        t = torch.full((rays,), float("inf"), device=self.device)
        label = torch.zeros(rays, dtype=torch.uint8, device=self.device)
        normal = torch.zeros(rays, 3, device=self.device)
        colour = torch.zeros(rays, 3, device=self.device)

        # Ground plane z = 0, seen from above.
        dz = directions[:, 2]
        t_ground = -origins[:, 2] / dz.clamp(max=-1e-12)
        hit_ground = (dz < 0) & (origins[:, 2] > 0) & (t_ground < self.far_m)
        t = torch.where(hit_ground, t_ground, t)
        points = origins[hit_ground, :2] + directions[hit_ground, :2] * t_ground[hit_ground, None]
        label[hit_ground], colour[hit_ground] = self._ground_colour(points)
        normal[:, 2] = 1.0

        t_box, box, axis, sign, local_hit = objects.intersect_boxes(origins, directions, *box_pairs, rays)
        nearer = t_box < t
        t = torch.where(nearer, t_box, t)
        i = box[nearer]
        label[nearer] = objects.box_class[i]
        local_normal = torch.zeros(int(nearer.sum()), 3, device=self.device)
        local_normal.scatter_(1, axis[nearer, None], sign[nearer, None])
        normal[nearer] = objects.rotate_to_world(i, local_normal)
        colour[nearer] = objects.box_surface_colour(i, local_hit[nearer], local_normal)

        t_sphere, sphere = objects.intersect_spheres(origins, directions, *sphere_pairs, rays)
        nearer = t_sphere < t
        t = torch.where(nearer, t_sphere, t)
        i = sphere[nearer]
        label[nearer] = objects.sphere_class[i]
        hit = origins[nearer] + directions[nearer] * t_sphere[nearer, None]
        normal[nearer] = (hit - objects.sphere_centre[i]) / objects.sphere_radius[i, None]
        colour[nearer] = objects.sphere_colour[i] * (0.9 + 0.1 * _hash_noise(torch.floor(hit * 4)))[:, None]

        hit = torch.isfinite(t)
        shade = _AMBIENT + _DIFFUSE * (normal @ self.sun).clamp(min=0.0)
        colour = torch.where(hit[:, None], colour * shade[:, None], self._sky_colour(directions))
        label = torch.where(hit, label, torch.full_like(label, int(Semantic.SKY)))
        t = torch.where(hit, t, torch.full_like(t, NO_SURFACE_DEPTH))
        return colour, t, label

    def _ground_colour(self, points: torch.Tensor):
        texel = self.scene.ground.texel
        cell = torch.floor((points - self.ground_origin) / texel).long()
        rows, cols = self.ground_classes.shape
        inside = (cell[:, 0] >= 0) & (cell[:, 0] < cols) & (cell[:, 1] >= 0) & (cell[:, 1] < rows)
        col, row = cell[:, 0].clamp(0, cols - 1), cell[:, 1].clamp(0, rows - 1)
        terrain = torch.full_like(row, int(Semantic.TERRAIN), dtype=torch.uint8)
        label = torch.where(inside, self.ground_classes[row, col], terrain)
        paint = torch.where(inside, self.ground_paint[row, col].long(), torch.zeros_like(row))
        colour = torch.where(paint[:, None] > 0, self.paint_colour[paint], self.class_colour[label.long()])
        # Fine grain per texel plus a coarse 4 m mottling, both fixed in the world.
        grain = 0.92 + 0.08 * _hash_noise(cell.float())
        mottle = 0.9 + 0.1 * _hash_noise(torch.floor(points / 4.0))
        return label, colour * (grain * mottle)[:, None]

    def _sky_colour(self, directions: torch.Tensor) -> torch.Tensor:
        elevation = directions[:, 2] / directions.norm(dim=1).clamp(min=1e-9)
        blend = (elevation * 2.0).clamp(0.0, 1.0)[:, None]
        return self.sky[0] * (1 - blend) + self.sky[1] * blend


class _ObjectTensors:
    """Primitives as tensors on a device, with ray intersection over (ray, object) pairs."""

    _BOX_CORNERS = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)

    def __init__(self, primitives: Primitives, device: torch.device):
        f32 = dict(dtype=torch.float32, device=device)
        self.primitives = primitives
        self.device = device
        self.box_centre = torch.as_tensor(primitives.box_centre, **f32).view(-1, 3)
        self.box_half = torch.as_tensor(primitives.box_half, **f32).view(-1, 3)
        yaw = torch.as_tensor(primitives.box_yaw, **f32).view(-1)
        self.box_cos, self.box_sin = torch.cos(yaw), torch.sin(yaw)
        self.box_class = torch.as_tensor(primitives.box_class, dtype=torch.uint8, device=device).view(-1)
        self.box_colour = torch.as_tensor(primitives.box_colour, **f32).view(-1, 3)
        self.box_windows = torch.as_tensor(primitives.box_windows, dtype=torch.bool, device=device).view(-1)
        self.sphere_centre = torch.as_tensor(primitives.sphere_centre, **f32).view(-1, 3)
        self.sphere_radius = torch.as_tensor(primitives.sphere_radius, **f32).view(-1)
        self.sphere_class = torch.as_tensor(primitives.sphere_class, dtype=torch.uint8, device=device).view(-1)
        self.sphere_colour = torch.as_tensor(primitives.sphere_colour, **f32).view(-1, 3)
        # Corners of each object's bounding hull: boxes exactly, spheres their bounding cube.
        self.box_corners = self._box_corners()
        self.sphere_corners = self.sphere_centre[:, None, :] + self._BOX_CORNERS.to(device) * self.sphere_radius[:, None, None]

    @property
    def box_count(self) -> int:
        return self.box_centre.shape[0]

    @property
    def sphere_count(self) -> int:
        return self.sphere_centre.shape[0]

    def extended(self, extra: Primitives) -> _ObjectTensors:
        fields = Primitives.__dataclass_fields__
        merged = Primitives(**{f: np.concatenate([getattr(self.primitives, f), getattr(extra, f)]) for f in fields})
        return _ObjectTensors(merged, self.device)

    def rotate_to_world(self, index: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """Rotate (P, 3) vectors from the frames of boxes ``index`` (P,) to the world."""
        c, s = self.box_cos[index], self.box_sin[index]
        return torch.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)

    def _box_corners(self) -> torch.Tensor:
        """(N, 8, 3) world corners of every box."""
        local = self._BOX_CORNERS.to(self.device) * self.box_half[:, None, :]
        rotated = self.rotate_to_world(
            torch.arange(self.box_count, device=self.device).repeat_interleave(8), local.reshape(-1, 3)
        )
        return rotated.view(-1, 8, 3) + self.box_centre[:, None, :]

    def intersect_boxes(self, origins, directions, ray, box, rays: int):
        """Nearest box hit per ray, over candidate pairs (``ray``, ``box``) (P,).

        Returns ``t`` (rays,) (inf for none), the box index, the hit face's axis (0-2) and
        outward sign in the box frame, and the hit point in the box frame (rays, 3).
        """
        t = torch.full((rays,), float("inf"), device=self.device)
        index = torch.zeros(rays, dtype=torch.long, device=self.device)
        axis = torch.zeros(rays, dtype=torch.long, device=self.device)
        sign = torch.zeros(rays, device=self.device)
        local_hit = torch.zeros(rays, 3, device=self.device)
        for start in range(0, len(ray), _PAIRS_PER_CHUNK):
            r, b = ray[start : start + _PAIRS_PER_CHUNK], box[start : start + _PAIRS_PER_CHUNK]
            c, s = self.box_cos[b], self.box_sin[b]
            offset, d = origins[r] - self.box_centre[b], directions[r]
            local_origin = torch.stack([c * offset[:, 0] + s * offset[:, 1], -s * offset[:, 0] + c * offset[:, 1], offset[:, 2]], 1)
            local_dir = torch.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
            safe_dir = torch.where(local_dir.abs() < 1e-12, torch.full_like(local_dir, 1e-12), local_dir)
            t_low = (-self.box_half[b] - local_origin) / safe_dir
            t_high = (self.box_half[b] - local_origin) / safe_dir
            t_enter, hit_axis = torch.minimum(t_low, t_high).max(dim=1)
            t_exit = torch.maximum(t_low, t_high).min(dim=1).values
            t_enter = torch.where((t_enter <= t_exit) & (t_enter > 1e-6), t_enter, torch.full_like(t_enter, float("inf")))
            w = _nearest_pairs(r, t_enter, t)
            index[r[w]] = b[w]
            axis[r[w]] = hit_axis[w]
            sign[r[w]] = -torch.sign(local_dir[w].gather(1, hit_axis[w, None])[:, 0])
            local_hit[r[w]] = local_origin[w] + local_dir[w] * t_enter[w, None]
        return t, index, axis, sign, local_hit

    def box_surface_colour(self, index: torch.Tensor, local_hit: torch.Tensor, local_normal: torch.Tensor):
        """Base colour at box hits: windows on the sides of boxes that have them, darker roofs."""
        colour = self.box_colour[index].clone()
        side = local_normal[:, 2] == 0
        along = torch.where(local_normal[:, 0] != 0, local_hit[:, 1], local_hit[:, 0])
        height = local_hit[:, 2] + self.box_half[index, 2]
        in_window = (
            ((torch.frac(along / 3.0 + 100.0) - 0.5).abs() < 0.22)
            & ((torch.frac(height / 3.2) - 0.55).abs() < 0.22)
            & (height > 1.0)
        )
        window = self.box_windows[index] & side & in_window
        colour[window] = torch.tensor([0.16, 0.2, 0.27], device=colour.device)
        roof = local_normal[:, 2] > 0
        colour[roof] = colour[roof] * 0.7
        return colour

    def intersect_spheres(self, origins, directions, ray, sphere, rays: int):
        """Nearest sphere hit per ray over candidate pairs: ``t`` (rays,) (inf for none), index."""
        t = torch.full((rays,), float("inf"), device=self.device)
        index = torch.zeros(rays, dtype=torch.long, device=self.device)
        for start in range(0, len(ray), _PAIRS_PER_CHUNK):
            r, m = ray[start : start + _PAIRS_PER_CHUNK], sphere[start : start + _PAIRS_PER_CHUNK]
            offset, d = origins[r] - self.sphere_centre[m], directions[r]
            a = (d * d).sum(1)
            b = (d * offset).sum(1)
            c = (offset * offset).sum(1) - self.sphere_radius[m] ** 2
            disc = b * b - a * c
            t_hit = (-b - torch.sqrt(disc.clamp(min=0))) / a
            t_hit = torch.where((disc >= 0) & (t_hit > 1e-6), t_hit, torch.full_like(t_hit, float("inf")))
            winner = _nearest_pairs(r, t_hit, t)
            index[r[winner]] = m[winner]
        return t, index


def _nearest_pairs(ray: torch.Tensor, t_pair: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Lower ``t`` (rays,) in place to the nearest pair hit per ray; return a mask of the pairs
    that won (one per improved ray; ties go to the last pair)."""
    before = t.clone()
    t.scatter_reduce_(0, ray, t_pair, reduce="amin")
    candidate = torch.isfinite(t_pair) & (t_pair == t[ray]) & (t_pair < before[ray])
    pair_id = torch.arange(len(ray), device=ray.device)
    best = torch.full_like(t, -1, dtype=torch.long).scatter_reduce_(
        0, ray[candidate], pair_id[candidate], reduce="amax"
    )
    winner = torch.zeros(len(ray), dtype=torch.bool, device=ray.device)
    winner[best[best >= 0]] = True
    return winner


# Corner index pairs of the 12 edges of a cube whose corners are numbered as _BOX_CORNERS
# (bit 2: x, bit 1: y, bit 0: z); an edge joins corners that differ in one bit.
_CUBE_EDGES = torch.tensor([(i, i | bit) for i in range(8) for bit in (1, 2, 4) if not i & bit])


def _screen_pairs(corners: torch.Tensor, cam_to_world, K, height: int, width: int, far: float):
    """Candidate (ray, object) pairs: every pixel inside each object's projected rectangle.

    ``corners`` (N, 8, 3) are world points whose convex hull contains each object. Rays are
    numbered ``view * H * W + row * W + col``. Objects entirely behind the camera, beyond ``far``
    or off screen get none.
    """
    device = corners.device
    if corners.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    world_to_cam = invert_pose(cam_to_world)  # (B, 4, 4)
    local = torch.einsum("bij,nkj->bnki", world_to_cam[:, :3, :3], corners) + world_to_cam[:, None, None, :3, 3]
    # Clip the hull to the part in front of the near plane: corners in front plus the points
    # where the 12 cube edges cross the plane. Their projections bound the object on screen.
    near = 0.01
    start, end = local[:, :, _CUBE_EDGES[:, 0]], local[:, :, _CUBE_EDGES[:, 1]]
    z0, z1 = start[..., 2], end[..., 2]
    crosses = (z0 - near) * (z1 - near) < 0
    alpha = ((near - z0) / torch.where(crosses, z1 - z0, torch.ones_like(z0))).clamp(0, 1)
    points = torch.cat([local, start + (end - start) * alpha[..., None]], dim=2)
    valid = torch.cat([local[..., 2] >= near, crosses], dim=2)
    z = points[..., 2].clamp(min=near)
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    u, v = fx * points[..., 0] / z + cx, fy * points[..., 1] / z + cy
    inf = torch.full_like(u, float("inf"))
    u_min, u_max = torch.where(valid, u, inf).min(-1).values, torch.where(valid, u, -inf).max(-1).values
    v_min, v_max = torch.where(valid, v, inf).min(-1).values, torch.where(valid, v, -inf).max(-1).values
    in_range = valid.any(-1) & (torch.where(valid, points[..., 2], inf).min(-1).values < far)
    u_min, u_max = u_min.clamp(-1, width + 1), u_max.clamp(-1, width + 1)
    v_min, v_max = v_min.clamp(-1, height + 1), v_max.clamp(-1, height + 1)
    # Pixel centres (col + 0.5) inside [u_min, u_max], with one pixel of slack for rounding.
    col0 = torch.ceil(u_min - 0.5).long().clamp(min=0) - 1
    col1 = torch.floor(u_max - 0.5).long().clamp(max=width - 1) + 1
    row0 = torch.ceil(v_min - 0.5).long().clamp(min=0) - 1
    row1 = torch.floor(v_max - 0.5).long().clamp(max=height - 1) + 1
    col0, row0 = col0.clamp(min=0), row0.clamp(min=0)
    col1, row1 = col1.clamp(max=width - 1), row1.clamp(max=height - 1)
    visible = in_range & (col1 >= col0) & (row1 >= row0)
    view, obj = visible.nonzero(as_tuple=True)
    c0, r0 = col0[view, obj], row0[view, obj]
    cols, rows = col1[view, obj] - c0 + 1, row1[view, obj] - r0 + 1
    counts = cols * rows
    entry = torch.arange(len(obj), device=device).repeat_interleave(counts)
    offset = torch.arange(int(counts.sum()), device=device) - (torch.cumsum(counts, 0) - counts)[entry]
    col = c0[entry] + offset % cols[entry]
    row = r0[entry] + torch.div(offset, cols[entry], rounding_mode="floor")
    ray = view[entry] * (height * width) + row * width + col
    return ray, obj[entry]


def _hash_noise(cells: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random values in [-1, 1] for integer-valued (..., 2 or 3) cells."""
    cells = cells.long()
    h = cells[..., 0] * 73856093 ^ cells[..., 1] * 19349663
    if cells.shape[-1] > 2:
        h = h ^ cells[..., 2] * 83492791
    h = (h ^ (h >> 13)) * 1274126177
    return ((h & 0xFFFF).float() / 32767.5) - 1.0
