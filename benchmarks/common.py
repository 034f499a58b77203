"""What every benchmark script shares (they run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, path: str | Path) -> Path:
    """Write a benchmark's figures as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return path
