import math

import pytest
import torch

from world_model.camera import (
    camera_points,
    camera_pose,
    camera_rays,
    intrinsics_from_fov,
    invert_pose,
    project_points,
    scale_intrinsics,
    unproject_depth,
)


def random_poses(generator: torch.Generator, batch: int) -> torch.Tensor:
    position = torch.randn(batch, 3, generator=generator) * 10
    yaw, pitch, roll = (torch.rand(3, batch, generator=generator) - 0.5) * torch.tensor([[6.0], [1.0], [0.5]])
    return camera_pose(position, yaw, pitch, roll)


def test_unproject_then_project_returns_pixel_centres_and_depths():
    generator = torch.Generator().manual_seed(0)
    poses = random_poses(generator, 3)
    K = torch.stack([intrinsics_from_fov(fov, 32, 24) for fov in (60, 90, 120)])
    depth = torch.rand(3, 1, 24, 32, generator=generator) * 50 + 0.5
    points = unproject_depth(depth, K, poses).reshape(3, -1, 3)
    uv, z = project_points(points, K, poses)
    rows, cols = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    assert torch.allclose(z, depth.reshape(3, -1), rtol=1e-4)
    assert torch.allclose(uv[0, :, 0], cols.reshape(-1), atol=2e-3)
    assert torch.allclose(uv[0, :, 1], rows.reshape(-1), atol=2e-3)


def test_camera_points_are_the_world_points_in_the_camera_frame():
    generator = torch.Generator().manual_seed(2)
    poses = random_poses(generator, 2)
    K = torch.stack([intrinsics_from_fov(fov, 32, 24) for fov in (60, 100)])
    depth = torch.rand(2, 1, 24, 32, generator=generator) * 50 + 0.5
    local = camera_points(depth, K)
    assert torch.allclose(local[..., 2], depth[:, 0])  # z-depth
    world = torch.einsum("bij,bhwj->bhwi", poses[:, :3, :3], local) + poses[:, None, None, :3, 3]
    assert torch.allclose(world, unproject_depth(depth, K, poses), atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        camera_points(depth[:, 0], K)


def test_camera_looks_along_yaw_with_y_down():
    pose = camera_pose(torch.zeros(1, 3), torch.tensor([math.pi / 2]))  # facing north (+y)
    forward, right, down = pose[0, :3, 2], pose[0, :3, 0], pose[0, :3, 1]
    assert torch.allclose(forward, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(right, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)  # east is on the right
    assert torch.allclose(down, torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    up_pitch = camera_pose(torch.zeros(1, 3), torch.zeros(1), torch.tensor([0.3]))
    assert up_pitch[0, 2, 2] > 0.29  # positive pitch looks up


def test_invert_pose_is_the_inverse():
    poses = random_poses(torch.Generator().manual_seed(1), 4)
    assert torch.allclose(invert_pose(poses) @ poses, torch.eye(4).expand(4, 4, 4), atol=1e-5)


def test_scaled_intrinsics_project_to_the_downsampled_grid():
    """A point on the centre of pixel block (8r..8r+7, 8c..8c+7) lands on latent cell (r, c)'s centre."""
    K = intrinsics_from_fov(90, 64, 48)[None]
    K_latent = scale_intrinsics(K, 1 / 8, 1 / 8)
    pose = camera_pose(torch.zeros(1, 3), torch.zeros(1))
    depth = torch.full((1, 1, 6, 8), 7.0)
    points = unproject_depth(depth, K_latent, pose)  # latent cell centres
    uv, _ = project_points(points.reshape(1, -1, 3), K, pose)
    cols = (torch.arange(8) * 8 + 4.0).repeat(6)
    assert torch.allclose(uv[0, :, 0], cols, atol=1e-3)


def test_ray_parameter_is_z_depth():
    K = intrinsics_from_fov(100, 16, 16)[None]
    pose = random_poses(torch.Generator().manual_seed(2), 1)
    origin, directions = camera_rays(K, pose, 16, 16)
    points = origin.view(1, 1, 1, 3) + directions * 5.0
    _, depth = project_points(points.reshape(1, -1, 3), K, pose)
    assert torch.allclose(depth, torch.full_like(depth, 5.0), atol=1e-4)


@pytest.mark.parametrize(
    "K, message",
    [
        (torch.eye(3), "(B, 3, 3)"),
        (torch.diag(torch.tensor([0.0, 10.0, 1.0]))[None], "focal lengths must be > 0"),
        (torch.diag(torch.tensor([-5.0, 10.0, 1.0]))[None], "focal lengths must be > 0"),
        (torch.full((1, 3, 3), float("nan")), "NaN"),
    ],
)
def test_bad_intrinsics_are_clear_errors(K, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        unproject_depth(torch.ones(1, 1, 4, 4), K, torch.eye(4)[None])


def test_bad_poses_are_clear_errors():
    K = intrinsics_from_fov(90, 4, 4)[None]
    nan_pose = torch.eye(4)[None].clone()
    nan_pose[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        camera_rays(K, nan_pose, 4, 4)
    with pytest.raises(ValueError, match="orthonormal"):
        camera_rays(K, torch.eye(4)[None] * 2, 4, 4)
    with pytest.raises(ValueError, match="batch"):
        camera_rays(K, torch.eye(4).expand(2, 4, 4), 4, 4)
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics_from_fov(180, 4, 4)
