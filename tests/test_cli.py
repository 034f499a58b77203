import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
from PIL import Image


def test_demo_writes_video_sheet_and_trajectory(tmp_path):
    """The README's main job, at a tiny size, in a subprocess as a user runs it."""
    command = [
        sys.executable, "-m", "mirage_env.cli", "demo", f"out_dir={tmp_path}", "width=64", "height=48",
        "route_min_length_m=60", "route_max_length_m=120", "frame_stride=5", "seed=2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 60 <= summary["route_length_m"] <= 120
    video = imageio.mimread(tmp_path / "drive.mp4", memtest=False)
    assert len(video) == summary["frames"] and video[0].shape == (48, 64 * 3, 3)
    assert np.std(video[len(video) // 2]) > 10  # a picture, not a blank frame
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 2 * 64 * 3


def test_cli_help_and_unknown_command():
    help_text = subprocess.run([sys.executable, "-m", "mirage_env.cli", "demo", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "route_min_length_m" in help_text.stdout
    unknown = subprocess.run([sys.executable, "-m", "mirage_env.cli", "fly"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr
