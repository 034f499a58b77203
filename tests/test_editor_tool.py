"""`mirage edit` and `mirage train-editor` end to end on tiny clips, data and models."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from editors import AssetRefiner, make_asset
from editors.composite import SHADOW_DYNAMIC_MIN
from editors.refiner import edit_region
from mirage_env.cli import main
from mirage_env.editor_data import clip_tracks, demo_clip, edit_clip, load_clip, save_clip
from mirage_env.scenario import load_map_assets

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
    # The edited frames differ from the clip where assets are (the video is lossy: the exact
    # frames outside the assets are checked on edit_clip's output below).
    edited = np.stack(video).astype(int)
    assert np.abs(edited[0] - rgb[0].numpy()).max(-1)[instances["instance"][0] >= 0].mean() > 10


def test_edit_clip_changes_the_frame_only_at_assets_and_their_shadows(clip_dir):
    trajectory, rgb, depth = load_clip(clip_dir)
    x, y, yaw = trajectory.ego[0, :3]
    van = {"kind": "van", "seed": 2, "x": float(x + 12 * np.cos(yaw)), "y": float(y + 12 * np.sin(yaw))}
    assets, tracks = clip_tracks(trajectory, "town:3", 0, 0, 0, [van])
    naive = edit_clip(trajectory, rgb, depth, assets, tracks)
    outside = (naive.instance < 0).numpy()
    assert (~outside).any()
    before, after = rgb.numpy().astype(int), naive.rgb.numpy().astype(int)
    # Outside the assets the composite only darkens (the contact shadow); beyond the dynamic
    # mask by less than SHADOW_DYNAMIC_MIN of the colour (plus rounding).
    assert (after <= before)[outside].all()
    faint = outside & ~naive.dynamic[:, 0].numpy()
    assert (after >= before * (1 - SHADOW_DYNAMIC_MIN) - 1)[faint].all()
    assert np.array_equal(naive.naive.numpy(), naive.rgb.numpy())
    # The refiner changes nothing beyond the assets grown by its band.
    torch.manual_seed(0)
    refiner = AssetRefiner(channels=(8, 16), detail_channels=8, norm_groups=4)
    torch.nn.init.normal_(refiner.out[-1].weight, std=0.2)  # untrained it would change nothing at all
    refined = edit_clip(trajectory, rgb, depth, assets, tracks, refiner)
    region = edit_region((refined.instance >= 0)[:, None], refiner.config.band_px)[:, 0] > 0
    assert np.array_equal(refined.naive.numpy(), naive.rgb.numpy())
    assert not torch.equal(refined.rgb[region], refined.naive[region])
    assert torch.equal(refined.rgb[~region], refined.naive[~region])


def test_edit_clip_skips_a_frame_without_depth_under_an_asset_and_labels_it(clip_dir):
    trajectory, rgb, depth = load_clip(clip_dir)
    x, y, yaw = trajectory.ego[0, :3]
    van = {"kind": "van", "seed": 2, "x": float(x + 12 * np.cos(yaw)), "y": float(y + 12 * np.sin(yaw))}
    assets, tracks = clip_tracks(trajectory, "town:3", 0, 0, 0, [van])
    lost = depth.clone()
    lost[2] = 0.0  # frame 2 has no depth anywhere (all sky)
    result = edit_clip(trajectory, rgb, lost, assets, tracks)
    errors = [frame[0]["placement_error"] for frame in result.labels]
    assert errors[:2] == [None, None] and errors[3:] == [None] * 3
    assert "no surface under its footprint" in errors[2]
    # The track keeps the level of the other frames: the one edited with the full depth.
    full = edit_clip(trajectory, rgb, depth, assets, tracks)
    assert [f[0]["box_3d_world"] for f in result.labels] == [f[0]["box_3d_world"] for f in full.labels]


def test_explicit_assets_face_along_the_nearest_lane_unless_given_a_yaw(clip_dir):
    trajectory, _, _ = load_clip(clip_dir)
    road_map = load_map_assets("town:3", 0).road_map
    x, y, yaw = trajectory.ego[0, :3]
    node = road_map.nearest_node((x + 12 * np.cos(yaw), y + 12 * np.sin(yaw)))
    (lane_x, lane_y), lane_yaw = road_map.node_xy[node], road_map.node_yaw[node]
    spots = [{"kind": "car", "x": float(lane_x), "y": float(lane_y)},
             {"kind": "car", "x": float(lane_x), "y": float(lane_y), "yaw": 0.3}]
    _, tracks = clip_tracks(trajectory, "town:3", 0, 0, 0, spots)
    assert np.allclose(np.cos(tracks[0][:, 2] - lane_yaw), 1.0, atol=1e-4)
    assert np.allclose(tracks[1][:, 2], 0.3)
    _, tracks = clip_tracks(trajectory, None, 0, 0, 0, spots[:1])  # no map: no lane to face along
    assert np.allclose(tracks[0][:, 2], 0.0)


def test_random_traffic_stops_behind_hand_placed_assets(clip_dir):
    trajectory, _, _ = load_clip(clip_dir)
    assets, tracks = clip_tracks(trajectory, "town:3", 0, 1, 0, [])
    vehicle, track = assets[0], tracks[0]
    free_run = np.linalg.norm(track[-1, :2] - track[0, :2])
    assert free_run > 1.0
    # A van standing in its lane a little more than the gap ahead of it.
    heading = np.array([np.cos(track[0, 2]), np.sin(track[0, 2])])
    standing = make_asset("van", seed=2)
    half = (vehicle.upper[0] - vehicle.lower[0] + standing.upper[0] - standing.lower[0]) / 2
    spot = track[0, :2] + (half + 2.0 + 0.5) * heading
    assets, tracks = clip_tracks(trajectory, "town:3", 0, 1, 0,
                                 [{"kind": "van", "seed": 2, "x": float(spot[0]), "y": float(spot[1])}])
    moved = tracks[0][-1, :2] - tracks[0][0, :2]
    assert 0.0 < np.linalg.norm(moved) < 0.5 + 1e-3  # up to 2 m (the gap) behind the van, not through it
    assert np.linalg.norm(spot - tracks[0][-1, :2]) - half == pytest.approx(2.0, abs=0.05)


def test_edit_refuses_bad_clips_and_off_map_assets(clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="frames.safetensors"):
        main(["edit", f"clip={tmp_path}", f"out_dir={tmp_path / 'out'}"])
    # A map the user names must load (only a clip's own map may be missing: explicit assets only).
    with pytest.raises(ValueError, match="map='town:three' cannot be loaded"):
        main(["edit", f"clip={clip_dir}", f"out_dir={tmp_path / 'out'}", "map=town:three"])
    with pytest.raises(FileNotFoundError, match="cannot be loaded"):
        main(["edit", f"clip={clip_dir}", f"out_dir={tmp_path / 'out'}", f"map={tmp_path / 'nowhere.xodr'}"])
    with pytest.raises(ValueError, match="off the map"):
        main(["edit", f"clip={clip_dir}", f"out_dir={tmp_path / 'out'}", "vehicles=0", "pedestrians=0",
              "refine=false", "assets=[{kind: car, x: 90000.0, y: 0.0}]"])
    with pytest.raises(ValueError, match="unknown asset class"):
        main(["edit", f"clip={clip_dir}", f"out_dir={tmp_path / 'out'}", "vehicles=0", "pedestrians=0",
              "refine=false", "assets=[{kind: tank, x: 0.0, y: 0.0}]"])
    trajectory, rgb, depth = load_clip(clip_dir)
    with pytest.raises(ValueError, match="depth must be"):
        save_clip(tmp_path / "bad", trajectory, rgb, depth[:, :, :10])
    with pytest.raises(ValueError, match=f"frames are 32x24 px .* trajectory's camera is {SIZE}x{SIZE} px"):
        save_clip(tmp_path / "bad", trajectory, rgb[:, :24, :32].contiguous(), depth[:, :, :24, :32])


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
