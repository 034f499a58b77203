"""PPO and SAC on MirageDrive-v0 / MirageWorld-v0 with stable-baselines3.

``mirage train agent=ppo`` (or ``agent=sac``); every key of ``configs/train.yaml`` and
``configs/agent/<name>.yaml`` is a Hydra override (``mirage train agent=sac total_timesteps=5e4
n_envs=2 agent.hyperparameters.learning_rate=1e-4``). Top to bottom:

1. vectorised training envs (``vec_env``: by default batched, every step of all envs rendered
   in one call, see :func:`agents.common.make_vec_envs`) and a separate evaluation env (other
   seeds);
2. the model: resumed from the newest checkpoint in ``out_dir/checkpoints`` (SAC with its
   replay buffer), else a new one, optionally starting from another checkpoint's policy
   (``init_from``: e.g. a behaviour-cloned policy, ``mirage train agent=bc``);
3. ``learn`` with a progress bar, tensorboard logs (``out_dir/tensorboard``: losses, returns,
   route completion and driving score of finished episodes), periodic evaluation
   (``EvalCallback``: ``out_dir/eval``, best model in ``out_dir/best``) and checkpoints;
4. the final model ``out_dir/model.zip`` (also a checkpoint, so raising ``total_timesteps``
   and running again trains on), ``out_dir/summary.json`` and ``out_dir/learning_curve.png``
   (evaluation return and the training episodes' driving scores against env steps, from
   ``out_dir/eval/evaluations.npz`` and ``out_dir/episodes.jsonl``).

Both use ``MultiInputPolicy`` for the dict observation (NatureCNN on the image, an MLP on the
state entries) and SB3's ``VecTransposeImage`` for the HWC image. SAC needs the Box action
space both envs have. Evaluate the result with ``mirage eval policy=<out_dir>/model.zip``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecTransposeImage, is_vecenv_wrapped

from agents.common import DrivingMetricsCallback, latest_checkpoint, make_vec_envs, plain
from agents.policies import algorithm_class, load_checkpoint

EVAL_SEED_OFFSET = 100_000  # evaluation episodes use other seeds (other routes) than training


def train(cfg: DictConfig) -> dict:
    """Train ``cfg.agent.name`` (``ppo`` or ``sac``) on ``cfg.env``; see the module docstring."""
    name = cfg.agent.name
    Algorithm = algorithm_class(name)
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir)
    checkpoints = run_dir / "checkpoints"
    set_random_seed(cfg.seed)

    # 1. Envs.
    envs = make_vec_envs(cfg, cfg.n_envs, cfg.seed)
    eval_env = make_vec_envs(cfg, 1, cfg.seed + EVAL_SEED_OFFSET)

    # 2. The model: resume, or start (from scratch or from another checkpoint's policy).
    resume_from = latest_checkpoint(checkpoints, name) if cfg.resume else None
    if resume_from is not None:
        model = Algorithm.load(resume_from, env=envs, device=cfg.device, tensorboard_log=str(run_dir / "tensorboard"))
        buffer = checkpoints / resume_from.name.replace(f"{name}_", f"{name}_replay_buffer_").replace(".zip", ".pkl")
        if hasattr(model, "load_replay_buffer") and buffer.is_file():
            model.load_replay_buffer(buffer)
        print(f"mirage train: resuming {name} from {resume_from} ({model.num_timesteps} steps done)")
    else:
        model = Algorithm(cfg.agent.policy, envs, seed=cfg.seed, device=cfg.device, verbose=0,
                          tensorboard_log=str(run_dir / "tensorboard"), **plain(cfg.agent.hyperparameters))
        if cfg.init_from:
            model.policy.load_state_dict(load_checkpoint(cfg.init_from, name, cfg.device).policy.state_dict())
            print(f"mirage train: {name} starts from the policy in {cfg.init_from}")

    if is_vecenv_wrapped(model.get_env(), VecTransposeImage):  # as SB3 wrapped the training envs
        eval_env = VecTransposeImage(eval_env)

    # 3. Learn, evaluating and checkpointing every so many env steps (the callbacks count vector steps).
    remaining = int(cfg.total_timesteps) - model.num_timesteps
    callbacks = CallbackList([
        DrivingMetricsCallback(run_dir / "episodes.jsonl"),
        CheckpointCallback(save_freq=max(cfg.checkpoint_every // cfg.n_envs, 1), save_path=str(checkpoints),
                           name_prefix=name, save_replay_buffer=name == "sac"),
        EvalCallback(eval_env, n_eval_episodes=cfg.eval_episodes, eval_freq=max(cfg.eval_every // cfg.n_envs, 1),
                     log_path=str(run_dir / "eval"), best_model_save_path=str(run_dir / "best"), verbose=0),
    ])
    if remaining > 0:
        model.learn(remaining, callback=callbacks, tb_log_name=name, progress_bar=cfg.progress_bar,
                    reset_num_timesteps=resume_from is None)
    else:
        print(f"mirage train: {model.num_timesteps} steps already done (total_timesteps={cfg.total_timesteps})")

    # 4. Save the model (and a checkpoint of it to resume from) and a summary.
    model.save(run_dir / "model.zip")
    model.save(checkpoints / f"{name}_{model.num_timesteps}_steps.zip")
    if name == "sac":
        model.save_replay_buffer(checkpoints / f"{name}_replay_buffer_{model.num_timesteps}_steps.pkl")
    envs.close()
    eval_env.close()
    evaluations = _evaluations(run_dir / "eval" / "evaluations.npz")
    curve = plot_learning_curve(run_dir, f"{name} on {cfg.env} ({cfg.renderer})")
    summary = {
        "agent": name,
        "env": cfg.env,
        "map": cfg.map,
        "timesteps": int(model.num_timesteps),
        "resumed_from": str(resume_from) if resume_from else None,
        "evaluations": evaluations,
        "model": str(run_dir / "model.zip"),
        "tensorboard": str(run_dir / "tensorboard"),
        "learning_curve": str(curve) if curve else None,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    print(json.dumps(summary, indent=2))
    return summary


def _evaluations(path: Path, spread: bool = False) -> list[dict]:
    """The EvalCallback's log: mean return (and its standard deviation with ``spread``) and
    episode length at each evaluation."""
    import numpy as np

    if not path.is_file():
        return []
    log = np.load(path)
    return [{"timesteps": int(t), "mean_return": round(float(r.mean()), 2), "mean_length": float(n.mean()),
             **({"std_return": float(r.std())} if spread else {})}
            for t, r, n in zip(log["timesteps"], log["results"], log["ep_lengths"])]


def plot_learning_curve(run_dir: Path, title: str) -> Path | None:
    """``run_dir/learning_curve.png``: the evaluations' mean return (with its spread) and the
    training episodes' route completion and driving score (mean of 20) against env steps.
    None when no episode has finished yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    evaluations = _evaluations(run_dir / "eval" / "evaluations.npz", spread=True)
    lines = (run_dir / "episodes.jsonl").read_text().splitlines() if (run_dir / "episodes.jsonl").is_file() else []
    episodes = [json.loads(line) for line in lines]
    if not evaluations and not episodes:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if evaluations:
        steps = np.array([e["timesteps"] for e in evaluations])
        mean = np.array([e["mean_return"] for e in evaluations])
        spread = np.array([e["std_return"] for e in evaluations])
        left.plot(steps, mean, "o-", color="tab:blue")
        left.fill_between(steps, mean - spread, mean + spread, color="tab:blue", alpha=0.2)
    left.set(xlabel="env steps", ylabel="evaluation return", title="evaluation (other seeds)")
    if episodes:
        steps = np.array([e["timesteps"] for e in episodes])
        window = min(20, len(episodes))
        for key, colour in (("route_completion", "tab:green"), ("driving_score", "tab:orange")):
            values = np.convolve([e[key] for e in episodes], np.ones(window) / window, mode="valid")
            right.plot(steps[window - 1:], values, color=colour, label=key.replace("_", " "))
        right.legend()
    right.set(xlabel="env steps", ylabel="% (mean of 20 episodes)", title="training episodes", ylim=(0, 100))
    figure.suptitle(title)
    figure.tight_layout()
    path = run_dir / "learning_curve.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
