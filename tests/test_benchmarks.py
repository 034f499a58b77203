"""Smoke tests of benchmark scripts: they run end to end on a tiny budget and write their JSON
with the machine they ran on (the figures themselves are measured by running them, not here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_world_model_speed_compares_precisions_and_records_the_machine(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "world_model_speed.py"), "--steps", "2", "--sizes", "32",
               "--batches", "2", "--precision", "float32", "bfloat16", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [run["precision"] for run in report["runs"]] == ["float32", "bfloat16"]
    for run in report["runs"]:
        assert run["size"] == 32 and run["batch"] == 2 and run["frames_per_second"] > 0
        assert run["ms_per_step_by_stage"]["generator"] > 0
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"] and "cpu_features" in report["machine"]


def test_train_throughput_compares_the_ways_to_vectorise_and_records_the_machine(tmp_path):
    out = tmp_path / "train.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--renderers", "ground_truth",
               "--rollout", "64", "--rollouts", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["results"]) == [f"ground_truth, {kind}, {n} envs" for kind, n in
                                       (("subproc", 4), ("dummy", 4), ("batched", 4), ("batched", 16))]
    for figures in report["results"].values():
        assert figures["collection_steps_per_second"] >= figures["overall_steps_per_second"] > 0
    assert report["machine"]["cores"] >= 1
