"""Traffic from the asset editor in the envs: labels, determinism, Leaderboard collisions, the
world model's dynamic mask, vector envs and bad settings."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import mirage_env  # noqa: F401  (registers the envs)
from editors import Polyline
from mirage_env.envs.traffic import check_on_map
from mirage_env.expert import RouteExpert
from mirage_env.road_map import RoadMap
from world_model.camera import project_points

SIZE = 64
SETTINGS = dict(map="town:3", width=SIZE, height=SIZE, route_min_length_m=80.0, renderer="ground_truth")


def drive_until_end(env, steps: int = 300, throttle: float | None = None):
    inner = env.unwrapped
    expert = RouteExpert(inner.scenario.route, inner.model)
    for _ in range(steps):
        steer, expert_throttle = expert.act(inner.state, inner.traffic_boxes())
        action = np.array([steer, expert_throttle if throttle is None else throttle], dtype=np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info
    return info


def test_traffic_frames_and_labels_agree_and_repeat_with_the_seed():
    env = gym.make("MirageDrive-v0", traffic_vehicles=3, traffic_pedestrians=2, **SETTINGS)
    plain = gym.make("MirageDrive-v0", **SETTINGS)
    obs, info = env.reset(seed=4)
    again, info_again = env.reset(seed=4)
    bare, _ = plain.reset(seed=4)
    assert np.array_equal(obs["rgb"], again["rgb"])
    assert [label["box_3d_world"] for label in info["labels"]] == [label["box_3d_world"] for label in info_again["labels"]]
    labels, ids = info["labels"], info["instance_mask"]
    assert [label["class"] for label in labels].count("pedestrian") == 2 and len(labels) == 5
    inner = env.unwrapped
    pose = inner.mount.poses(inner.state.as_array()[None])
    shown = 0
    for _ in range(40):  # drive until some asset is in view
        if any(label["box_2d"] for label in labels):
            break
        obs, _, _, _, info = env.step(np.array([0.0, 0.5], dtype=np.float32))
        labels, ids = info["labels"], info["instance_mask"]
        pose = inner.mount.poses(inner.state.as_array()[None])
    for label in labels:
        if label["box_2d"] is None:
            assert not (ids == label["track_id"]).any()
            continue
        shown += 1
        rows, cols = np.nonzero(ids == label["track_id"])
        assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == label["box_2d"]
        assert len(rows) == label["visible_pixels"] and 0.0 <= label["occlusion"] < 1.0
        # The 3D box corners project around the 2D box (1 px of rounding).
        uv, depth = project_points(torch.tensor(label["box_3d_world"], dtype=torch.float32)[None], inner.K[None], pose)
        x0, y0, x1, y1 = label["box_2d"]
        if (depth > 0).all():
            assert uv[0, :, 0].min() - 1 <= x0 and x1 <= uv[0, :, 0].max() + 1
            assert uv[0, :, 1].min() - 1 <= y0 and y1 <= uv[0, :, 1].max() + 1
        assert np.allclose(np.array(label["box_3d_camera"])[:, 2], depth[0].numpy(), atol=1e-3)
    assert shown > 0
    # The first frame differs from the one without traffic only where assets show (drawn over
    # the scene) and around them, where their contact shadows darken it: nowhere when none shows.
    at_reset = info_again["instance_mask"] >= 0
    assert at_reset.any() == any(label["box_2d"] for label in info_again["labels"])
    changed = (again["rgb"] != bare["rgb"]).any(-1)
    assert changed.any() == at_reset.any()
    if at_reset.any():
        assert changed[at_reset].mean() > 0.9
        darker = (again["rgb"].astype(int) <= bare["rgb"].astype(int)).all(-1)
        assert darker[changed & ~at_reset].all()


def test_collisions_with_traffic_are_leaderboard_infractions():
    env = gym.make("MirageDrive-v0", traffic_vehicles=1, **SETTINGS)
    env.reset(seed=1)
    traffic, route = env.unwrapped.traffic, env.unwrapped.scenario.route
    traffic.vehicle_paths[0] = Polyline([route.point_at(14.0), route.point_at(16.0)])  # stopped on the route
    traffic.vehicle_s[:], traffic.vehicle_speeds[:] = 0.0, 0.0
    info = drive_until_end(env, throttle=1.0)
    assert info["termination_reason"] == "collision"
    assert info["infractions"]["collisions_vehicle"] == 1
    assert info["infraction_penalty"] == pytest.approx(0.60)

    env = gym.make("MirageDrive-v0", traffic_pedestrians=1, **SETTINGS)
    env.reset(seed=1)
    inner = env.unwrapped
    route = inner.scenario.route
    standing = route.point_at(12.0)
    traffic = inner.traffic
    traffic.pedestrian_paths[0] = Polyline([standing, standing + [0.0, 0.5]])
    traffic.pedestrian_s[:], traffic.pedestrian_speeds[:] = 0.0, 0.0
    info = drive_until_end(env, throttle=1.0)
    assert info["termination_reason"] == "collision"
    assert info["infractions"]["collisions_pedestrian"] == 1
    assert info["infraction_penalty"] == pytest.approx(0.50)


def test_the_expert_stops_behind_traffic_in_its_path_and_drives_past_traffic_beside_it():
    env = gym.make("MirageDrive-v0", traffic_vehicles=1, **SETTINGS)
    for offset_m, should_stop in ((0.0, True), (4.0, False)):
        env.reset(seed=1)
        inner = env.unwrapped
        traffic, route = inner.traffic, inner.scenario.route
        heading = route.heading_at(20.0)
        left = np.array([-np.sin(heading), np.cos(heading)]) * offset_m  # across the route
        traffic.vehicle_paths[0] = Polyline([route.point_at(20.0) + left, route.point_at(22.0) + left])
        traffic.vehicle_s[:], traffic.vehicle_speeds[:] = 0.0, 0.0  # standing still
        expert = RouteExpert(route, inner.model)
        for _ in range(120):
            _, _, terminated, _, info = env.step(np.array(expert.act(inner.state, inner.traffic_boxes()), np.float32))
            assert not terminated
        assert info["infractions"]["collisions_vehicle"] == 0
        progress = route.project((inner.state.x, inner.state.y))[0]
        if should_stop:  # at rest, its front bumper about the expert's gap behind the vehicle's rear
            rear = 20.0 + 1.0 - (traffic.vehicles[0].upper[0] - traffic.vehicles[0].lower[0]) / 2
            assert inner.state.speed < 0.1
            assert progress + expert.config.ego_front_m == pytest.approx(rear - expert.config.obstacle_gap_m, abs=1.0)
        else:
            assert progress > 40.0  # it drove on past


def test_traffic_keeps_its_gap_behind_the_ego():
    env = gym.make("MirageDrive-v0", traffic_vehicles=2, **SETTINGS)
    env.reset(seed=2)
    inner = env.unwrapped
    traffic = inner.traffic
    # Put vehicle 0 on the ego's lane 12 m behind it, fast: it must queue behind the standing ego.
    route = inner.scenario.route
    behind = np.stack([route.points[0] - (route.points[1] - route.points[0]) / np.linalg.norm(
        route.points[1] - route.points[0]) * 12.0, *route.points[:20]])
    traffic.vehicle_paths[0] = Polyline(behind)
    traffic.vehicle_s[0], traffic.vehicle_speeds[0] = 0.0, 8.0
    for _ in range(15):
        _, _, terminated, _, info = env.step(np.array([0.0, 0.0], dtype=np.float32))
        assert not terminated
    assert info["infractions"]["collisions_vehicle"] == 0
    centre, half, _ = inner._footprint()
    vehicle_half = (traffic.vehicles[0].upper[0] - traffic.vehicles[0].lower[0]) / 2
    gap = np.linalg.norm(traffic.poses()[0, :2] - centre[:2]) - half[0] - vehicle_half
    assert gap == pytest.approx(env.unwrapped.config.traffic_gap_m, abs=0.05)


@pytest.fixture(scope="module")
def tiny_world_model(tmp_path_factory):
    from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator

    torch.manual_seed(0)
    return TinyBackbone(TinyAutoencoder(encoder_channels=(8, 16), decoder_channels=(16, 8), decoder_blocks=(1, 1),
                                        depth_channels=8, norm_groups=4),
                        TinyGenerator(block_out_channels=(16, 32), norm_groups=8)).save_pretrained(
        tmp_path_factory.mktemp("world_model"))


def test_world_model_frames_keep_assets_out_of_the_memory(tiny_world_model, monkeypatch):
    from world_model.world_model import WorldModel

    model = tiny_world_model
    seen = []
    original = WorldModel.render

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("dynamic"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WorldModel, "render", spy)
    env = gym.make("MirageDrive-v0", world_model_path=str(model), traffic_vehicles=2, traffic_pedestrians=1,
                   **{**SETTINGS, "renderer": "world_model"})
    env.reset(seed=0)
    inner = env.unwrapped
    # Park a vehicle right in front of the camera so it covers many pixels.
    x, y, yaw = inner.state.x, inner.state.y, inner.state.yaw
    ahead = np.array([x, y]) + 9.0 * np.array([np.cos(yaw), np.sin(yaw)])
    inner.traffic.vehicle_paths[0] = Polyline([ahead, ahead + 0.5 * np.array([np.cos(yaw), np.sin(yaw)])])
    inner.traffic.vehicle_s[0], inner.traffic.vehicle_speeds[0] = 0.0, 0.0
    _, _, _, _, info = env.step(np.array([0.0, 0.0], dtype=np.float32))
    dynamic = seen[-1]
    assert dynamic is not None and dynamic.shape == (1, 1, 1, 128, 128)
    ids = info["instance_mask"]
    assert (ids >= 0).sum() > 20
    # Every inserted pixel was marked dynamic for the model (at its resolution).
    marked = torch.nn.functional.interpolate(dynamic[:, 0].float(), size=(SIZE, SIZE), mode="area")[0, 0] > 0
    assert marked[torch.from_numpy(ids >= 0)].all()


def test_vector_env_carries_traffic_labels():
    envs = gym.make_vec("MirageDrive-v0", num_envs=2, vectorization_mode="vector_entry_point", traffic_vehicles=1,
                        traffic_pedestrians=1, **SETTINGS)
    _, infos = envs.reset(seed=0)
    _, _, _, _, infos = envs.step(np.zeros((2, 2), dtype=np.float32))
    assert len(infos["labels"]) == 2 and all(len(labels) == 2 for labels in infos["labels"])


def test_bad_traffic_settings_raise_clear_errors(tiny_world_model):
    with pytest.raises(ValueError, match="traffic_vehicles"):
        gym.make("MirageDrive-v0", traffic_vehicles=-1)
    env = gym.make("MirageDrive-v0", traffic_vehicles=1, **SETTINGS)
    with pytest.raises(ValueError, match="gym.make"):
        env.reset(options={"traffic_pedestrians": 3})
    world = gym.make("MirageWorld-v0", renderer="world_model", world_model_path=str(tiny_world_model),
                     traffic_pedestrians=1, width=32, height=32)
    start = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="road map"):
        world.reset(seed=0, options={"start_image": start, "start_depth": np.full((32, 32), 5.0)})
    with pytest.raises(ValueError, match="off the map"):
        check_on_map(RoadMap.town01(), (1.0e5, 0.0), "car")


def test_check_on_map_measures_the_distance_to_the_lanes(town01):
    check_on_map(town01, town01.spawn_points()[0, :2], "car")
    xmin, ymin, xmax, ymax = town01.bounds
    inside_bounds = (180.0, -260.0)  # in a Town01 block, about 60 m from every lane
    assert xmin < inside_bounds[0] < xmax and ymin < inside_bounds[1] < ymax
    with pytest.raises(ValueError, match=r"off the map 'Town01': the nearest lane is 6\d\.\d m away"):
        check_on_map(town01, inside_bounds, "car")
    check_on_map(town01, inside_bounds, "car", margin_m=70.0)


def test_traffic_frames_label_the_drawn_residual_and_restart_the_refiner_after_a_frame_without_assets():
    from types import SimpleNamespace

    from editors import AssetInstance, AssetRefiner, make_asset
    from mirage_env.envs.traffic import TrafficFrames
    from world_model.camera import camera_pose, camera_rays, intrinsics_from_fov

    height, width = 48, 64
    K = intrinsics_from_fov(60, width, height)
    pose = camera_pose(torch.tensor([[0.0, -1.75, 1.6]]), torch.tensor([0.0]), torch.tensor([-0.1]))[0]
    origins, directions = camera_rays(K[None], pose[None], height, width)
    t = -origins[0, 2] / directions[0, ..., 2]
    depth = torch.where((directions[0, ..., 2] < 0) & (t > 0), t, torch.zeros_like(t))[None]  # ground z = 0
    rgb = torch.full((height, width, 3), 120, dtype=torch.uint8)
    torch.manual_seed(0)
    refiner, previous = AssetRefiner(channels=(8, 16), detail_channels=8, norm_groups=4), []

    def spy(frame, mask, state):
        previous.append(state)
        return refiner(frame, mask, state)

    frames = TrafficFrames(SimpleNamespace(height=height, width=width, reset=lambda *args: None), spy)
    frames.reset(0, None, None)
    car = make_asset("car", seed=1)

    def show(z: float = 0.0, x: float = 12.0) -> dict:
        frames.set_assets(0, [AssetInstance(car, 3, torch.tensor([[x, -1.75, z, 0.0]]))])
        frames.insert(0, rgb, depth, K, pose)
        return frames.labels[0][0]

    assert show()["alignment_residual_px"] < 0.05 and previous[-1] is None  # on the ground: nothing to shift
    # Floating 0.5 m up, the car is drawn where it is: the label reports its disagreement with
    # the ground, not what is left after a shift the env never applies.
    assert show(z=0.5)["alignment_residual_px"] > 1.0 and previous[-1] is not None
    behind = show(x=-30.0)  # out of view: no refinement, and the stream's state is dropped
    assert behind["box_2d"] is None and len(previous) == 2
    show()
    assert len(previous) == 3 and previous[-1] is None


def test_refined_traffic_frames_differ_only_around_assets():
    from editors.refiner import edit_region

    refined_env = gym.make("MirageDrive-v0", traffic_vehicles=2, traffic_pedestrians=1, refine_assets=True, **SETTINGS)
    plain_env = gym.make("MirageDrive-v0", traffic_vehicles=2, traffic_pedestrians=1, **SETTINGS)
    for env in (refined_env, plain_env):
        env.reset(seed=4)
        inner = env.unwrapped
        x, y, yaw = inner.state.x, inner.state.y, inner.state.yaw
        ahead = np.array([x, y]) + 10.0 * np.array([np.cos(yaw), np.sin(yaw)])
        inner.traffic.vehicle_paths[0] = Polyline([ahead, ahead + 0.5 * np.array([np.cos(yaw), np.sin(yaw)])])
        inner.traffic.vehicle_s[0], inner.traffic.vehicle_speeds[0] = 0.0, 0.0
    refined, _, _, _, info = refined_env.step(np.array([0.0, 0.0], dtype=np.float32))
    plain, _, _, _, _ = plain_env.step(np.array([0.0, 0.0], dtype=np.float32))
    assets = torch.from_numpy(info["instance_mask"] >= 0)[None, None]
    band = edit_region(assets, refined_env.unwrapped.frames.refiner.config.band_px)[0, 0].numpy() > 0
    changed = (refined["rgb"] != plain["rgb"]).any(-1)
    assert changed.any() and not (changed & ~band).any()


def test_a_vehicle_at_the_end_of_a_dead_end_lane_stops_there(tmp_path):
    """Traffic on a map whose lanes end: a vehicle that reaches the end of its path has nothing
    ahead of it (it used to crash the step)."""
    from test_env import BEND_XODR  # tests/ is on sys.path

    path = tmp_path / "bend.xodr"
    path.write_text(BEND_XODR, encoding="utf-8")
    env = gym.make("MirageDrive-v0", map=str(path), width=32, height=32, renderer="ground_truth", traffic_vehicles=1,
                   route_start=(55.0, -1.75), route_goal=(81.75, 18.0), terminate_on_collision=False)
    env.reset(seed=3)
    expert = RouteExpert(env.unwrapped.scenario.route, env.unwrapped.model)
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(np.array(expert.act(env.unwrapped.state), np.float32))
        if terminated or truncated:
            break
    assert info["termination_reason"] == "route_complete"
