"""Scene dressing: everything the ground-truth renderer draws, built from a road map and a seed.

A :class:`Scene` is a flat ground plane (z = 0) with a texture of semantic classes rasterised
from the road map (road, lane marking, sidewalk, terrain), plus solid primitives standing on it:
oriented boxes (buildings, parked cars, poles, tree trunks) and spheres (tree crowns). The road
surface and lane marks come from the map's lanes and road marks; buildings, trees, poles and
parked cars are placed along the roads from the seed, as are all colours, the sky and the sun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import carla
import numpy as np
from PIL import Image, ImageDraw

from mirage_env.carla_frame import planar_pose, transform_to_world
from mirage_env.road_map import RoadMap


class Semantic(IntEnum):
    """Semantic labels of the ground-truth renderer (uint8 values)."""

    SKY = 0
    ROAD = 1
    LANE_MARKING = 2
    SIDEWALK = 3
    TERRAIN = 4
    BUILDING = 5
    VEGETATION = 6
    POLE = 7
    VEHICLE = 8
    PEDESTRIAN = 9


DYNAMIC_CLASSES = (Semantic.VEHICLE, Semantic.PEDESTRIAN)
"""Classes that may move; parked cars carry the label too, so a dynamic mask removes them."""

# Lane types drawn as road surface; every other non-driving lane type is drawn as sidewalk.
_ROAD_LANE_TYPES = {
    carla.LaneType.Driving,
    carla.LaneType.Shoulder,
    carla.LaneType.Parking,
    carla.LaneType.Bidirectional,
    carla.LaneType.Biking,
    carla.LaneType.Stop,
}
_BROKEN_MARKS = {carla.LaneMarkingType.Broken, carla.LaneMarkingType.BrokenBroken}
DASH_LENGTH_M = 3.0  # [m] painted part of a broken line
DASH_PERIOD_M = 6.0  # [m] dash plus gap


@dataclass
class DressingConfig:
    """Defaults of scene dressing (units in comments)."""

    texel_m: float = 0.1  # [m] ground texture cell size
    margin_m: float = 60.0  # [m] ground texture margin around the road network
    sample_m: float = 1.0  # [m] road sampling step for the surface and placements
    building_width_m: tuple[float, float] = (8.0, 22.0)  # [m] frontage along the road
    building_depth_m: tuple[float, float] = (8.0, 18.0)  # [m]
    building_height_m: tuple[float, float] = (5.0, 24.0)  # [m]
    building_setback_m: tuple[float, float] = (1.0, 5.0)  # [m] from the road's outer edge
    building_probability: float = 0.75  # chance that a frontage slot gets a building
    parked_car_probability: float = 0.35  # chance that an empty slot gets a parked car
    tree_spacing_m: tuple[float, float] = (8.0, 18.0)  # [m] along the road
    pole_spacing_m: float = 30.0  # [m] along the road
    scatter_trees_per_hectare: float = 6.0  # trees in open terrain


@dataclass
class Primitives:
    """Solid objects. Boxes: ``box_centre`` (N, 3) [m], ``box_half`` (N, 3) [m] half sizes along
    the box's own x, y, z, ``box_yaw`` (N,) [rad], ``box_class`` (N,), ``box_colour`` (N, 3) in
    [0, 1], ``box_windows`` (N,) bool (draw a window pattern on the sides). Spheres:
    ``sphere_centre`` (M, 3), ``sphere_radius`` (M,), ``sphere_class`` (M,), ``sphere_colour`` (M, 3).
    """

    box_centre: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_half: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_yaw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    box_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    box_colour: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_windows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    sphere_centre: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    sphere_radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sphere_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    sphere_colour: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    @classmethod
    def from_lists(cls, boxes: list[tuple], spheres: list[tuple]) -> Primitives:
        """From ``(centre, half, yaw, class, colour, windows)`` and ``(centre, radius, class,
        colour)`` tuples."""
        out = cls()
        if boxes:
            centre, half, yaw, label, colour, windows = zip(*boxes)
            out.box_centre, out.box_half = np.array(centre, float), np.array(half, float)
            out.box_yaw, out.box_class = np.array(yaw, float), np.array(label, np.uint8)
            out.box_colour, out.box_windows = np.array(colour, float), np.array(windows, bool)
        if spheres:
            centre, radius, label, colour = zip(*spheres)
            out.sphere_centre, out.sphere_radius = np.array(centre, float), np.array(radius, float)
            out.sphere_class, out.sphere_colour = np.array(label, np.uint8), np.array(colour, float)
        return out

    @property
    def count(self) -> int:
        return len(self.box_yaw) + len(self.sphere_radius)


@dataclass
class GroundTexture:
    """Semantic classes of the ground plane on a grid: cell ``[row, col]`` covers world
    ``x in [x0 + col * texel, ...)``, ``y in [y0 + row * texel, ...)``. ``paint`` is 0 (none),
    1 (white) or 2 (yellow) on lane-marking cells."""

    classes: np.ndarray  # (rows, cols) uint8 Semantic
    paint: np.ndarray  # (rows, cols) uint8
    x0: float  # [m]
    y0: float  # [m]
    texel: float  # [m]


@dataclass
class Scene:
    """Everything the ground-truth renderer needs; see the module docstring."""

    map_name: str
    seed: int
    ground: GroundTexture
    objects: Primitives
    class_colour: np.ndarray  # (len(Semantic), 3) in [0, 1]: base colour of ground classes
    paint_colour: np.ndarray  # (3, 3): none / white / yellow
    sky_horizon: np.ndarray  # (3,)
    sky_zenith: np.ndarray  # (3,)
    sun_direction: np.ndarray  # (3,) unit vector towards the sun


def dress_scene(road_map: RoadMap, seed: int, config: DressingConfig | None = None) -> Scene:
    """Build the scene of ``road_map`` for ``seed``: same inputs, same scene."""
    config = config or DressingConfig()
    rng = np.random.default_rng([seed, 0x5CE4E])
    bands, frontage = _sample_road(road_map, config.sample_m)
    ground = _rasterise_ground(road_map, bands, config)
    placer = _Placer(ground, rng, config)
    for chain in frontage:
        placer.dress_frontage(chain)
    placer.scatter_trees()
    return Scene(
        map_name=road_map.name,
        seed=seed,
        ground=ground,
        objects=Primitives.from_lists(placer.boxes, placer.spheres),
        **_palette(rng),
    )


# ---------------------------------------------------------------------- road sampling
@dataclass
class _Band:
    """A quad of one lane between two consecutive samples: 4 corners (4, 2) [m], its class, and
    for lane marks the paint (1 white, 2 yellow)."""

    corners: np.ndarray
    label: Semantic
    paint: int = 0


@dataclass
class _Frontage:
    """Outer edge of the road at one sample: where dressing starts, looking outwards."""

    edge: np.ndarray  # (2,) [m] outer boundary of the road incl. sidewalk
    outward: np.ndarray  # (2,) unit normal pointing away from the road
    yaw: float  # [rad] direction along the road
    sidewalk: tuple[np.ndarray, float] | None  # centre (2,) and width [m] of the outer sidewalk


def _lane_edges(waypoint: carla.Waypoint) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Left and right edge points (x, y) [m] and yaw [rad] of the lane at ``waypoint``. Plain
    floats: this runs for every sample of every lane."""
    x, y, yaw = planar_pose(waypoint.transform)
    half = waypoint.lane_width / 2.0
    left_x, left_y = -math.sin(yaw) * half, math.cos(yaw) * half
    return (x + left_x, y + left_y), (x - left_x, y - left_y), yaw


def _walk_outwards(waypoint: carla.Waypoint, side: str) -> list[carla.Waypoint]:
    """Non-driving lanes beside ``waypoint`` on ``side`` ("right" or "left"), inner first."""
    lanes = []
    current = getattr(waypoint, f"get_{side}_lane")()
    while current is not None and current.lane_type != carla.LaneType.Driving and len(lanes) < 6:
        if current.lane_width > 0.01:
            lanes.append(current)
        current = getattr(current, f"get_{side}_lane")()
    return lanes


def _sample_road(road_map: RoadMap, step: float) -> tuple[list[_Band], list[list[_Frontage]]]:
    """Quads of every lane between consecutive samples, and per lane the frontage chain of its
    outer edge (only for the outermost driving lane of each side, outside junctions)."""
    bands: list[_Band] = []
    chains: dict[tuple[int, int, int], list[tuple[float, _Frontage]]] = {}
    for waypoint in road_map.carla_map.generate_waypoints(step):
        outer = {side: _walk_outwards(waypoint, side) for side in ("right", "left")}
        # Quads reach back to the previous sample too: where libcarla's lane links are missing
        # (dead-end lanes), the first metre of a lane has no sample whose next() reaches it.
        for predecessor in waypoint.previous(step):
            bands.append(_quad(predecessor, waypoint, Semantic.ROAD))
        for successor in waypoint.next(step):
            bands.append(_quad(waypoint, successor, Semantic.ROAD))
            if not waypoint.is_junction:  # junction connectors overlap; real junctions are unpainted
                bands.extend(_marking_quads(waypoint, successor))
            for side, lanes in outer.items():
                for a, b in zip(lanes, _walk_outwards(successor, side)):
                    if a.lane_type == b.lane_type:
                        bands.append(_quad(a, b, _lane_label(a)))
        right = waypoint.get_right_lane()
        if not waypoint.is_junction and (right is None or right.lane_type != carla.LaneType.Driving):
            key = (waypoint.road_id, waypoint.section_id, waypoint.lane_id)
            order = waypoint.s if waypoint.lane_id < 0 else -waypoint.s
            chains.setdefault(key, []).append((order, _frontage(waypoint, outer["right"])))
    frontage = [[f for _, f in sorted(chain, key=lambda item: item[0])] for chain in chains.values()]
    return bands, frontage


def _lane_label(waypoint: carla.Waypoint) -> Semantic:
    return Semantic.ROAD if waypoint.lane_type in _ROAD_LANE_TYPES else Semantic.SIDEWALK


def _quad(a: carla.Waypoint, b: carla.Waypoint, label: Semantic) -> _Band:
    a_left, a_right, _ = _lane_edges(a)
    b_left, b_right, _ = _lane_edges(b)
    return _Band(np.array([a_left, b_left, b_right, a_right]), label)


def _marking_quads(a: carla.Waypoint, b: carla.Waypoint) -> list[_Band]:
    """Quads of the painted left and right marks of the lane between samples ``a`` and ``b``
    (libcarla gives no marking object for a lane whose xodr has no ``roadMark``: nothing to paint)."""
    out: list[_Band] = []
    for side in ("left", "right"):
        mark_a = getattr(a, f"{side}_lane_marking")
        if mark_a is None or mark_a.type in (carla.LaneMarkingType.NONE, carla.LaneMarkingType.Grass, carla.LaneMarkingType.Curb):
            continue
        if mark_a.type in _BROKEN_MARKS and (a.s % DASH_PERIOD_M) >= DASH_LENGTH_M:
            continue
        half = max(float(mark_a.width), 0.1) / 2.0
        points = []
        for waypoint in (a, b):
            left, right, yaw = _lane_edges(waypoint)
            edge_x, edge_y = left if side == "left" else right
            normal_x, normal_y = -math.sin(yaw) * half, math.cos(yaw) * half
            points.append(((edge_x + normal_x, edge_y + normal_y), (edge_x - normal_x, edge_y - normal_y)))
        paint = 2 if mark_a.color == carla.LaneMarkingColor.Yellow else 1
        corners = np.array([points[0][0], points[1][0], points[1][1], points[0][1]])
        out.append(_Band(corners, Semantic.LANE_MARKING, paint))
    return out


def _frontage(waypoint: carla.Waypoint, outer_lanes: list[carla.Waypoint]) -> _Frontage:
    _, right_edge, yaw = _lane_edges(waypoint)
    right_edge = np.array(right_edge)
    outward = np.array([np.sin(yaw), -np.cos(yaw)])
    sidewalk = None
    edge = right_edge
    for lane in outer_lanes:
        edge = np.array(_lane_edges(lane)[1])
        if lane.lane_type == carla.LaneType.Sidewalk:
            sidewalk = (transform_to_world(lane.transform)[0][:2], float(lane.lane_width))
    # The outer edge is measured along the outward normal so it never falls inside the road.
    edge = right_edge + outward * max(0.0, float(np.dot(edge - right_edge, outward)))
    return _Frontage(edge=edge, outward=outward, yaw=yaw, sidewalk=sidewalk)


def _rasterise_ground(road_map: RoadMap, bands: list[_Band], config: DressingConfig) -> GroundTexture:
    xmin, ymin, xmax, ymax = road_map.bounds
    x0, y0 = xmin - config.margin_m, ymin - config.margin_m
    cols = int(np.ceil((xmax - xmin + 2 * config.margin_m) / config.texel_m))
    rows = int(np.ceil((ymax - ymin + 2 * config.margin_m) / config.texel_m))
    classes = Image.new("L", (cols, rows), int(Semantic.TERRAIN))
    paint = Image.new("L", (cols, rows), 0)
    draw_classes, draw_paint = ImageDraw.Draw(classes), ImageDraw.Draw(paint)
    # Painter's order: sidewalks, then road surface, then marks on top.
    for label in (Semantic.SIDEWALK, Semantic.ROAD, Semantic.LANE_MARKING):
        for band in bands:
            if band.label != label:
                continue
            # PIL's pixel (col, row) has its centre at (col, row); ours at (col + 0.5, row + 0.5).
            pixels = (band.corners - [x0, y0]) / config.texel_m - 0.5
            polygon = pixels.ravel().tolist()  # x0, y0, x1, y1, ...: what PIL takes fastest
            draw_classes.polygon(polygon, fill=int(label))
            if band.paint:
                draw_paint.polygon(polygon, fill=band.paint)
    return GroundTexture(
        classes=np.asarray(classes, dtype=np.uint8).copy(),
        paint=np.asarray(paint, dtype=np.uint8).copy(),
        x0=x0,
        y0=y0,
        texel=config.texel_m,
    )


# ---------------------------------------------------------------------- placement
class _Placer:
    """Places buildings, trees, poles and parked cars on free terrain."""

    OCCUPANCY_CELL_M = 0.5

    def __init__(self, ground: GroundTexture, rng: np.random.Generator, config: DressingConfig):
        self.ground, self.rng, self.config = ground, rng, config
        scale = ground.texel / self.OCCUPANCY_CELL_M
        shape = (int(ground.classes.shape[0] * scale) + 1, int(ground.classes.shape[1] * scale) + 1)
        self.occupied = np.zeros(shape, dtype=bool)
        self.boxes: list[tuple] = []
        self.spheres: list[tuple] = []

    def _footprint(self, centre, yaw, half_x, half_y, margin=0.5) -> np.ndarray:
        u = np.arange(-half_x - margin, half_x + margin + 1e-9, 0.5)
        v = np.arange(-half_y - margin, half_y + margin + 1e-9, 0.5)
        uu, vv = np.meshgrid(u, v)
        c, s = np.cos(yaw), np.sin(yaw)
        return np.stack([centre[0] + c * uu - s * vv, centre[1] + s * uu + c * vv], -1).reshape(-1, 2)

    def _ground_cells(self, points: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
        col = np.floor((points[:, 0] - self.ground.x0) / cell).astype(int)
        row = np.floor((points[:, 1] - self.ground.y0) / cell).astype(int)
        return row, col

    def is_free(self, points: np.ndarray, allowed=(Semantic.TERRAIN,)) -> bool:
        row, col = self._ground_cells(points, self.ground.texel)
        rows, cols = self.ground.classes.shape
        if row.min() < 0 or col.min() < 0 or row.max() >= rows or col.max() >= cols:
            return False
        if not np.isin(self.ground.classes[row, col], [int(a) for a in allowed]).all():
            return False
        row, col = self._ground_cells(points, self.OCCUPANCY_CELL_M)
        return not self.occupied[row, col].any()

    def occupy(self, points: np.ndarray) -> None:
        row, col = self._ground_cells(points, self.OCCUPANCY_CELL_M)
        self.occupied[row, col] = True

    def try_box(self, centre2, yaw, half, label, colour, windows=False, allowed=(Semantic.TERRAIN,)) -> bool:
        points = self._footprint(centre2, yaw, half[0], half[1])
        if not self.is_free(points, allowed):
            return False
        self.occupy(points)
        self.boxes.append(((centre2[0], centre2[1], half[2]), tuple(half), yaw, label, colour, windows))
        return True

    def dress_frontage(self, chain: list[_Frontage]) -> None:
        cfg, rng = self.config, self.rng
        cursor = rng.uniform(0.0, 6.0)
        next_tree = rng.uniform(*cfg.tree_spacing_m)
        next_pole = rng.uniform(0.0, cfg.pole_spacing_m)
        step = cfg.sample_m
        while cursor < len(chain) * step:
            here = chain[int(cursor / step)]
            if rng.random() < cfg.building_probability:
                width = rng.uniform(*cfg.building_width_m)
                depth = rng.uniform(*cfg.building_depth_m)
                height = rng.uniform(*cfg.building_height_m)
                setback = rng.uniform(*cfg.building_setback_m)
                mid = chain[min(int((cursor + width / 2) / step), len(chain) - 1)]
                centre = mid.edge + mid.outward * (setback + depth / 2)
                colour = _building_colour(rng)
                if self.try_box(centre, mid.yaw, (width / 2, depth / 2, height / 2), Semantic.BUILDING, colour, True):
                    cursor += width + rng.uniform(1.0, 6.0)
                    continue
            elif rng.random() < cfg.parked_car_probability:
                self.add_car(here.edge + here.outward * rng.uniform(1.5, 3.0), here.yaw + rng.choice([0, np.pi]))
            if cursor >= next_tree:
                self.add_tree(here.edge + here.outward * rng.uniform(0.8, 2.0))
                next_tree = cursor + rng.uniform(*cfg.tree_spacing_m)
            if cursor >= next_pole and here.sidewalk is not None:
                centre, width = here.sidewalk
                spot = centre - here.outward * max(0.0, width / 2 - 0.4)
                self.try_box(spot, here.yaw, (0.1, 0.1, rng.uniform(2.5, 4.0)), Semantic.POLE,
                             (0.45, 0.45, 0.47), allowed=(Semantic.SIDEWALK,))
                next_pole = cursor + cfg.pole_spacing_m
            cursor += 2.0

    def add_car(self, centre2, yaw) -> None:
        colour = _car_colour(self.rng)
        if self.try_box(centre2, yaw, (2.25, 0.95, 0.5), Semantic.VEHICLE, colour):
            cabin = (centre2[0] - 0.3 * np.cos(yaw), centre2[1] - 0.3 * np.sin(yaw), 1.25)
            self.boxes.append((cabin, (1.2, 0.85, 0.35), yaw, Semantic.VEHICLE, tuple(0.6 * np.array(colour)), True))

    def add_tree(self, centre2) -> None:
        rng = self.rng
        height = rng.uniform(2.0, 4.0)
        if not self.try_box(centre2, 0.0, (0.2, 0.2, height / 2), Semantic.VEGETATION, (0.35, 0.25, 0.15)):
            return
        radius = rng.uniform(1.5, 3.0)
        green = (rng.uniform(0.12, 0.3), rng.uniform(0.35, 0.55), rng.uniform(0.08, 0.2))
        self.spheres.append(((centre2[0], centre2[1], height + radius * 0.8), radius, Semantic.VEGETATION, green))

    def scatter_trees(self) -> None:
        rows, cols = self.ground.classes.shape
        width, height = cols * self.ground.texel, rows * self.ground.texel
        count = int(width * height / 10_000 * self.config.scatter_trees_per_hectare)
        xs = self.ground.x0 + self.rng.uniform(0, width, count)
        ys = self.ground.y0 + self.rng.uniform(0, height, count)
        for x, y in zip(xs, ys):
            self.add_tree(np.array([x, y]))


# ---------------------------------------------------------------------- colours
def _palette(rng: np.random.Generator) -> dict:
    class_colour = np.zeros((len(Semantic), 3))
    class_colour[Semantic.ROAD] = np.full(3, rng.uniform(0.22, 0.38)) + rng.uniform(-0.02, 0.02, 3)
    class_colour[Semantic.SIDEWALK] = np.full(3, rng.uniform(0.55, 0.72)) * [1.0, 0.97, 0.92]
    class_colour[Semantic.TERRAIN] = [rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.55), rng.uniform(0.12, 0.25)]
    class_colour[Semantic.LANE_MARKING] = [0.92, 0.92, 0.9]
    paint_colour = np.array([[0.0, 0.0, 0.0], [0.92, 0.92, 0.9], [0.9, 0.72, 0.15]])
    sun_elevation, sun_azimuth = rng.uniform(0.5, 1.2), rng.uniform(-np.pi, np.pi)
    sun = np.array([np.cos(sun_elevation) * np.cos(sun_azimuth), np.cos(sun_elevation) * np.sin(sun_azimuth),
                    np.sin(sun_elevation)])
    return dict(
        class_colour=class_colour,
        paint_colour=paint_colour,
        sky_horizon=np.array([rng.uniform(0.7, 0.85), rng.uniform(0.78, 0.9), rng.uniform(0.85, 0.95)]),
        sky_zenith=np.array([rng.uniform(0.2, 0.35), rng.uniform(0.4, 0.55), rng.uniform(0.75, 0.95)]),
        sun_direction=sun,
    )


def _building_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    base = np.array([[0.75, 0.68, 0.58], [0.62, 0.35, 0.28], [0.8, 0.8, 0.78], [0.55, 0.58, 0.62],
                     [0.85, 0.75, 0.55], [0.45, 0.4, 0.38]])[rng.integers(6)]
    return tuple(np.clip(base + rng.uniform(-0.06, 0.06, 3), 0, 1))


def _car_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    base = np.array([[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.1, 0.1, 0.1],
                     [0.5, 0.5, 0.52], [0.9, 0.75, 0.2]])[rng.integers(6)]
    return tuple(np.clip(base + rng.uniform(-0.05, 0.05, 3), 0, 1))
