"""How long an env takes to start, and how much memory one holds.

Each case runs in a fresh Python process (as a vector-env worker or a new script would), from
``import gymnasium, mirage_env`` to the first step: seconds to import, to ``gym.make``, to the
first ``reset`` (loading the map, dressing the scene, loading the world model), to a ``reset``
on another seed of the same map (cached map: the per-episode cost) and to the first step, and
the process's peak resident memory. Each case runs ``--repeats`` times; the table and JSON give
the median of each figure.

    python benchmarks/env_startup.py [--repeats 3] [--threads 1] [--renderers ground_truth world_model]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)

CASES = (  # (env id, renderer, map); None: the env's default map
    ("MirageDrive-v0", "ground_truth", None),
    ("MirageDrive-v0", "ground_truth", "town:3"),
    ("MirageDrive-v0", "world_model", None),
    ("MirageWorld-v0", "world_model", None),
)

# Runs in the child process; prints one JSON line.
CHILD = """
import json, resource, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads({threads})
import gymnasium as gym, mirage_env
figures = {{"import_s": time.perf_counter() - start}}
def timed(name, call):
    begin = time.perf_counter()
    out = call()
    figures[name] = time.perf_counter() - begin
    return out
kwargs = {{"renderer": {renderer!r}}}
if {map!r} is not None:
    kwargs["map"] = {map!r}
env = timed("make_s", lambda: gym.make({env_id!r}, **kwargs))
timed("first_reset_s", lambda: env.reset(seed=0))
timed("first_step_s", lambda: env.step(env.action_space.sample()))
timed("reset_other_seed_s", lambda: env.reset(seed=1))
figures["total_s"] = time.perf_counter() - start
figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
figures["imports_networks"] = "diffusers" in sys.modules
print(json.dumps(figures))
"""


def run_case(env_id: str, renderer: str, map_spec: str | None, threads: int) -> dict:
    code = CHILD.format(env_id=env_id, renderer=renderer, map=map_spec, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{env_id} ({renderer}) failed to start:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (figures are medians)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each process")
    parser.add_argument("--renderers", nargs="+", default=["ground_truth", "world_model"],
                        choices=["ground_truth", "world_model"], help="which cases to run")
    parser.add_argument("--out", default="benchmarks/results/env_startup.json")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    results = {}
    for env_id, renderer, map_spec in (case for case in CASES if case[1] in args.renderers):
        name = f"{env_id} {renderer} {map_spec or 'default map'}"
        runs = [run_case(env_id, renderer, map_spec, args.threads) for _ in range(args.repeats)]
        results[name] = {key: (round(statistics.median(run[key] for run in runs), 3) if key != "imports_networks"
                               else runs[0][key]) for key in runs[0]}
        print(f"{name}: {results[name]}", flush=True)

    keys = ("import_s", "make_s", "first_reset_s", "first_step_s", "reset_other_seed_s", "total_s", "peak_rss_mb")
    print(f"\n{'':46}" + "".join(f"{key:>19}" for key in keys))
    for name, figures in results.items():
        print(f"{name:46}" + "".join(f"{figures[key]:>19.2f}" for key in keys))
    write_report({"benchmark": "env_startup", "repeats": args.repeats, "threads": args.threads, "cases": results},
                 args.out)


if __name__ == "__main__":
    main()
