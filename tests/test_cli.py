import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image


def run_demo(tmp_path, *overrides: str) -> dict:
    command = [
        sys.executable, "-m", "mirage_env.cli", "demo", f"out_dir={tmp_path}", "width=64", "height=48",
        "route_min_length_m=60", "route_max_length_m=120", "max_steps=40", "seed=2", *overrides,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp_path / "summary.json").read_text())


def test_demo_writes_video_sheet_and_trajectory(tmp_path):
    """The README's main job, at a tiny size, with the shipped world model, in a subprocess as a user runs it."""
    summary = run_demo(tmp_path)  # the default renderer
    assert 60 <= summary["route_length_m"] <= 120 and summary["frames"] == 41
    video = imageio.mimread(tmp_path / "drive.mp4", memtest=False)
    assert len(video) == summary["frames"] and video[0].shape == (48 + 16, 64 * 2, 3)  # generated | truth + HUD
    assert np.std(video[len(video) // 2]) > 10  # a picture, not a blank frame
    assert Image.open(tmp_path / "contact_sheet.png").width > 2 * 64 * 2
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps[-1]["speed_mps"] > 1 and steps[-1]["route_completion"] > 0  # the expert drives
    assert all("psnr_db" in step for step in steps) and "mean_psnr_db" in summary


def test_demo_with_the_ground_truth_renderer(tmp_path):
    summary = run_demo(tmp_path, "renderer=ground_truth", "max_steps=5")
    video = imageio.mimread(tmp_path / "drive.mp4", memtest=False)
    assert len(video) == summary["frames"] == 6 and video[0].shape == (48 + 16, 64 * 3, 3)  # RGB | depth | labels


def test_demo_with_a_world_model_folder(tmp_path):
    import torch

    from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator

    torch.manual_seed(0)
    model = TinyBackbone(TinyAutoencoder(encoder_channels=(8, 16), decoder_channels=(16, 8), decoder_blocks=(1, 1),
                                         depth_channels=8, norm_groups=4),
                         TinyGenerator(block_out_channels=(16, 32), norm_groups=8)).save_pretrained(tmp_path / "model")
    summary = run_demo(tmp_path / "out", "renderer=world_model", f"world_model_path={model}", "max_steps=5")
    video = imageio.mimread(tmp_path / "out" / "drive.mp4", memtest=False)
    assert video[0].shape == (48 + 16, 64 * 2, 3)  # generated | ground truth + HUD
    steps = json.loads((tmp_path / "out" / "steps.json").read_text())
    assert all("psnr_db" in step for step in steps) and "mean_psnr_db" in summary


def test_cli_help_and_unknown_command():
    help_text = subprocess.run([sys.executable, "-m", "mirage_env.cli", "demo", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "route_min_length_m" in help_text.stdout
    unknown = subprocess.run([sys.executable, "-m", "mirage_env.cli", "fly"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr


def test_play_scripted_and_keyboard(tmp_path):
    common = [sys.executable, "-m", "mirage_env.cli", "play", "width=32", "height=32", "render_size=64", "steps=20"]
    done = subprocess.run([*common, f"out={tmp_path / 'expert.mp4'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(imageio.mimread(tmp_path / "expert.mp4", memtest=False)) == 21
    # Keyboard: two steps forward, then quit.
    done = subprocess.run([*common, "policy=keyboard", f"out={tmp_path / 'keys.mp4'}"], input="ww\nw\nq\n",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{"):])["steps"] == 2
    bad = subprocess.run([*common, "policy=autopilot"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "policy must be" in bad.stderr
    # Any env setting goes through `+env_settings.<name>=...`; a misspelt one fails with a hint.
    typo = subprocess.run([*common, "+env_settings.speed_limt_mps=5"], capture_output=True, text=True, timeout=300)
    assert typo.returncode != 0 and "Did you mean 'speed_limit_mps'" in typo.stderr


def test_train_world_model_refuses_a_bad_base_model(tmp_path):
    """`base_model=` is checked before any data is rendered."""
    from hydra import compose, initialize_config_module

    from mirage_env.cli import train_world_model

    (tmp_path / "model" / "autoencoder").mkdir(parents=True)
    common = [f"out_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'data'}"]
    with initialize_config_module(config_module="configs", version_base=None):
        with pytest.raises(FileNotFoundError,
                           match=r"is not a trained world model: .*autoencoder/config.json is missing"):
            train_world_model(compose(config_name="train_world_model",
                                      overrides=[*common, f"base_model={tmp_path / 'model'}"]))
        with pytest.raises(ValueError, match="set reencoder.steps > 0"):
            train_world_model(compose(config_name="train_world_model",
                                      overrides=[*common, f"base_model={tmp_path / 'model'}", "reencoder.steps=0"]))
    assert not (tmp_path / "data").exists()


def test_train_world_model_reproduce_command_round_trips():
    """The model card's reproduce command lists every setting that differs from the config file
    (values Hydra reads back as they were: null, booleans, lists), so composing it again gives
    the same config."""
    from hydra import compose, initialize_config_module

    from mirage_env.cli import _overrides

    given = ["data.size=32", "generator.rollout_start=400", "generator.rollout_steps=4",
             "generator.noise_augmentation_max=0.5", "decoder.channels=null", "generator_student.steps=3",
             "generator_student.block_out_channels=[16,32,48]", "ship=true", "base_model=world_model/weights/tiny",
             "+generator_student.rollout_start=2"]
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose(config_name="train_world_model", overrides=given)
        listed = _overrides(cfg)
        again = compose(config_name="train_world_model", overrides=[f"{k}={v}" for k, v in listed])
        defaults = _overrides(compose(config_name="train_world_model"))
    assert again == cfg
    keys = [key for key, _ in listed]
    assert keys[:5] == ["data.towns", "autoencoder.steps", "generator.steps", "decoder.steps", "reencoder.steps"]
    assert set(keys[5:]) == {override.split("=")[0] for override in given}
    assert dict(listed)["decoder.channels"] == "null" and dict(listed)["ship"] == "true"
    assert dict(listed)["base_model"] == "world_model/weights/tiny"
    assert [key for key, _ in defaults] == keys[:5]  # the config file's own settings: nothing else
