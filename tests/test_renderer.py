import math

import numpy as np
import pytest
import torch

from mirage_env.scene import Primitives, Semantic
from world_model.camera import NO_SURFACE_DEPTH, camera_pose, intrinsics_from_fov, project_points, unproject_depth

GROUND = [int(c) for c in (Semantic.ROAD, Semantic.LANE_MARKING, Semantic.SIDEWALK, Semantic.TERRAIN)]


@pytest.fixture(scope="module")
def street_pose(town01):
    x, y, yaw = town01.spawn_points()[40]
    return torch.tensor([x, y, 1.6]), float(yaw)


def pose_at(position, yaw, pitch=0.0):
    return camera_pose(torch.as_tensor(position, dtype=torch.float32)[None], torch.tensor([yaw]), torch.tensor([pitch]))


def test_point_seen_in_view_a_is_hit_exactly_from_view_b(town01_renderer, street_pose):
    position, yaw = street_pose
    K = intrinsics_from_fov(90, 64, 64)[None]
    view_a = pose_at(position, yaw, -0.1)
    out_a = town01_renderer.render(view_a, K, 64, 64)
    valid = out_a.depth[0, 0] > 0
    points = unproject_depth(out_a.depth, K, view_a)[0][valid]  # (P, 3)
    assert len(points) > 0.5 * 64 * 64

    # Camera B: 3 m ahead, 1 m left, turned 0.3 rad. Rays from B through A's points have t = 1
    # at the point; an unoccluded point must be hit exactly there, an occluded one earlier,
    # and never later (that would mean the surface is not where view A saw it).
    forward, left = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    centre_b = position.clone()
    centre_b[:2] += torch.tensor(3.0 * forward + 1.0 * left, dtype=torch.float32)
    _, t, label = town01_renderer.cast(centre_b.expand(len(points), 3), points - centre_b)
    assert (t <= 1 + 1e-4).all()
    visible = (t - 1).abs() < 1e-4
    assert visible.float().mean() > 0.8
    assert (label[visible] == out_a.semantic[0][valid][visible]).float().mean() > 0.999

    # And in pixels: rendering view B, A's points land on pixels whose depth matches theirs.
    view_b = pose_at(centre_b, yaw + 0.3, -0.1)
    out_b = town01_renderer.render(view_b, K, 64, 64)
    uv, z = project_points(points[None], K, view_b)
    col, row = uv[0, :, 0].floor().long(), uv[0, :, 1].floor().long()
    inside = (z[0] > 0) & (col >= 0) & (col < 64) & (row >= 0) & (row < 64)
    rendered = out_b.depth[0, 0, row[inside], col[inside]]
    relative = (rendered - z[0, inside]).abs() / z[0, inside]
    assert inside.sum() > 500
    assert (relative < 0.05).float().mean() > 0.85


def test_ground_depth_matches_the_analytic_plane(town01_renderer, street_pose):
    position, yaw = street_pose
    K = intrinsics_from_fov(90, 48, 48)[None]
    out = town01_renderer.render(pose_at(position, yaw), K, 48, 48)
    rows = torch.arange(48, dtype=torch.float32)[:, None].expand(48, 48) + 0.5
    expected = 1.6 * K[0, 1, 1] / (rows - K[0, 1, 2])  # horizontal camera: z = h * fy / (v - cy)
    ground = torch.isin(out.semantic[0], torch.tensor(GROUND, dtype=torch.uint8)) & (rows > 24)
    assert ground.sum() > 400
    assert torch.allclose(out.depth[0, 0][ground], expected[ground], rtol=1e-5)

    down = town01_renderer.render(pose_at(torch.tensor([position[0], position[1], 2.0]), yaw, -math.pi / 2), K, 48, 48)
    assert down.depth[0, 0, 24, 24] == pytest.approx(2.0, abs=1e-5)
    assert int(down.semantic[0, 24, 24]) in (Semantic.ROAD, Semantic.LANE_MARKING)


def test_sky_has_no_surface_depth(town01_renderer, street_pose):
    position, yaw = street_pose
    K = intrinsics_from_fov(60, 16, 16)[None]
    out = town01_renderer.render(pose_at(position + torch.tensor([0, 0, 200.0]), yaw, math.pi / 2 - 0.05), K, 16, 16)
    assert (out.semantic == Semantic.SKY).all()
    assert (out.depth == NO_SURFACE_DEPTH).all()


def test_rendering_is_deterministic_and_batch_independent(town01_renderer, town01):
    spawns = town01.spawn_points()[[5, 80, 160]]
    poses = camera_pose(
        torch.tensor(np.c_[spawns[:, :2], np.full(3, 1.6)], dtype=torch.float32), torch.tensor(spawns[:, 2]).float()
    )
    K = intrinsics_from_fov(90, 40, 32).expand(3, 3, 3)
    batch = town01_renderer.render(poses, K, 32, 40)
    again = town01_renderer.render(poses, K, 32, 40)
    single = town01_renderer.render(poses[1:2], K[1:2], 32, 40)
    assert batch.rgb.shape == (3, 32, 40, 3) and batch.rgb.dtype == torch.uint8
    assert batch.depth.shape == (3, 1, 32, 40) and batch.semantic.shape == (3, 32, 40)
    assert torch.equal(batch.rgb, again.rgb) and torch.equal(batch.depth, again.depth)
    assert torch.equal(batch.rgb[1], single.rgb[0]) and torch.equal(batch.semantic[1], single.semantic[0])
    assert not torch.equal(batch.rgb[0], batch.rgb[2])


def test_screen_space_culling_matches_brute_force(town01_renderer, town01):
    """render() tests each object only on its projected rectangle; cast() tests every pair."""
    spawns = town01.spawn_points()[::60][:6]
    poses = camera_pose(
        torch.tensor(np.c_[spawns[:, :2], np.full(len(spawns), 1.6)], dtype=torch.float32),
        torch.tensor(spawns[:, 2]).float(), torch.full((len(spawns),), -0.05),
    )
    K = intrinsics_from_fov(100, 32, 24).expand(len(spawns), 3, 3)
    out = town01_renderer.render(poses, K, 24, 32)
    from world_model.camera import camera_rays

    origins, directions = camera_rays(K, poses, 24, 32)
    _, t, label = town01_renderer.cast(origins.repeat_interleave(24 * 32, 0), directions.reshape(-1, 3))
    assert torch.equal(t, out.depth.reshape(-1))
    assert torch.equal(label, out.semantic.reshape(-1))


def test_actors_are_drawn_with_their_label_and_occlude(town01_renderer, street_pose):
    position, yaw = street_pose
    K = intrinsics_from_fov(90, 32, 32)[None]
    ahead = position[:2].numpy() + 8.0 * np.array([math.cos(yaw), math.sin(yaw)])
    car = Primitives.from_lists([((ahead[0], ahead[1], 0.8), (2.0, 1.0, 0.8), yaw, Semantic.VEHICLE, (0.8, 0.1, 0.1), False)], [])
    out = town01_renderer.render(pose_at(position, yaw), K, 32, 32, actors=car)
    assert int(out.semantic[0, 17, 16]) == Semantic.VEHICLE
    assert out.depth[0, 0, 17, 16] == pytest.approx(8.0 - 2.0 - 0.0, abs=1e-3)  # the box's rear face
    plain = town01_renderer.render(pose_at(position, yaw), K, 32, 32)
    assert (plain.semantic == Semantic.VEHICLE).sum() < (out.semantic == Semantic.VEHICLE).sum()


def test_bad_render_input_is_a_clear_error(town01_renderer):
    with pytest.raises(ValueError, match=r"\(B, 3, 3\)"):
        town01_renderer.render(torch.eye(4)[None], torch.eye(3), 8, 8)
    with pytest.raises(ValueError, match="image size"):
        town01_renderer.render(torch.eye(4)[None], intrinsics_from_fov(90, 8, 8)[None], 0, 8)


def test_antialias_integrates_each_pixel_and_keeps_centre_depth(town01_renderer, street_pose):
    """With ``antialias`` a pixel's colour is the mean over its area, as a camera's pixel
    integrates light: frames converge to a much finer render averaged down (one centre ray
    per pixel stays far from it, with stair-step edges and extra high-frequency energy),
    while depth and labels stay exactly the centre ray's."""
    from mirage_env.renderer import GroundTruthRenderer
    from world_model.metrics import laplacian_variance, psnr

    position, yaw = street_pose
    K = intrinsics_from_fov(90, 32, 32)[None].expand(2, 3, 3)
    views = torch.cat([pose_at(position, yaw, -0.1), pose_at(position, yaw + 0.7, -0.05)])
    scene = town01_renderer.scene

    def render(antialias: int, size: int = 32):
        renderer = GroundTruthRenderer(scene, antialias=antialias)
        return renderer.render(views, K * torch.tensor([size / 32, size / 32, 1.0]).view(3, 1), size, size)

    def colour(out):
        return out.rgb.permute(0, 3, 1, 2).float() / 255

    point, smooth = render(1), render(3)
    fine = torch.nn.functional.avg_pool2d(colour(render(1, 32 * 8)), 8)  # 64 rays per pixel
    assert torch.equal(smooth.depth, point.depth) and torch.equal(smooth.semantic, point.semantic)
    assert (psnr(colour(smooth), fine) > psnr(colour(point), fine) + 6).all()
    assert (laplacian_variance(colour(smooth)) < 0.7 * laplacian_variance(colour(point))).all()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="antialias"):
            GroundTruthRenderer(scene, antialias=bad)
