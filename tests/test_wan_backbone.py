"""The Wan2.2 + LoRA backbone on a tiny random Wan folder: the real classes and loading path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from world_model.backbone import Conditioning
from world_model.camera import camera_pose, intrinsics_from_fov
from world_model.depth import TransformersDepth, make_tiny_depth_model
from world_model.memory import MemoryRead
from world_model.wan_backbone import WanBackbone, WanBackboneConfig, make_tiny_wan
from world_model.world_model import WorldModel, WorldModelConfig

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # [px] images; the tiny VAE's factor is 4, so latents are 8 x 8
CHANNELS, GRID = 8, 8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny")


def load(folder: Path, **config) -> WanBackbone:
    settings = dict(num_inference_steps=3, max_sequence_length=16, chunk_frames=4, progress=False)
    return WanBackbone.from_pretrained(folder, config=WanBackboneConfig(**{**settings, **config}))


def conditioning(batch: int = 2, targets: int = 2, seed: int = 0, context_frames: int = 1) -> Conditioning:
    generator = torch.Generator().manual_seed(seed)
    count = batch * targets
    valid = torch.rand(count, 1, GRID, GRID, generator=generator) < 0.6
    latents = torch.randn(count, CHANNELS, GRID, GRID, generator=generator) * valid
    return Conditioning(
        memory=MemoryRead(latents=latents, valid=valid, depth=valid * 5.0),
        context=torch.randn(batch, context_frames, CHANNELS, GRID, GRID, generator=torch.Generator().manual_seed(99)),
        motion=torch.zeros(count, 6),
    )


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb_new_patch_weights(backbone: WanBackbone) -> None:
    with torch.no_grad():
        weight = backbone.transformer.patch_embedding.weight
        weight[:, CHANNELS:] = torch.randn(weight[:, CHANNELS:].shape, generator=seeded(7)) * 0.5


def test_loads_through_from_pretrained_with_a_widened_zero_initialised_patch_embedding(tiny_dir):
    backbone = load(tiny_dir)
    assert (backbone.latent_channels, backbone.downsample, backbone.context_frames) == (CHANNELS, 4, 1)
    embedding = backbone.transformer.patch_embedding
    assert embedding.in_channels == CHANNELS + CHANNELS + 1  # latents + memory latents + validity
    assert backbone.transformer.config.in_channels == embedding.in_channels
    assert torch.count_nonzero(embedding.weight[:, CHANNELS:]) == 0
    assert backbone.prompt_embeds.shape == (1, 16, 16)
    # The empty prompt is encoded once; positions past its tokens are zero, as Wan pads them.
    assert torch.count_nonzero(backbone.prompt_embeds[0, 1:]) == 0


def test_encode_decode_shapes_and_checks(tiny_dir):
    backbone = load(tiny_dir)
    images = torch.rand(2, 3, SIZE, SIZE, generator=seeded())
    latents = backbone.encode(images)
    assert latents.shape == (2, CHANNELS, GRID, GRID) and latents.dtype == torch.float32
    frames = backbone.decode(latents)
    assert frames.shape == (2, 3, SIZE, SIZE) and 0 <= frames.min() and frames.max() <= 1
    with pytest.raises(ValueError, match="multiple of 8"):
        backbone.encode(torch.rand(1, 3, 36, 36))
    with pytest.raises(ValueError, match="float"):
        backbone.encode((images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\)"):
        backbone.decode(latents[:, :4])


def test_generate_is_deterministic_under_a_seed_and_per_environment(tiny_dir):
    backbone = load(tiny_dir)
    cond = conditioning()
    first = backbone.generate(cond, seeded(0))
    assert first.shape == (4, CHANNELS, GRID, GRID)
    assert torch.equal(first, backbone.generate(cond, seeded(0)))
    assert not torch.allclose(first, backbone.generate(cond, seeded(1)))
    # One generator per environment: an environment's frames depend on its own seed only.
    per_env = backbone.generate(cond, [seeded(0), seeded(5)])
    again = backbone.generate(cond, [seeded(0), seeded(6)])
    assert torch.allclose(per_env[:2], again[:2], atol=1e-6) and not torch.allclose(per_env[2:], again[2:])


def test_memory_conditioning_is_inert_at_zero_init_and_live_once_trained(tiny_dir):
    backbone = load(tiny_dir)
    read_a, read_b = conditioning(seed=1), conditioning(seed=2)
    assert not torch.equal(read_a.memory.valid, read_b.memory.valid)
    # Zero-initialised new weights: a pretrained model's output ignores the memory...
    assert torch.equal(backbone.generate(read_a, seeded()), backbone.generate(read_b, seeded()))
    # ...until those weights are trained: then the memory latents and mask change the frames.
    perturb_new_patch_weights(backbone)
    a, b = backbone.generate(read_a, seeded()), backbone.generate(read_b, seeded())
    assert (a - b).abs().max() > 1e-3
    only_mask = conditioning(seed=1)
    only_mask.memory.valid = ~only_mask.memory.valid
    assert (a - backbone.generate(only_mask, seeded())).abs().max() > 1e-3


def test_context_latents_stay_clean_and_condition_the_chunk(tiny_dir):
    backbone = load(tiny_dir)
    cond = conditioning(targets=3, context_frames=2)
    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["hidden_states"][:, :CHANNELS, :2].clone(), kwargs["timestep"].clone()))

    handle = backbone.transformer.register_forward_pre_hook(record, with_kwargs=True)
    out = backbone.generate(cond, seeded())
    handle.remove()
    assert len(seen) == backbone.config.num_inference_steps
    context = cond.context.permute(0, 2, 1, 3, 4)
    tokens_per_frame = (GRID // 2) ** 2
    for hidden, timestep in seen:
        assert torch.equal(hidden, context)  # exactly the given latents at every step
        assert timestep.shape == (2, 5 * tokens_per_frame)
        context_tokens = 2 * tokens_per_frame
        assert torch.all(timestep[:, :context_tokens] == 0) and torch.all(timestep[:, context_tokens:] > 0)
    other_context = Conditioning(cond.memory, cond.context + 1.0, cond.motion)
    assert (out - backbone.generate(other_context, seeded())).abs().max() > 1e-3  # the overlap stitches chunks


def test_generate_checks_chunk_length_and_layout(tiny_dir):
    with pytest.raises(ValueError, match="chunk_frames"):
        load(tiny_dir, chunk_frames=1).generate(conditioning(targets=2), seeded())
    backbone = load(tiny_dir, layout_channels=3)
    assert backbone.transformer.patch_embedding.in_channels == CHANNELS + CHANNELS + 1 + 3
    cond = conditioning()
    assert backbone.generate(cond, seeded()).shape == (4, CHANNELS, GRID, GRID)  # no layout: zeros
    cond.layout = torch.rand(4, 2, GRID, GRID)
    with pytest.raises(ValueError, match="3 channels"):
        backbone.generate(cond, seeded())


def test_lora_trains_and_saves_and_loads_exactly(tiny_dir, tmp_path):
    backbone = load(tiny_dir)
    backbone.add_lora(rank=4)
    lora = {name: parameter.detach().clone() for name, parameter in backbone.transformer.named_parameters()
            if "lora_" in name}
    assert len(lora) == 2 * 4 * 2 * 2  # A and B, 4 projections, 2 attentions, 2 blocks
    trainable = backbone.trainable_parameters()
    assert len(trainable) == len(lora) + 2  # + the patch embedding's weight and bias
    cond, targets = conditioning(seed=3), torch.randn(4, CHANNELS, GRID, GRID, generator=seeded(4))
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    losses = []
    backbone.transformer.train()
    for step in range(12):
        loss = backbone.flow_matching_loss(cond, targets, seeded(5))  # one fixed batch and noise draw
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            lora_b = [p for n, p in backbone.transformer.named_parameters() if "lora_B" in n]
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
            assert backbone.transformer.patch_embedding.weight.grad[:, CHANNELS:].abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    backbone.transformer.eval()
    assert losses[-1] < 0.9 * losses[0]
    changed = [not torch.equal(before, dict(backbone.transformer.named_parameters())[name])
               for name, before in lora.items()]
    assert all(changed)

    path = backbone.save_lora(tmp_path / "lora.safetensors")
    fresh = load(tiny_dir)
    fresh.load_lora(path)
    assert torch.equal(backbone.generate(cond, seeded()), fresh.generate(cond, seeded()))

    with pytest.raises(ValueError, match="layout"):
        load(tiny_dir, layout_channels=3).load_lora(path)
    with pytest.raises(FileNotFoundError):
        fresh.load_lora(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a Wan LoRA"):
        load(tiny_dir).load_lora(tmp_path / "other.safetensors")
    with pytest.raises(RuntimeError, match="add_lora"):
        load(tiny_dir).save_lora(tmp_path / "none.safetensors")


def test_finetune_script_runs_a_few_steps(tiny_dir, tmp_path):
    clips, frames = 2, 5
    generator = seeded(0)
    x = 0.5 * torch.arange(frames, dtype=torch.float32)
    poses = camera_pose(torch.stack([x, torch.zeros_like(x), torch.full_like(x, 1.5)], 1), torch.zeros(frames))
    depth = torch.full((clips, frames, 1, SIZE, SIZE), 6.0)
    depth[:, :, :, : SIZE // 4] = 0.0  # sky
    save_file({
        "rgb": torch.randint(0, 256, (clips, frames, SIZE, SIZE, 3), dtype=torch.uint8, generator=generator),
        "depth": depth.half(),
        "cam_to_world": poses[None].repeat(clips, 1, 1, 1).contiguous(),
        "K": intrinsics_from_fov(90, SIZE, SIZE),
    }, str(tmp_path / "town_0.safetensors"))
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "finetune_wan_lora.py"), "--model", str(tiny_dir),
               "--clips", str(tmp_path / "town_0.safetensors"), "--out", str(out), "--steps", "3",
               "--batch-size", "2", "--chunk-frames", "2", "--rank", "4", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((out / "losses.json").read_text())["log"]
    assert len(log) == 3 and all(entry["loss"] > 0 for entry in log)
    backbone = load(tiny_dir)
    backbone.load_lora(out / "lora.safetensors")
    assert backbone.has_lora


def test_world_model_runs_with_the_wan_backbone_and_transformers_depth(tiny_dir, tmp_path):
    depth_model = TransformersDepth.from_pretrained(make_tiny_depth_model(tmp_path / "depth"))
    backbone = load(tiny_dir)
    model = WorldModel(backbone, config=WorldModelConfig(chunk_length=2), depth_model=depth_model)
    rgb = torch.randint(0, 256, (1, SIZE, SIZE, 3), dtype=torch.uint8, generator=seeded())
    K = intrinsics_from_fov(90, SIZE, SIZE)[None]
    start = camera_pose(torch.tensor([[0.0, 0.0, 1.5]]), torch.zeros(1))
    model.reset(rgb, K, start)
    assert len(model.memory) > 0  # lifted with the depth model's metric depth
    x = torch.tensor([0.3, 0.6])
    poses = camera_pose(torch.stack([x, torch.zeros(2), torch.full((2,), 1.5)], 1), torch.zeros(2))[None]
    out = model.render(poses, K, generator=seeded())
    assert out.rgb.shape == (1, 2, SIZE, SIZE, 3) and out.rgb.dtype == torch.uint8
    assert out.depth.shape == out.valid.shape == (1, 2, 1, GRID, GRID)
    assert out.valid.any()

    # Without a depth model of its own, Wan says where depth must come from.
    with pytest.raises(RuntimeError, match="no depth head"):
        backbone.estimate_depth(torch.zeros(1, CHANNELS, GRID, GRID))
    backbone.depth_model = depth_model
    depth, confidence = backbone.estimate_depth(torch.zeros(1, CHANNELS, GRID, GRID))
    assert depth.shape == confidence.shape == (1, 1, GRID, GRID) and (depth > 0).all()


def test_bad_folders_raise_clear_errors(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="Wan model folder not found"):
        WanBackbone.from_pretrained(tmp_path / "nowhere")
    broken = shutil.copytree(tiny_dir, tmp_path / "no_text_encoder")
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        WanBackbone.from_pretrained(broken)
    broken = shutil.copytree(tiny_dir, tmp_path / "no_weights")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="could not load the Wan transformer"):
        WanBackbone.from_pretrained(broken)
    broken = shutil.copytree(tiny_dir, tmp_path / "corrupt_vae")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not load the Wan vae"):
        WanBackbone.from_pretrained(broken)
    broken = shutil.copytree(tiny_dir, tmp_path / "ddpm")
    (broken / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        WanBackbone.from_pretrained(broken)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Wan speed benchmark needs a CUDA GPU")
def test_speed_benchmark_smoke_on_cuda(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "wan_speed.py"), "--tiny", "--chunk", "2", "--steps", "2",
               "--height", "32", "--width", "32", "--chunks", "1", "--out", str(tmp_path / "speed.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "speed.json").read_text())["total_s_per_frame"] > 0
