"""Agents: Leaderboard metrics, route sets, policies, closed-loop evaluation, RL training
(PPO, SAC) and imitation (BC, DAgger), all on tiny budgets.

Episodes run on the small bend map of ``test_env.py`` (a 60 m straight and a left quarter
circle, one lane each way) at 40 x 40 pixels (the smallest size SB3's NatureCNN takes is 36).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from test_env import BEND_ROUTE, BEND_XODR  # the test modules' shared small map (tests/ is on sys.path)

from agents.common import BatchedVecEnv, latest_checkpoint, make_vec_envs
from agents.evaluate import evaluate
from agents.imitation import Demonstrations, action_error, behaviour_cloning, dagger_rollouts, record_demonstrations
from agents.metrics import RouteResult, compare_renderers, score_route, summarize
from agents.policies import ExpertPolicy, SB3Policy, checkpoint_algorithm, load_checkpoint, load_policy
from agents.routes import DEFAULT_ROUTE_SET, ROUTE_SET_FORMAT, load_route_set
from mirage_env.envs import DriveConfig

SIZE = 40  # [px]
# Random routes on the bend map: along either lane, 20-90 m.
SHORT_ROUTES = {"route_min_length_m": 20.0, "route_max_length_m": 90.0}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bend_map(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("maps") / "bend.xodr"
    path.write_text(BEND_XODR, encoding="utf-8")
    return str(path)


def bend_env(bend_map: str, **overrides) -> gym.Env:
    return gym.make("mirage_env:MirageDrive-v0", **{"map": bend_map, "width": SIZE, "height": SIZE,
                                                    "renderer": "ground_truth", **overrides})


def train_config(*overrides: str):
    with initialize_config_module(config_module="configs", version_base=None):
        return compose(config_name="train", overrides=list(overrides))


# ---------------------------------------------------------------------- metrics
def test_route_score_is_completion_times_multiplicative_penalty():
    clean = score_route(80.0, {}, 0.0)
    assert (clean.route_completion, clean.infraction_penalty, clean.driving_score) == (80.0, 1.0, 80.0)
    # One pedestrian, two vehicles, one static object: 0.50 * 0.60^2 * 0.65 = 0.117.
    hit = score_route(50.0, {"collisions_pedestrian": 1, "collisions_vehicle": 2, "collisions_layout": 1}, 0.0)
    assert hit.infraction_penalty == pytest.approx(0.117)
    assert hit.driving_score == pytest.approx(5.85)
    # A red light and a stop sign with 20 % of the route outside its lanes: 0.70 * 0.80 * 0.80.
    lanes = score_route(100.0, {"red_light": 1, "stop_infraction": 1, "outside_route_lanes": 3}, 20.0)
    assert lanes.infraction_penalty == pytest.approx(0.448)
    assert lanes.driving_score == pytest.approx(44.8)
    # Scenario timeout 0.70; route deviation, blocking and the route timeout end a route without a penalty.
    assert score_route(60.0, {"scenario_timeouts": 1}, 0.0).driving_score == pytest.approx(42.0)
    assert score_route(60.0, {"route_dev": 1, "vehicle_blocked": 1, "route_timeout": 1}, 0.0).driving_score == 60.0
    assert score_route(100.0, {}, 150.0).infraction_penalty == 0.0  # off-route share is capped at 100 %
    with pytest.raises(ValueError, match="percentage"):
        score_route(120.0, {}, 0.0)
    with pytest.raises(ValueError, match="unknown infractions"):
        score_route(50.0, {"speeding": 1}, 0.0)


def result(route_id: str, renderer: str, length_m: float, completion: float, infractions: dict) -> RouteResult:
    score = score_route(completion, infractions, 0.0)
    return RouteResult(route_id, "Town01", renderer, {"vehicles": 0, "pedestrians": 0}, length_m, completion, 0.0,
                       infractions, score.infraction_penalty, score.driving_score, "", 1, 0.0)


def test_summary_means_over_routes_and_infractions_per_km_driven():
    results = [
        result("a", "ground_truth", 1000.0, 50.0, {"collisions_vehicle": 1}),  # 0.5 km driven, DS 30
        result("b", "ground_truth", 500.0, 100.0, {"collisions_vehicle": 2}),  # 0.5 km driven, DS 36
        result("c", "ground_truth", 300.0, 0.0, {}),  # never moved: counts the 1 m floor
    ]
    summary = summarize(results)
    assert summary["driving_score"] == pytest.approx((30.0 + 36.0 + 0.0) / 3)
    assert summary["route_completion"] == pytest.approx(50.0)
    assert summary["infraction_penalty"] == pytest.approx((0.6 + 0.36 + 1.0) / 3)
    assert summary["km_driven"] == pytest.approx(1.001)
    assert summary["infractions"]["collisions_vehicle"] == 3
    assert summary["infractions_per_km"]["collisions_vehicle"] == pytest.approx(3 / 1.001)


def test_renderer_comparison_pairs_routes():
    truth = [result(k, "ground_truth", 100.0, c, {}) for k, c in zip("abcd", (100.0, 80.0, 60.0, 40.0))]
    generated = [result(k, "world_model", 100.0, c, {}) for k, c in zip("abcd", (90.0, 85.0, 30.0, 35.0))]
    c = compare_renderers(truth, generated)
    assert c["routes"] == 4
    assert c["mean_difference"] == pytest.approx((-10 + 5 - 30 - 5) / 4)
    assert c["mean_absolute_difference"] == pytest.approx((10 + 5 + 30 + 5) / 4)
    assert c["largest_difference"] == {"route_id": "c", "difference": pytest.approx(-30.0)}
    assert c["spearman"] == pytest.approx(0.8)  # ranks 4,3,2,1 vs 4,3,1,2
    assert compare_renderers(truth[:2], generated[:2])["spearman"] is None  # too few routes


# ---------------------------------------------------------------------- route sets and policies
def test_route_set_v1_is_versioned_paired_and_replans_to_its_lengths(tmp_path):
    from mirage_env.road_map import load_road_map
    from mirage_env.towns import HELDOUT_SEEDS

    route_set = load_route_set(DEFAULT_ROUTE_SET)
    assert route_set.version == "mirage_routes_v1"
    ids = [r.id for r in route_set.routes]
    assert len(ids) == len(set(ids)) == 12
    maps = {r.map for r in route_set.routes}
    assert "Town01" in maps and {f"town:{s}" for s in HELDOUT_SEEDS[:3]} <= maps
    plain = [r for r in route_set.routes if not r.has_traffic]
    busy = [r for r in route_set.routes if r.has_traffic]
    assert [r.id + "+traffic" for r in plain] == [r.id for r in busy]
    assert all(150 <= r.length_m <= 250 and r.max_steps * 0.1 > r.length_m / 8.0 for r in plain)
    entry = next(r for r in plain if r.map == f"town:{HELDOUT_SEEDS[1]}")
    replanned = load_road_map(entry.map).plan_route(entry.start, entry.goal)
    assert replanned.length == pytest.approx(entry.length_m, abs=0.01)

    with pytest.raises(ValueError, match="unknown route set version 'mirage_routes_v0'.*mirage_routes_v1"):
        load_route_set("mirage_routes_v0")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": ROUTE_SET_FORMAT, "version": "x", "routes": [{"id": "a"}]}))
    with pytest.raises(ValueError, match="lacks"):
        load_route_set(bad)
    with pytest.raises(FileNotFoundError):
        load_route_set(tmp_path / "missing.json")


def test_policy_specs_and_clear_errors(tmp_path):
    assert isinstance(load_policy("expert"), ExpertPolicy)
    assert load_policy("agents.metrics:spearman").__name__ == "spearman"
    with pytest.raises(ValueError, match="unknown policy 'autopilot'"):
        load_policy("autopilot")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_policy(str(tmp_path / "missing.zip"))
    with pytest.raises(ValueError, match="no callable 'nothing'"):
        load_policy("agents.metrics:nothing")
    not_a_zip = tmp_path / "model.zip"
    not_a_zip.write_text("hello")
    with pytest.raises(ValueError, match="not a stable-baselines3 checkpoint"):
        load_policy(str(not_a_zip))


def test_cli_reports_bad_eval_input():
    from agents.cli import main

    with pytest.raises(SystemExit, match="unknown policy 'autopilot'"):
        main(["eval", "policy=autopilot"])
    with pytest.raises(SystemExit, match="unknown route set version 'v0'"):
        main(["eval", "routes=v0"])


# ---------------------------------------------------------------------- closed-loop evaluation
@pytest.fixture(scope="module")
def world_model_folder(tmp_path_factory) -> str:
    from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator

    torch.manual_seed(0)
    backbone = TinyBackbone(TinyAutoencoder(encoder_channels=(8, 16), decoder_channels=(16, 8), decoder_blocks=(1, 1),
                                            depth_channels=8, norm_groups=4),
                            TinyGenerator(block_out_channels=(16, 32), norm_groups=8))
    return str(backbone.save_pretrained(tmp_path_factory.mktemp("world_model") / "model"))


def bend_route_set(tmp_path, bend_map: str, max_steps: int = 200, traffic: bool = True) -> str:
    """A route set on the bend map: the last 30 m of the straight into the bend, without and
    (optionally) with one pedestrian of inserted traffic."""
    entry = {"id": "bend", "map": bend_map, "scene_seed": 0, "seed": 3, "start": [55.0, -1.75],
             "goal": list(BEND_ROUTE["route_goal"]), "length_m": 38.61, "max_steps": max_steps,
             "traffic": {"vehicles": 0, "pedestrians": 0}}
    routes = [entry] + ([{**entry, "id": "bend+traffic", "traffic": {"vehicles": 0, "pedestrians": 1}}] if traffic
                        else [])
    path = tmp_path / "bend_routes.json"
    path.write_text(json.dumps({"format": ROUTE_SET_FORMAT, "version": "bend_test_v1", "routes": routes}))
    return str(path)


def test_eval_expert_with_both_renderers_side_by_side(tmp_path, bend_map, world_model_folder):
    out = tmp_path / "eval"
    route_set = load_route_set(bend_route_set(tmp_path, bend_map, traffic=False))
    report = evaluate(ExpertPolicy(), route_set, out, policy_name="expert", world_model_path=world_model_folder,
                      width=32, height=32, render_size=64, videos=1, progress=False)
    assert report["route_set"] == "bend_test_v1" and json.loads((out / "results.json").read_text()) == report
    assert report["warnings"] == []  # the route replans to its recorded length
    routes = {r["renderer"]: r for r in report["routes"]}
    for renderer in ("ground_truth", "world_model"):
        assert routes[renderer]["route_completion"] == pytest.approx(100.0)
        assert routes[renderer]["driving_score"] == pytest.approx(routes[renderer]["route_completion"]
                                                                  * routes[renderer]["infraction_penalty"])
        assert routes[renderer]["termination_reason"] == "route_complete"
    # The expert drives from the car's state, not the pixels: both renderers give the same drive.
    assert report["comparison"]["all"]["mean_absolute_difference"] == pytest.approx(0.0)
    text = (out / "report.md").read_text()
    assert "bend_test_v1" in text and "World model vs ground truth" in text and "| bend |" in text
    for image in ("scores.png", "infractions.png"):
        assert (out / image).stat().st_size > 1000
    assert {v["renderer"] for v in report["videos"]} == {"ground_truth", "world_model"}
    video = imageio.mimread(out / report["videos"][0]["path"], memtest=False)
    assert len(video) == routes["ground_truth"]["steps"] + 1
    assert video[0].shape == (64, 128, 3)  # the observation beside the bird's-eye map


def test_eval_with_traffic_and_without_a_shipped_world_model(tmp_path, bend_map, monkeypatch):
    """Traffic entries run where the env has traffic settings (else they are skipped, saying
    why); a missing default world model skips that renderer; a missing folder is an error."""
    import world_model.pretrained

    monkeypatch.setattr(world_model.pretrained, "DEFAULT_MODEL_DIR", tmp_path / "not_shipped")
    route_set = load_route_set(bend_route_set(tmp_path, bend_map))
    report = evaluate(ExpertPolicy(), route_set, tmp_path / "out", width=32, height=32, videos=0, progress=False)
    assert list(report["summary"]) == ["ground_truth"] and report["comparison"] is None
    skipped = {s["what"]: s["reason"] for s in report["skipped"]}
    assert "mirage train-world-model" in skipped["renderer world_model"]
    if {"traffic_vehicles", "traffic_pedestrians"} <= {f.name for f in dataclasses.fields(DriveConfig)}:
        busy = next(r for r in report["routes"] if r["route_id"] == "bend+traffic")
        assert busy["traffic"] == {"vehicles": 0, "pedestrians": 1}
        assert busy["driving_score"] == pytest.approx(busy["route_completion"] * busy["infraction_penalty"])
        assert report["summary"]["ground_truth"]["traffic"]["routes"] == 1
    else:
        assert "traffic_vehicles" in skipped["bend+traffic"] and len(report["routes"]) == 1
    with pytest.raises(FileNotFoundError, match="not a folder"):
        evaluate(ExpertPolicy(), route_set, tmp_path / "out", world_model_path=str(tmp_path / "nope"), progress=False)


# ---------------------------------------------------------------------- RL training
def test_train_ppo_in_a_subprocess_as_a_user_runs_it(tmp_path, bend_map):
    """``mirage train agent=ppo`` with a tiny budget: model, checkpoints, evaluations, tensorboard."""
    command = [sys.executable, "-m", "agents.cli", "train", "agent=ppo", f"map={bend_map}", f"out_dir={tmp_path}",
               "total_timesteps=64", "n_envs=2", "agent.hyperparameters.n_steps=16",
               "agent.hyperparameters.batch_size=16", "agent.hyperparameters.n_epochs=1", "eval_every=32",
               "eval_episodes=1", "checkpoint_every=32", f"width={SIZE}", f"height={SIZE}", "max_steps=30",
               "progress_bar=false", "threads=1", *(f"+env_settings.{k}={v}" for k, v in SHORT_ROUTES.items())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["timesteps"] == 64 and [e["timesteps"] for e in summary["evaluations"]] == [32, 64]
    assert latest_checkpoint(tmp_path / "checkpoints", "ppo").name == "ppo_64_steps.zip"
    assert (tmp_path / "checkpoints" / "ppo_32_steps.zip").is_file()
    assert list((tmp_path / "tensorboard").glob("ppo_1/events.out.tfevents.*"))
    assert checkpoint_algorithm(tmp_path / "model.zip") == "ppo"
    # Every finished training episode is logged (30-step episodes: at least 2 in 64 steps) and plotted.
    episodes = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) >= 2 and all(0 < e["length"] <= 30 and 0 <= e["route_completion"] <= 100 for e in episodes)
    assert [e["timesteps"] for e in episodes] == sorted(e["timesteps"] for e in episodes)
    assert summary["learning_curve"] == str(tmp_path / "learning_curve.png")
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000


def test_batched_vec_env_steps_as_sb3s_dummy_vec_env(bend_map):
    """The batched VecEnv (one render call per step) gives what DummyVecEnv of the same envs
    gives: observations, rewards, dones, infos (the episode's last info, terminal observation,
    time-limit flag) and reset infos."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = train_config(f"map={bend_map}", f"width={SIZE}", f"height={SIZE}", "max_steps=6",
                       *(f"+env_settings.{k}={v}" for k, v in SHORT_ROUTES.items()))
    batched = make_vec_envs(cfg, 3, seed=5, vec_env="batched")
    dummy = make_vec_envs(cfg, 3, seed=5, vec_env="dummy")
    assert isinstance(batched.unwrapped, BatchedVecEnv) and isinstance(dummy.unwrapped, DummyVecEnv)
    observations, expected = batched.reset(), dummy.reset()
    assert all(np.array_equal(observations[key], expected[key]) for key in expected)
    rng = np.random.default_rng(0)
    dones_seen = 0
    for _ in range(8):
        actions = rng.uniform(-1, 1, size=(3, 2)).astype(np.float32)
        observations, rewards, dones, infos = batched.step(actions)
        expected, expected_rewards, expected_dones, expected_infos = dummy.step(actions)
        assert all(np.array_equal(observations[key], expected[key]) for key in expected)
        np.testing.assert_allclose(rewards, expected_rewards, rtol=1e-6)
        assert np.array_equal(dones, expected_dones)
        for info, expected_info in zip(infos, expected_infos):
            assert info["TimeLimit.truncated"] == expected_info["TimeLimit.truncated"]
            assert info["route_completion"] == pytest.approx(expected_info["route_completion"])
            assert info["infractions"] == expected_info["infractions"]
            if "terminal_observation" in expected_info:
                dones_seen += 1
                assert info["episode"]["l"] == expected_info["episode"]["l"]  # VecMonitor beside Monitor
                assert info["episode"]["r"] == pytest.approx(expected_info["episode"]["r"], rel=1e-5)
                for key, value in expected_info["terminal_observation"].items():
                    assert np.array_equal(info["terminal_observation"][key], value)
        assert ([i["route_completion"] for i in batched.unwrapped.reset_infos]
                == [i["route_completion"] for i in dummy.unwrapped.reset_infos])
    assert dones_seen >= 3  # every env ended at least once (6-step limit)
    batched.close()
    dummy.close()
    with pytest.raises(ValueError, match="autoreset_mode='same_step'"):
        BatchedVecEnv(gym.make_vec("MirageDrive-v0", num_envs=2, vectorization_mode="vector_entry_point",
                                   map=bend_map, renderer="ground_truth"))


def test_ppo_trains_on_batched_envs_and_logs_their_episodes(bend_map):
    from stable_baselines3 import PPO

    from agents.common import DrivingMetricsCallback

    cfg = train_config(f"map={bend_map}", f"width={SIZE}", f"height={SIZE}", "max_steps=20",
                       *(f"+env_settings.{k}={v}" for k, v in SHORT_ROUTES.items()))
    envs = make_vec_envs(cfg, 4, seed=0, vec_env="batched")
    model = PPO("MultiInputPolicy", envs, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    episodes = DrivingMetricsCallback()
    model.learn(total_timesteps=256, callback=episodes)
    assert model.num_timesteps == 256
    assert episodes.episodes >= 4 * (256 // 4 // 20) - 4  # every env finished its 20-step episodes
    assert len(model.ep_info_buffer) == episodes.episodes and all(e["l"] <= 20 for e in model.ep_info_buffer)
    envs.close()


def test_train_sac_resumes_with_its_replay_buffer_and_evaluates(tmp_path, bend_map):
    from stable_baselines3.common.save_util import load_from_pkl

    from agents.rl import train

    overrides = ["agent=sac", f"map={bend_map}", f"out_dir={tmp_path}", "n_envs=1", "eval_every=1000",
                 "checkpoint_every=1000", "eval_episodes=1", f"width={SIZE}", f"height={SIZE}", "max_steps=30",
                 "progress_bar=false", "agent.hyperparameters.learning_starts=8", "agent.hyperparameters.batch_size=8",
                 "agent.hyperparameters.buffer_size=100", *(f"+env_settings.{k}={v}" for k, v in SHORT_ROUTES.items())]
    first = train(train_config(*overrides, "total_timesteps=24"))
    assert first["timesteps"] == 24 and first["resumed_from"] is None
    assert (tmp_path / "checkpoints" / "sac_replay_buffer_24_steps.pkl").is_file()
    second = train(train_config(*overrides, "total_timesteps=40"))
    assert second["resumed_from"].endswith("sac_24_steps.zip") and second["timesteps"] == 40
    # The resumed run kept the first run's transitions: its buffer holds all 40.
    buffer = load_from_pkl(tmp_path / "checkpoints" / "sac_replay_buffer_40_steps.pkl")
    assert buffer.size() == 40
    assert type(load_checkpoint(tmp_path / "model.zip")).__name__ == "SAC"

    # The checkpoint drives in eval; an env with other observations is refused clearly.
    policy = load_policy(str(tmp_path / "model.zip"))
    route_set = load_route_set(bend_route_set(tmp_path, bend_map, max_steps=20, traffic=False))
    report = evaluate(policy, route_set, tmp_path / "eval", renderers=["ground_truth"], width=SIZE, height=SIZE,
                      videos=0, progress=False)
    assert report["routes"][0]["steps"] <= 20 and report["summary"]["ground_truth"]["all"]["routes"] == 1
    with pytest.raises(ValueError, match="trained on observations"):
        evaluate(policy, route_set, tmp_path / "eval", renderers=["ground_truth"], width=48, height=48, videos=0,
                 progress=False)


# ---------------------------------------------------------------------- imitation
@pytest.fixture(scope="module")
def bend_demos(tmp_path_factory, bend_map) -> Path:
    """Expert demonstrations of 8 random bend-map episodes (at most 80 steps each), saved."""
    env = bend_env(bend_map, **SHORT_ROUTES, max_steps=80)
    demos = record_demonstrations(env, episodes=8, seed=0, progress=False)
    return demos.save(tmp_path_factory.mktemp("demos") / "demos.npz")


def test_behaviour_cloning_lowers_the_held_out_action_error(bend_demos, bend_map):
    from stable_baselines3 import PPO

    demos = Demonstrations.load(bend_demos)
    assert demos.episode_count == 8 and demos.actions.shape == (len(demos), 2)
    assert demos.observations["rgb"].shape[1:] == (SIZE, SIZE, 3) and demos.observations["rgb"].dtype == np.uint8
    assert np.abs(demos.actions).max() <= 1.0 and demos.actions[:, 1].max() > 0.5  # the expert accelerates
    train_set, validation = demos.split(0.25)
    assert set(np.unique(validation.episodes)) == {6, 7} and len(train_set) + len(validation) == len(demos)

    policy = PPO("MultiInputPolicy", bend_env(bend_map), seed=0).policy
    before = action_error(policy, validation)
    history = behaviour_cloning(policy, train_set, epochs=12, batch_size=32, validation=validation, progress=False)
    after = history[-1]["validation_action_mse"]
    assert history[-1]["train_action_mse"] < 0.2 * history[0]["train_action_mse"]
    assert after < 0.5 * before, (before, after)


def test_dagger_relabels_the_states_the_learner_visits(bend_map):
    env = bend_env(bend_map, **BEND_ROUTE, max_steps=40)

    def hard_left(observation) -> np.ndarray:
        return np.array([1.0, 0.6], dtype=np.float32)

    visited, completions = dagger_rollouts(env, hard_left, episodes=1, beta=0.0, seed=0,
                                           rng=np.random.default_rng(0), progress=False)
    # The learner drove off to the left; the expert's labels steer back right, with full throttle early on.
    assert len(visited) > 5 and completions[0] < 50
    assert visited.actions[-1, 0] < -0.5
    assert np.all(visited.actions[:, 0] < 0.5)  # never the learner's hard left


def test_dagger_training_grows_its_dataset_round_by_round(tmp_path, bend_map, bend_demos):
    from agents.imitation import train

    cfg = train_config("agent=dagger", f"map={bend_map}", f"out_dir={tmp_path}", f"width={SIZE}", f"height={SIZE}",
                       "max_steps=60", "progress_bar=false", f"agent.demos={bend_demos}", "agent.epochs=1",
                       "agent.iterations=2", "agent.episodes_per_iteration=1",
                       *(f"+env_settings.{k}={v}" for k, v in SHORT_ROUTES.items()))
    summary = train(cfg)
    assert summary["demonstrations"] == len(Demonstrations.load(bend_demos))
    assert not (tmp_path / "demonstrations.npz").exists()  # given, not recorded
    sizes = [r["dataset"] for r in summary["rounds"]]
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]
    assert [r["beta"] for r in summary["rounds"][1:]] == [0.5, 0.25]
    assert all(0.0 <= r["learner_route_completion"] <= 100.0 for r in summary["rounds"][1:])
    dataset = Demonstrations.load(tmp_path / "dagger_dataset.npz")
    assert len(dataset) == sizes[-1] and math.isfinite(summary["validation_action_mse"])
    assert checkpoint_algorithm(tmp_path / "model.zip") == "ppo"
    assert isinstance(load_policy(str(tmp_path / "model.zip")), SB3Policy)

    # PPO fine-tunes the imitated policy: it starts from its weights.
    from agents.rl import train as train_rl

    cloned = load_checkpoint(tmp_path / "model.zip").policy.state_dict()
    cfg = train_config("agent=ppo", f"map={bend_map}", f"out_dir={tmp_path / 'ppo'}", f"init_from={tmp_path}/model.zip",
                       f"width={SIZE}", f"height={SIZE}", "max_steps=30", "n_envs=1", "total_timesteps=16",
                       "agent.hyperparameters.n_steps=16", "agent.hyperparameters.batch_size=16",
                       "agent.hyperparameters.learning_rate=0", "eval_every=1000", "checkpoint_every=1000",
                       "progress_bar=false")
    train_rl(cfg)
    tuned = load_checkpoint(tmp_path / "ppo" / "model.zip").policy.state_dict()
    assert all(torch.equal(cloned[key], tuned[key]) for key in cloned)  # learning rate 0: still the clone
