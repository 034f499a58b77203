"""`mirage edit` and `mirage train-editor` end to end on tiny clips, data and models."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from editors import AssetRefiner
from mirage_env.cli import main
from mirage_env.editor_data import demo_clip, load_clip, save_clip

SIZE = 48


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    trajectory, rgb, depth = demo_clip("town:3", seed=0, frames=6, size=SIZE)
    return save_clip(tmp_path_factory.mktemp("clip"), trajectory, rgb, depth)


def test_edit_writes_the_edited_clip_with_labels(clip_dir, tmp_path):
    torch.manual_seed(0)
    refiner = AssetRefiner(channels=(8, 16), detail_channels=8, norm_groups=4)
    refiner.save_pretrained(str(tmp_path / "refiner"))
    trajectory, rgb, _ = load_clip(clip_dir)
    x, y, yaw = trajectory.ego[0, :3]
    ahead = [float(x + 12 * np.cos(yaw)), float(y + 12 * np.sin(yaw))]
    out = tmp_path / "out"
    assert main(["edit", f"clip={clip_dir}", f"out_dir={out}", "vehicles=1", "pedestrians=1",
                 f"refiner_path={tmp_path / 'refiner'}",
                 f"assets=[{{kind: van, seed: 2, x: {ahead[0]}, y: {ahead[1]}, yaw: {float(yaw)}, speed_mps: 2.0}}]"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["map"] == "town:3" and summary["frames"] == 6 and summary["refined"]
    assert summary["assets"]["van"] == 1 and sum(summary["assets"].values()) == 3
    labels = json.loads((out / "labels.json").read_text())
    assert len(labels) == 6 and all(len(frame["assets"]) == 3 for frame in labels)
    van = [a for a in labels[0]["assets"] if a["class"] == "van"][0]
    assert van["box_2d"] is not None and van["alignment_residual_px"] < 0.5  # exact depth: on the ground
    instances = np.load(out / "instances.npz")
    assert instances["instance"].shape == (6, SIZE, SIZE) and instances["dynamic"].shape == (6, SIZE, SIZE)
    rows, cols = np.nonzero(instances["instance"][0] == van["track_id"])
    assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == van["box_2d"]
    assert (instances["dynamic"] >= (instances["instance"] >= 0)).all()
    # The van drives on: its 3D box moves 0.2 m per frame (2 m/s, 0.1 s).
    vans = [np.array([a for a in f["assets"] if a["class"] == "van"][0]["box_3d_world"]) for f in labels]
    assert np.linalg.norm(vans[1].mean(0) - vans[0].mean(0)) == pytest.approx(0.2, abs=1e-3)
    video = imageio.mimread(out / "edited.mp4", memtest=False)
    assert len(video) == 6 and video[0].shape == (SIZE, SIZE, 3)
    assert len(imageio.mimread(out / "side_by_side.mp4", memtest=False)[0][0]) == 3 * SIZE
    # The edited frames differ from the clip exactly where assets (and their shadows) are.
    edited = np.stack(video).astype(int)
    assert np.abs(edited[0] - rgb[0].numpy()).max(-1)[instances["instance"][0] >= 0].mean() > 10


def test_edit_refuses_bad_clips_and_off_map_assets(clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="frames.safetensors"):
        main(["edit", f"clip={tmp_path}", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="off the map"):
        main(["edit", f"clip={clip_dir}", f"out_dir={tmp_path / 'out'}", "vehicles=0", "pedestrians=0",
              "refine=false", "assets=[{kind: car, x: 90000.0, y: 0.0}]"])
    with pytest.raises(ValueError, match="unknown asset class"):
        main(["edit", f"clip={clip_dir}", f"out_dir={tmp_path / 'out'}", "vehicles=0", "pedestrians=0",
              "refine=false", "assets=[{kind: tank, x: 0.0, y: 0.0}]"])
    trajectory, rgb, depth = load_clip(clip_dir)
    with pytest.raises(ValueError, match="depth must be"):
        save_clip(tmp_path / "bad", trajectory, rgb, depth[:, :, :10])


def test_train_editor_trains_resumes_and_writes_a_model_card(tmp_path):
    overrides = [f"out_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'data'}", "data.towns=1",
                 "data.validation_towns=1", "data.clips_per_town=2", "data.size=32", "data.frames=2",
                 "model.channels=[8,16]", "model.detail_channels=8", "crop_px=16", "batch_size=2",
                 "checkpoint_every=2"]
    assert main(["train-editor", *overrides, "steps=2"]) == 0
    assert main(["train-editor", *overrides, "steps=4"]) == 0
    log = json.loads((tmp_path / "run" / "refiner_log.json").read_text())
    assert [entry["step"] for entry in log] == [2, 4] and "val_psnr_refined" in log[-1]
    card = (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    assert "| steps | 4 |" in card and "mirage train-editor" in card
    assert (tmp_path / "run" / "refiner_losses.png").is_file()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["town_0.safetensors", "town_900000.safetensors"]
