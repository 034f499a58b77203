"""Training throughput: env steps/s of stable-baselines3 PPO on MirageDrive-v0 with each way
``mirage train`` vectorises its envs, side by side in one run.

- ``subproc``: one process per env (SB3's ``SubprocVecEnv``), each rendering on one torch thread;
- ``dummy``: all envs in this process, stepped one at a time (SB3's ``DummyVecEnv``);
- ``batched``: all envs in this process, every step rendered in one call
  (``agents.common.BatchedVecEnv`` over the batched vector env): the world model runs at
  batch ``n_envs``.

Each configuration trains PPO (``MultiInputPolicy``, ``configs/agent/ppo.yaml``'s settings, one
rollout of ``--rollout`` env steps in all, so ``n_steps = rollout / n_envs``) for one rollout to
warm up and ``--rollouts`` more timed. Reported per configuration: collection steps/s (policy
and env steps during rollouts) and overall steps/s (with PPO's updates), on the training
settings of ``configs/train.yaml`` (``town:0``, 64 x 64 observations) for both renderers.

    python benchmarks/train_throughput.py [--rollouts 2] [--rollout 1024] [--renderers world_model ground_truth]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from agents.common import make_vec_envs, plain

SETUPS = (("subproc", 4), ("dummy", 4), ("batched", 4), ("batched", 16))


class RolloutClock(BaseCallback):
    """Seconds spent collecting rollouts and the env steps collected."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds, self.steps, self._start, self._steps_at_start = 0.0, 0, 0.0, 0

    def _on_rollout_start(self) -> None:
        self._start, self._steps_at_start = time.perf_counter(), self.model.num_timesteps

    def _on_rollout_end(self) -> None:
        self.seconds += time.perf_counter() - self._start
        self.steps += self.model.num_timesteps - self._steps_at_start

    def _on_step(self) -> bool:
        return True


def measure(cfg, vec_env: str, n_envs: int, rollout: int, rollouts: int) -> dict:
    envs = make_vec_envs(cfg, n_envs, seed=0, vec_env=vec_env)
    hyperparameters = {**plain(cfg.agent.hyperparameters), "n_steps": rollout // n_envs}
    model = PPO(cfg.agent.policy, envs, seed=0, device="cpu", verbose=0, **hyperparameters)
    model.learn(rollout)  # warm-up: worker start, map loading, traces
    clock = RolloutClock()
    start = time.perf_counter()
    model.learn(rollout * rollouts, callback=clock, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    envs.close()
    return {"collection_steps_per_second": round(clock.steps / clock.seconds, 1),
            "overall_steps_per_second": round(clock.steps / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=2, help="timed PPO rollouts per configuration")
    parser.add_argument("--rollout", type=int, default=1024, help="env steps per rollout, all envs together")
    parser.add_argument("--renderers", nargs="+", default=["world_model", "ground_truth"])
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    if any(args.rollout % n_envs for _, n_envs in SETUPS):
        parser.error(f"--rollout must be a multiple of {max(n for _, n in SETUPS)}")
    torch.manual_seed(0)
    report: dict = {"benchmark": "train_throughput", "algorithm": "PPO", "rollout_steps": args.rollout,
                    "timed_rollouts": args.rollouts, "threads": torch.get_num_threads(), "results": {}}
    with initialize_config_module(config_module="configs", version_base=None):
        for renderer in args.renderers:
            cfg = compose(config_name="train", overrides=[f"renderer={renderer}"])
            report.update(map=cfg.map, size=f"{cfg.width}x{cfg.height}")
            for vec_env, n_envs in SETUPS:
                name = f"{renderer}, {vec_env}, {n_envs} envs"
                report["results"][name] = figures = measure(cfg, vec_env, n_envs, args.rollout, args.rollouts)
                print(f"{name:40} collection {figures['collection_steps_per_second']:7.1f} steps/s, "
                      f"overall {figures['overall_steps_per_second']:7.1f} steps/s", flush=True)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
