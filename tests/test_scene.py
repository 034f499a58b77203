import numpy as np
import pytest

from mirage_env.scene import Semantic, dress_scene


@pytest.fixture(scope="module")
def scene(town01_renderer):
    return town01_renderer.scene


def ground_class_at(scene, xy: np.ndarray) -> np.ndarray:
    ground = scene.ground
    col = np.floor((xy[:, 0] - ground.x0) / ground.texel).astype(int)
    row = np.floor((xy[:, 1] - ground.y0) / ground.texel).astype(int)
    return ground.classes[row, col]


def test_road_surface_and_marks_come_from_the_map(scene, town01):
    # Every lane centre is road (or paint), and Town01's centre lines are yellow and broken.
    at_centres = ground_class_at(scene, town01.node_xy)
    assert np.isin(at_centres, [Semantic.ROAD, Semantic.LANE_MARKING]).all()
    counts = np.bincount(scene.ground.classes.ravel(), minlength=len(Semantic))
    assert counts[Semantic.SIDEWALK] > 0.5 * counts[Semantic.ROAD] * 0.3
    yellow, white = (scene.ground.paint == 2).sum(), (scene.ground.paint == 1).sum()
    assert yellow > 10 * max(white, 1)
    # Broken line: about half of the centre line length is painted (3 m dash, 6 m period).
    road_cells = counts[Semantic.ROAD] + counts[Semantic.LANE_MARKING]
    assert 0.005 < counts[Semantic.LANE_MARKING] / road_cells < 0.05


def test_objects_stand_off_the_road(scene, town01):
    objects = scene.objects
    for label in (Semantic.BUILDING, Semantic.VEHICLE, Semantic.POLE):
        assert (objects.box_class == label).sum() > 5, label.name
    buildings = objects.box_class == Semantic.BUILDING
    for centre, half, yaw in zip(objects.box_centre[buildings], objects.box_half[buildings], objects.box_yaw[buildings]):
        u, v = np.meshgrid(np.linspace(-half[0], half[0], 5), np.linspace(-half[1], half[1], 5))
        xy = centre[:2] + np.stack([np.cos(yaw) * u - np.sin(yaw) * v, np.sin(yaw) * u + np.cos(yaw) * v], -1).reshape(-1, 2)
        assert (ground_class_at(scene, xy) == Semantic.TERRAIN).all()
    cars = np.flatnonzero(objects.box_class == Semantic.VEHICLE)
    assert all(town01.waypoint_at(objects.box_centre[i, :2]) is None for i in cars)


def test_dressing_is_a_function_of_the_seed(town01, scene):
    again = dress_scene(town01, seed=0)
    other = dress_scene(town01, seed=1)
    assert np.array_equal(again.objects.box_centre, scene.objects.box_centre)
    assert np.array_equal(again.ground.classes, scene.ground.classes)
    assert not np.array_equal(other.objects.box_centre[:10], scene.objects.box_centre[:10])
    assert not np.allclose(other.class_colour, scene.class_colour)
    assert np.array_equal(other.ground.classes, scene.ground.classes)  # the map decides the ground


def test_lanes_without_road_marks_are_dressed():
    # Only the conftest map's centre lane has a <roadMark>; libcarla gives no marking object
    # for the others, which once crashed the dressing.
    from conftest import LEFT_TURN_XODR
    from mirage_env.road_map import RoadMap

    scene = dress_scene(RoadMap.from_xodr(LEFT_TURN_XODR, name="left_turn"), seed=0)
    classes = set(np.unique(scene.ground.classes).tolist())
    assert {int(Semantic.ROAD), int(Semantic.LANE_MARKING), int(Semantic.SIDEWALK)} <= classes
