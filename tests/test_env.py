"""MirageDrive-v0 and MirageWorld-v0 on the ground-truth renderer.

Most tests run on a small OpenDRIVE file (a 60 m straight and a left quarter circle, one lane
each way, sidewalks) that loads and dresses in a fraction of a second; scene seed 0 puts a
building 8 m right of the straight. Maps and scenes are cached per process by the envs.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import mirage_env
from mirage_env.envs import GroundTruthFrames, MirageDriveEnv
from mirage_env.expert import RouteExpert
from mirage_env.rewards import INFRACTIONS, REWARD_TERMS
from mirage_env.scenario import MapScenario, StartFrame, StaticObstacles, load_map_assets, plan_scenario_route
from mirage_env.scene import Primitives, Semantic

_MARK = '<roadMark sOffset="0" type="solid" weight="standard" color="standard" width="0.15"/>'
BEND_XODR = f"""<?xml version="1.0" encoding="UTF-8"?>
<OpenDRIVE>
  <header revMajor="1" revMinor="4" name="bend"/>
  <road name="r" length="91.41592653589793" id="1" junction="-1">
    <link/>
    <planView>
      <geometry s="0" x="0" y="0" hdg="0" length="60"><line/></geometry>
      <geometry s="60" x="60" y="0" hdg="0" length="31.41592653589793"><arc curvature="0.05"/></geometry>
    </planView>
    <lanes>
      <laneSection s="0">
        <left>
          <lane id="2" type="sidewalk" level="false"><width sOffset="0" a="2.0" b="0" c="0" d="0"/>{_MARK}</lane>
          <lane id="1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/>{_MARK}</lane>
        </left>
        <center>
          <lane id="0" type="none" level="false">
            <roadMark sOffset="0" type="broken" weight="standard" color="yellow" width="0.15"/>
          </lane>
        </center>
        <right>
          <lane id="-1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/>{_MARK}</lane>
          <lane id="-2" type="sidewalk" level="false"><width sOffset="0" a="2.0" b="0" c="0" d="0"/>{_MARK}</lane>
        </right>
      </laneSection>
    </lanes>
  </road>
</OpenDRIVE>
"""
# Along the right-hand lane (y = -1.75) from the start of the straight to the end of the bend.
BEND_ROUTE = {"route_start": (2.0, -1.75), "route_goal": (81.75, 18.0)}
ENV_IDS = tuple(mirage_env.ENV_IDS)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Render these tiny frames on one thread: a second one only adds synchronisation (and
    stalls badly when the cores are busy). The suite's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bend_map(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("maps") / "bend.xodr"
    path.write_text(BEND_XODR, encoding="utf-8")
    return str(path)


def make(env_id: str, bend_map: str, **overrides) -> gym.Env:
    overrides = {"map": bend_map, "width": 32, "height": 32, "renderer": "ground_truth", **overrides}
    return gym.make(env_id, **overrides)


def run_episode(env: gym.Env, policy, options=None, seed: int = 0):
    """Step ``policy(env)`` until the episode ends; returns the last info and summed rewards."""
    env.reset(seed=seed, options=options)
    totals = dict.fromkeys(REWARD_TERMS, 0.0)
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(policy(env))
        for term, value in info["rewards"].items():
            totals[term] += value
        if terminated or truncated:
            return info, totals, terminated
    raise AssertionError("episode did not end")


# ---------------------------------------------------------------------- registration and API checks
def test_both_ids_register_idempotently_and_make_with_module_prefix(bend_map):
    mirage_env.register_envs()  # again: must not raise or duplicate
    for env_id in ENV_IDS:
        assert gym.spec(env_id).id == env_id
        for name in (env_id, f"mirage_env:{env_id}"):
            env = make(name, bend_map)
            assert env.unwrapped.spec.id == env_id
            env.close()


def test_ground_truth_envs_start_without_importing_the_networks(bend_map):
    # diffusers takes seconds to import (and pulls in transformers and peft): an env that renders
    # the exact scene and has no refiner must not pay for it, in this process or a spawned worker.
    code = ("import sys, gymnasium as gym, mirage_env\n"
            "for env_id in mirage_env.ENV_IDS:\n"
            f"    env = gym.make(env_id, map={bend_map!r}, width=32, height=32, renderer='ground_truth')\n"
            "    env.reset(seed=0); env.step(env.action_space.sample())\n"
            "print(sorted(m for m in ('diffusers', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    from editors import AssetRefiner  # the editor's refiner still loads on first use

    assert AssetRefiner.__name__ == "AssetRefiner"


@pytest.mark.parametrize("renderer", ["world_model", "ground_truth"])
@pytest.mark.parametrize("observation", ["dict", "rgb"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_and_sb3_check_env_pass_without_warnings(env_id, observation, renderer, bend_map):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    # 64 x 64: SB3's checker warns below CnnPolicy's 36 x 36 minimum. The world model is the shipped one.
    env = make(env_id, bend_map, observation=observation, width=64, height=64, render_mode="rgb_array",
               renderer=renderer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("renderer", ["world_model", "ground_truth"])
def test_seeded_reset_and_step_are_deterministic(renderer, bend_map):
    def rollout(seed: int):
        env = make("MirageDrive-v0", bend_map, renderer=renderer)
        obs, info = env.reset(seed=seed)
        frames, rewards = [obs["rgb"]], []
        rng = np.random.default_rng(7)
        for _ in range(15):
            obs, reward, _, _, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            frames.append(obs["rgb"])
            rewards.append(reward)
        return env.unwrapped.scenario.route.points, np.stack(frames), rewards, info

    first, again = rollout(3), rollout(3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2] and first[3] == again[3]
    routes = {tuple(rollout(seed)[0][[0, -1]].ravel().round(1)) for seed in range(4)}
    assert len(routes) > 1, "different seeds should draw different routes"


def test_antialias_smooths_ground_truth_frames_and_changes_nothing_else(bend_map):
    """``antialias`` averages rays over each pixel of the ground-truth frames (start frames
    included); the episode (route, motion, rewards) is the same."""
    def rollout(**kwargs):
        env = make("MirageDrive-v0", bend_map, renderer="ground_truth", **kwargs)
        obs, _ = env.reset(seed=1)
        frames, rewards = [obs["rgb"]], []
        for _ in range(5):
            obs, reward, _, _, _ = env.step(np.array([0.1, 0.5], np.float32))
            frames.append(obs["rgb"])
            rewards.append(reward)
        return np.stack(frames).astype(np.float32), rewards, obs["route"]

    point, smooth = rollout(), rollout(antialias=3)
    assert point[1] == smooth[1] and np.array_equal(point[2], smooth[2])
    assert not np.array_equal(point[0], smooth[0])
    assert np.abs(point[0] - smooth[0]).mean() < 10  # the same views, only their edges and detail differ

    def busy(frames):  # high-frequency energy: mean squared difference of neighbouring pixels
        return np.square(np.diff(frames, axis=2)).mean() + np.square(np.diff(frames, axis=1)).mean()

    assert busy(smooth[0]) < 0.8 * busy(point[0])


# ---------------------------------------------------------------------- rewards and episode ends
def test_expert_completes_the_route_with_positive_progress_and_no_infractions(bend_map):
    env = make("MirageDrive-v0", bend_map, **BEND_ROUTE)
    env.reset(seed=0)
    expert = RouteExpert(env.unwrapped.scenario.route, env.unwrapped.model)
    info, totals, terminated = run_episode(env, lambda e: np.array(expert.act(e.unwrapped.state), np.float32))
    assert terminated and info["termination_reason"] == "route_complete"
    assert totals["progress"] > 60.0  # metres of an ~80 m route, minus the start offset
    assert totals["route_complete"] == 20.0 and totals["collision"] == 0.0 and totals["off_road"] == 0.0
    assert all(count == 0 for count in info["infractions"].values()), info["infractions"]
    assert info["route_completion"] == 100.0 and info["driving_score"] == 100.0


def steer_towards(target: np.ndarray):
    """Policy: pure steering towards a world point at half throttle."""

    def policy(env: gym.Env) -> np.ndarray:
        state = env.unwrapped.state
        alpha = math.atan2(target[1] - state.y, target[0] - state.x) - state.yaw
        alpha = (alpha + math.pi) % (2 * math.pi) - math.pi
        return np.array([np.clip(3.0 * alpha, -1, 1), 0.5], dtype=np.float32)

    return policy


def test_driving_into_a_building_terminates_with_collisions_layout(bend_map):
    env = make("MirageDrive-v0", bend_map, **BEND_ROUTE)
    env.reset(seed=0)
    objects = env.unwrapped.scenario.assets.scene.objects
    buildings = np.flatnonzero(objects.box_class == Semantic.BUILDING)
    start = np.array(BEND_ROUTE["route_start"])
    building = buildings[np.argmin(np.linalg.norm(objects.box_centre[buildings, :2] - start - [15.0, 0.0], axis=1))]
    # Off-road would end the drive first: allow it for this episode only.
    policy = steer_towards(objects.box_centre[building, :2])
    info, totals, terminated = run_episode(env, policy, options={"off_road_tolerance_m": math.inf})
    assert terminated and info["termination_reason"] == "collision"
    fields = ("box_centre", "box_half", "box_yaw", "box_class")
    only_the_building = StaticObstacles(Primitives(**{name: getattr(objects, name)[[building]] for name in fields}))
    assert only_the_building.hits(*env.unwrapped._footprint()) == {Semantic.BUILDING}
    assert info["infractions"]["collisions_layout"] == 1
    assert info["infractions"]["outside_route_lanes"] >= 1
    assert totals["collision"] == -50.0 and totals["off_road"] < 0.0
    assert info["infraction_penalty"] < 0.65 + 1e-9  # Leaderboard coefficient of a static collision


def test_leaving_the_road_terminates_off_road(bend_map):
    env = make("MirageDrive-v0", bend_map, **BEND_ROUTE)
    # To the right: the left side has a pole on its sidewalk, which would be hit first.
    info, _, terminated = run_episode(env, lambda e: np.array([-0.35, 0.6], np.float32))
    assert terminated and info["termination_reason"] == "off_road"
    assert info["infractions"]["outside_route_lanes"] >= 1


def test_step_limit_truncates_and_options_last_one_episode(bend_map):
    env = make("MirageDrive-v0", bend_map, **BEND_ROUTE)
    info, _, terminated = run_episode(env, lambda e: np.array([0.0, 0.3], np.float32), options={"max_steps": 3})
    assert not terminated and info["termination_reason"] == "step_limit"
    assert info["infractions"]["route_timeout"] == 1
    env.reset(seed=0)
    for _ in range(4):
        *_, terminated, truncated, _ = env.step(np.array([0.0, 0.3], np.float32))
        assert not (terminated or truncated)


def test_route_observation_is_in_the_ego_frame(bend_map):
    env = make("MirageDrive-v0", bend_map, **BEND_ROUTE)
    obs, info = env.reset(seed=0)
    ahead = obs["route"].reshape(-1, 2)
    # On the straight, heading along it: points lie ahead (x grows by the spacing), on the lane.
    np.testing.assert_allclose(np.diff(ahead[:4, 0]), 4.0, atol=1e-3)
    np.testing.assert_allclose(ahead[:4, 1], 0.0, atol=0.05)
    assert abs(obs["heading_error"][0]) < 1e-3 and abs(obs["lateral_error"][0]) < 0.05
    assert set(info["rewards"]) == set(REWARD_TERMS) and set(info["infractions"]) == set(INFRACTIONS)


def test_world_steps_are_in_the_camera_frame_and_the_ground_is_a_collision(bend_map):
    env = make("MirageWorld-v0", bend_map, **BEND_ROUTE)
    env.reset(seed=0)
    before = env.unwrapped.pose.copy()
    obs, reward, *_ = env.step(np.array([0, 0, 1, 0, 0, 0], np.float32))  # forward
    np.testing.assert_allclose(env.unwrapped.pose[:3, 3] - before[:3, 3], 0.5 * before[:3, 2], atol=1e-9)
    assert obs["speed"][0] == pytest.approx(5.0) and reward > 0  # progress along the route
    _, yaw_before, _ = env.unwrapped._ego()
    env.step(np.array([0, 0, 0, 0, 1, 0], np.float32))  # yaw right: clockwise seen from above
    assert env.unwrapped._ego()[1] - yaw_before == pytest.approx(-math.radians(5.0), abs=1e-3)
    info, _, terminated = run_episode(env, lambda e: np.array([0, 1, 0, 0, 0, 0], np.float32))  # down
    assert terminated and info["termination_reason"] == "collision"
    assert info["infractions"]["collisions_layout"] == 1


def test_scenarios_from_a_procedural_town_and_town01():
    env = gym.make("MirageDrive-v0", width=32, height=32, renderer="ground_truth")
    for spec in ("town:5", "Town01"):
        obs, info = env.reset(seed=0, options={"map": spec, "route_min_length_m": 50.0, "route_max_length_m": 150.0})
        assert env.unwrapped.scenario.name == {"town:5": "town_5", "Town01": "Town01"}[spec]
        assert 50.0 <= env.unwrapped.scenario.route.length <= 150.0 and obs["rgb"].std() > 0
        env.step(np.array([0.0, 1.0], np.float32))


def test_driving_lane_offset_measures_distance_beyond_the_lane_edge(bend_map):
    road_map = load_map_assets(bend_map, 0).road_map
    inside = road_map.driving_lane_offset((10.0, -1.0))
    assert inside.beyond_edge_m == 0.0 and inside.lane_yaw == pytest.approx(0.0, abs=1e-6) and not inside.in_junction
    assert road_map.driving_lane_offset((10.0, -6.0)).beyond_edge_m == pytest.approx(2.5, abs=0.05)
    assert abs(road_map.driving_lane_offset((10.0, 1.75)).lane_yaw) == pytest.approx(math.pi, abs=1e-3)  # oncoming
    assert road_map.driving_lane_offset((-5.0, -1.75)).beyond_edge_m > 2.0  # before the road starts


def test_static_obstacles_overlap_rotated_boxes_and_spheres_exactly():
    square = Primitives(
        box_centre=np.array([[0.0, 0.0, 1.0], [0.0, -6.0, 1.0]]), box_half=np.array([[1.0, 1.0, 1.0]] * 2),
        box_yaw=np.array([math.pi / 4, 0.0]), box_class=np.array([Semantic.BUILDING, Semantic.VEHICLE], np.uint8),
        sphere_centre=np.array([[0.0, 4.0, 1.0]]), sphere_radius=np.array([1.0]),
        sphere_class=np.array([Semantic.PEDESTRIAN], np.uint8),
    )
    obstacles = StaticObstacles(square)
    half = np.full(3, 0.5)
    # The 45-degree box reaches x = sqrt(2); the query's near face is at x - 0.5.
    assert obstacles.hits(np.array([1.9, 0.0, 1.0]), half, 0.0) == {Semantic.BUILDING}
    assert obstacles.hits(np.array([1.95, 0.0, 1.0]), half, 0.0) == set()
    assert obstacles.hits(np.array([0.0, 0.0, 2.6]), half, 0.0) == set()  # above it
    assert obstacles.hits(np.array([0.0, 2.6, 1.0]), half, 0.0) == {Semantic.PEDESTRIAN}  # 0.9 from the sphere
    assert obstacles.hits(np.array([0.0, 2.3, 1.0]), half, 0.0) == set()  # 1.2 from it
    assert obstacles.hits(np.array([0.0, 2.3, 1.0]), half, math.pi / 4) == {Semantic.PEDESTRIAN}  # corner: 0.99
    assert obstacles.hits(np.array([1.4, -6.0, 1.0]), half, 0.0) == {Semantic.VEHICLE}


# ---------------------------------------------------------------------- frames and rendering
def test_frame_source_renders_several_slots_in_one_call(bend_map):
    source = GroundTruthFrames(24, 32)
    rng = np.random.default_rng(0)
    poses, Ks = [], []
    for slot, scene_seed in enumerate((0, 1)):
        assets = load_map_assets(bend_map, scene_seed)
        route = plan_scenario_route(
            assets.road_map, rng, BEND_ROUTE["route_start"], BEND_ROUTE["route_goal"], min_length_m=1, max_length_m=1
        )
        pose = torch.eye(4)[None]
        pose[0, :3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # looking along +x
        pose[0, :3, 3] = torch.tensor([10.0, -1.75, 1.6 + slot])
        K = torch.tensor([[[16.0, 0, 16], [0, 16, 12], [0, 0, 1]]])
        start = StartFrame(torch.zeros(1, 24, 32, 3, dtype=torch.uint8), None, K, pose)
        source.reset(slot, start, MapScenario(assets, route))
        poses.append(pose)
        Ks.append(K)
    together = source.render([1, 0], torch.cat(poses[::-1]), torch.cat(Ks[::-1]))
    assert together.shape == (2, 24, 32, 3) and together.dtype == np.uint8
    for slot in (0, 1):
        np.testing.assert_array_equal(together[1 - slot], source.render([slot], poses[slot], Ks[slot])[0])
    assert not np.array_equal(together[0], together[1])


@pytest.mark.parametrize("env_id, action", [("MirageDrive-v0", [0.3, 1.0]), ("MirageWorld-v0", [0.1, 0, 1, 0, 0.4, 0])])
def test_frames_per_step_renders_the_motion_within_each_step(env_id, action, bend_map):
    """With frames_per_step=3 a step renders three frames along its motion: the last is the
    frame of frames_per_step=1 (same motion, rewards and episode), the first is where a third of
    the step leads (a step of a third of dt_s, or a third of the camera step)."""
    action = np.array(action, dtype=np.float32)
    one, three = make(env_id, bend_map, **BEND_ROUTE), make(env_id, bend_map, frames_per_step=3, **BEND_ROUTE)
    third = {"dt_s": 0.1 / 3} if env_id == "MirageDrive-v0" else {"max_translation_m": 0.5 / 3,
                                                                    "max_rotation_deg": 5.0 / 3}
    short = make(env_id, bend_map, **BEND_ROUTE, **third)
    for env in (one, three, short):
        env.reset(seed=0)
    short_obs, *_ = short.step(action)
    previous = one.unwrapped._rgb.copy()
    for step in range(4):
        obs, reward, terminated, truncated, info = one.step(action)
        obs3, reward3, terminated3, truncated3, info3 = three.step(action)
        frames = info3["frames"]
        assert frames.shape == (3, 32, 32, 3) and "frames" not in info
        assert np.array_equal(frames[-1], obs3["rgb"]) and np.array_equal(obs3["rgb"], obs["rgb"])
        assert (reward3, terminated3, truncated3) == (reward, terminated, truncated)
        assert info3["rewards"] == info["rewards"]
        if step == 0:
            assert np.array_equal(frames[0], short_obs["rgb"])
        # Along the motion: each frame is further from the previous step's last frame.
        change = [np.abs(frame.astype(int) - previous).mean() for frame in frames]
        assert 0 < change[0] < change[1] < change[2]
        previous = obs["rgb"]
    with pytest.raises(ValueError, match="frames_per_step"):
        make(env_id, bend_map, frames_per_step=0)
    with pytest.raises(ValueError, match="frames_per_step=1 with traffic"):
        make(env_id, bend_map, frames_per_step=2, traffic_vehicles=1)
    with pytest.raises(ValueError, match="gym.make"):
        three.reset(options={"frames_per_step": 1})


def test_batched_vector_env_renders_several_frames_per_step(bend_map):
    overrides = {"map": bend_map, "width": 32, "height": 32, **BEND_ROUTE, "renderer": "ground_truth",
                 "frames_per_step": 2}
    vector = gym.make_vec("MirageDrive-v0", num_envs=2, vectorization_mode="vector_entry_point", **overrides)
    single = gym.make("MirageDrive-v0", **overrides)
    vector.reset(seed=4)
    single.reset(seed=5)
    actions = np.array([[0.0, 1.0], [0.2, 0.8]], dtype=np.float32)
    for _ in range(2):
        observations, _, _, _, infos = vector.step(actions)
        single_obs, _, _, _, single_info = single.step(actions[1])
        assert infos["frames"].shape == (2, 2, 32, 32, 3)
        assert np.array_equal(infos["frames"][1], single_info["frames"])
        assert np.array_equal(observations["rgb"][1], single_obs["rgb"])
    vector.close()


def test_render_shows_the_observation_beside_a_birds_eye_map_and_records_video(bend_map, tmp_path):
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    env = make("MirageDrive-v0", bend_map, render_mode="rgb_array", render_size=96, max_steps=8, **BEND_ROUTE)
    env = RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda episode: True, disable_logger=True)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (96, 192, 3) and frame.dtype == np.uint8
    truncated = False
    while not truncated:
        *_, truncated, _ = env.step(np.array([0.0, 0.5], np.float32))
    env.close()
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1


# ---------------------------------------------------------------------- vector envs and SB3
def test_async_vector_env_with_spawn_workers(bend_map):
    make_env = functools.partial(gym.make, "mirage_env:MirageDrive-v0", map=bend_map, width=32, height=32,
                                 renderer="ground_truth")
    envs = gym.vector.AsyncVectorEnv([make_env, make_env], context="spawn")
    try:
        obs, _ = envs.reset(seed=[0, 1])
        assert obs["rgb"].shape == (2, 32, 32, 3)
        for _ in range(3):
            obs, reward, _, _, info = envs.step(np.tile(np.array([0.0, 0.5], np.float32), (2, 1)))
        assert reward.shape == (2,) and info["infractions"]["collisions_layout"].shape == (2,)
    finally:
        envs.close()


def test_sb3_subproc_vec_env_trains_ppo_with_multi_input_policy(bend_map):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import SubprocVecEnv

    make_env = functools.partial(gym.make, "mirage_env:MirageDrive-v0", map=bend_map, width=36, height=36,
                                 renderer="ground_truth")
    envs = SubprocVecEnv([make_env, make_env], start_method="spawn")
    try:
        model = PPO("MultiInputPolicy", envs, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=256)
        assert model.num_timesteps >= 256
    finally:
        envs.close()


def test_ppo_cnn_policy_on_rgb_observations(bend_map):
    from stable_baselines3 import PPO

    env = make("MirageDrive-v0", bend_map, observation="rgb", width=36, height=36)
    model = PPO("CnnPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "action, message",
    [([math.nan, 0.0], "NaN"), ([1.5, 0.0], r"\[-1, 1\]"), ([0.0], "shape"), ([0.0, 0.0, 0.0], "shape")],
)
def test_bad_actions_raise(action, message, bend_map):
    env = make("MirageDrive-v0", bend_map)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(np.array(action, dtype=np.float32))


def test_step_and_render_before_reset_raise(bend_map):
    env = MirageDriveEnv(render_mode="rgb_array", map=bend_map, renderer="ground_truth")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        env.render()


def test_bad_options_and_kwargs_raise(bend_map):
    env = make("MirageDrive-v0", bend_map)
    with pytest.raises(ValueError, match="unknown option 'mapp'.*'map'"):
        env.reset(options={"mapp": "Town01"})
    with pytest.raises(ValueError, match="gym.make"):
        env.reset(options={"width": 128})
    with pytest.raises(ValueError, match="unknown reward terms"):
        env.reset(options={"reward_weights": {"progres": 1.0}})
    with pytest.raises(ValueError, match="together"):
        env.reset(options={"route_start": (0.0, 0.0)})
    with pytest.raises(ValueError, match="unknown option 'start_image'"):
        env.reset(options={"start_image": np.zeros((32, 32, 3), np.uint8)})  # MirageWorld-v0 only
    with pytest.raises(ValueError, match="unknown option 'fps'"):
        make("MirageDrive-v0", bend_map, fps=10)
    with pytest.raises(ValueError, match="observation"):
        make("MirageDrive-v0", bend_map, observation="depth")
    with pytest.raises(ValueError, match="memory"):
        make("MirageWorld-v0", bend_map, memory="voxels")
    with pytest.raises(ValueError, match=r"world_model_reencode.*\[0, 1\]"):
        make("MirageWorld-v0", bend_map, world_model_reencode=1.5)
    for bad in (-0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"world_model_anchor.*\[0, 1\]"):
            make("MirageWorld-v0", bend_map, world_model_anchor=bad)
    with pytest.raises(ValueError, match="world_model_precision.*bfloat16"):
        make("MirageWorld-v0", bend_map, world_model_precision="half")
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="antialias.*positive integer"):
            make("MirageDrive-v0", bend_map, antialias=bad)


def test_missing_maps_raise_file_not_found(bend_map, tmp_path):
    env = make("MirageDrive-v0", bend_map)
    with pytest.raises(FileNotFoundError, match="not found"):
        env.reset(options={"map": str(tmp_path / "missing.xodr")})
    with pytest.raises(FileNotFoundError, match="unknown map 'Town99'"):
        env.reset(options={"map": "Town99"})


def test_start_images_are_checked(bend_map):
    env = make("MirageWorld-v0", bend_map)
    with pytest.raises(ValueError, match=r"\(32, 32, 3\) uint8"):
        env.reset(options={"start_image": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"\(32, 32, 3\) uint8"):
        env.reset(options={"start_image": np.zeros((32, 32, 3), np.float32)})
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="start_depth"):
        env.reset(options={"start_image": image, "start_depth": np.ones((16, 16))})
    with pytest.raises(ValueError, match="start_intrinsics"):
        env.reset(options={"start_image": image, "start_intrinsics": np.eye(4)})
    # A valid image needs a renderer that can continue it; the ground truth has no scene for it.
    with pytest.raises(ValueError, match="world_model"):
        env.reset(options={"start_image": image, "start_depth": np.ones((32, 32))})


# ---------------------------------------------------------------------- batched vector env
def test_batched_vector_env_matches_single_envs_and_autoresets(bend_map):
    overrides = {"map": bend_map, "width": 32, "height": 32, **BEND_ROUTE, "max_steps": 3, "renderer": "ground_truth"}
    vector = gym.make_vec("MirageDrive-v0", num_envs=3, vectorization_mode="vector_entry_point", **overrides)
    singles = [gym.make("MirageDrive-v0", **overrides) for _ in range(3)]
    observations, _ = vector.reset(seed=10)
    for i, env in enumerate(singles):
        single_obs, _ = env.reset(seed=10 + i)
        assert np.array_equal(observations["rgb"][i], single_obs["rgb"])
    actions = np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (3, 1))
    for step in range(3):
        observations, rewards, terminated, truncated, infos = vector.step(actions)
        for i, env in enumerate(singles):
            single_obs, single_reward, *_ = env.step(actions[i])
            assert np.array_equal(observations["rgb"][i], single_obs["rgb"])  # one batched render, same frames
            assert rewards[i] == pytest.approx(single_reward)
    assert truncated.all() and "rewards" in infos  # max_steps = 3
    observations, rewards, terminated, truncated, _ = vector.step(actions)  # next-step autoreset
    assert (rewards == 0).all() and not (terminated | truncated).any()
    assert vector.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    vector.close()


def test_batched_vector_env_same_step_autoreset_matches_gymnasiums_sync_vector_env(bend_map):
    """``autoreset_mode="same_step"`` behaves as Gymnasium's own SyncVectorEnv in that mode: the
    ended env's new first observation comes back at once, its last one in ``final_obs``."""
    overrides = {"map": bend_map, "width": 32, "height": 32, **BEND_ROUTE, "renderer": "ground_truth"}
    same_step = gym.vector.AutoresetMode.SAME_STEP
    vector = gym.make_vec("MirageDrive-v0", num_envs=2, vectorization_mode="vector_entry_point",
                          autoreset_mode="same_step", **overrides)
    # Env 1 ends after 2 steps, env 0 after 4: the two run out of step.
    reference = gym.vector.SyncVectorEnv([lambda: gym.make("MirageDrive-v0", **overrides, max_steps=4),
                                          lambda: gym.make("MirageDrive-v0", **overrides, max_steps=2)],
                                         autoreset_mode=same_step)
    # The vector env's envs share one config: give each its own step limit.
    vector.unwrapped.envs[0].config = vector.unwrapped.envs[0].config.updated({"max_steps": 4})
    vector.unwrapped.envs[1].config = vector.unwrapped.envs[1].config.updated({"max_steps": 2})
    assert vector.metadata["autoreset_mode"] == same_step
    observations, _ = vector.reset(seed=3)
    expected, _ = reference.reset(seed=3)
    assert np.array_equal(observations["rgb"], expected["rgb"])
    actions = np.tile(np.array([[0.1, 1.0]], dtype=np.float32), (2, 1))
    ended = 0
    for _ in range(5):
        observations, rewards, terminated, truncated, infos = vector.step(actions)
        expected, expected_rewards, expected_terminated, expected_truncated, expected_infos = reference.step(actions)
        assert np.array_equal(observations["rgb"], expected["rgb"])
        np.testing.assert_allclose(rewards, expected_rewards)
        assert np.array_equal(truncated, expected_truncated) and np.array_equal(terminated, expected_terminated)
        for i in np.flatnonzero(truncated):
            ended += 1
            assert infos["_final_obs"][i] and expected_infos["_final_obs"][i]
            assert np.array_equal(infos["final_obs"][i]["rgb"], expected_infos["final_obs"][i]["rgb"])
            assert not np.array_equal(infos["final_obs"][i]["rgb"], observations["rgb"][i])  # reset at once
            assert infos["final_info"]["termination_reason"][i] == "step_limit"
    assert ended == 3  # env 1 at steps 2 and 4, env 0 at step 4
    vector.close()
    reference.close()
    with pytest.raises(ValueError, match="autoreset_mode must be 'next_step' or 'same_step'"):
        gym.make_vec("MirageDrive-v0", num_envs=2, vectorization_mode="vector_entry_point",
                     autoreset_mode="disabled", **overrides)
