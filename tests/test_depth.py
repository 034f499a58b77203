"""TransformersDepth on tiny random Depth Anything models built in the test."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers.models.dpt.image_processing_pil_dpt import get_resize_output_image_size

from world_model.depth import TransformersDepth, _resized_size, make_tiny_depth_model


@pytest.fixture(scope="module")
def metric_dir(tmp_path_factory):
    return make_tiny_depth_model(tmp_path_factory.mktemp("depth") / "metric")


def images(batch: int = 2, height: int = 32, width: int = 48) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_metric_model_gives_metres_at_the_input_size(metric_dir):
    model = TransformersDepth.from_pretrained(metric_dir)
    depth = model(images())
    assert depth.shape == (2, 1, 32, 48) and depth.dtype == torch.float32
    assert torch.isfinite(depth).all() and (depth > 0).all() and (depth < 80).all()  # max_depth 80 m
    # A known unit factor scales the output; far_m follows it (95% of the scaled max depth).
    doubled = TransformersDepth.from_pretrained(metric_dir, scale=2.0)
    assert torch.allclose(doubled(images()), 2 * depth)
    assert doubled.far_m == pytest.approx(2 * 0.95 * 80)


def test_far_depths_become_no_surface(metric_dir):
    depth = TransformersDepth.from_pretrained(metric_dir, far_m=1.0)(images())
    assert torch.count_nonzero(depth) == 0  # everything is beyond 1 m: sky, as the memory reads 0


def test_relative_model_needs_a_scale(tmp_path):
    folder = make_tiny_depth_model(tmp_path / "relative", metric=False)
    with pytest.raises(ValueError, match="relative inverse depth"):
        TransformersDepth.from_pretrained(folder)
    model = TransformersDepth.from_pretrained(folder, scale=3.0)
    prediction = model.model(pixel_values=model._preprocess(images())).predicted_depth
    assert prediction.shape[-2:] == (28, 42)  # aspect kept, sides multiples of the 14 px patch
    depth = model(images())
    assert depth.shape == (2, 1, 32, 48) and torch.isfinite(depth).all() and (depth >= 0).all()
    inverse = F.interpolate(prediction[:, None], size=(32, 48), mode="bilinear", align_corners=False)
    surface = inverse > 1e-6
    assert surface.any() and torch.allclose(depth[surface] * inverse[surface], torch.tensor(3.0), rtol=1e-4)
    assert torch.all(depth[inverse <= 0] == 0) and model.far_m is None


@pytest.mark.parametrize("size, keep, multiple", [((32, 48), True, 14), ((480, 640), True, 14), ((100, 50), False, 1),
                                                  ((720, 1280), True, 32)])
def test_resize_matches_the_dpt_processor(size, keep, multiple):
    expected = get_resize_output_image_size(torch.zeros(3, *size).numpy(), (518, 518), keep, multiple)
    assert _resized_size(size, (518, 518), keep, multiple) == (expected.height, expected.width)


def test_bad_inputs_raise_clear_errors(metric_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TransformersDepth.from_pretrained(tmp_path / "nowhere")
    folder = tmp_path / "no_processor"
    folder.mkdir()
    (folder / "config.json").write_text((metric_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        TransformersDepth.from_pretrained(folder)
    (folder / "preprocessor_config.json").write_text((metric_dir / "preprocessor_config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="could not load the depth model"):
        TransformersDepth.from_pretrained(folder)
    model = TransformersDepth.from_pretrained(metric_dir)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="scale"):
        TransformersDepth.from_pretrained(metric_dir, scale=-1.0)
    assert json.loads((metric_dir / "config.json").read_text())["depth_estimation_type"] == "metric"
