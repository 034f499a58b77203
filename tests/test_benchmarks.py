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
               "--batches", "2", "--precision", "float32", "bfloat16", "--anchor", "0", "0.5", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(run["precision"], run["anchor"]) for run in report["runs"]] == [
        ("float32", 0.0), ("float32", 0.5), ("bfloat16", 0.0), ("bfloat16", 0.5)]
    for run in report["runs"]:
        assert run["size"] == 32 and run["batch"] == 2 and run["frames_per_second"] > 0
        assert run["ms_per_step_by_stage"]["generator"] > 0 and run["ms_per_step_by_stage"]["memory read"] > 0
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


def test_render_benchmark_times_each_antialias_and_measures_its_aliasing(tmp_path):
    out = tmp_path / "render.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "render.py"), "--frames", "2", "--antialias", "1", "3",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {(row["antialias"], row["size"], row["batch"]) for row in report["results"]} == {
        (rays, size, batch) for rays in (1, 3) for size in (64, 128, 256) for batch in (1, 16)}
    assert all(row["frames_per_s"] > 0 for row in report["results"])
    for size in (64, 128):  # one centre ray per pixel is further from a camera-like frame, and busier
        point, smooth = (next(row for row in report["aliasing"] if (row["size"], row["antialias"]) == (size, rays))
                         for rays in (1, 3))
        assert smooth["psnr_vs_reference"] > point["psnr_vs_reference"]
        assert point["laplacian_variance_ratio"] > smooth["laplacian_variance_ratio"] > 0


def test_fidelity_reports_psnr_by_time_beside_the_start_frame_shown_again(tmp_path):
    out, plot = tmp_path / "fidelity.json", tmp_path / "horizon.png"
    command = [sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--maps", "town:1000001", "--size", "32",
               "--seeds", "1", "--memories", "latent", "none", "--loop-min-m", "60", "--stride", "4",
               "--out", str(out), "--video", str(tmp_path / "v.mp4"), "--sheet", str(tmp_path / "sheet.png"),
               "--horizon-plot", str(plot), "--ceilings-sheet", str(tmp_path / "ceilings.png")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["noise_seeds"] == [0]
    route = report["routes"][0]
    assert "psnr_curve" not in route  # per-frame curves go to the plot only
    horizon = route["psnr_by_horizon"]
    assert list(horizon) == ["start frame again", "latent", "none"]
    assert list(horizon["latent"]) == ["0-2 s", "2-5 s", "5-15 s", "15-60 s", "over 60 s"]
    baseline = horizon["start frame again"]
    # The start frame matches the truth less and less as the car drives away from it.
    assert baseline["0-2 s"] > baseline["5-15 s"] + 2
    assert all(10 < value < 40 for value in horizon["latent"].values() if value is not None)
    # The loop passes the start again, so the second lap sees what the start frame saw; a memory
    # of it through this autoencoder cannot beat the start frame warped with the true depth.
    assert route["frames_with_seen"] > route["second_lap_frames_with_seen"] > 0
    memories = route["memories"]
    ceiling = route["seen_ceiling"]
    assert ceiling["psnr_seen"] > max(memories["latent"]["psnr_seen"], memories["none"]["psnr_seen"])
    assert ceiling["warped_psnr_seen"] > ceiling["psnr_seen"]  # the autoencoder loses detail
    assert 5 < ceiling["latent_warp_psnr_seen"] < ceiling["warped_psnr_seen"]
    autoencoder = route["autoencoder"]  # the true frames through it: closer than any rollout
    assert autoencoder["psnr"] > max(memory["psnr"] for memory in memories.values()) + 3
    assert 0 < autoencoder["sharpness_ratio"] < 1.5 and 0 < autoencoder["ssim"] <= 1
    # Colours: the true frames through the autoencoder and the start frame shown again keep
    # the truth's palette; rollouts drift away from it (at this size by 45 to 60 levels).
    assert 0 < autoencoder["colour_shift"] < 20 and 0 < route["colour_shift_start_frame_again"] < 30
    assert min(memory["colour_shift"] for memory in memories.values()) > autoencoder["colour_shift"]
    assert plot.stat().st_size > 10_000
    assert (tmp_path / "ceilings.png").stat().st_size > 10_000


def test_seen_pixels_are_the_start_frames_unoccluded_surfaces(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch

    from fidelity import seen_in_start_frame, start_frame_projection
    from world_model.camera import camera_pose, intrinsics_from_fov

    size = 16
    K = intrinsics_from_fov(90.0, size, size).expand(4, 3, 3)
    zero = torch.zeros(4)
    # A wall 10 m ahead along +x; frame 0 also has a box 5 m ahead in the middle of the view.
    poses = camera_pose(torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 20, 1], [0, 0, 1]]),
                        torch.tensor([0.0, 0, 0, 180]).deg2rad(), zero)
    depth = torch.full((4, 1, size, size), 10.0)
    depth[0, :, 6:10, 6:10] = 5.0  # the box, gone in frame 1 (it drove off)
    depth[2] = 10.0  # 20 m to the side: its wall is outside frame 0's view
    depth[3] = 0.0  # turned around, facing sky
    uv, z = start_frame_projection(depth, K, poses)
    seen = seen_in_start_frame(depth, uv, z, max_range_m=100.0)
    assert seen[0].all()
    # Frame 1 sees the wall where frame 0 saw it, but not the part the box hid from frame 0.
    assert not seen[1, :, 6:10, 6:10].any()
    assert seen[1].sum() == size * size - 16
    assert not seen[2].any() and not seen[3].any()
    # Beyond max_range the start frame's surfaces were never stored: not seen.
    assert not seen_in_start_frame(depth, uv, z, max_range_m=8.0)[1].any()


def test_latent_warp_moves_the_start_frames_tokens_with_their_surface(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch

    from fidelity import latent_warp, seen_in_start_frame, start_frame_projection
    from world_model.camera import camera_pose, intrinsics_from_fov

    size, downsample = 16, 4
    K = intrinsics_from_fov(90.0, size, size).expand(2, 3, 3)  # 8 px focal length
    # A wall 10 m ahead; frame 1 stands 5 m to the left, so the wall moves 4 px (one latent
    # cell) to the right in the image.
    poses = camera_pose(torch.tensor([[0.0, 0, 1], [0, 5, 1]]), torch.zeros(2), torch.zeros(2))
    depth = torch.full((2, 1, size, size), 10.0)
    uv, z = start_frame_projection(depth, K, poses)
    seen = seen_in_start_frame(depth, uv, z, max_range_m=100.0)
    start = torch.randn(1, 3, size // downsample, size // downsample)
    moved, taken = latent_warp(start, uv, seen, downsample)
    assert moved.shape == (2, 3, 4, 4) and taken.shape == (2, 1, 4, 4)
    assert taken[0].all() and torch.equal(moved[0], start[0])
    # Frame 1's first column shows wall the start frame never saw; every other cell shows the
    # start frame's cell one column to its left.
    assert not taken[1, :, :, 0].any() and taken[1, :, :, 1:].all()
    assert torch.equal(moved[1, :, :, 1:], start[0, :, :, :-1])
    assert not moved[1, :, :, 0].any()


def test_env_startup_times_each_stage_in_a_fresh_process(tmp_path):
    out = tmp_path / "startup.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "env_startup.py"), "--repeats", "1",
               "--renderers", "ground_truth", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert list(cases) == ["MirageDrive-v0 ground_truth default map", "MirageDrive-v0 ground_truth town:3"]
    for figures in cases.values():
        stages = ("import_s", "make_s", "first_reset_s", "first_step_s", "reset_other_seed_s")
        assert all(figures[stage] > 0 for stage in stages)
        assert figures["total_s"] >= sum(figures[stage] for stage in stages) - 0.01  # rounded to ms
        assert figures["peak_rss_mb"] > 100 and not figures["imports_networks"]
        # The map is loaded and dressed once per process; another episode on it reuses that.
        assert figures["reset_other_seed_s"] < figures["first_reset_s"] / 10
