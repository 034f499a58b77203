"""Procedural OpenDRIVE towns: an unlimited supply of road networks from integer seeds.

``generate_town(seed)`` returns OpenDRIVE 1.4 text that CARLA's offline client parser
(``carla.Map(name, text)``) loads.  Seeds in ``HELDOUT_SEEDS`` are reserved for
evaluation and must never be used for training.

Pipeline (all lengths in metres, angles in radians, OpenDRIVE frame: x east, y north,
angles counter-clockwise):

1. Street graph: node positions and undirected edges, either a Manhattan grid
   ("grid") or a jittered, rotated grid ("irregular").  Some interior edges are removed,
   turning 4-way junctions into T junctions, while the graph stays 2-edge-connected.
2. Streets: maximal chains of edges through degree-2 nodes ("bends", e.g. grid
   corners).  Each street becomes one OpenDRIVE road with a constant cross-section;
   every node of degree >= 3 becomes a junction.
3. Geometry: each junction arm starts far enough from the junction centre that
   neighbouring arms (sidewalks included) do not overlap.  Street centre lines are
   straight lines, line-arc-line fillets around bends, or G2 clothoid (spiral) curves
   when the irregular layout skews the arm headings.  Skews are relaxed, and as a last
   resort the town is scaled up, until every street is long enough, no curve is tighter
   than its cross-section allows and no two streets overlap.
4. OpenDRIVE: roads, lanes and road marks are built with ``scenariogeneration.xodr``;
   every junction is a ``CommonJunctionCreator`` with one single-lane connecting road
   per lane movement.  Turns fan out into all lanes of the target street so that the
   lane graph (followed with ``waypoint.next``) is strongly connected without lane
   changes.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np
import pyclothoids
from scenariogeneration import xodr

HELDOUT_SEEDS: tuple[int, ...] = tuple(range(1_000_000, 1_000_016))
LAYOUTS: tuple[str, ...] = ("grid", "irregular")

# --- street graph -------------------------------------------------------------------
GRID_COLUMN_CHOICES: tuple[int, ...] = (3, 4, 5)
GRID_ROW_CHOICES: tuple[int, ...] = (3, 4)
BLOCK_SIZE_RANGE_M: tuple[float, float] = (40.0, 90.0)
MIN_TOWN_SPAN_M = 150.0
MAX_IRREGULAR_DIAGONAL_M = 400.0  # node-to-node; sidewalks add ~2 x 16 m, so any rotation fits 450 m
GRID_REMOVED_EDGES_RANGE: tuple[int, int] = (0, 2)
IRREGULAR_REMOVED_EDGES_RANGE: tuple[int, int] = (1, 3)
IRREGULAR_JITTER_FRACTION = 0.15  # of the smallest block size
ARM_SKEW_RANGE_RAD: tuple[float, float] = (math.radians(8.0), math.radians(22.0))
MIN_ARM_SEPARATION_RAD = math.radians(55.0)
MIN_SKEW_RAD = math.radians(4.0)  # smaller skews are dropped when relaxing a curve

# --- cross-section ------------------------------------------------------------------
LANE_COUNT_CHOICES: tuple[int, ...] = (1, 2, 3)
MIXED_LANE_COUNT_PROBABILITY = 0.5
LANE_WIDTH_RANGE_M: tuple[float, float] = (3.0, 3.8)
SIDEWALK_WIDTH_RANGE_M: tuple[float, float] = (1.5, 3.5)
SHOULDER_WIDTH_RANGE_M: tuple[float, float] = (0.5, 1.0)
SHOULDER_PROBABILITY = 0.5
BROKEN_CENTRE_LINE_PROBABILITY = 0.3
ROAD_MARK_WIDTH_M = 0.15

# --- geometry -----------------------------------------------------------------------
JUNCTION_MARGIN_M = 6.0  # extra gap between neighbouring arms' outer edges
MIN_JUNCTION_ARM_DISTANCE_M = 8.0  # from junction centre to the start of a street
BEND_RADIUS_MARGIN_M = 6.0  # bend centre-line radius = street half width + margin
MIN_CURVE_RADIUS_MARGIN_M = 8.0  # spiral radius >= street half width + margin
MIN_STREET_LENGTH_M = 15.0
MIN_STRAIGHT_PIECE_M = 3.0  # straight run between a junction or bend and the next bend
STREET_CLEARANCE_M = 1.0  # gap between the outer edges of two streets
MAX_CURVE_LENGTH_RATIO = 1.5  # spiral street length / chord length
SAMPLE_SPACING_M = 2.0
TOWN_SCALE_STEP = 1.1
MAX_GEOMETRY_ATTEMPTS = 60
ZERO_CURVATURE = 1e-9  # what scenariogeneration's junction creator uses for "straight" ends
MIN_SPIRAL_CURVATURE_RATE = 1e-5  # 1/m^2; slower-changing spirals are written as arcs
MIN_ARC_CURVATURE = 1e-6  # 1/m; flatter arcs are written as lines

# --- movements in junctions ---------------------------------------------------------
STRAIGHT_MOVEMENT_MAX_TURN_RAD = math.radians(50.0)

# --- OpenDRIVE ids ------------------------------------------------------------------
JUNCTION_ID_OFFSET = 1000
CONNECTING_ROAD_ID_OFFSET = 10000
CONNECTING_ROAD_IDS_PER_JUNCTION = 1000
GEO_REFERENCE = "+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m"


# ====================================================================================
# Public API
# ====================================================================================
def generate_town(seed: int, layout: str = "auto") -> str:
    """OpenDRIVE 1.4 text of the town for ``seed``; byte-identical for equal arguments.

    ``layout`` is "grid", "irregular" or "auto" (picked from the seed; the same town as
    passing the picked layout explicitly).  Towns are flat (elevation 0 m) and roughly
    150-450 m across.
    """
    _check_seed(seed)
    if layout not in (*LAYOUTS, "auto"):
        raise ValueError(f"layout must be one of {(*LAYOUTS, 'auto')}, got {layout!r}")
    rng = np.random.default_rng(int(seed))
    seeded_layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]  # always drawn: keeps "auto" == picked
    chosen_layout = seeded_layout if layout == "auto" else layout
    style = _draw_style(rng)
    lane_choices = _draw_lane_count_choices(rng)
    if chosen_layout == "grid":
        graph = _grid_graph(rng, lane_choices, style)
    else:
        graph = _irregular_graph(rng, lane_choices, style)
    streets = _trace_streets(graph)
    if chosen_layout == "irregular":
        _skew_arms(rng, streets)
    town = _fit_geometry(graph, streets, style)
    return _opendrive_text(f"town_{int(seed)}", town, style)


def is_heldout(seed: int) -> bool:
    """True for seeds reserved for evaluation (never train on these towns)."""
    _check_seed(seed)
    return int(seed) in HELDOUT_SEEDS


def _check_seed(seed: int) -> None:
    """Raise ValueError unless ``seed`` is a non-negative integer (bools rejected)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


# ====================================================================================
# Town-wide style
# ====================================================================================
@dataclass(frozen=True)
class TownStyle:
    """Cross-section and marking choices shared by all streets of a town (metres)."""

    lane_width_m: float
    shoulder_width_m: float  # 0 means no shoulder lane
    sidewalk_width_m: float
    broken_centre_line: bool

    def half_width_m(self, driving_lanes: int) -> float:
        """Distance from the centre line to the outer sidewalk edge of one side."""
        return driving_lanes * self.lane_width_m + self.shoulder_width_m + self.sidewalk_width_m


def _draw_style(rng: np.random.Generator) -> TownStyle:
    """Lane width 3.0-3.8 m, optional 0.5-1.0 m shoulder, sidewalk 1.5-3.5 m."""
    lane_width = round(float(rng.uniform(*LANE_WIDTH_RANGE_M)), 2)
    sidewalk_width = round(float(rng.uniform(*SIDEWALK_WIDTH_RANGE_M)), 2)
    shoulder_width = round(float(rng.uniform(*SHOULDER_WIDTH_RANGE_M)), 2)
    has_shoulder = rng.random() < SHOULDER_PROBABILITY
    broken_centre_line = bool(rng.random() < BROKEN_CENTRE_LINE_PROBABILITY)
    return TownStyle(lane_width, shoulder_width if has_shoulder else 0.0, sidewalk_width, broken_centre_line)


def _draw_lane_count_choices(rng: np.random.Generator) -> tuple[int, ...]:
    """Driving lanes per direction the town's streets pick from: one count, or two neighbours."""
    base = int(rng.choice(LANE_COUNT_CHOICES))
    if rng.random() >= MIXED_LANE_COUNT_PROBABILITY:
        return (base,)
    neighbours = [count for count in (base - 1, base + 1) if count in LANE_COUNT_CHOICES]
    return tuple(sorted((base, int(rng.choice(neighbours)))))


# ====================================================================================
# Street graph
# ====================================================================================
@dataclass
class StreetGraph:
    """Undirected planar graph: node positions (N, 2) in metres, edges with lane counts."""

    node_xy: np.ndarray
    edge_lanes: dict[tuple[int, int], int]  # (low node, high node) -> lanes per direction

    def neighbours(self, node: int) -> list[int]:
        """Sorted neighbours of ``node``."""
        return sorted(b if a == node else a for a, b in self.edge_lanes if node in (a, b))

    def degree(self, node: int) -> int:
        """Number of edges at ``node``."""
        return sum(node in edge for edge in self.edge_lanes)


def _edge(a: int, b: int) -> tuple[int, int]:
    """Canonical key of the undirected edge a-b."""
    return (a, b) if a < b else (b, a)


def _block_offsets(rng: np.random.Generator, nodes: int, min_block_m: float) -> np.ndarray:
    """Cumulative positions (m) of ``nodes`` grid lines, spanning at least MIN_TOWN_SPAN_M.

    Blocks are 40-90 m, but never shorter than ``min_block_m``.
    """
    low = max(BLOCK_SIZE_RANGE_M[0], MIN_TOWN_SPAN_M / (nodes - 1), min_block_m)
    blocks = rng.uniform(low, max(low, BLOCK_SIZE_RANGE_M[1]), size=nodes - 1)
    return np.concatenate([[0.0], np.cumsum(blocks)])


def _lattice(
    rng: np.random.Generator, min_block_m: float, max_diagonal_m: float = math.inf
) -> tuple[np.ndarray, int, int]:
    """Grid node positions (columns * rows, 2) in metres, row-major, centred on 0.

    Grid lines beyond ``max_diagonal_m`` (corner to corner) are dropped, down to 3x3.
    """
    columns = int(rng.choice(GRID_COLUMN_CHOICES))
    rows = int(rng.choice(GRID_ROW_CHOICES))
    xs, ys = _block_offsets(rng, columns, min_block_m), _block_offsets(rng, rows, min_block_m)
    while math.hypot(xs[-1], ys[-1]) > max_diagonal_m and max(len(xs), len(ys)) > 3:
        drop_column = (xs[-1] >= ys[-1] and len(xs) > 3) or len(ys) == 3
        if drop_column:
            xs = xs[:-1]
        else:
            ys = ys[:-1]
    node_xy = np.array([(x, y) for y in ys for x in xs])
    return node_xy - node_xy.mean(axis=0), len(xs), len(ys)


def _min_block_m(style: TownStyle, lane_choices: tuple[int, ...]) -> float:
    """Block size (m) that fits two right-angle junctions of the widest street plus a street."""
    widest = style.half_width_m(max(lane_choices))
    return 2.0 * (widest + JUNCTION_MARGIN_M) + MIN_STREET_LENGTH_M


def _lattice_edges(columns: int, rows: int) -> list[tuple[tuple[int, int], int, int]]:
    """(edge, row index or -1, column index or -1) for every horizontal / vertical edge."""
    edges = []
    for row in range(rows):
        for column in range(columns):
            node = row * columns + column
            if column + 1 < columns:
                edges.append(((node, node + 1), row, -1))
            if row + 1 < rows:
                edges.append(((node, node + columns), -1, column))
    return edges


def _grid_graph(rng: np.random.Generator, lane_choices: tuple[int, ...], style: TownStyle) -> StreetGraph:
    """Manhattan grid; every row and every column has its own lane count."""
    node_xy, columns, rows = _lattice(rng, _min_block_m(style, lane_choices))
    column_lanes = rng.choice(lane_choices, size=columns)
    row_lanes = rng.choice(lane_choices, size=rows)
    edge_lanes = {
        edge: int(row_lanes[row] if row >= 0 else column_lanes[column])
        for edge, row, column in _lattice_edges(columns, rows)
    }
    graph = StreetGraph(node_xy, edge_lanes)
    _remove_interior_edges(rng, graph, _draw_count(rng, GRID_REMOVED_EDGES_RANGE))
    return graph


def _irregular_graph(rng: np.random.Generator, lane_choices: tuple[int, ...], style: TownStyle) -> StreetGraph:
    """Grid with jittered nodes, a random rotation and a lane count per street."""
    # Jitter may shorten a block by 2 x IRREGULAR_JITTER_FRACTION; the diagonal cap lets
    # the town fit MAX_IRREGULAR_DIAGONAL_M whatever its rotation.
    min_block = _min_block_m(style, lane_choices) / (1.0 - 2.0 * IRREGULAR_JITTER_FRACTION)
    node_xy, columns, rows = _lattice(rng, min_block, MAX_IRREGULAR_DIAGONAL_M)
    edges = [edge for edge, _, _ in _lattice_edges(columns, rows)]
    smallest_block = min(float(np.linalg.norm(node_xy[a] - node_xy[b])) for a, b in edges)
    jitter = rng.uniform(-1.0, 1.0, size=node_xy.shape) * IRREGULAR_JITTER_FRACTION * smallest_block
    rotation = float(rng.uniform(0.0, 2.0 * math.pi))
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    rotated = (node_xy + jitter) @ np.array([[cos_r, sin_r], [-sin_r, cos_r]])
    lanes = rng.choice(lane_choices, size=len(edges))
    graph = StreetGraph(rotated - rotated.mean(axis=0), {edge: int(n) for edge, n in zip(edges, lanes)})
    _remove_interior_edges(rng, graph, _draw_count(rng, IRREGULAR_REMOVED_EDGES_RANGE))
    return graph


def _draw_count(rng: np.random.Generator, inclusive_range: tuple[int, int]) -> int:
    """Uniform integer in [low, high]."""
    return int(rng.integers(inclusive_range[0], inclusive_range[1] + 1))


def _remove_interior_edges(rng: np.random.Generator, graph: StreetGraph, count: int) -> None:
    """Remove up to ``count`` edges joining two 4-way nodes, keeping 2-edge-connectivity.

    Both ends become T junctions, so no dead ends and no new bends appear; at least
    half of the 4-way junctions (and at least one) survive.
    """
    candidates = sorted(graph.edge_lanes)
    four_way = sum(graph.degree(node) == 4 for node in range(len(graph.node_xy)))
    min_four_way = max(1, math.ceil(four_way / 2))
    removed = 0
    for index in rng.permutation(len(candidates)):
        edge = candidates[int(index)]
        if removed == count or four_way - 2 < min_four_way:
            return
        if graph.degree(edge[0]) != 4 or graph.degree(edge[1]) != 4:
            continue
        lanes = graph.edge_lanes.pop(edge)
        if _is_two_edge_connected(graph):
            removed += 1
            four_way -= 2
        else:
            graph.edge_lanes[edge] = lanes


def _is_two_edge_connected(graph: StreetGraph) -> bool:
    """True if the used nodes stay connected after removing any single edge."""
    edges = list(graph.edge_lanes)
    return all(_is_connected([e for e in edges if e != cut]) for cut in edges)


def _is_connected(edges: list[tuple[int, int]]) -> bool:
    """True if the nodes touched by ``edges`` (all edges of the graph) form one component."""
    adjacency: dict[int, set[int]] = {}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    start = min(adjacency)
    seen, frontier = {start}, [start]
    while frontier:
        for neighbour in adjacency[frontier.pop()]:
            if neighbour not in seen:
                seen.add(neighbour)
                frontier.append(neighbour)
    return len(seen) == len(adjacency)


# ====================================================================================
# Streets and junction arms
# ====================================================================================
@dataclass(eq=False)
class Street:
    """One OpenDRIVE road: junction node, bend nodes..., junction node."""

    road_id: int
    nodes: tuple[int, ...]
    driving_lanes: int  # per direction
    start_skew_rad: float = 0.0  # heading perturbation where the street leaves nodes[0]
    end_skew_rad: float = 0.0  # heading perturbation where the street leaves nodes[-1]

    @property
    def has_bends(self) -> bool:
        """True if the street passes through bend nodes."""
        return len(self.nodes) > 2

    @property
    def is_skewed(self) -> bool:
        """True if an end heading is perturbed, i.e. the street is drawn as a spiral curve."""
        return self.start_skew_rad != 0.0 or self.end_skew_rad != 0.0

    def relax_skew(self, at_street_end: bool | None = None) -> bool:
        """Halve the skew at one end (both if None); below MIN_SKEW_RAD it becomes 0.

        Returns True if a skew changed.
        """
        changed = False
        if at_street_end in (None, False) and self.start_skew_rad != 0.0:
            self.start_skew_rad = _halved_skew(self.start_skew_rad)
            changed = True
        if at_street_end in (None, True) and self.end_skew_rad != 0.0:
            self.end_skew_rad = _halved_skew(self.end_skew_rad)
            changed = True
        return changed


def _halved_skew(skew_rad: float) -> float:
    """Half the skew, or 0 once that is below MIN_SKEW_RAD."""
    half = 0.5 * skew_rad
    return half if abs(half) >= MIN_SKEW_RAD else 0.0


@dataclass(frozen=True)
class Arm:
    """Where a street meets a junction; ``angle_rad`` points from the junction along the street."""

    street: Street
    at_street_end: bool
    node: int
    angle_rad: float

    @property
    def key(self) -> tuple[int, bool]:
        """(road id, at street end): identifies the arm across geometry attempts."""
        return (self.street.road_id, self.at_street_end)

    @property
    def contact(self) -> str:
        """How the street's road links to the junction ("successor" or "predecessor")."""
        return "successor" if self.at_street_end else "predecessor"

    def incoming_lane_id(self, lane: int) -> int:
        """OpenDRIVE id of lane ``lane`` (1 = next to the centre line) driving into the junction."""
        return -lane if self.at_street_end else lane

    def outgoing_lane_id(self, lane: int) -> int:
        """OpenDRIVE id of lane ``lane`` (1 = next to the centre line) driving out of the junction."""
        return lane if self.at_street_end else -lane


def _trace_streets(graph: StreetGraph) -> list[Street]:
    """Chain edges through degree-2 nodes into streets, numbered from road id 1."""
    visited: set[tuple[int, int]] = set()
    streets: list[Street] = []
    junctions = [node for node in range(len(graph.node_xy)) if graph.degree(node) >= 3]
    for junction in junctions:
        for first in graph.neighbours(junction):
            if _edge(junction, first) in visited:
                continue
            chain = [junction, first]
            visited.add(_edge(junction, first))
            while graph.degree(chain[-1]) == 2:
                following = next(n for n in graph.neighbours(chain[-1]) if n != chain[-2])
                visited.add(_edge(chain[-1], following))
                chain.append(following)
            lanes = graph.edge_lanes[_edge(junction, first)]
            streets.append(Street(len(streets) + 1, tuple(chain), lanes))
    return streets


def _skew_arms(rng: np.random.Generator, streets: list[Street]) -> None:
    """Give bend-free streets random end headings (+-8-22 deg) so that they curve."""
    for street in streets:
        if street.has_bends:
            continue
        magnitudes = rng.uniform(*ARM_SKEW_RANGE_RAD, size=2)
        signs = rng.choice((-1.0, 1.0), size=2)
        street.start_skew_rad, street.end_skew_rad = (float(v) for v in magnitudes * signs)


def _street_arms(graph: StreetGraph, street: Street) -> tuple[Arm, Arm]:
    """The arms of ``street`` at its first and last node."""
    xy = graph.node_xy
    nodes = street.nodes
    start_angle = _direction_angle(xy[nodes[1]] - xy[nodes[0]]) + street.start_skew_rad
    end_angle = _direction_angle(xy[nodes[-2]] - xy[nodes[-1]]) + street.end_skew_rad
    return Arm(street, False, nodes[0], start_angle), Arm(street, True, nodes[-1], end_angle)


def _arms_by_junction(graph: StreetGraph, streets: list[Street]) -> dict[int, list[Arm]]:
    """Arms of every junction node, sorted counter-clockwise."""
    arms: dict[int, list[Arm]] = {}
    for street in streets:
        for arm in _street_arms(graph, street):
            arms.setdefault(arm.node, []).append(arm)
    return {
        node: sorted(node_arms, key=lambda arm: arm.angle_rad % (2 * math.pi))
        for node, node_arms in sorted(arms.items())
    }


def _relax_crowded_arms(graph: StreetGraph, streets: list[Street]) -> None:
    """Halve (eventually remove) skews that bring arms closer than MIN_ARM_SEPARATION_RAD."""
    changed = True
    while changed:
        changed = False
        for node_arms in _arms_by_junction(graph, streets).values():
            for arm, neighbour in zip(node_arms, node_arms[1:] + node_arms[:1]):
                if _ccw_gap(arm.angle_rad, neighbour.angle_rad) < MIN_ARM_SEPARATION_RAD:
                    changed |= arm.street.relax_skew(at_street_end=arm.at_street_end)
                    changed |= neighbour.street.relax_skew(at_street_end=neighbour.at_street_end)


def _direction_angle(vector: np.ndarray) -> float:
    """Heading (rad) of a 2-D vector."""
    return math.atan2(float(vector[1]), float(vector[0]))


def _ccw_gap(from_angle: float, to_angle: float) -> float:
    """Counter-clockwise angle (rad, in [0, 2 pi)) from one heading to another."""
    return (to_angle - from_angle) % (2 * math.pi)


def _wrap_angle(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _arm_clearance_m(own_half_width: float, other_half_width: float, gap_rad: float) -> float:
    """How far along its axis an arm must start so its outer edge clears a neighbour arm.

    The neighbour lies ``gap_rad`` away (towards the edge in question).  Returns the
    distance from the junction centre where the two outer edges cross, or 0 if they
    do not cross in front of the junction.
    """
    if gap_rad >= math.pi - 1e-6:
        return 0.0
    crossing = (other_half_width + own_half_width * math.cos(gap_rad)) / math.sin(gap_rad)
    in_front_of_neighbour = crossing * math.cos(gap_rad) + own_half_width * math.sin(gap_rad) > 0.0
    return max(crossing, 0.0) if in_front_of_neighbour else 0.0


def _arm_distances(arms_by_junction: dict[int, list[Arm]], style: TownStyle) -> dict[tuple[int, bool], float]:
    """Distance (m) from each junction centre to where each arm's street starts, by arm key."""
    distances: dict[tuple[int, bool], float] = {}
    for node_arms in arms_by_junction.values():
        for index, arm in enumerate(node_arms):
            before, after = node_arms[index - 1], node_arms[(index + 1) % len(node_arms)]
            own = style.half_width_m(arm.street.driving_lanes)
            after_clearance = _arm_clearance_m(
                own, style.half_width_m(after.street.driving_lanes), _ccw_gap(arm.angle_rad, after.angle_rad)
            )
            before_clearance = _arm_clearance_m(
                own, style.half_width_m(before.street.driving_lanes), _ccw_gap(before.angle_rad, arm.angle_rad)
            )
            clearance = max(after_clearance, before_clearance)
            distances[arm.key] = max(MIN_JUNCTION_ARM_DISTANCE_M, clearance + JUNCTION_MARGIN_M)
    return distances


# ====================================================================================
# Street centre lines
# ====================================================================================
@dataclass
class Town:
    """Final geometry: streets, their centre-line pieces, junction arms and arm distances."""

    streets: list[Street]
    pieces: dict[int, list[pyclothoids.Clothoid]]  # road id -> line/arc/spiral pieces
    arms_by_junction: dict[int, list[Arm]]
    arm_distance_m: dict[tuple[int, bool], float]  # by Arm.key
    node_xy: np.ndarray


class _GeometryProblem(Exception):
    """A street cannot be drawn as asked: it is too short or curves too tightly."""

    def __init__(self, street: Street, too_short: bool) -> None:
        super().__init__(f"road {street.road_id}: {'too short' if too_short else 'too curved'}")
        self.street = street
        self.too_short = too_short


def _fit_geometry(graph: StreetGraph, streets: list[Street], style: TownStyle) -> Town:
    """Street centre lines; relaxes curves or scales the town up until everything fits."""
    _relax_crowded_arms(graph, streets)
    for _ in range(MAX_GEOMETRY_ATTEMPTS):
        arms_by_junction = _arms_by_junction(graph, streets)
        distances = _arm_distances(arms_by_junction, style)
        pieces, too_short, too_curved = _draw_streets(graph, streets, distances, style)
        if too_short:
            # Skewed arms enlarge junctions: straighten those around short streets first.
            junctions = {node for street in too_short for node in (street.nodes[0], street.nodes[-1])}
            _relax_or_scale(graph, [s for s in streets if {s.nodes[0], s.nodes[-1]} & junctions])
        elif too_curved:
            for street in too_curved:
                street.relax_skew()
        else:
            town = Town(streets, pieces, arms_by_junction, distances, graph.node_xy)
            overlapping = _overlapping_streets(town, style)
            if not overlapping:
                return town
            _relax_or_scale(graph, overlapping)
    raise RuntimeError("could not fit the town geometry")


def _relax_or_scale(graph: StreetGraph, streets: list[Street]) -> None:
    """Relax the skews of ``streets``; if none is skewed, scale the town up by TOWN_SCALE_STEP."""
    relaxed = [street for street in streets if street.relax_skew()]
    if not relaxed:
        graph.node_xy = graph.node_xy * TOWN_SCALE_STEP


def _draw_streets(
    graph: StreetGraph, streets: list[Street], distances: dict[tuple[int, bool], float], style: TownStyle
) -> tuple[dict[int, list[pyclothoids.Clothoid]], list[Street], list[Street]]:
    """Centre-line pieces by road id, and the streets that came out too short / too curved."""
    pieces: dict[int, list[pyclothoids.Clothoid]] = {}
    too_short: list[Street] = []
    too_curved: list[Street] = []
    for street in streets:
        try:
            pieces[street.road_id] = _street_pieces(graph, street, distances, style)
        except _GeometryProblem as problem:
            (too_short if problem.too_short else too_curved).append(street)
    return pieces, too_short, too_curved


def _street_pieces(
    graph: StreetGraph, street: Street, distances: dict[tuple[int, bool], float], style: TownStyle
) -> list[pyclothoids.Clothoid]:
    """Centre line from the start junction's arm to the end junction's arm."""
    start_arm, end_arm = _street_arms(graph, street)
    start_xy = graph.node_xy[street.nodes[0]] + distances[start_arm.key] * _unit(start_arm.angle_rad)
    end_xy = graph.node_xy[street.nodes[-1]] + distances[end_arm.key] * _unit(end_arm.angle_rad)
    half_width = style.half_width_m(street.driving_lanes)
    if street.has_bends:
        corners = [graph.node_xy[node] for node in street.nodes[1:-1]]
        pieces = _filleted_polyline([start_xy, *corners, end_xy], half_width + BEND_RADIUS_MARGIN_M, street)
    elif street.is_skewed:
        end_heading = end_arm.angle_rad + math.pi
        pieces = _clothoid_curve(start_xy, start_arm.angle_rad, end_xy, end_heading, half_width, street)
    else:
        pieces = [_line(start_xy, start_arm.angle_rad, float(np.linalg.norm(end_xy - start_xy)))]
    if sum(piece.length for piece in pieces) < MIN_STREET_LENGTH_M:
        raise _GeometryProblem(street, too_short=True)
    return pieces


def _unit(angle: float) -> np.ndarray:
    """Unit vector with heading ``angle`` (rad)."""
    return np.array([math.cos(angle), math.sin(angle)])


def _line(start_xy: np.ndarray, heading: float, length: float) -> pyclothoids.Clothoid:
    """Straight piece."""
    return _piece(start_xy, heading, 0.0, length)


def _piece(start_xy: np.ndarray, heading: float, curvature: float, length: float) -> pyclothoids.Clothoid:
    """Constant-curvature piece (line or arc) starting at ``start_xy`` with ``heading``."""
    x, y = float(start_xy[0]), float(start_xy[1])
    return pyclothoids.Clothoid.StandardParams(x, y, heading, curvature, 0.0, length)


def _filleted_polyline(points: list[np.ndarray], radius: float, street: Street) -> list[pyclothoids.Clothoid]:
    """Lines through ``points`` with circular arcs of ``radius`` (m) rounding each corner."""
    pieces: list[pyclothoids.Clothoid] = []
    position = points[0]
    for before, corner, after in zip(points, points[1:], points[2:]):
        incoming = _direction_angle(corner - before)
        turn = _wrap_angle(_direction_angle(after - corner) - incoming)
        tangent_length = radius * math.tan(abs(turn) / 2.0)
        straight = float(np.linalg.norm(corner - position)) - tangent_length
        if straight < MIN_STRAIGHT_PIECE_M:
            raise _GeometryProblem(street, too_short=True)
        pieces.append(_line(position, incoming, straight))
        arc_start = corner - tangent_length * _unit(incoming)
        curvature = math.copysign(1.0 / radius, turn)
        pieces.append(_piece(arc_start, incoming, curvature, radius * abs(turn)))
        position = corner + tangent_length * _unit(incoming + turn)
    last_straight = float(np.linalg.norm(points[-1] - position))
    if last_straight - (MIN_STRAIGHT_PIECE_M if len(points) > 2 else 0.0) < 0.0:
        raise _GeometryProblem(street, too_short=True)
    pieces.append(_line(position, _direction_angle(points[-1] - position), last_straight))
    return pieces


def _clothoid_curve(
    start_xy: np.ndarray,
    start_heading: float,
    end_xy: np.ndarray,
    end_heading: float,
    half_width: float,
    street: Street,
) -> list[pyclothoids.Clothoid]:
    """G2 curve of three spirals between two poses, straight (zero curvature) at both ends."""
    pieces = pyclothoids.SolveG2(
        float(start_xy[0]), float(start_xy[1]), start_heading, ZERO_CURVATURE,
        float(end_xy[0]), float(end_xy[1]), end_heading, ZERO_CURVATURE,
    )  # fmt: skip
    chord = float(np.linalg.norm(end_xy - start_xy))
    if chord < MIN_STREET_LENGTH_M:
        raise _GeometryProblem(street, too_short=True)
    max_curvature = max(max(abs(p.KappaStart), abs(p.KappaEnd)) for p in pieces)
    total_length = sum(p.length for p in pieces)
    too_tight = max_curvature * (half_width + MIN_CURVE_RADIUS_MARGIN_M) > 1.0
    if too_tight or total_length > MAX_CURVE_LENGTH_RATIO * chord:
        raise _GeometryProblem(street, too_short=False)
    return list(pieces)


def _sample_centre_line(pieces: list[pyclothoids.Clothoid]) -> np.ndarray:
    """Points (M, 2) every ~SAMPLE_SPACING_M metres along a street's centre line."""
    samples = []
    for piece in pieces:
        count = max(2, int(math.ceil(piece.length / SAMPLE_SPACING_M)) + 1)
        xs, ys = piece.SampleXY(count)
        samples.append(np.column_stack([xs, ys]))
    return np.concatenate(samples)


def _overlapping_streets(town: Town, style: TownStyle) -> list[Street]:
    """Streets whose paved area (sidewalks included) overlaps another street's.

    Near a shared junction streets naturally meet; points within the junction's reach
    (arm distance plus both half widths) are ignored there.
    """
    samples = {street.road_id: _sample_centre_line(town.pieces[street.road_id]) for street in town.streets}
    reach = {
        node: max(town.arm_distance_m[arm.key] for arm in arms) for node, arms in town.arms_by_junction.items()
    }
    overlapping: set[Street] = set()
    for index, first in enumerate(town.streets):
        for second in town.streets[index + 1 :]:
            widths = style.half_width_m(first.driving_lanes) + style.half_width_m(second.driving_lanes)
            needed = widths + STREET_CLEARANCE_M
            shared = {first.nodes[0], first.nodes[-1]} & {second.nodes[0], second.nodes[-1]}
            first_points = _outside_junctions(samples[first.road_id], shared, town, reach, needed)
            second_points = _outside_junctions(samples[second.road_id], shared, town, reach, needed)
            if len(first_points) and len(second_points) and _min_distance(first_points, second_points) < needed:
                overlapping.update((first, second))
    return [street for street in town.streets if street in overlapping]


def _outside_junctions(
    points: np.ndarray, nodes: set[int], town: Town, reach: dict[int, float], extra: float
) -> np.ndarray:
    """``points`` farther than reach + ``extra`` metres from each junction in ``nodes``."""
    keep = np.ones(len(points), dtype=bool)
    for node in nodes:
        keep &= np.linalg.norm(points - town.node_xy[node], axis=1) > reach[node] + extra
    return points[keep]


def _min_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Smallest distance (m) between two point sets."""
    return float(np.sqrt(((first[:, None, :] - second[None, :, :]) ** 2).sum(axis=2).min()))


# ====================================================================================
# Junction movements
# ====================================================================================
def _movement_lane_pairs(lanes_in: int, movements: list[tuple[float, int]]) -> list[list[tuple[int, int]]]:
    """Lane pairs (incoming lane, outgoing lane; 1 = next to the centre line) per movement.

    ``movements`` holds (turn angle rad, positive = left; outgoing lane count).  The
    straightest movement (if within STRAIGHT_MOVEMENT_MAX_TURN_RAD) keeps lanes
    side by side; left turns leave from the inner lanes, right turns from the outer
    lanes, and every turn may end in any lane of the target street.  Where a junction
    offers turns to one side only, every lane may take them, so no lane is trapped in a
    loop of straight movements.
    """
    turns = [abs(angle) for angle, _ in movements]
    straight = int(np.argmin(turns)) if min(turns) <= STRAIGHT_MOVEMENT_MAX_TURN_RAD else None
    has_left = any(angle > 0 for i, (angle, _) in enumerate(movements) if i != straight)
    has_right = any(angle <= 0 for i, (angle, _) in enumerate(movements) if i != straight)
    all_lanes = list(range(1, lanes_in + 1))
    if not (has_left and has_right):
        left_lanes = right_lanes = all_lanes
    elif straight is not None:
        left_lanes, right_lanes = [1], [lanes_in]
    else:
        left_lanes = all_lanes[: (lanes_in + 1) // 2]
        right_lanes = all_lanes[lanes_in // 2 :]
    pairs = []
    for index, (angle, lanes_out) in enumerate(movements):
        if index == straight:
            pairs.append([(min(k, lanes_in), min(k, lanes_out)) for k in range(1, max(lanes_in, lanes_out) + 1)])
        else:
            from_lanes = left_lanes if angle > 0 else right_lanes
            pairs.append([(i, j) for i in from_lanes for j in range(1, lanes_out + 1)])
    return pairs


# ====================================================================================
# OpenDRIVE
# ====================================================================================
def _opendrive_text(name: str, town: Town, style: TownStyle) -> str:
    """Serialise the town to OpenDRIVE 1.4 XML text."""
    opendrive = xodr.OpenDrive(name, revMajor="1", revMinor="4", geo_reference=GEO_REFERENCE)
    roads = {street.road_id: _street_road(street, town.pieces[street.road_id], style) for street in town.streets}
    for road in roads.values():
        opendrive.add_road(road)
    creators = [
        _junction_creator(index, node, arms, town, roads)
        for index, (node, arms) in enumerate(town.arms_by_junction.items())
    ]
    for creator in creators:
        for connecting_road in creator.get_connecting_roads():
            connecting_road.planview = _carla_safe_plan_view(connecting_road.planview)
        opendrive.add_junction_creator(creator)
    # Connecting roads are placed from their (fixed) neighbours; lane links are created
    # only between connecting roads and their two streets instead of the quadratic
    # all-pairs search of OpenDrive.adjust_roads_and_lanes().
    opendrive.adjust_startpoints()
    for creator in creators:
        for connecting_road in creator.get_connecting_roads():
            for link in (connecting_road.predecessor, connecting_road.successor):
                xodr.create_lane_links(connecting_road, roads[link.element_id])
    root = opendrive.get_element()
    # scenariogeneration stamps the wall-clock time into the header; drop it so the
    # text depends on the seed only.
    root.find("header").attrib.pop("date")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _street_road(street: Street, pieces: list[pyclothoids.Clothoid], style: TownStyle) -> xodr.Road:
    """OpenDRIVE road of a street, flat, with one lane section."""
    first = pieces[0]
    plan_view = xodr.PlanView(first.XStart, first.YStart, first.ThetaStart)
    for piece in pieces:
        plan_view.add_geometry(_xodr_geometry(piece))
    road = xodr.Road(street.road_id, plan_view, _street_lanes(street.driving_lanes, style))
    road.add_elevation(0.0, 0.0, 0.0, 0.0, 0.0)
    return road


def _xodr_geometry(piece: pyclothoids.Clothoid) -> xodr.Line | xodr.Arc | xodr.Spiral:
    """scenariogeneration geometry for a line, arc or spiral piece."""
    return _xodr_curve(piece.KappaStart, piece.KappaEnd, piece.length)


def _xodr_curve(
    curvature_start: float, curvature_end: float, length: float
) -> xodr.Line | xodr.Arc | xodr.Spiral:
    """Line, arc or spiral (curvatures in 1/m, length in m).

    libcarla evaluates a spiral relative to the point where its curvature would be 0,
    at s = curvStart / (curvature change rate); for (nearly) constant curvature that
    divides by ~0 and waypoints jump metres sideways.  Such spirals become arcs.
    """
    if abs(curvature_end - curvature_start) / length >= MIN_SPIRAL_CURVATURE_RATE:
        return xodr.Spiral(curvature_start, curvature_end, length=length)
    mean_curvature = 0.5 * (curvature_start + curvature_end)
    if abs(mean_curvature) < MIN_ARC_CURVATURE:
        return xodr.Line(length)
    return xodr.Arc(mean_curvature, length=length)


def _carla_safe_plan_view(plan_view: xodr.PlanView) -> xodr.PlanView:
    """Copy of an unplaced plan view with near-constant-curvature spirals as arcs or lines.

    CommonJunctionCreator fits every connecting road with three spirals
    (pyclothoids.SolveG2) whose middle one often has curvStart == curvEnd; see
    ``_xodr_curve``.  The creator offers no hook for this, so its geometry list
    (``_raw_geometries``) is read here.
    """
    safe = xodr.PlanView()
    for geometry in plan_view._raw_geometries:
        if isinstance(geometry, xodr.Spiral):
            geometry = _xodr_curve(geometry.curvstart, geometry.curvend, geometry.length)
        safe.add_geometry(geometry)
    return safe


def _road_mark(mark_type: xodr.RoadMarkType, color: xodr.RoadMarkColor) -> xodr.RoadMark:
    """Road mark; lane changes across it are allowed exactly when it is broken.

    CARLA reads ``waypoint.lane_change`` from the laneChange attribute and treats a
    missing one as "both", so it is always written.
    """
    lane_change = xodr.LaneChange.both if mark_type == xodr.RoadMarkType.broken else xodr.LaneChange.none
    return xodr.RoadMark(mark_type, ROAD_MARK_WIDTH_M, color=color, laneChange=lane_change)


def _street_lanes(driving_lanes: int, style: TownStyle) -> xodr.Lanes:
    """Symmetric cross-section: centre line, driving lanes, optional shoulder, sidewalk.

    Marks: yellow centre line (solid or broken), broken white between same-direction
    lanes, solid white on the outer edge of the outermost driving lane.
    """
    centre_type = xodr.RoadMarkType.broken if style.broken_centre_line else xodr.RoadMarkType.solid
    centre = xodr.Lane(lane_type=xodr.LaneType.none)
    centre.add_roadmark(_road_mark(centre_type, xodr.RoadMarkColor.yellow))
    section = xodr.LaneSection(0.0, centre)
    for add_lane in (section.add_left_lane, section.add_right_lane):
        for lane_number in range(1, driving_lanes + 1):
            lane = xodr.Lane(lane_type=xodr.LaneType.driving, a=style.lane_width_m)
            outermost = lane_number == driving_lanes
            mark_type = xodr.RoadMarkType.solid if outermost else xodr.RoadMarkType.broken
            lane.add_roadmark(_road_mark(mark_type, xodr.RoadMarkColor.white))
            add_lane(lane)
        if style.shoulder_width_m > 0.0:
            shoulder = xodr.Lane(lane_type=xodr.LaneType.shoulder, a=style.shoulder_width_m)
            shoulder.add_roadmark(_road_mark(xodr.RoadMarkType.none, xodr.RoadMarkColor.standard))
            add_lane(shoulder)
        sidewalk = xodr.Lane(lane_type=xodr.LaneType.sidewalk, a=style.sidewalk_width_m)
        sidewalk.add_roadmark(_road_mark(xodr.RoadMarkType.none, xodr.RoadMarkColor.standard))
        add_lane(sidewalk)
    lanes = xodr.Lanes()
    lanes.add_lanesection(section)
    return lanes


def _junction_creator(
    index: int, node: int, arms: list[Arm], town: Town, roads: dict[int, xodr.Road]
) -> xodr.CommonJunctionCreator:
    """Junction with one single-lane connecting road per lane movement (no U-turns)."""
    creator = xodr.CommonJunctionCreator(
        JUNCTION_ID_OFFSET + index,
        f"junction_{index}",
        startnum=CONNECTING_ROAD_ID_OFFSET + CONNECTING_ROAD_IDS_PER_JUNCTION * index,
    )
    creator.add_constant_elevation(0.0)
    centre = town.node_xy[node]
    for arm in arms:
        arm_xy = centre + town.arm_distance_m[arm.key] * _unit(arm.angle_rad)
        # heading of the arm pointing into the junction, in the town frame
        creator.add_incoming_road_cartesian_geometry(
            roads[arm.street.road_id], float(arm_xy[0]), float(arm_xy[1]), arm.angle_rad + math.pi, arm.contact
        )
    for incoming in arms:
        outgoing_arms = [arm for arm in arms if arm is not incoming]
        movements = [
            (_wrap_angle(out.angle_rad - incoming.angle_rad - math.pi), out.street.driving_lanes)
            for out in outgoing_arms
        ]
        lane_pairs = _movement_lane_pairs(incoming.street.driving_lanes, movements)
        for outgoing, pairs in zip(outgoing_arms, lane_pairs):
            for lane_in, lane_out in pairs:
                creator.add_connection(
                    incoming.street.road_id,
                    outgoing.street.road_id,
                    incoming.incoming_lane_id(lane_in),
                    outgoing.outgoing_lane_id(lane_out),
                )
    return creator
