"""Env throughput: steps/s of MirageDrive-v0 beside highway-env's highway-fast-v0, in one run.

Measured (the expert drives, so episodes are long and realistic; resets are included):

- one env, 64x64 and 128x128, world-model and ground-truth frames; at 64x64 the world model
  generates at 128 px (its training size, resized) and natively at 64 px (``world_model_size=64``);
- the batched vector env (``vector_entry_point``, one renderer call per step) with 16 envs,
  aggregate steps/s, with the world model's networks in float32 (the default) and in bfloat16
  (``world_model_precision``, faster on CPUs with native bfloat16);
- highway-fast-v0 with 64x64 grayscale image observations (highway-env's image observation),
  random actions, the reference;
- time per step over 10,000 world-model steps at 64x64: first vs last thousand (the memory is
  bounded, so later steps must not get slower).

highway-env is a benchmark-only dependency (``pip install highway-env``). It renders black
frames with SDL's ``dummy`` driver, so it runs with ``SDL_VIDEODRIVER=offscreen``, in a
subprocess killed with SIGKILL on timeout (it ignores SIGTERM).

    python benchmarks/env_throughput.py [--steps 300] [--long-steps 10000] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
import mirage_env  # noqa: F401  (registers the envs)
from mirage_env.expert import RouteExpert

HIGHWAY_CODE = """
import os, sys, time
os.environ["SDL_VIDEODRIVER"] = "offscreen"
import gymnasium as gym, highway_env, numpy as np
gym.register_envs(highway_env)
config = {"observation": {"type": "GrayscaleObservation", "observation_shape": (64, 64), "stack_size": 1,
                          "weights": [0.2989, 0.5870, 0.1140]}}
env = gym.make("highway-fast-v0", config=config)
env.reset(seed=0)
rng = np.random.default_rng(0)
steps = int(sys.argv[1])
for _ in range(10):
    env.step(env.action_space.sample())
start = time.perf_counter()
for _ in range(steps):
    obs, r, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
    if terminated or truncated:
        env.reset()
assert obs.std() > 0, "highway-env rendered blank frames"
print(steps / (time.perf_counter() - start))
"""


def highway_steps_per_second(steps: int) -> float | None:
    try:
        done = subprocess.run([sys.executable, "-c", HIGHWAY_CODE, str(steps)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "SDL_VIDEODRIVER": "offscreen"})
    except subprocess.TimeoutExpired:  # subprocess.run kills with SIGKILL
        print("highway-fast-v0 timed out", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"highway-fast-v0 failed (pip install highway-env?):\n{done.stderr[-1500:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def expert_actions(envs) -> np.ndarray:
    actions = []
    for env in envs:
        if getattr(env, "_expert_route", None) is not env.scenario.route:
            env._expert_route, env._expert = env.scenario.route, RouteExpert(env.scenario.route, env.model)
        actions.append(env._expert.act(env.state))
    return np.array(actions, dtype=np.float32)


def single_env(size: int, renderer: str, steps: int, model: str | None, model_size: int = 128,
               per_step: bool = False):
    """Steps/s of one env (and per-step seconds if asked)."""
    env = gym.make("MirageDrive-v0", map="Town01", width=size, height=size, renderer=renderer,
                   world_model_path=model, world_model_size=model_size, max_steps=100_000)
    env.reset(seed=0)
    inner = env.unwrapped
    times = []
    for _ in range(5):  # warm-up
        env.step(expert_actions([inner])[0])
    start = time.perf_counter()
    for _ in range(steps):
        tick = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(expert_actions([inner])[0])
        if terminated or truncated or inner._expert.done(inner.state):
            env.reset()
        times.append(time.perf_counter() - tick)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return (rate, np.array(times)) if per_step else rate


def batched(size: int, renderer: str, num_envs: int, steps: int, model: str | None, model_size: int = 128,
            precision: str = "float32") -> float:
    vector = gym.make_vec("MirageDrive-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                          map="Town01", width=size, height=size, renderer=renderer, world_model_path=model,
                          world_model_size=model_size, world_model_precision=precision, max_steps=100_000)
    vector.reset(seed=0)
    envs = vector.unwrapped.envs
    for _ in range(3):
        vector.step(expert_actions(envs))
    start = time.perf_counter()
    for _ in range(steps):
        vector.step(expert_actions(envs))
    rate = num_envs * steps / (time.perf_counter() - start)
    vector.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per single-env measurement")
    parser.add_argument("--vector-steps", type=int, default=40, help="steps of the 16-env vector env")
    parser.add_argument("--long-steps", type=int, default=10_000, help="world-model steps for the drift figure")
    parser.add_argument("--long-model-size", type=int, default=128, help="[px] world-model size of the long run")
    parser.add_argument("--model", default=None, help="world-model folder (default: the shipped model)")
    parser.add_argument("--out", default="benchmarks/results/env_throughput.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    report: dict = {"benchmark": "env_throughput", "threads": torch.get_num_threads(), "steps_per_second": {}}
    rates = report["steps_per_second"]
    rates["highway-fast-v0 64x64"] = highway_steps_per_second(args.steps)
    for size in (64, 128):
        name = f"1 env ground_truth {size}x{size}"
        rates[name] = single_env(size, "ground_truth", args.steps, args.model)
        print(f"{name}: {rates[name]:.1f} steps/s", flush=True)
        for model_size in sorted({size, 128}):
            name = f"1 env world_model {size}x{size} (model at {model_size} px)"
            rates[name] = single_env(size, "world_model", args.steps, args.model, model_size)
            print(f"{name}: {rates[name]:.1f} steps/s", flush=True)
            name = f"16 envs batched world_model {size}x{size} (model at {model_size} px)"
            rates[name] = batched(size, "world_model", 16, args.vector_steps, args.model, model_size)
            print(f"{name}: {rates[name]:.1f} steps/s", flush=True)
            name = f"16 envs batched world_model {size}x{size} (model at {model_size} px, bfloat16)"
            rates[name] = batched(size, "world_model", 16, args.vector_steps, args.model, model_size, "bfloat16")
            print(f"{name}: {rates[name]:.1f} steps/s", flush=True)
    _, times = single_env(64, "world_model", args.long_steps, args.model, args.long_model_size, per_step=True)
    thousand = min(1000, len(times) // 2)
    report["long_run"] = f"{len(times)} steps, 64x64, model at {args.long_model_size} px"
    report["ms_per_step_first_1000"] = round(1000 * times[:thousand].mean(), 2)
    report["ms_per_step_last_1000"] = round(1000 * times[-thousand:].mean(), 2)
    report["last_over_first"] = round(times[-thousand:].mean() / times[:thousand].mean(), 3)
    highway = rates["highway-fast-v0 64x64"]
    if highway:
        for model_size in (64, 128):
            report[f"world_model_64_over_highway (model at {model_size} px)"] = round(
                rates[f"1 env world_model 64x64 (model at {model_size} px)"] / highway, 2)
            for suffix in ("", ", bfloat16"):
                report[f"batched16_64_over_highway (model at {model_size} px{suffix})"] = round(
                    rates[f"16 envs batched world_model 64x64 (model at {model_size} px{suffix})"] / highway, 2)

    print(f"\n{'':56}{'steps/s':>10}")
    for name, rate in rates.items():
        print(f"{name:56}{rate if rate is None else round(rate, 1):>10}")
    for key, value in report.items():
        if key not in ("benchmark", "threads", "steps_per_second"):
            print(f"{key:56}{value!s:>10}")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
