"""Closed-loop evaluation: drive a policy over a versioned route set and score it the CARLA
Leaderboard 2.x way (route completion, infraction penalty, driving score, infractions per km).

Every route entry is driven twice from the same seed: with the world model's generated frames
(``renderer="world_model"``) and with the exact ground-truth frames (``"ground_truth"``). Road
geometry, rewards and infractions are the same in both (they are measured on the map, never on
pixels), so the only difference is what the agent sees, and the gap between the two scores
measures how far the generated world changes the agent's behaviour: a world model useful for
evaluation gives the scores, and the ranking of routes, that the truth gives.

Collisions do not end a route (``terminate_on_collision=False``), as on the Leaderboard; leaving
the road, straying from the route, standing still too long and the route's time limit do.

Outputs in ``out_dir``: ``results.json`` (every route, summaries, the side-by-side comparison,
what was skipped and why, warnings), ``report.md`` with ``scores.png`` and ``infractions.png``, and videos
of the worst routes (``videos/<route>_<renderer>.mp4`` of ``env.render()``: the observation
beside a bird's-eye map), re-driven from the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from tqdm.auto import tqdm

import mirage_env  # noqa: F401  (registers the env ids)
from agents.metrics import RouteResult, compare_renderers, score_route, summarize
from agents.policies import Policy
from agents.routes import RouteEntry, RouteSet
from mirage_env.envs.config import CONSTRUCTION_ONLY, RENDERERS
from mirage_env.rewards import INFRACTIONS
from mirage_env.visualize import write_video

RENDERER_LABELS = {"ground_truth": "ground truth", "world_model": "world model"}
ROUTE_LENGTH_TOLERANCE_M = 1.0  # [m] a route replanned longer or shorter than recorded is reported


def evaluate(
    policy: Policy,
    route_set: RouteSet,
    out_dir: str | Path,
    *,
    policy_name: str = "policy",
    renderers: Sequence[str] = ("ground_truth", "world_model"),
    traffic: bool = True,
    world_model_path: str | None = None,
    env_id: str = "MirageDrive-v0",
    width: int = 64,
    height: int = 64,
    render_size: int = 192,
    videos: int = 2,
    env_settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Drive ``policy`` over ``route_set`` with each of ``renderers`` and write the report.

    ``traffic=False`` leaves out the entries with inserted traffic. ``world_model_path`` is the
    world-model folder (None: the model shipped in the package; if none is shipped, the world
    model's runs are skipped and the report says so). ``videos`` worst routes are re-driven
    with ``render()`` recorded. ``env_settings`` are any other env settings. Returns the
    contents of ``results.json``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [r for r in renderers if r not in RENDERERS]
    if unknown or not renderers:
        raise ValueError(f"`renderers` must be a non-empty list of {RENDERERS}, got {list(renderers)}")
    if world_model_path is not None and "world_model" in renderers and not Path(world_model_path).is_dir():
        raise FileNotFoundError(f"world_model_path {world_model_path!r} is not a folder; give a trained world-model "
                                "folder (`<out_dir>/model` of `mirage train-world-model`) or null for the shipped one")
    env_class = load_env_creator(gym.spec(env_id).entry_point)
    config_fields = {f.name for f in dataclasses.fields(env_class.config_class)}
    base_kwargs = {"width": width, "height": height, "render_size": render_size, "terminate_on_collision": False,
                   **(env_settings or {})}
    skipped: list[dict[str, str]] = []
    warnings: list[str] = []

    entries = [e for e in route_set.routes if traffic or not e.has_traffic]
    runnable: list[tuple[RouteEntry, dict, dict]] = []  # entry, make kwargs, reset options of its traffic
    for entry in entries:
        settings = {f"traffic_{kind}": count for kind, count in entry.traffic.items()}
        missing = sorted(name for name in settings if name not in config_fields)
        if missing and entry.has_traffic:
            skipped.append({"what": entry.id, "reason": f"{env_id} has no {', '.join(missing)} setting: inserted "
                            "traffic is not available in this version of mirage_env"})
            continue
        settings = {name: count for name, count in settings.items() if name in config_fields}
        make = {k: v for k, v in settings.items() if k in CONSTRUCTION_ONLY}
        runnable.append((entry, make, {k: v for k, v in settings.items() if k not in make}))

    envs: dict[tuple, gym.Env] = {}
    active = list(renderers)

    def env_for(renderer: str, make: dict) -> gym.Env | None:
        key = (renderer, tuple(sorted(make.items())))
        if key not in envs:
            try:
                envs[key] = gym.make(env_id, render_mode="rgb_array", renderer=renderer,
                                     world_model_path=world_model_path, **base_kwargs, **make)
            except FileNotFoundError as error:
                if renderer != "world_model" or world_model_path is not None:
                    raise
                skipped.append({"what": "renderer world_model", "reason": f"{error}"})
                active.remove(renderer)
                return None
        return envs[key]

    results: list[RouteResult] = []
    bar = tqdm(total=len(runnable) * len(renderers), desc=f"eval {policy_name}", unit="route", disable=not progress)
    for entry, make, options in runnable:
        for renderer in renderers:
            env = env_for(renderer, make) if renderer in active else None
            if env is not None:
                result, _ = drive_route(env, policy, entry, options)
                results.append(result)
                if abs(result.length_m - entry.length_m) > ROUTE_LENGTH_TOLERANCE_M and renderer == renderers[0]:
                    warnings.append(f"{entry.id} replans to {result.length_m:.1f} m, not the {entry.length_m:.1f} m "
                                    f"recorded in {route_set.version}: the map or the planner changed since the "
                                    "route set was made (scores are not comparable with older reports)")
                bar.set_postfix_str(f"{entry.id} {renderer}: DS {result.driving_score:.0f}")
            bar.update(1)
    bar.close()

    video_records = []
    for entry_id in worst_routes(results, videos):
        entry, make, options = next(item for item in runnable if item[0].id == entry_id)
        for renderer in active:
            env = env_for(renderer, make)
            result, frames = drive_route(env, policy, entry, options, record=True)
            path = write_video(out_dir / "videos" / f"{entry.id.replace('+', '_')}_{renderer}.mp4", frames,
                               fps=env.metadata["render_fps"])
            video_records.append({"route_id": entry.id, "renderer": renderer, "path": str(path.relative_to(out_dir)),
                                  "driving_score": result.driving_score})
    for env in envs.values():
        env.close()

    report = {
        "route_set": route_set.version,
        "route_set_description": route_set.description,
        "policy": policy_name,
        "env": env_id,
        "settings": {"renderers": list(renderers), "traffic": traffic, "world_model_path": world_model_path,
                     **base_kwargs},
        "skipped": skipped,
        "warnings": warnings,
        "summary": {renderer: summaries([r for r in results if r.renderer == renderer]) for renderer in active},
        "comparison": comparisons(results) if {"ground_truth", "world_model"} <= set(active) else None,
        "routes": [r.as_dict() for r in results],
        "videos": video_records,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    write_markdown_report(report, results, out_dir)
    return report


def drive_route(env: gym.Env, policy: Policy, entry: RouteEntry, options: dict | None = None,
                record: bool = False) -> tuple[RouteResult, list[np.ndarray]]:
    """Drive ``entry`` once from its seed; returns its result and, with ``record``, the
    ``render()`` frames. Actions are clipped to the action space (as stable-baselines3 does)."""
    started = time.perf_counter()
    observation, info = env.reset(seed=entry.seed, options={**entry.reset_options(), **(options or {})})
    if hasattr(policy, "reset"):
        policy.reset(env)
    space = env.action_space
    frames = [env.render()] if record else []
    steps = 0
    while True:
        action = np.asarray(policy(observation), dtype=np.float32).reshape(space.shape)
        observation, _, terminated, truncated, info = env.step(np.clip(action, space.low, space.high))
        steps += 1
        if record:
            frames.append(env.render())
        if terminated or truncated:
            break
    inner = env.unwrapped
    outside_pct = inner.monitor.outside_route_lanes_pct
    score = score_route(info["route_completion"], info["infractions"], outside_pct)
    result = RouteResult(
        route_id=entry.id, map=entry.map, renderer=inner.config.renderer, traffic=dict(entry.traffic),
        length_m=float(inner.scenario.route.length), route_completion=score.route_completion,
        outside_route_lanes_pct=outside_pct, infractions={k: int(v) for k, v in info["infractions"].items()},
        infraction_penalty=score.infraction_penalty, driving_score=score.driving_score,
        termination_reason=info["termination_reason"], steps=steps, wall_s=time.perf_counter() - started,
    )
    return result, frames


def worst_routes(results: Sequence[RouteResult], count: int) -> list[str]:
    """Ids of the ``count`` routes with the lowest driving score under any renderer."""
    worst: dict[str, tuple[float, float]] = {}
    for r in results:
        key = (r.driving_score, r.route_completion)
        worst[r.route_id] = min(worst.get(r.route_id, key), key)
    return sorted(worst, key=worst.get)[:max(count, 0)]


def summaries(results: Sequence[RouteResult]) -> dict:
    """Global statistics of one renderer's results: all routes, then by traffic and by map group."""
    groups = {
        "all": results,
        "no traffic": [r for r in results if not any(r.traffic.values())],
        "traffic": [r for r in results if any(r.traffic.values())],
        "Town01": [r for r in results if r.map == "Town01"],
        "other maps": [r for r in results if r.map != "Town01"],
    }
    return {name: summarize(group) for name, group in groups.items() if group}


def comparisons(results: Sequence[RouteResult]) -> dict:
    """World model vs ground truth, for all routes and for each traffic variant."""
    def split(keep) -> dict:
        chosen = [r for r in results if keep(r)]
        return compare_renderers([r for r in chosen if r.renderer == "ground_truth"],
                                 [r for r in chosen if r.renderer == "world_model"])

    out = {"all": split(lambda r: True), "no traffic": split(lambda r: not any(r.traffic.values()))}
    if any(any(r.traffic.values()) for r in results):
        out["traffic"] = split(lambda r: any(r.traffic.values()))
    return out


# ---------------------------------------------------------------------- report
def write_markdown_report(report: dict, results: Sequence[RouteResult], out_dir: Path) -> Path:
    """``report.md`` with its two plots, from the contents of ``results.json``."""
    renderers = list(report["summary"])
    plot_scores(results, renderers, out_dir / "scores.png")
    plot_infractions(results, renderers, out_dir / "infractions.png")
    lines = [
        f"# Closed-loop evaluation: {report['policy']}",
        "",
        f"Route set **{report['route_set']}**: {report['route_set_description']}",
        "",
        f"Env `{report['env']}`, {report['settings']['width']}x{report['settings']['height']} observations, "
        f"renderers: {', '.join(RENDERER_LABELS[r] for r in renderers) or 'none'}; "
        f"{len(report['routes'])} drives in {report['wall_s']:.0f} s.",
        "",
    ]
    if report["skipped"]:
        lines += ["**Skipped:**", ""] + [f"- {line}" for line in skipped_lines(report["skipped"])] + [""]
    if report["warnings"]:
        lines += ["**Warnings:**", ""] + [f"- {line}" for line in report["warnings"]] + [""]
    lines += ["## Leaderboard scores", "",
              "| renderer | routes | subset | driving score | route completion | infraction penalty | "
              "infractions / km |", "|---|---|---|---|---|---|---|"]
    for renderer, groups in report["summary"].items():
        for subset, s in groups.items():
            per_km = sum(s["infractions_per_km"][k] for k in INFRACTIONS)
            lines.append(f"| {RENDERER_LABELS[renderer]} | {s['routes']} | {subset} | {s['driving_score']:.1f} | "
                         f"{s['route_completion']:.1f} | {s['infraction_penalty']:.3f} | {per_km:.2f} |")
    comparison = report["comparison"]
    if comparison:
        c = comparison["all"]
        rho = "n/a (too few routes or constant scores)" if c["spearman"] is None else f"{c['spearman']:.2f}"
        lines += ["", "## World model vs ground truth", "",
                  f"Driving score {c['driving_score_world_model']:.1f} with generated frames vs "
                  f"{c['driving_score_ground_truth']:.1f} with the ground truth (mean difference "
                  f"{c['mean_difference']:+.1f}, mean absolute difference {c['mean_absolute_difference']:.1f}, "
                  f"largest {c['largest_difference']['difference']:+.1f} on {c['largest_difference']['route_id']}); "
                  f"Spearman rank correlation of the routes' scores: {rho}. The smaller the gap, the better the "
                  "generated world stands in for the real one when evaluating this agent. (An agent that "
                  "does not look at the frames, such as the expert, which drives on the car's state and "
                  "the route, scores the same with both; the comparison means something for agents "
                  "that drive from pixels.)"]
    lines += ["", "## Routes", "", "![scores](scores.png)", "",
              "| route | map | traffic | length [m] | " + " | ".join(
                  f"{RENDERER_LABELS[r]} RC / IP / DS" for r in renderers) + " | end |",
              "|---|---|---|---|" + "---|" * len(renderers) + "---|"]
    by_key = {(r.route_id, r.renderer): r for r in results}
    for route_id in dict.fromkeys(r.route_id for r in results):
        first = next(r for r in results if r.route_id == route_id)
        cells, ends = [], []
        for renderer in renderers:
            r = by_key.get((route_id, renderer))
            cells.append("-" if r is None else f"{r.route_completion:.0f} / {r.infraction_penalty:.2f} / "
                         f"{r.driving_score:.0f}")
            if r is not None:
                ends.append(r.termination_reason)
        traffic = ", ".join(f"{v} {k}" for k, v in first.traffic.items() if v) or "none"
        lines.append(f"| {route_id} | {first.map} | {traffic} | {first.length_m:.0f} | {' | '.join(cells)} | "
                     f"{' / '.join(ends)} |")
    lines += ["", "RC: route completion [%], IP: infraction penalty, DS: driving score [%].", "",
              "## Infractions", "", "![infractions](infractions.png)", ""]
    occurred = [name for name in INFRACTIONS
                if any(groups["all"]["infractions"][name] for groups in report["summary"].values())]
    if occurred:
        lines += ["| infraction | " + " | ".join(f"{RENDERER_LABELS[r]}: count (per km)" for r in renderers) + " |",
                  "|---|" + "---|" * len(renderers)]
        for name in occurred:
            cells = [f"{groups['all']['infractions'][name]} ({groups['all']['infractions_per_km'][name]:.2f})"
                     for groups in report["summary"].values()]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    if report["videos"]:
        lines += ["## Worst routes", ""] + [
            f"- [{v['route_id']} ({RENDERER_LABELS[v['renderer']]})]({v['path']}): driving score "
            f"{v['driving_score']:.0f}" for v in report["videos"]] + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def skipped_lines(skipped: Sequence[dict]) -> list[str]:
    """One line per reason: ``what, what: reason``."""
    by_reason: dict[str, list[str]] = {}
    for item in skipped:
        by_reason.setdefault(item["reason"], []).append(item["what"])
    return [f"{', '.join(whats)}: {reason}" for reason, whats in by_reason.items()]


def plot_scores(results: Sequence[RouteResult], renderers: Sequence[str], path: Path) -> None:
    """Route completion and driving score per route, one bar per renderer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    route_ids = list(dict.fromkeys(r.route_id for r in results))
    by_key = {(r.route_id, r.renderer): r for r in results}
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.7 * len(route_ids) + 2), 6), sharex=True)
    width = 0.8 / max(len(renderers), 1)
    x = np.arange(len(route_ids))
    for ax, metric, label in zip(axes, ("route_completion", "driving_score"), ("route completion [%]",
                                                                                  "driving score [%]")):
        for i, renderer in enumerate(renderers):
            values = [getattr(by_key[(rid, renderer)], metric) if (rid, renderer) in by_key else np.nan
                      for rid in route_ids]
            ax.bar(x + (i - (len(renderers) - 1) / 2) * width, values, width, label=RENDERER_LABELS[renderer])
        ax.set_ylabel(label)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[1].set_xticks(x, route_ids, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_infractions(results: Sequence[RouteResult], renderers: Sequence[str], path: Path) -> None:
    """Infraction counts by Leaderboard name, one bar per renderer (only names that occurred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = {renderer: {name: sum(r.infractions.get(name, 0) for r in results if r.renderer == renderer)
                         for name in INFRACTIONS} for renderer in renderers}
    names = [name for name in INFRACTIONS if any(counts[r][name] for r in renderers)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) + 2), 3.5))
    if names:
        width = 0.8 / len(renderers)
        x = np.arange(len(names))
        for i, renderer in enumerate(renderers):
            ax.bar(x + (i - (len(renderers) - 1) / 2) * width, [counts[renderer][n] for n in names], width,
                   label=RENDERER_LABELS[renderer])
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("count over all routes")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no infractions", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
