"""The asset editor's one-step refiner, its training loop, mesh assets and the traffic simulation.
Tiny refiner configs built here; no shipped weights needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from editors import Asset, AssetRefiner, Traffic, load_asset, load_refiner, make_asset
from editors.refiner import edit_region
from editors.refiner_training import Look, RefinerTrainingConfig, pair_batch, train_refiner


def tiny_refiner(seed: int = 0) -> AssetRefiner:
    torch.manual_seed(seed)
    return AssetRefiner(channels=(8, 16), detail_channels=8, norm_groups=4, band_px=1)


def scene(batch: int = 2, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, size, size, generator=generator)
    mask = torch.zeros(batch, 1, size, size, dtype=torch.bool)
    mask[:, :, 5:9, 6:11] = True
    return rgb, mask


def randomise(model: AssetRefiner) -> AssetRefiner:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def test_refiner_changes_only_the_asset_and_its_band():
    rgb, mask = scene()
    untrained = tiny_refiner()
    assert torch.equal(untrained(rgb, mask).rgb, rgb)  # zero-initialised output: the composite unchanged
    model = randomise(tiny_refiner())
    out = model(rgb, mask)
    region = edit_region(mask, 1) > 0
    changed = (out.rgb != rgb).any(1, keepdim=True)
    assert changed.any() and not (changed & ~region).any()
    assert region.sum() == (5 + 2) * (4 + 2) * 2 and changed[region].float().mean() > 0.9
    assert out.state.shape == (2, 16, 4, 4)


def test_refiner_temporal_path_is_causal_and_uses_the_previous_frame():
    rgb, mask = scene(batch=1)
    other, _ = scene(batch=1, seed=1)
    model = randomise(tiny_refiner())
    first = model(other, mask)
    with_past = model(rgb, mask, first.state).rgb
    alone = model(rgb, mask).rgb
    assert not torch.allclose(with_past, alone)  # the previous frame's state enters
    # refine_clip threads the state through a stream in order: frame t sees only frames <= t.
    clip = torch.cat([other, rgb])
    refined = model.refine_clip(clip, mask.expand(2, -1, -1, -1))
    assert torch.allclose(refined[0:1], first.rgb) and torch.allclose(refined[1:2], with_past)
    changed_future = model.refine_clip(torch.cat([other, torch.rand_like(rgb)]), mask.expand(2, -1, -1, -1))
    assert torch.allclose(changed_future[0], refined[0])


def test_refiner_save_and_load_round_trip_and_clear_errors(tmp_path):
    rgb, mask = scene()
    model = randomise(tiny_refiner()).eval()
    model.save_pretrained(str(tmp_path / "refiner"))
    loaded = load_refiner(tmp_path / "refiner")
    assert loaded.config.channels == [8, 16] or tuple(loaded.config.channels) == (8, 16)
    assert torch.allclose(loaded(rgb, mask).rgb, model(rgb, mask).rgb)
    with pytest.raises(FileNotFoundError, match="train-editor"):
        load_refiner(tmp_path / "nothing")
    (tmp_path / "refiner" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not load the refiner"):
        load_refiner(tmp_path / "refiner")
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.rand(1, 3, 10, 10), torch.zeros(1, 1, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="`mask` must be"):
        model(rgb, mask[:, :, :8])
    with pytest.raises(ValueError, match="previous"):
        model(rgb, mask, torch.zeros(2, 16, 2, 2))


def synthetic_pairs(clips: int, seed: int) -> dict:
    """Pairs whose truth is the naive asset darker by a third (a lighting mismatch to learn)."""
    generator = torch.Generator().manual_seed(seed)
    size, frames = 16, 2
    background = (torch.rand(clips, frames, size, size, 3, generator=generator) * 255).to(torch.uint8)
    colour = torch.rand(clips, 1, 1, 1, 3, generator=generator) * 200 + 55
    mask = torch.zeros(clips, frames, 1, size, size, dtype=torch.bool)
    mask[:, :, :, 4:12, 5:11] = True
    pixels = mask.permute(0, 1, 3, 4, 2)
    naive = torch.where(pixels, colour.to(torch.uint8), background)
    truth = torch.where(pixels, (colour * 2 / 3).to(torch.uint8), background)
    return {"background": background, "naive": naive, "truth": truth, "naive_mask": mask, "truth_mask": mask,
            "shadow": torch.zeros(clips, frames, 1, size, size, dtype=torch.float16)}


def test_training_learns_the_scene_look_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = AssetRefiner(channels=(8, 16), detail_channels=8, norm_groups=4, band_px=1)
    config = RefinerTrainingConfig(steps=60, batch_size=8, crop_px=0, lr=3e-3, checkpoint_every=30, log_every=10)
    pairs, validation = synthetic_pairs(16, 0), synthetic_pairs(8, 1)
    train_refiner(model, pairs, config, tmp_path, validation)
    log = json.loads((tmp_path / "refiner_log.json").read_text())
    assert log[-1]["step"] == 60 and (tmp_path / "refiner_losses.png").is_file()
    assert log[-1]["l1"] < 0.6 * log[0]["l1"]
    assert log[-1]["val_psnr_refined"] > log[-1]["val_psnr_naive"] + 2.0
    # Resume: a longer run continues from the checkpoint instead of starting over.
    longer = AssetRefiner(channels=(8, 16), detail_channels=8, norm_groups=4, band_px=1)
    train_refiner(longer, pairs, RefinerTrainingConfig(**{**config.__dict__, "steps": 70}), tmp_path, validation)
    resumed = json.loads((tmp_path / "refiner_log.json").read_text())
    assert [entry["step"] for entry in resumed][:len(log)] == [entry["step"] for entry in log]
    assert resumed[-1]["step"] == 70


def test_frame_looks_and_training_batches():
    pairs = synthetic_pairs(4, 0)
    plain = Look(torch.zeros(4), torch.ones(4, 3), torch.ones(4))
    rgb, mask, target, region = pair_batch(pairs, torch.arange(4), torch.zeros(4, dtype=torch.long), plain)
    assert torch.allclose(rgb[~mask.expand_as(rgb)], target[~mask.expand_as(target)], atol=1e-6)
    assert (rgb[mask.expand_as(rgb)] >= target[mask.expand_as(target)]).all()  # the naive asset is too bright
    blurred = Look(torch.full((4,), 1.0), torch.ones(4, 3), torch.ones(4))(rgb)
    assert blurred.std() < rgb.std()
    with pytest.raises(ValueError, match="at least 2 frames"):
        train_refiner(tiny_refiner(), {k: v[:, :1] for k, v in pairs.items()}, RefinerTrainingConfig(steps=1), ".")


# --------------------------------------------------------------------------------------- meshes
def test_mesh_assets_keep_real_dimensions_and_colours(tmp_path):
    import trimesh

    box = trimesh.creation.box((4.4, 1.8, 1.5))
    box.visual.face_colors = [200, 20, 20, 255]
    car = Asset.from_mesh(box, "car")
    assert np.allclose(car.lower, [-2.2, -0.9, 0.0]) and np.allclose(car.upper, [2.2, 0.9, 1.5])
    assert len(car.boxes) == 1 and np.allclose(car.colours[0], [200 / 255, 20 / 255, 20 / 255])
    # A y-up mesh file (as exported by most tools) of a standing person, loaded by file.
    body = trimesh.creation.cylinder(radius=0.25, height=1.75)
    body.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z-up -> y-up
    path = tmp_path / "person.obj"
    body.export(path)
    person = load_asset(path, kind="pedestrian", up="y", colour=(0.2, 0.3, 0.5))
    assert person.upper[2] == pytest.approx(1.75, abs=1e-3) and person.lower[2] == 0.0
    assert person.upper[0] == pytest.approx(0.25, abs=0.01) and len(person.boxes) > 1
    # The voxel boxes fill the cylinder: a ray through its middle hits; its corners are empty.
    inside = lambda p: any((np.abs(np.asarray(p) - b.centre) <= np.asarray(b.size) / 2).all() for b in person.boxes)  # noqa: E731
    assert inside([0.0, 0.0, 0.9]) and not inside([0.24, 0.24, 0.9])
    spec = tmp_path / "van.json"
    spec.write_text(json.dumps({"kind": "van", "boxes": [{"centre": [0, 0, 1], "size": [5, 2, 2],
                                                           "colour": [1, 1, 1]}]}))
    assert load_asset(spec).kind == "van"


def test_bad_mesh_assets_raise_clear_errors(tmp_path):
    import trimesh

    box = trimesh.creation.box((4, 2, 1.5))
    with pytest.raises(ValueError, match="unknown asset class"):
        Asset.from_mesh(box, "tank")
    with pytest.raises(ValueError, match="`scale` must be > 0"):
        Asset.from_mesh(box, "car", scale=-1.0)
    for pitch in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`pitch_m` must be a finite voxel size > 0 m"):
            Asset.from_mesh(box, "car", pitch_m=pitch)
    path = tmp_path / "car.stl"
    box.export(path)
    with pytest.raises(ValueError, match="needs its class"):
        load_asset(path)
    with pytest.raises(FileNotFoundError, match="asset file not found"):
        load_asset(tmp_path / "missing.obj", kind="car")
    (tmp_path / "car.xyz").write_text("1 2 3")
    with pytest.raises(ValueError, match="unknown asset file type"):
        load_asset(tmp_path / "car.xyz", kind="car")
    (tmp_path / "broken.obj").write_text("this is not a mesh")
    with pytest.raises(ValueError, match="broken.obj"):
        load_asset(tmp_path / "broken.obj", kind="car")


# -------------------------------------------------------------------------------------- traffic
def test_vehicles_stop_for_a_crossing_pedestrian_and_the_ego():
    lane = [[0.0, 0.0], [100.0, 0.0]]
    car = make_asset("car", seed=0)
    person = make_asset("pedestrian", seed=0)
    crossing = [[20.0, -5.0], [20.0, 5.0]]
    traffic = Traffic([car], [lane], [10.0], [0.0], [person], [crossing], [0.0], [5.0], gap_m=2.0)
    for _ in range(40):
        traffic.step(0.1)
    half_length = (car.upper[0] - car.lower[0]) / 2
    person_half = (person.upper[1] - person.lower[1]) / 2  # it faces across the lane: its shoulders lie along it
    stop = 20.0 - person_half - half_length - 2.0
    assert traffic.poses()[0, 0] == pytest.approx(stop, abs=1e-6)
    # Once the pedestrian walks on across, the car drives again.
    traffic.pedestrian_speeds[:] = 1.5
    for _ in range(60):
        traffic.step(0.1)
    assert traffic.poses()[0, 0] > stop + 10
    # The ego as an external obstacle: a car behind it keeps its gap.
    queue = Traffic([car], [lane], [10.0], [0.0])
    ego = ((15.0, 0.0, 0.75), (2.3, 0.95, 0.75), 0.0)
    for _ in range(30):
        queue.step(0.1, [ego])
    assert queue.poses()[0, 0] == pytest.approx(15.0 - 2.3 - half_length - 2.0, abs=1e-6)
    # Something in the next lane (3.5 m to the side) is not in its way.
    beside = Traffic([car], [lane], [10.0], [0.0])
    for _ in range(30):
        beside.step(0.1, [((15.0, 3.5), (2.3, 0.95), 0.0)])
    assert beside.poses()[0, 0] == pytest.approx(30.0)


def test_pedestrians_turn_back_at_the_ends_of_their_walk():
    person = make_asset("pedestrian", seed=1)
    traffic = Traffic(pedestrians=[person], pedestrian_paths=[[[0.0, 0.0], [2.0, 0.0]]], pedestrian_speeds=[1.0])
    xs = []
    for _ in range(35):
        traffic.step(0.1)
        xs.append(traffic.poses()[0, 0])
    assert max(xs) == pytest.approx(2.0) and xs[-1] == pytest.approx(0.5)  # reached the end and walked back
    assert abs(traffic.poses()[0, 2]) == pytest.approx(np.pi)  # facing the way it walks
    assert traffic.track_ids == [0]
    with pytest.raises(ValueError, match="only pedestrians walk"):
        Traffic(pedestrians=[make_asset("car")], pedestrian_paths=[[[0, 0], [1, 0]]], pedestrian_speeds=[1.0])
    with pytest.raises(ValueError, match="finite speeds"):
        Traffic([make_asset("car")], [[[0, 0], [1, 0]]], [-1.0])


def test_the_shipped_refiner_loads_and_edits_only_near_assets():
    model = load_refiner()
    rgb, mask = scene(batch=1, size=32)
    out = model(rgb, mask).rgb
    region = edit_region(mask, model.config.band_px) > 0
    assert (out != rgb).any(1, keepdim=True)[region].float().mean() > 0.5  # trained: it does change assets
    assert torch.equal(out[~region.expand_as(out)], rgb[~region.expand_as(rgb)])


def test_the_shipped_refiner_adds_no_flicker():
    """Streamed over a clip whose frames differ only by noise (as consecutive generated frames
    do), the refined pixels change from frame to frame no more than the input pixels do."""
    model = load_refiner()
    rgb, mask = scene(batch=1, size=64)
    mask[:] = False
    mask[:, :, 20:40, 10:50] = True
    noise = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    clip = (rgb + 0.02 * noise).clamp(0, 1)
    refined = model.refine_clip(clip, mask.expand(8, -1, -1, -1))
    region = (edit_region(mask, model.config.band_px) > 0).expand(1, 3, -1, -1)[0]
    assert (refined[0] - clip[0]).abs()[region].mean() > 0.01  # it does edit the asset
    for t in range(1, 8):
        change_in = (clip[t] - clip[t - 1]).abs()[region].mean()
        change_out = (refined[t] - refined[t - 1]).abs()[region].mean()
        assert change_out <= change_in * 1.02
