"""The ``mirage`` command with the agents' commands added (``mirage_env`` never imports
``agents``, so the console script starts here):

- ``mirage train agent=ppo|sac|bc|dagger``: train an agent (``configs/train.yaml``,
  ``configs/agent/<name>.yaml``);
- ``mirage eval policy=expert|path/model.zip|module:function``: closed-loop Leaderboard-style
  evaluation over a versioned route set (``configs/eval.yaml``).
"""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig, OmegaConf

from mirage_env import cli as mirage_cli


def train(cfg: DictConfig) -> dict:
    """Train an agent: agent=ppo or sac (stable-baselines3 RL), bc or dagger (imitation of the
    route expert). Writes the model, checkpoints, logs and summary.json to out_dir."""
    if cfg.agent.name in ("ppo", "sac"):
        from agents.rl import train as train_rl

        return train_rl(cfg)
    if cfg.agent.name in ("bc", "dagger"):
        from agents.imitation import train as train_imitation

        return train_imitation(cfg)
    raise SystemExit(f"mirage train: unknown agent {cfg.agent.name!r}; choose ppo, sac, bc or dagger")


def evaluate(cfg: DictConfig) -> dict:
    """Drive a policy over a versioned route set with the world model's frames and the ground
    truth; write results.json, report.md with plots, and videos of the worst routes."""
    import torch

    from agents.evaluate import evaluate as run_evaluation
    from agents.evaluate import skipped_lines
    from agents.policies import load_policy
    from agents.routes import load_route_set

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    settings = OmegaConf.to_container(cfg.env_settings, resolve=True) if cfg.env_settings else {}
    try:
        policy, route_set = load_policy(cfg.policy, cfg.algorithm), load_route_set(cfg.routes)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"mirage eval: {error}") from error
    report = run_evaluation(
        policy, route_set, cfg.out_dir, policy_name=str(cfg.policy),
        renderers=list(cfg.renderers), traffic=cfg.traffic, world_model_path=cfg.world_model_path, env_id=cfg.env,
        width=cfg.width, height=cfg.height, render_size=cfg.render_size, videos=cfg.videos, env_settings=settings,
    )
    brief = {key: report[key] for key in ("route_set", "policy", "wall_s")}
    brief["skipped"] = skipped_lines(report["skipped"])
    brief["warnings"] = report["warnings"]
    brief["driving_score"] = {renderer: round(groups["all"]["driving_score"], 2)
                              for renderer, groups in report["summary"].items()}
    brief["report"] = f"{cfg.out_dir}/report.md"
    print(json.dumps(brief, indent=2))
    return report


COMMANDS = {"train": train, "eval": evaluate}


def main(argv: list[str] | None = None) -> int:
    mirage_cli.COMMANDS.update(COMMANDS)
    return mirage_cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
