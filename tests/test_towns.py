"""Tests of the procedural OpenDRIVE town generator, checked through CARLA's client parser."""

from __future__ import annotations

import collections
import math
import time
import xml.etree.ElementTree as ET
from functools import lru_cache

import networkx as nx
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mirage_env.towns import HELDOUT_SEEDS, LAYOUTS, generate_town, is_heldout

carla = pytest.importorskip("carla")

SEEDS = (0, 7, 123)
CASES = [(seed, layout) for seed in SEEDS for layout in LAYOUTS]
STEP_M = 2.0


@lru_cache(maxsize=None)
def town_text(seed: int, layout: str) -> str:
    """Generated text, cached across tests."""
    return generate_town(seed, layout)


@lru_cache(maxsize=None)
def town_map(seed: int, layout: str) -> carla.Map:
    """CARLA map of a generated town, cached across tests."""
    return carla.Map(f"town_{seed}", town_text(seed, layout))


@lru_cache(maxsize=None)
def driving_waypoints(seed: int, layout: str) -> tuple[carla.Waypoint, ...]:
    """Driving-lane waypoints every STEP_M metres."""
    return tuple(town_map(seed, layout).generate_waypoints(STEP_M))


def lane_graph(waypoints: tuple[carla.Waypoint, ...]) -> nx.DiGraph:
    """Waypoint indices linked to the nearest waypoint (same lane, nearest s) of ``next(STEP_M)``.

    A step that snaps back onto its own waypoint (the lane ends between two generated
    waypoints) is followed further, so only genuine dead ends lose their edges.
    """
    by_lane: dict[tuple[int, int, int], list[tuple[float, int]]] = collections.defaultdict(list)
    for index, waypoint in enumerate(waypoints):
        by_lane[(waypoint.road_id, waypoint.section_id, waypoint.lane_id)].append((waypoint.s, index))
    lanes = {key: (np.array([s for s, _ in items]), [i for _, i in items]) for key, items in by_lane.items()}

    def snap(waypoint: carla.Waypoint) -> int | None:
        key = (waypoint.road_id, waypoint.section_id, waypoint.lane_id)
        if key not in lanes:
            return None
        s_values, indices = lanes[key]
        return indices[int(np.argmin(np.abs(s_values - waypoint.s)))]

    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(waypoints)))
    for index, waypoint in enumerate(waypoints):
        frontier = list(waypoint.next(STEP_M))
        for _ in range(3):
            stuck = []
            for successor in frontier:
                target = snap(successor)
                if target == index:
                    stuck.extend(successor.next(STEP_M))
                elif target is not None:
                    graph.add_edge(index, target)
            frontier = stuck
    return graph


def heading_ranges_deg(waypoints: tuple[carla.Waypoint, ...]) -> dict[int, float]:
    """Per non-junction road: max - min of the unwrapped yaw (deg) along one lane."""
    by_lane: dict[tuple[int, int], list[carla.Waypoint]] = collections.defaultdict(list)
    for waypoint in waypoints:
        if not waypoint.is_junction:
            by_lane[(waypoint.road_id, waypoint.lane_id)].append(waypoint)
    ranges: dict[int, float] = {}
    for (road_id, _), lane_waypoints in by_lane.items():
        lane_waypoints.sort(key=lambda w: w.s)
        yaws = np.unwrap(np.radians([w.transform.rotation.yaw for w in lane_waypoints]))
        ranges[road_id] = max(ranges.get(road_id, 0.0), float(np.degrees(yaws.max() - yaws.min())))
    return ranges


def driving_lane_counts(waypoints: tuple[carla.Waypoint, ...]) -> dict[int, tuple[int, int]]:
    """Per non-junction road: (driving lanes with positive ids, with negative ids)."""
    lanes: dict[int, set[int]] = collections.defaultdict(set)
    for waypoint in waypoints:
        if not waypoint.is_junction:
            lanes[waypoint.road_id].add(waypoint.lane_id)
    return {road: (sum(i > 0 for i in ids), sum(i < 0 for i in ids)) for road, ids in lanes.items()}


def outer_lanes(waypoint: carla.Waypoint) -> list[carla.Waypoint]:
    """Lanes to the right of ``waypoint`` (outward, for either driving direction)."""
    lanes = []
    current = waypoint.get_right_lane()
    while current is not None and len(lanes) < 10:
        lanes.append(current)
        current = current.get_right_lane()
    return lanes


def junction_arm_headings_deg(waypoints: tuple[carla.Waypoint, ...]) -> list[list[float]]:
    """For every junction, the heading (deg) of each road entering it, pointing out of the junction."""
    junctions = {w.junction_id: w.get_junction() for w in waypoints if w.is_junction}
    all_headings = []
    for junction in junctions.values():
        headings: dict[int, float] = {}
        for entry, _ in junction.get_waypoints(carla.LaneType.Driving):
            for before in entry.previous(1.0):
                if not before.is_junction:
                    headings[before.road_id] = (before.transform.rotation.yaw + 180.0) % 360.0
        all_headings.append(sorted(headings.values()))
    return all_headings


def junction_arm_counts(waypoints: tuple[carla.Waypoint, ...]) -> list[int]:
    """For every junction, the number of distinct roads whose lanes enter it."""
    return [len(headings) for headings in junction_arm_headings_deg(waypoints)]


def largest_right_angle_deviation_deg(headings: list[float]) -> float:
    """Largest deviation (deg) of the angle between two arms from a multiple of 90 deg."""
    deviations = [abs((a - b + 45.0) % 90.0 - 45.0) for i, a in enumerate(headings) for b in headings[i + 1 :]]
    return max(deviations)


# --- loading and topology -----------------------------------------------------------
@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_town_loads_with_waypoints_and_junctions(seed: int, layout: str) -> None:
    waypoints = driving_waypoints(seed, layout)
    assert len(waypoints) > 300
    assert any(w.is_junction for w in waypoints)
    assert any(not w.is_junction for w in waypoints)
    assert all(w.lane_type == carla.LaneType.Driving for w in waypoints)


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_lane_graph_has_no_dead_ends_and_is_strongly_connected(seed: int, layout: str) -> None:
    waypoints = driving_waypoints(seed, layout)
    dead_ends = [w for w in waypoints if not w.next(STEP_M)]
    assert not dead_ends
    graph = lane_graph(waypoints)
    largest = max(nx.strongly_connected_components(graph), key=len)
    assert len(largest) >= 0.9 * len(waypoints)


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_lanes_are_geometrically_continuous(seed: int, layout: str) -> None:
    """A 2 m step never jumps: connecting roads start and end exactly on their lanes.

    A step is 2 m along the road's reference line; an outer lane on a curve moves up to
    ~1.5 times that, while a lane-width (3 m) misalignment would move >= 3.6 m.
    """
    for waypoint in driving_waypoints(seed, layout):
        for successor in waypoint.next(STEP_M):
            assert waypoint.transform.location.distance(successor.transform.location) < 1.6 * STEP_M


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_junctions_have_three_or_four_arms(seed: int, layout: str) -> None:
    arm_counts = junction_arm_counts(driving_waypoints(seed, layout))
    assert arm_counts
    assert set(arm_counts) <= {3, 4}
    assert 3 in arm_counts


def test_grid_towns_mix_four_way_and_t_junctions() -> None:
    for seed in SEEDS:
        assert {3, 4} <= set(junction_arm_counts(driving_waypoints(seed, "grid")))


def test_grid_junction_arms_meet_at_right_angles() -> None:
    for seed in SEEDS:
        for headings in junction_arm_headings_deg(driving_waypoints(seed, "grid")):
            assert largest_right_angle_deviation_deg(headings) < 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_irregular_junction_arms_meet_at_other_angles(seed: int) -> None:
    junctions = junction_arm_headings_deg(driving_waypoints(seed, "irregular"))
    deviations = [largest_right_angle_deviation_deg(headings) for headings in junctions]
    assert sum(deviation > 10.0 for deviation in deviations) >= len(deviations) / 2


# --- cross-section ------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_one_to_three_lanes_per_direction_with_valid_widths(seed: int, layout: str) -> None:
    waypoints = driving_waypoints(seed, layout)
    for forward, backward in driving_lane_counts(waypoints).values():
        assert 1 <= forward <= 3
        assert forward == backward
    widths = {round(w.lane_width, 3) for w in waypoints if not w.is_junction}
    assert len(widths) == 1
    assert 3.0 <= widths.pop() <= 3.8


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_sidewalk_on_the_outer_edge_of_both_sides(seed: int, layout: str) -> None:
    street_waypoints = [w for w in driving_waypoints(seed, layout) if not w.is_junction]
    checked_sides = set()
    for waypoint in street_waypoints[::7]:
        lanes = outer_lanes(waypoint)
        assert lanes, "no lane outside a driving lane"
        outermost = lanes[-1]
        assert outermost.lane_type == carla.LaneType.Sidewalk
        assert 1.5 <= outermost.lane_width <= 3.5
        assert all(lane.lane_type != carla.LaneType.Sidewalk for lane in lanes[:-1])
        checked_sides.add(np.sign(waypoint.lane_id))
    assert checked_sides == {-1, 1}


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_road_marks_and_lane_changes(seed: int, layout: str) -> None:
    for waypoint in driving_waypoints(seed, layout)[::5]:
        if waypoint.is_junction:
            continue
        right, left = waypoint.get_right_lane(), waypoint.get_left_lane()
        if right.lane_type == carla.LaneType.Driving:
            assert waypoint.right_lane_marking.type == carla.LaneMarkingType.Broken
            assert waypoint.right_lane_marking.color == carla.LaneMarkingColor.White
            assert waypoint.lane_change in (carla.LaneChange.Right, carla.LaneChange.Both)
        else:
            assert waypoint.right_lane_marking.type == carla.LaneMarkingType.Solid
            assert waypoint.right_lane_marking.color == carla.LaneMarkingColor.White
            assert waypoint.lane_change in (carla.LaneChange.NONE, carla.LaneChange.Left)
        if np.sign(left.lane_id) != np.sign(waypoint.lane_id):  # across the centre line
            assert waypoint.left_lane_marking.color == carla.LaneMarkingColor.Yellow
            assert waypoint.left_lane_marking.type in (carla.LaneMarkingType.Solid, carla.LaneMarkingType.Broken)
        else:
            assert waypoint.left_lane_marking.type == carla.LaneMarkingType.Broken
            assert waypoint.lane_change in (carla.LaneChange.Left, carla.LaneChange.Both)


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_town_is_flat_and_sized_like_a_town(seed: int, layout: str) -> None:
    locations = [w.transform.location for w in driving_waypoints(seed, layout)]
    assert max(abs(location.z) for location in locations) < 1e-6
    xs, ys = [p.x for p in locations], [p.y for p in locations]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    assert 140.0 <= span <= 500.0


# --- geometry -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_irregular_towns_have_curved_streets_between_junctions(seed: int) -> None:
    """Gentle curves (10-60 deg of heading change), unlike the ~90 deg grid corners."""
    ranges = heading_ranges_deg(driving_waypoints(seed, "irregular"))
    assert any(10.0 < heading_range < 60.0 for heading_range in ranges.values())


@pytest.mark.parametrize(("seed", "layout"), CASES)
def test_towns_have_straight_and_curved_roads(seed: int, layout: str) -> None:
    ranges = heading_ranges_deg(driving_waypoints(seed, layout)).values()
    assert any(heading_range > 10.0 for heading_range in ranges)
    if layout == "grid":
        assert any(heading_range < 1.0 for heading_range in ranges)


def test_grid_streets_are_axis_aligned_or_rounded_corners() -> None:
    for seed in SEEDS:
        for heading_range in heading_ranges_deg(driving_waypoints(seed, "grid")).values():
            assert heading_range < 1.0 or 80.0 < heading_range < 100.0


# --- seeds and variety --------------------------------------------------------------
def test_generation_is_deterministic() -> None:
    for layout in (*LAYOUTS, "auto"):
        assert generate_town(11, layout) == generate_town(11, layout)


def test_auto_layout_is_one_of_the_explicit_layouts() -> None:
    picked = [
        next(layout for layout in LAYOUTS if generate_town(seed) == town_text(seed, layout)) for seed in range(8)
    ]
    assert set(picked) == set(LAYOUTS)


def test_different_seeds_give_different_towns() -> None:
    for layout in LAYOUTS:
        texts = {generate_town(seed, layout) for seed in range(6)}
        assert len(texts) == 6
    assert generate_town(3, "grid") != generate_town(3, "irregular")


def test_lane_counts_vary_between_and_within_towns() -> None:
    counts_per_town = []
    for seed in range(10):
        root = ET.fromstring(generate_town(seed))
        counts = set()
        for road in root.iter("road"):
            if road.get("junction") == "-1":
                right = road.find("lanes/laneSection/right")
                counts.add(sum(lane.get("type") == "driving" for lane in right.iter("lane")))
        counts_per_town.append(counts)
    assert len(set().union(*counts_per_town)) > 1
    assert any(len(counts) > 1 for counts in counts_per_town)


def test_heldout_seeds() -> None:
    assert len(HELDOUT_SEEDS) == 16
    assert all(is_heldout(seed) for seed in HELDOUT_SEEDS)
    assert not any(is_heldout(seed) for seed in (0, 1, 999_999, 1_000_016))
    assert generate_town(HELDOUT_SEEDS[0]) != generate_town(0)


@pytest.mark.parametrize("bad_layout", ["", "Grid", "manhattan", None])
def test_bad_layout_raises(bad_layout: object) -> None:
    with pytest.raises(ValueError, match="layout"):
        generate_town(0, bad_layout)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_seed", [1.5, "3", True, None, -1])
def test_bad_seed_raises(bad_seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_town(bad_seed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        is_heldout(bad_seed)  # type: ignore[arg-type]


def test_numpy_integer_seed_is_accepted() -> None:
    assert generate_town(np.int64(5)) == generate_town(5)


# --- OpenDRIVE text -----------------------------------------------------------------
@settings(max_examples=8, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(seed=st.integers(min_value=0, max_value=2**63 - 1), layout=st.sampled_from(LAYOUTS))
def test_any_seed_gives_well_formed_opendrive(seed: int, layout: str) -> None:
    root = ET.fromstring(generate_town(seed, layout))
    header = root.find("header")
    assert header.get("revMajor") == "1" and int(header.get("revMinor")) >= 4
    junction_ids = {junction.get("id") for junction in root.iter("junction")}
    assert len(junction_ids) >= 3
    for road in root.iter("road"):
        for elevation in road.iter("elevation"):
            assert float(elevation.get("a")) == 0.0 and float(elevation.get("b")) == 0.0
        if road.get("junction") != "-1":
            assert road.get("junction") in junction_ids
            continue
        for side in ("left", "right"):
            side_lanes = road.find(f"lanes/laneSection/{side}").iter("lane")
            lanes = sorted(side_lanes, key=lambda lane: abs(int(lane.get("id"))))
            assert lanes[-1].get("type") == "sidewalk"
            assert lanes[0].get("type") == "driving"
        assert {link.get("elementType") for link in road.find("link")} == {"junction"}


def test_generation_and_loading_are_fast() -> None:
    start = time.perf_counter()
    text = generate_town(9, "irregular")  # one of the largest towns
    generated = time.perf_counter()
    carla.Map("town_9", text)
    loaded = time.perf_counter()
    assert generated - start < 2.0
    assert loaded - generated < 1.0


def test_heading_helper_detects_curves() -> None:
    """Guard for the curvature tests: a straight lane reads ~0 deg, a quarter turn ~90 deg."""
    ranges = heading_ranges_deg(driving_waypoints(0, "grid"))
    assert min(ranges.values()) < 1.0
    assert math.isclose(max(ranges.values()), 90.0, abs_tol=10.0)
