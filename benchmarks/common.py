"""What every benchmark script shares (they run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    """The machine a benchmark ran on: timings from different CPUs do not compare (the same
    world-model step took 37 ms on one 2-core machine of this project and 17 ms on another)."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(report: dict, path: str | Path) -> Path:
    """Write a benchmark's figures as indented JSON, with the machine they were measured on,
    creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2))
    print(f"wrote {path}")
    return path
