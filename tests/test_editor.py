"""The asset editor against the ground-truth renderer: occlusion both ways, labels, the dynamic
mask and the latent cache, two-stage placement, motion, and bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import LEFT_TURN_XODR
from editors import (
    ASSET_CLASSES, Asset, AssetInstance, Placement, composite, crossing_path, follow_lane, make_asset, parked,
    place_on_ground, refine_placement, walk,
)
from editors.placement import contact_points, footprint_points
from mirage_env.envs.traffic import asset_boxes
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import RoadMap
from mirage_env.scene import Primitives, Semantic, dress_scene
from world_model.camera import camera_pose, camera_rays, intrinsics_from_fov, project_points
from world_model.latent_cache import LatentCache
from world_model.memory import MemoryFrame, token_depth

HEIGHT, WIDTH = 48, 80
BUILDING = ((8.0, 0.7, 2.5), (1.0, 2.0, 2.5))  # centre, half sizes [m]: beside the lane, 5 m tall


@pytest.fixture(scope="module")
def renderer() -> GroundTruthRenderer:
    # The left-turn road with its ground texture only; the test adds its own building.
    scene = dress_scene(RoadMap.from_xodr(LEFT_TURN_XODR, name="left_turn"), seed=0)
    return GroundTruthRenderer(dataclasses.replace(scene, objects=Primitives()))


def camera():
    K = intrinsics_from_fov(60, WIDTH, HEIGHT)[None]
    pose = camera_pose(torch.tensor([[0.0, -1.75, 1.6]]), torch.tensor([0.0]), torch.tensor([-0.1]))
    return K, pose


@pytest.fixture(scope="module")
def street(renderer):
    """Background with a building, truth with the building and the assets, and the composite.
    A car drives behind the building (partly hidden); a pedestrian stands in front of it."""
    K, pose = camera()
    instances = [
        AssetInstance(make_asset("car", seed=1), track_id=7, poses=torch.tensor([[14.0, -1.75, 0.0, 0.6]])),
        AssetInstance(make_asset("pedestrian", seed=2), track_id=8, poses=torch.tensor([[4.5, 0.0, 0.0, 1.2]])),
    ]
    building = (*BUILDING, 0.0, Semantic.BUILDING, (0.6, 0.5, 0.4), True)
    background = renderer.render(pose, K, HEIGHT, WIDTH, actors=Primitives.from_lists([building], []))
    truth = renderer.render(pose, K, HEIGHT, WIDTH,
                            actors=Primitives.from_lists([building, *asset_boxes(instances)], []))
    rgb = background.rgb.permute(0, 3, 1, 2).float() / 255
    return K, pose, instances, background, truth, composite(rgb, background.depth, K, pose, instances)


def test_composite_matches_the_ground_truth_renderer_with_occlusion_both_ways(street):
    _, _, _, background, truth, comp = street
    truth_asset = (truth.semantic == Semantic.VEHICLE) | (truth.semantic == Semantic.PEDESTRIAN)
    ours = comp.instance[:, 0] >= 0
    assert truth_asset.sum() > 100
    assert (ours != truth_asset).sum() <= 2  # at most a couple of exact-edge pixels
    both = ours & truth_asset
    assert torch.allclose(comp.depth[:, 0][both], truth.depth[:, 0][both], rtol=1e-4)
    assert torch.allclose(comp.depth, truth.depth, rtol=1e-4)
    # Every case occurs: the building hides the car, the pedestrian hides the building, assets
    # hide the road.
    car, pedestrian = comp.labels[0]
    assert 0.05 < car.occlusion < 0.95 and pedestrian.occlusion == 0.0
    assert (pedestrian.mask & (background.semantic[0] == Semantic.BUILDING)).sum() > 5
    assert ((comp.instance[0, 0] >= 0) & (background.semantic[0] == Semantic.ROAD)).sum() > 20
    # The asset pixels the building hides show the building, with the frame's depth.
    hidden = ~car.mask & (background.semantic[0] == Semantic.BUILDING) & (truth.semantic[0] == Semantic.BUILDING)
    assert hidden.sum() > 5
    # A contact shadow darkens the road next to the car, and nothing far from it.
    frame = background.rgb[0].permute(2, 0, 1).float() / 255
    darker = (comp.rgb[0] < frame - 1e-3).any(0) & ~ours[0]
    assert darker.sum() > 0
    assert (background.depth[0, 0][darker] < 25).all()


def test_labels_project_onto_their_2d_boxes(street):
    K, pose, instances, _, _, comp = street
    for label, instance in zip(comp.labels[0], instances):
        assert label.kind == instance.asset.kind and label.track_id == instance.track_id
        uv, depth = project_points(torch.as_tensor(label.corners_world, dtype=torch.float32)[None], K, pose)
        assert (depth > 0).all()
        # Camera-frame corners are the world corners seen by this camera (x right, y down, z
        # forward): their depth is the projection's, x and y put them on their pixels, and the
        # camera's pose takes them back to the world corners.
        camera_corners = label.corners_camera
        assert np.allclose(camera_corners[:, 2], depth[0].numpy(), atol=1e-4)
        fx, fy, cx, cy = K[0, 0, 0].item(), K[0, 1, 1].item(), K[0, 0, 2].item(), K[0, 1, 2].item()
        assert np.allclose(camera_corners[:, 0], (uv[0, :, 0].numpy() - cx) / fx * camera_corners[:, 2], atol=1e-4)
        assert np.allclose(camera_corners[:, 1], (uv[0, :, 1].numpy() - cy) / fy * camera_corners[:, 2], atol=1e-4)
        to_world = pose[0].double().numpy()
        assert np.allclose(camera_corners @ to_world[:3, :3].T + to_world[:3, 3], label.corners_world, atol=1e-4)
        u0, v0 = uv[0].min(0).values.tolist()
        u1, v1 = uv[0].max(0).values.tolist()
        x0, y0, x1, y1 = label.box_2d
        # The visible pixels lie inside the projected 3D box (one pixel of rounding) ...
        assert u0 - 1 <= x0 and x1 <= u1 + 1 and v0 - 1 <= y0 and y1 <= v1 + 1
        # ... and, unoccluded, fill it up to the shape's slack (cabins narrower than bodies).
        if label.occlusion == 0.0:
            projected_area = (u1 - u0) * (v1 - v0)
            assert (x1 - x0) * (y1 - y0) > 0.6 * projected_area
        rows, cols = label.mask.nonzero(as_tuple=True)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == tuple(label.box_2d)


def test_dynamic_mask_keeps_inserted_tokens_out_of_the_cache(street):
    K, pose, instances, background, truth, comp = street
    truth_asset = (truth.semantic == Semantic.VEHICLE) | (truth.semantic == Semantic.PEDESTRIAN)
    asset = comp.instance[:, 0] >= 0
    assert (asset != truth_asset).sum() <= 2
    assert (comp.dynamic[:, 0] >= asset).all()  # every asset pixel is dynamic ...
    shadow_only = (comp.dynamic[:, 0] & ~asset)[0]
    original = background.rgb[0].permute(2, 0, 1).float() / 255
    assert shadow_only.any() and (comp.rgb[0][:, shadow_only] < original[:, shadow_only]).all()  # ... so is its shadow
    latents = torch.randn(1, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0))
    frame = MemoryFrame(latents=latents, depth=comp.depth, K=K, cam_to_world=pose, dynamic=comp.dynamic)
    masked, unmasked = LatentCache(1, 4), LatentCache(1, 4)
    written = masked.write(frame)
    unmasked.write(dataclasses.replace(frame, dynamic=None))
    # Exactly the tokens with a surface in range and no asset pixel in their cell pass.
    depth = token_depth(comp.depth, 8)
    cells_with_asset = comp.dynamic.view(1, 1, HEIGHT // 8, 8, WIDTH // 8, 8).any(5).any(3)
    assert cells_with_asset.sum() > 0
    assert written == int(((depth > 0) & (depth <= masked.config.max_range_m) & ~cells_with_asset).sum())

    def inside_an_asset(position: torch.Tensor) -> torch.Tensor:
        inside = torch.zeros(len(position), dtype=torch.bool)
        for instance in instances:
            x, y, z, yaw = instance.poses[0].tolist()
            c, s = np.cos(yaw), np.sin(yaw)
            offset = position - torch.tensor([x, y, z])
            local = torch.stack([c * offset[:, 0] + s * offset[:, 1], -s * offset[:, 0] + c * offset[:, 1],
                                 offset[:, 2]], 1)
            lower = torch.as_tensor(instance.asset.lower, dtype=torch.float32) - 0.05
            upper = torch.as_tensor(instance.asset.upper, dtype=torch.float32) + 0.05
            inside |= ((local >= lower) & (local <= upper)).all(1)
        return inside

    assert inside_an_asset(unmasked.position).sum() > 0  # without the mask, assets leak in
    assert inside_an_asset(masked.position).sum() == 0


def plane_depth(K, pose, ground_z: float) -> torch.Tensor:
    """(1, 1, H, W) exact z-depth of the plane z = ``ground_z`` (0 above the horizon)."""
    origins, directions = camera_rays(K, pose, HEIGHT, WIDTH)
    t = (ground_z - origins[0, 2]) / directions[..., 2]
    return torch.where((directions[..., 2] < 0) & (t > 0), t, torch.zeros_like(t))[:, None]


def test_coarse_placement_reads_the_ground_height_from_depth():
    K, pose = camera()
    car = make_asset("car", seed=0)
    depth = plane_depth(K, pose, ground_z=0.4)
    placed = place_on_ground(car, 10.0, -1.75, 0.1, depth, K, pose)
    assert (placed.x, placed.y, placed.yaw) == (10.0, -1.75, pytest.approx(0.1))
    assert placed.z == pytest.approx(0.4, abs=1e-3)
    # Behind the camera nothing can be measured: the map's ground, z = 0.
    assert place_on_ground(car, -20.0, -1.75, 0.0, depth, K, pose).z == 0.0
    with pytest.raises(ValueError, match="no surface under its footprint"):
        place_on_ground(car, 10.0, -1.75, 0.0, torch.zeros_like(depth), K, pose)
    # Footprint samples span the car's bounding box on the ground.
    points = footprint_points(car)
    assert np.allclose(points.min(0)[:2], car.lower[:2]) and np.allclose(points[:, 2], 0.0)


def test_coarse_placement_ignores_what_stands_in_front_of_the_footprint():
    K, pose = camera()
    car = make_asset("car", seed=0)
    depth = plane_depth(K, pose, ground_z=0.0)
    samples = footprint_points(car)
    uv, _ = project_points(torch.as_tensor(Placement(10.0, -1.75, 0.0, 0.0).to_world(samples),
                                           dtype=torch.float32)[None], K, pose)
    pixels = uv[0].floor().long().tolist()
    far_end = samples[:, 0] > samples[:, 0].max() - 1e-6  # the footprint's row of samples farthest away
    # Something 4 m from the camera (a parked van, a wall) shows at every footprint pixel but
    # those of its far end: most depth points there are its own, well above the road.
    hidden = depth.clone()
    for u, v in pixels:
        hidden[0, 0, v, u] = 4.0
    for (u, v), far in zip(pixels, far_end):
        if far:
            hidden[0, 0, v, u] = depth[0, 0, v, u]
    assert (hidden != depth).sum() > 2 * far_end.sum()
    assert place_on_ground(car, 10.0, -1.75, 0.0, hidden, K, pose).z == pytest.approx(0.0, abs=0.02)
    for u, v in pixels:
        hidden[0, 0, v, u] = 4.0
    with pytest.raises(ValueError, match="no surface under its footprint"):
        place_on_ground(car, 10.0, -1.75, 0.0, hidden, K, pose)
    # A small footprint far away covers few pixels, each a long stretch of road: still on it.
    assert place_on_ground(make_asset("pedestrian"), 30.0, -1.75, 0.3, depth, K, pose).z == pytest.approx(0, abs=1e-3)


def test_fine_alignment_residual_is_zero_when_right_and_grows_when_wrong():
    K, pose = camera()
    car = make_asset("suv", seed=3)
    depth = plane_depth(K, pose, ground_z=0.4)
    right = refine_placement(car, Placement(10.0, -1.75, 0.4, 0.2), depth, K, pose)
    assert right.initial_residual_px < 0.05 and right.residual_px < 0.05
    assert np.hypot(*right.shift_px) < 0.05
    assert right.placement.z == pytest.approx(0.4, abs=1e-3)

    residuals = []
    for error_m in (0.2, 0.5):  # floating above the ground
        wrong = refine_placement(car, Placement(10.0, -1.75, 0.4 + error_m, 0.2), depth, K, pose)
        residuals.append(wrong.initial_residual_px)
        assert wrong.shift_px[1] > 0.5  # the contact moves down the image onto the ground
        assert wrong.residual_px < 0.25 * wrong.initial_residual_px
        assert wrong.placement.z == pytest.approx(0.4, abs=1e-3)  # lifted back onto the ground
    assert 1.0 < residuals[0] < residuals[1]
    with pytest.raises(ValueError, match="over sky"):
        refine_placement(car, Placement(10.0, -1.75, 0.4, 0.2), torch.zeros_like(depth), K, pose)


def test_fine_alignment_drops_occluded_contact_points():
    K, pose = camera()
    car = make_asset("car", seed=3)
    depth = plane_depth(K, pose, ground_z=0.0)
    placement = Placement(10.0, -1.75, 0.0, 0.0)
    points = torch.as_tensor(placement.to_world(contact_points(car)), dtype=torch.float32)[None]
    uv, _ = project_points(points, K, pose)
    # Something 4 m from the camera hides the contact points on the car's left side.
    left = torch.as_tensor(contact_points(car)[:, 1] > 0)
    occluded = depth.clone()
    for u, v in uv[0][left].tolist():
        occluded[0, 0, int(v) - 2:int(v) + 3, int(u) - 2:int(u) + 3] = 4.0
    clean = refine_placement(car, placement, depth, K, pose)
    hidden = refine_placement(car, placement, occluded, K, pose)
    assert clean.outliers == 0 and hidden.outliers >= int(left.sum()) - 2
    assert hidden.residual_px < 0.1 and hidden.placement.z == pytest.approx(0.0, abs=0.02)


def test_vehicles_keep_a_gap_behind_a_slower_leader():
    lane = np.array([[0.0, 0.0], [60.0, 0.0], [60.0, 40.0]])  # straight, then a left turn
    leader, follower = make_asset("truck", seed=0), make_asset("car", seed=0)
    tracks = follow_lane(lane, [leader, follower], start_s=[20.0, 5.0], speeds=[2.0, 12.0], steps=80, dt=0.1,
                         gap_m=3.0, first_id=4)
    assert [t.track_id for t in tracks] == [4, 5]
    half = [(a.upper[0] - a.lower[0]) / 2 for a in (leader, follower)]
    gap = tracks[0].poses[:, 0] - tracks[1].poses[:, 0] - sum(half)
    assert (gap >= 3.0 - 1e-6).all()
    assert gap[-1] == pytest.approx(3.0, abs=1e-6)  # caught up and queued
    assert np.allclose(np.diff(tracks[0].poses[:, 0]), 0.2)  # the leader keeps its own speed
    # Along the turn, the pose heads along the lane.
    turned = follow_lane(lane, [follower], [55.0], [10.0], steps=20, dt=0.1)[0]
    assert turned.poses[-1, 2] == pytest.approx(np.pi / 2) and turned.poses[-1, 0] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="closer than gap_m"):
        follow_lane(lane, [leader, follower], [10.0, 5.0], [1.0, 1.0], steps=2, dt=0.1)


def test_pedestrians_walk_and_cross_and_parked_assets_stay():
    person = make_asset("pedestrian", seed=5)
    path = crossing_path([10.0, -5.0], road_yaw=0.0, road_width_m=7.0)
    track = walk(path, person, speed=1.4, steps=100, dt=0.1, track_id=3)
    assert np.allclose(track.poses[0], [10.0, -5.0, np.pi / 2])
    assert np.allclose(track.poses[-1, :2], [10.0, 2.0])  # reached the far kerb and stopped
    assert np.allclose(np.diff(track.poses[:10, 1]), 0.14)
    still = parked(make_asset("van"), 1.0, 2.0, 0.5, steps=4)
    assert np.allclose(still.poses, [[1.0, 2.0, 0.5]] * 4)
    with pytest.raises(ValueError, match="pedestrians"):
        walk(path, make_asset("car"), 1.0, 3, 0.1)


def test_assets_vary_by_seed_with_real_dimensions():
    for kind in ASSET_CLASSES:
        again, other = make_asset(kind, seed=1), make_asset(kind, seed=2)
        assert make_asset(kind, seed=1) == again and again != other
    car, bus, person = make_asset("car"), make_asset("bus"), make_asset("pedestrian")
    assert 4.0 < car.upper[0] - car.lower[0] < 5.0 and 1.3 < car.upper[2] < 1.6
    assert 11.0 < bus.upper[0] - bus.lower[0] < 13.0
    assert 1.5 < person.upper[2] < 1.95
    spec = {"kind": "van", "boxes": [{"centre": [0, 0, 1], "size": [5, 2, 2], "colour": [1, 1, 1]}]}
    assert Asset.from_dict(spec).upper.tolist() == [2.5, 1.0, 2.0]


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "tank", "boxes": [{"centre": [0, 0, 1], "size": [5, 2, 2], "colour": [1, 1, 1]}]}, "unknown asset class"),
    ({"kind": "car", "boxes": [{"centre": [0, 0, 1], "size": [4, -1, 2], "colour": [1, 1, 1]}]}, "sizes must be > 0"),
    ({"kind": "car", "boxes": [{"centre": [0, 0, 1], "size": [4, np.nan, 2], "colour": [1, 1, 1]}]}, "finite"),
    ({"kind": "car", "boxes": [{"centre": [0, 0, 2], "size": [4, 2, 2], "colour": [1, 1, 1]}]}, "rest on the ground"),
    ({"kind": "car", "boxes": []}, "no boxes"),
    ({"kind": "car", "boxes": [{"centre": [0, 0, 1], "part": "roof"}]},
     r"box 0 \(roof\) of 'car' is missing size, colour"),
    ({"kind": "car", "boxes": [{"centre": [0, 0, 1], "size": [4, 2, 2], "colour": [1, 1, 1]}, {"size": [1, 1, 1]}]},
     r"box 1 \(body\) of 'car' is missing centre, colour"),
    ({"kind": "car", "boxes": [[0, 0, 1]]}, "box 0 of 'car' must be a dict"),
    ({"boxes": []}, "needs 'kind'"),
])
def test_bad_assets_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        Asset.from_dict(spec)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown asset class"):
        make_asset("spaceship")
    K, pose = camera()
    frame = torch.zeros(1, 3, HEIGHT, WIDTH)
    wrong = AssetInstance(make_asset("car"), 0, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"`poses` must be a \(1, 4\)"):
        composite(frame, torch.zeros(1, 1, HEIGHT, WIDTH), K, pose, [wrong])
    with pytest.raises(ValueError, match="`depth` must be"):
        composite(frame, torch.zeros(1, HEIGHT, WIDTH), K, pose, [])
