import numpy as np
import pytest
import torch

from mirage_env.expert import drive_route
from mirage_env.trajectory import Trajectory
from mirage_env.vehicle import BicycleModel, CameraMount, VehicleState


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_stays_in_lane_and_stops_at_route_end_on_town01(town01, seed):
    route = town01.random_route(np.random.default_rng(seed), 200, 600)
    trajectory = drive_route(route)
    lateral = np.array([route.project(xy)[1] for xy in trajectory.ego[:, :2]])
    # Town01 lanes are 4 m wide: staying within 0.6 m of the centre keeps the car (1.9 m wide) in lane.
    assert np.abs(lateral).max() < 0.6
    end_s = route.project(trajectory.ego[-1, :2])[0]
    assert route.length - end_s < 2.0
    assert trajectory.ego[-1, 3] < 0.1
    assert trajectory.ego[:, 3].max() > 6.0  # it actually drove at speed


def test_camera_follows_the_mount():
    mount = CameraMount(forward_m=2.0, height_m=1.5, pitch_deg=0.0)
    pose = mount.poses(np.array([[10.0, 5.0, np.pi / 2, 3.0]]))[0]
    assert torch.allclose(pose[:3, 3], torch.tensor([10.0, 7.0, 1.5]))
    assert torch.allclose(pose[:3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # looks north


def test_bicycle_turns_left_for_positive_steer_and_rejects_bad_controls():
    model = BicycleModel()
    state = VehicleState(0.0, 0.0, 0.0, 5.0)
    for _ in range(10):
        state = model.step(state, 0.5, 0.0, 0.1)
    assert state.y > 0 and state.yaw > 0
    with pytest.raises(ValueError, match="in \\[-1, 1\\]"):
        model.step(state, 1.5, 0.0, 0.1)
    with pytest.raises(ValueError, match="finite"):
        model.step(state, float("nan"), 0.0, 0.1)


def test_trajectory_round_trips_through_its_file(town01, tmp_path):
    route = town01.random_route(np.random.default_rng(4), 50, 150)
    trajectory = drive_route(route, CameraMount(width=64, height=48))
    loaded = Trajectory.load(trajectory.save(tmp_path / "drive.safetensors"))
    assert loaded.map_name == "Town01" and loaded.mount == trajectory.mount
    for name in ("timestamps", "ego", "controls", "cam_to_world", "intrinsics"):
        assert np.array_equal(getattr(loaded, name), getattr(trajectory, name)), name
    assert loaded.intrinsics[0, 2] == 32.0 and loaded.intrinsics[1, 2] == 24.0


def test_corrupt_or_foreign_trajectory_files_are_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        Trajectory.load(corrupt)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Trajectory.load(tmp_path / "missing.safetensors")
