"""The bird's-eye map beside the observation in ``env.render()``: north up, centred on the ego."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mirage_env.scene import Scene, Semantic
from mirage_env.visualize import SEMANTIC_COLOURS

_BACKGROUND = (40, 40, 40)  # no map
_ROUTE = (30, 110, 255)
_TRAIL = (255, 255, 255)
_EGO = (230, 30, 30)


def birds_eye_view(
    size_px: int,
    range_m: float,
    ego_centre: np.ndarray,
    ego_half: np.ndarray,
    ego_yaw: float,
    trail: np.ndarray,
    scene: Scene | None = None,
    route: np.ndarray | None = None,
    caption: str = "",
) -> np.ndarray:
    """A (size_px, size_px, 3) uint8 map of ``range_m`` x ``range_m`` metres centred on the ego:
    the scene's ground classes and objects, the ``route`` (M, 2) [m], the ego's ``trail``
    (T, 2) [m], and the ego's box (``ego_centre`` and ``ego_half`` (>= 2,) [m], turned by
    ``ego_yaw`` [rad]) with an arrow along its heading; ``caption`` in the top-left corner."""
    centre = np.asarray(ego_centre, dtype=np.float64)[:2]
    metres_per_px = range_m / size_px
    left, top = centre[0] - range_m / 2, centre[1] + range_m / 2
    if scene is None:
        image = Image.new("RGB", (size_px, size_px), _BACKGROUND)
    else:
        image = Image.fromarray(_ground(scene, left, top, metres_per_px, size_px))
    draw = ImageDraw.Draw(image)

    def to_px(points: np.ndarray) -> list[tuple[float, float]]:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return [((x - left) / metres_per_px, (top - y) / metres_per_px) for x, y in points]

    if scene is not None:
        _draw_objects(draw, scene, centre, range_m, to_px, metres_per_px)
    if route is not None and len(route) > 1:
        draw.line(to_px(route), fill=_ROUTE, width=2)
    if len(trail) > 1:
        draw.line(to_px(trail), fill=_TRAIL, width=1)
    draw.polygon(to_px(_box_corners(centre, ego_half, ego_yaw)), fill=_EGO)
    tip = centre + 6.0 * np.array([np.cos(ego_yaw), np.sin(ego_yaw)])
    draw.line(to_px(np.stack([centre, tip])), fill=_EGO, width=3)
    if caption:
        draw.text((3, 2), caption, fill=(255, 255, 255))
    return np.asarray(image)


def _box_corners(centre: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
    """(4, 2) ground-plane corners [m] of a box at ``centre`` with half sizes ``half`` turned by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]) * np.asarray(half)[:2]
    return np.asarray(centre)[:2] + corners @ np.array([[c, s], [-s, c]])


def _ground(scene: Scene, left: float, top: float, metres_per_px: float, size_px: int) -> np.ndarray:
    """Ground classes sampled at pixel centres (nearest texel), coloured."""
    ground = scene.ground
    offsets = (np.arange(size_px) + 0.5) * metres_per_px
    cols = np.floor((left + offsets - ground.x0) / ground.texel).astype(np.int64)
    rows = np.floor((top - offsets - ground.y0) / ground.texel).astype(np.int64)
    height, width = ground.classes.shape
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    classes = ground.classes[rows.clip(0, height - 1)[:, None], cols.clip(0, width - 1)[None, :]]
    classes = np.where(inside, classes, np.uint8(Semantic.TERRAIN))
    return SEMANTIC_COLOURS[classes]


def _draw_objects(draw: ImageDraw.ImageDraw, scene: Scene, centre, range_m, to_px, metres_per_px) -> None:
    objects = scene.objects
    reach = range_m * 0.75  # a little beyond the corners of the view
    for box_centre, half, yaw, label in zip(objects.box_centre, objects.box_half, objects.box_yaw, objects.box_class):
        if np.abs(box_centre[:2] - centre).max() > reach + half[:2].max():
            continue
        draw.polygon(to_px(_box_corners(box_centre, half, yaw)), fill=_colour(label))
    for sphere_centre, radius, label in zip(objects.sphere_centre, objects.sphere_radius, objects.sphere_class):
        if np.abs(sphere_centre[:2] - centre).max() > reach + radius:
            continue
        (u, v), r = to_px(sphere_centre[:2])[0], radius / metres_per_px
        draw.ellipse((u - r, v - r, u + r, v + r), fill=_colour(label))


def _colour(label: int) -> tuple[int, int, int]:
    red, green, blue = (int(channel) for channel in SEMANTIC_COLOURS[label])
    return red, green, blue
