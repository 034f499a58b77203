"""The world model shipped in the package: it loads and beats trivial baselines on a held-out drive.

A broken model (untrained, wrong channel order, a generator that ignores the camera motion, a
decoder that lost its weights) fails these: from one start frame it must predict 2 s of frames
it was never given, on CARLA's Town01, which no training run has seen. Sharpness is measured by
``benchmarks/fidelity.py``, not here.
"""

import numpy as np
import pytest
import torch

from mirage_env.expert import drive_route
from mirage_env.layout import LayoutRasteriser
from mirage_env.scene import dress_scene
from mirage_env.vehicle import CameraMount
from world_model.metrics import psnr
from world_model.pretrained import DEFAULT_MODEL_DIR, load_default_backbone
from world_model.tiny_backbone import TinyBackbone
from world_model.world_model import WorldModel

SIZE = 128
STEPS = 20  # 2 s of driving at 10 frames/s
CRUISE = 60  # expert steps before the world model starts: the car is up to speed


@pytest.fixture(scope="module")
def held_out_drive(town01, town01_renderer):
    """Ground truth of 2 s of an expert drive on Town01 at cruising speed (poses, K, rendered frames)."""
    route = town01.loop_route(np.random.default_rng(0), min_length_m=60.0)
    mount = CameraMount(width=SIZE, height=SIZE)
    ego = drive_route(route, mount, max_steps=CRUISE + STEPS + 1).ego
    assert len(ego) > CRUISE + STEPS, "the expert stopped early"
    poses = mount.poses(ego[CRUISE : CRUISE + STEPS + 1])
    K = mount.intrinsics().expand(len(poses), 3, 3)
    truth = town01_renderer.render(poses, K, SIZE, SIZE)
    return poses, K, truth


def test_the_shipped_model_is_complete():
    assert (DEFAULT_MODEL_DIR / "MODEL_CARD.md").is_file()
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    for fact in ("generator_steps", "generator_training_minutes", "generator_val_psnr", "mirage train-world-model"):
        assert fact in card, f"the model card does not state {fact!r}"
    backbone = load_default_backbone()
    assert isinstance(backbone, TinyBackbone)


def test_the_shipped_model_predicts_a_held_out_drive(held_out_drive, town01):
    poses, K, truth = held_out_drive
    backbone = load_default_backbone()
    layout = LayoutRasteriser(dress_scene(town01, 0).ground)(poses, K, SIZE, SIZE, backbone.downsample)
    model = WorldModel(backbone)
    model.reset(truth.rgb[:1], K[:1], poses[:1], depth=truth.depth[:1])
    generator = torch.Generator().manual_seed(0)
    frames = [model.render(poses[i : i + 1], K[:1], layout=layout[i : i + 1, None], generator=generator).rgb[:, 0]
              for i in range(1, len(poses))]
    generated = torch.cat(frames).permute(0, 3, 1, 2).float() / 255
    target = truth.rgb[1:].permute(0, 3, 1, 2).float() / 255
    start = (truth.rgb[:1].permute(0, 3, 1, 2).float() / 255).expand_as(target)

    model_psnr = float(psnr(generated, target).mean())
    repeat_psnr = float(psnr(start, target).mean())
    mean_colour_psnr = float(psnr(target.mean(dim=(2, 3), keepdim=True).expand_as(target), target).mean())
    assert model_psnr > repeat_psnr + 1.0, f"{model_psnr:.2f} dB vs repeating the start frame {repeat_psnr:.2f} dB"
    assert model_psnr > mean_colour_psnr + 3.0, f"{model_psnr:.2f} dB vs each frame's mean colour {mean_colour_psnr:.2f} dB"
    # The model follows the motion: the last frame is closer to its own truth than to the first.
    assert float(psnr(generated[-1:], target[-1:])) > float(psnr(generated[-1:], target[:1]))
