import math

import carla
import networkx as nx
import numpy as np
import pytest

from mirage_env.carla_frame import (
    location_to_world,
    rotation_to_world,
    transform_to_world,
    world_to_location,
    world_to_rotation,
)
from mirage_env.road_map import GRAPH_SPACING_M, RoadMap, load_road_map

from conftest import LEFT_TURN_XODR


def test_town01_loads_with_our_own_spawn_points(town01):
    assert town01.carla_map.get_spawn_points() == []  # libcarla offline has none
    spawns = town01.spawn_points(min_spacing=10.0)
    assert len(spawns) > 300
    # OpenDRIVE's Town01 lies at y in [-357, 28] (header south/north): our frame is OpenDRIVE's.
    xmin, ymin, xmax, ymax = town01.bounds
    assert -357 < ymin < ymax < 28 and -29 < xmin < xmax < 423
    largest = max(nx.strongly_connected_components(town01.graph), key=len)
    assert len(largest) > 0.95 * len(town01.nodes)


def test_town01_routes_between_far_apart_points(town01):
    spawns = town01.spawn_points()
    far = np.linalg.norm(spawns[:, None, :2] - spawns[None, :, :2], axis=-1)
    i, j = np.unravel_index(np.argmax(far), far.shape)
    assert far[i, j] > 400
    route = town01.plan_route(spawns[i, :2], spawns[j, :2], start_yaw=spawns[i, 2])
    assert np.linalg.norm(route.points[0] - spawns[i, :2]) < 1.0
    assert np.linalg.norm(route.points[-1] - spawns[j, :2]) < 2.5
    assert route.length >= far[i, j]
    steps = np.linalg.norm(np.diff(route.points, axis=0), axis=1)
    assert steps.max() < 3.5  # continuous: no jumps between lanes
    # The route follows the direction of travel of its lanes.
    headings = np.arctan2(*np.diff(route.points, axis=0).T[::-1])
    error = np.abs((headings - route.yaw[:-1] + np.pi) % (2 * np.pi) - np.pi)
    assert np.median(error) < 0.05


def test_frame_conversion_round_trips():
    rng = np.random.default_rng(0)
    for x, y, z, yaw, pitch, roll in rng.uniform(-3, 3, (20, 6)) * [100, 100, 10, 1, 0.5, 0.5]:
        location = world_to_location((x, y, z))
        assert location.y == pytest.approx(-y, abs=1e-4)  # the y flip
        assert np.allclose(location_to_world(location), (x, y, z), atol=1e-4)
        back = rotation_to_world(world_to_rotation(yaw, pitch, roll))
        assert np.allclose(back, (yaw, pitch, roll), atol=1e-5)


def test_left_turn_in_opendrive_is_a_left_turn_in_our_frame():
    road_map = RoadMap.from_xodr(LEFT_TURN_XODR, name="left_turn")
    lane = road_map.carla_map.get_waypoint_xodr(1, -1, 0.0)
    positions, yaws = [], []
    while lane is not None and len(positions) < 100:
        position, yaw = transform_to_world(lane.transform)
        positions.append(position[:2])
        yaws.append(yaw)
        following = lane.next(1.0)
        lane = following[0] if following and following[0].road_id == 1 else None
    positions, yaws = np.array(positions), np.unwrap(yaws)
    # Analytic geometry: lane -1 is 1.75 m right of the reference line, so the arc has radius
    # 21.75 m around (20, 20) and the lane ends at (41.75, 20) heading north.
    assert yaws[0] == pytest.approx(0.0, abs=1e-3)
    assert yaws[-1] == pytest.approx(math.pi / 2, abs=0.06)
    assert np.all(np.diff(yaws) >= -1e-6)  # counter-clockwise all along: a left turn
    on_arc = positions[positions[:, 0] > 20.5]
    radius = np.linalg.norm(on_arc - [20.0, 20.0], axis=1)
    assert np.allclose(radius, 21.75, atol=0.02)
    assert np.linalg.norm(positions[-1] - [41.75, 20.0]) < 1.1  # sampled every metre
    route = road_map.plan_route((0.0, -1.75), (41.75, 19.0), start_yaw=0.0)
    step = np.diff(route.points, axis=0)
    turn = step[:-1, 0] * step[1:, 1] - step[:-1, 1] * step[1:, 0]
    assert turn.sum() > 0  # positive cross product = turning left in a right-handed frame


def test_lane_changes_are_planned_where_marks_allow(tmp_path):
    # Two driving lanes per direction separated by a broken line: the route to the outer lane
    # must change lane; with a solid line it cannot, and planning fails with a clear error.
    def two_lane_road(mark: str, change: str) -> str:
        return f"""<?xml version="1.0"?><OpenDRIVE><header revMajor="1" revMinor="4"/>
<road length="200" id="1" junction="-1"><link/><planView>
<geometry s="0" x="0" y="0" hdg="0" length="200"><line/></geometry></planView>
<lanes><laneSection s="0"><center><lane id="0" type="none" level="false"/></center><right>
<lane id="-1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="{mark}" weight="standard" color="white" width="0.15" laneChange="{change}"/></lane>
<lane id="-2" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane>
</right></laneSection></lanes></road></OpenDRIVE>"""

    broken = RoadMap.from_xodr(two_lane_road("broken", "both"), name="broken")
    route = broken.plan_route((2.0, -1.75), (190.0, -5.25), start_yaw=0.0)
    assert route.lane_change.sum() == 1
    assert route.points[-1][1] == pytest.approx(-5.25, abs=0.1)
    solid = RoadMap.from_xodr(two_lane_road("solid", "none"), name="solid")
    with pytest.raises(ValueError, match="no route"):
        solid.plan_route((2.0, -1.75), (190.0, -5.25), start_yaw=0.0)


def test_route_projection_signs_lateral_offset_left_positive(town01):
    route = town01.random_route(np.random.default_rng(3), 100, 300)
    s, lateral, _ = route.project(route.point_at(40.0))
    assert s == pytest.approx(40.0, abs=1e-6) and abs(lateral) < 1e-6
    heading = route.heading_at(40.0)
    left = route.point_at(40.0) + 0.8 * np.array([-np.sin(heading), np.cos(heading)])
    assert route.project(left)[1] == pytest.approx(0.8, abs=0.05)


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("<OpenDRIVE><header/></OpenDRIVE>", ValueError, "no drivable lanes"),
        ("<foo><bar/></foo>", ValueError, "no drivable lanes"),
        ("this is not xml at all", ValueError, "not valid OpenDRIVE"),
        ("   ", ValueError, "empty"),
    ],
)
def test_bad_maps_are_clear_errors_naming_the_file(tmp_path, text, error, message):
    path = tmp_path / "broken_map.xodr"
    path.write_text(text)
    with pytest.raises(error, match=message) as raised:
        RoadMap.from_file(path)
    assert "broken_map.xodr" in str(raised.value)


def test_missing_and_unknown_maps():
    with pytest.raises(FileNotFoundError, match="nowhere.xodr"):
        RoadMap.from_file("/nowhere.xodr")
    with pytest.raises(FileNotFoundError, match="unknown map 'Town99'"):
        load_road_map("Town99")
    with pytest.raises(ValueError, match="town:<integer seed>"):
        load_road_map("town:abc")
    assert load_road_map("Town01").name == "Town01"


def test_loop_route_returns_to_its_start_in_the_same_direction(town01):
    route = town01.loop_route(np.random.default_rng(0), min_length_m=150.0)
    assert route.length > 150.0
    assert np.linalg.norm(route.points[0] - route.points[-1]) < 2 * GRAPH_SPACING_M
    turn = np.angle(np.exp(1j * (route.yaw[-1] - route.yaw[0])))
    assert abs(turn) < np.radians(20)  # back in the start lane's direction, not a U-turn


def test_projection_near_progress_matches_a_search_of_the_whole_window(town01):
    """With ``near_s`` the search looks only at the segments reaching into the window; it must
    find what a search of every segment, those outside the window excluded, finds."""
    route = town01.loop_route(np.random.default_rng(0), min_length_m=150.0)
    starts, ends = route.cumulative_s[:-1], route.cumulative_s[1:]
    rng = np.random.default_rng(1)
    for _ in range(200):
        xy = route.point_at(rng.uniform(0, route.length)) + rng.normal(0, 3, 2)
        near = rng.uniform(-20, route.length + 20)
        got = route.project(xy, near_s=near)
        t = np.clip(((xy - route.points[:-1]) * np.diff(route.points, axis=0)).sum(1)
                    / np.maximum(route.segment_length**2, 1e-12), 0, 1)
        distance = np.linalg.norm(route.points[:-1] + np.diff(route.points, axis=0) * t[:, None] - xy, axis=1)
        distance[(ends < near - 10.0) | (starts > near + 50.0)] = np.inf
        index = int(np.argmin(distance))
        assert got[2] == index
        assert got[0] == pytest.approx(route.cumulative_s[index] + t[index] * route.segment_length[index], abs=1e-9)
    # At the loop's start (and end) the same place is reached twice: progress tells them apart.
    assert route.project(route.points[0], near_s=0.0)[0] < 1.0
    assert route.project(route.points[0], near_s=route.length)[0] > route.length - 2 * GRAPH_SPACING_M
