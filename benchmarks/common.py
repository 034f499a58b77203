"""What every benchmark script shares (they run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what the networks' speed depends on


def machine() -> dict:
    """The machine a benchmark ran on: timings from different CPUs do not compare (the same
    world-model step took 37 ms on one 2-core machine of this project and 17 ms on another)."""
    model, flags = _cpu_info()
    return {"cpu": model, "cpu_features": [name for name in CPU_FEATURES if name in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def _cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and flags (from /proc/cpuinfo on Linux; no flags elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def write_report(report: dict, path: str | Path) -> Path:
    """Write a benchmark's figures as indented JSON, with the machine they were measured on,
    creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2))
    print(f"wrote {path}")
    return path
