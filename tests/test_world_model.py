import math

import pytest
import torch

from world_model.backbone import Conditioning
from world_model.camera import camera_pose, intrinsics_from_fov
from world_model.memory import MemoryRead
from world_model.metrics import colour_shift, laplacian_variance, psnr, ssim
from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator, noised
from world_model.world_model import WorldModel, WorldModelConfig

SIZE = 32


def tiny_backbone(seed: int = 0, reencoder: bool = False) -> TinyBackbone:
    torch.manual_seed(seed)
    autoencoder = TinyAutoencoder(encoder_channels=(8, 16), decoder_channels=(16, 8), decoder_blocks=(1, 1),
                                  depth_channels=8, norm_groups=4, reencoder_channels=(4, 8) if reencoder else None)
    generator = TinyGenerator(block_out_channels=(16, 32), norm_groups=8)
    return TinyBackbone(autoencoder, generator)


def street_start(batch: int = 1):
    generator = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (batch, SIZE, SIZE, 3), dtype=torch.uint8, generator=generator)
    depth = torch.full((batch, 1, SIZE, SIZE), 8.0)
    depth[:, :, : SIZE // 4] = 0.0  # sky on top
    K = intrinsics_from_fov(90, SIZE, SIZE).expand(batch, 3, 3)
    pose = camera_pose(torch.zeros(batch, 3) + torch.tensor([0.0, 0.0, 1.5]), torch.zeros(batch))
    return rgb, depth, K, pose


def forward_poses(batch: int, steps: int, step_m: float = 0.5) -> torch.Tensor:
    x = step_m * torch.arange(1, steps + 1, dtype=torch.float32)
    position = torch.stack([x, torch.zeros_like(x), torch.full_like(x, 1.5)], 1)
    poses = camera_pose(position, torch.zeros(steps))
    return poses[None].expand(batch, -1, -1, -1)


def shared_tokens(model: WorldModel) -> int:
    """Tokens in the envs' shared caches (not the observed frames' caches an anchor adds)."""
    return sum(model.memory.count(i) for i in range(model.num_envs))


def test_render_shapes_and_memory_growth():
    rgb, depth, K, pose = street_start(2)
    model = WorldModel(tiny_backbone(), num_envs=2)
    model.reset(rgb, K, pose, depth=depth)
    tokens_after_reset = shared_tokens(model)
    grid = SIZE // 4
    # The start frame's sky rows are filtered; everything else is stored, and kept apart once
    # more for the anchor.
    assert tokens_after_reset == 2 * (grid - grid // 4) * grid == len(model.memory) // 2
    out = model.render(forward_poses(2, 3), K, generator=torch.Generator().manual_seed(0))
    assert out.rgb.shape == (2, 3, SIZE, SIZE, 3) and out.rgb.dtype == torch.uint8
    assert out.depth.shape == out.valid.shape == (2, 3, 1, grid, grid)
    assert out.valid[:, 0].any()  # the start frame is seen again from 0.5 m ahead
    assert shared_tokens(model) >= tokens_after_reset
    assert len(model.memory) - shared_tokens(model) == tokens_after_reset  # the observed frames' caches do not grow


def test_render_is_deterministic_under_a_generator():
    rgb, depth, K, pose = street_start()
    outputs = []
    for _ in range(2):
        model = WorldModel(tiny_backbone(seed=3))
        model.reset(rgb, K, pose, depth=depth)
        outputs.append(model.render(forward_poses(1, 4), K, generator=torch.Generator().manual_seed(7)).rgb)
    assert torch.equal(outputs[0], outputs[1])
    model = WorldModel(tiny_backbone(seed=3))
    model.reset(rgb, K, pose, depth=depth)
    other = model.render(forward_poses(1, 4), K, generator=torch.Generator().manual_seed(8)).rgb
    assert not torch.equal(outputs[0], other)  # the noise channels do matter


def test_dynamic_tokens_are_never_written():
    rgb, depth, K, pose = street_start()
    model = WorldModel(tiny_backbone())
    dynamic = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    dynamic[..., SIZE // 2 :, :] = True  # a moving thing on the bottom half
    model.reset(rgb, K, pose, depth=depth, dynamic=dynamic)
    grid = SIZE // 4
    assert shared_tokens(model) == (grid // 2 - grid // 4) * grid
    before = shared_tokens(model)
    all_dynamic = torch.ones(1, 2, 1, SIZE, SIZE, dtype=torch.bool)
    model.render(forward_poses(1, 2), K, dynamic=all_dynamic, depth=torch.full((1, 2, 1, SIZE, SIZE), 8.0))
    assert shared_tokens(model) == before  # every write filters, not only the first frame


@pytest.mark.parametrize("reencode", [0.0, 0.25, 1.0])
def test_chunks_pass_their_last_frame_on_as_context(reencode):
    rgb, depth, K, pose = street_start()
    backbone = tiny_backbone(reencoder=True)
    seen = []
    generate = backbone.generate

    def recording(conditioning, generator=None):
        seen.append(conditioning.context.clone())
        latents = generate(conditioning, generator)
        seen.append(latents.clone())
        return latents

    backbone.generate = recording
    model = WorldModel(backbone, config=WorldModelConfig(chunk_length=2, reencode=reencode, anchor=0.0))
    model.reset(rgb, K, pose, depth=depth)
    out = model.render(forward_poses(1, 5), K, generator=torch.Generator().manual_seed(0))
    assert out.rgb.shape[1] == 5
    contexts, latents = seen[0::2], seen[1::2]
    assert [lat.shape[0] for lat in latents] == [2, 2, 1]
    for chunk in range(1, 3):
        generated = latents[chunk - 1][-1:]
        # Re-encoding: the context mixes the shown frame, encoded again (by the re-encoder), into the
        # generated latents.
        shown = backbone.reencode(backbone.decode(generated))
        assert not torch.allclose(shown, generated, atol=1e-2)
        assert not torch.allclose(shown, backbone.encode(backbone.decode(generated)), atol=1e-2)
        assert torch.allclose(contexts[chunk][0, -1:], torch.lerp(generated, shown, reencode), atol=1e-5)


@pytest.mark.parametrize("anchor", [0.0, 0.5, 1.0])
def test_generated_latents_are_pulled_toward_the_observed_frame(anchor):
    rgb, depth, K, pose = street_start()
    backbone = tiny_backbone()
    generated, shown = [], []
    generate, decode = backbone.generate, backbone.decode
    backbone.generate = lambda conditioning, generator=None: generated.append(generate(conditioning, generator)) or generated[-1]
    backbone.decode = lambda latents: shown.append(latents) or decode(latents)
    model = WorldModel(backbone, config=WorldModelConfig(anchor=anchor))
    model.reset(rgb, K, pose, depth=depth)
    observed = model.memory.latent[model.memory.cache == 1].clone()  # env 0's observed frames' cache
    shared = model.memory.latent[model.memory.cache == 0].clone()
    assert anchor == 0 or torch.equal(observed, shared)
    model.render(torch.stack([pose, forward_poses(1, 1)[:, 0]], 1), K, depth=depth[:, None].expand(-1, 2, -1, -1, -1),
                 generator=torch.Generator().manual_seed(0))
    if anchor == 0:
        assert not model.anchored and model.memory.num_caches == 1 and torch.equal(shown[0], generated[0])
        return
    # Back at the start pose the start frame saw every cell below the sky: there the frame shown
    # moves `anchor` of the way from the generated latents to the start frame's own (kept in float16).
    start = backbone.encode(torch.as_tensor(rgb).permute(0, 3, 1, 2).float() / 255).half().float()
    ground = torch.zeros_like(start, dtype=torch.bool)
    ground[..., SIZE // 4 // 4 :, :] = True
    assert not torch.allclose(generated[0], start, atol=1e-2)
    expected = torch.where(ground, torch.lerp(generated[0], start, anchor), generated[0])
    assert torch.allclose(shown[0], expected, atol=1e-5)
    # The observed frames' cache keeps the start frame alone; generated frames go to the shared one.
    assert torch.equal(model.memory.latent[model.memory.cache == 1], observed)
    assert not torch.equal(model.memory.latent[model.memory.cache == 0], shared)


def test_too_many_environments_for_one_latent_cache_is_a_clear_error():
    WorldModel(tiny_backbone(), num_envs=128)  # 128 shared caches and 128 of start frames
    with pytest.raises(ValueError, match="at most 128 environments with an anchor.*anchor=0"):
        WorldModel(tiny_backbone(), num_envs=129)
    WorldModel(tiny_backbone(), num_envs=256, config=WorldModelConfig(anchor=0.0))
    with pytest.raises(ValueError, match="at most 256 environments, got 257"):
        WorldModel(tiny_backbone(), num_envs=257, config=WorldModelConfig(anchor=0.0))


def test_no_memory_has_nothing_to_anchor_to():
    model = WorldModel(tiny_backbone(), config=WorldModelConfig(memory="none", anchor=1.0))
    assert not model.anchored
    with pytest.raises(ValueError, match="observed frames"):
        model.observed_ids([0])
    with pytest.raises(ValueError, match=r"anchor must be in \[0, 1\]"):
        WorldModelConfig(anchor=1.5)


@pytest.mark.parametrize("memory", ["latent", "pixel", "none"])
def test_memories_are_swappable(memory):
    rgb, depth, K, pose = street_start()
    model = WorldModel(tiny_backbone(), config=WorldModelConfig(memory=memory))
    model.reset(rgb, K, pose, depth=depth)
    out = model.render(forward_poses(1, 2, step_m=0.2), K, generator=torch.Generator().manual_seed(0))
    assert out.valid.any() == (memory != "none")


def test_bad_input_is_refused():
    rgb, depth, K, pose = street_start()
    model = WorldModel(tiny_backbone())
    with pytest.raises(RuntimeError, match="reset"):
        model.render(forward_poses(1, 1), K)
    model.reset(rgb, K, pose, depth=depth)
    with pytest.raises(ValueError, match="cam_to_world"):
        model.render(torch.eye(4), K)
    with pytest.raises(ValueError, match="layout"):
        model.render(forward_poses(1, 2), K, layout=torch.zeros(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="rgb"):
        model.reset(rgb.float(), K, pose)  # float images must be (B, 3, H, W) in [0, 1]
    with pytest.raises(ValueError, match="env_ids"):
        model.render(forward_poses(1, 1), K, env_ids=[3])
    with pytest.raises(ValueError, match="memory"):
        WorldModelConfig(memory="voxels")


def test_conditioning_shapes_are_checked():
    grid = 8
    read = MemoryRead(torch.zeros(2, 8, grid, grid), torch.zeros(2, 1, grid, grid, dtype=torch.bool),
                      torch.zeros(2, 1, grid, grid))
    good = Conditioning(read, torch.zeros(1, 1, 8, grid, grid), torch.zeros(2, 6))
    assert good.check(8) == (1, 2)
    with pytest.raises(ValueError, match="motion"):
        Conditioning(read, torch.zeros(1, 1, 8, grid, grid), torch.zeros(2, 3)).check(8)
    with pytest.raises(ValueError, match="context"):
        Conditioning(read, torch.zeros(1, 8, grid, grid), torch.zeros(2, 6)).check(8)


def test_noised_adds_noise_of_the_given_level_to_context_and_valid_memory_only():
    grid, channels = 16, 8
    valid = torch.zeros(4, 1, grid, grid, dtype=torch.bool)
    valid[:, :, : grid // 2] = True  # top half valid, in both targets of both entries
    latents = torch.where(valid, torch.ones(4, channels, grid, grid), torch.zeros(4, channels, grid, grid))
    conditioning = Conditioning(MemoryRead(latents, valid, torch.full((4, 1, grid, grid), 5.0)),
                                torch.zeros(2, 1, channels, grid, grid), torch.zeros(4, 6))
    level = torch.tensor([0.5, 2.0])
    out = noised(conditioning, level, latent_std=0.5, generator=torch.Generator().manual_seed(0))
    context_noise = out.context - conditioning.context
    memory_noise = out.memory.latents - latents
    for entry, expected in enumerate((0.25, 1.0)):  # level * latent_std
        assert context_noise[entry].std() == pytest.approx(expected, rel=0.1)
        for target in (2 * entry, 2 * entry + 1):  # two targets per entry
            assert memory_noise[target][:, : grid // 2].std() == pytest.approx(expected, rel=0.1)
            assert torch.equal(out.memory.latents[target][:, grid // 2 :], latents[target][:, grid // 2 :])
    assert torch.equal(out.memory.valid, valid) and out.motion is conditioning.motion
    unchanged = noised(conditioning, torch.zeros(2), latent_std=0.5)
    assert torch.equal(unchanged.context, conditioning.context) and torch.equal(unchanged.memory.latents, latents)
    # One generator per entry: an entry's noise depends on its own seed only.
    a = noised(conditioning, level, 0.5, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    b = noised(conditioning, level, 0.5, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(3)])
    assert torch.equal(a.context[0], b.context[0]) and not torch.equal(a.context[1], b.context[1])
    with pytest.raises(ValueError, match="one per batch entry"):
        noised(conditioning, torch.zeros(4), latent_std=0.5)


def test_generator_is_told_the_noise_level_and_the_backbone_adds_its_context_noise():
    rgb, depth, K, pose = street_start()
    backbone = tiny_backbone(seed=3)
    model = WorldModel(backbone)
    model.reset(rgb, K, pose, depth=depth)
    conditioning = model.conditioning(forward_poses(1, 1)[:, 0], K)
    noise = torch.randn(1, backbone.generator.config.noise_channels, SIZE // 4, SIZE // 4)
    with torch.no_grad():
        plain = backbone.generator(conditioning, noise)
        assert torch.equal(plain, backbone.generator(conditioning, noise, torch.zeros(1)))
        assert not torch.allclose(plain, backbone.generator(conditioning, noise, torch.ones(1)))

    def frames(context_noise, seed):
        backbone.context_noise = context_noise
        model = WorldModel(backbone)
        model.reset(rgb, K, pose, depth=depth)
        return model.render(forward_poses(1, 3), K, generator=torch.Generator().manual_seed(seed)).rgb

    clean = frames(0.0, 7)
    assert torch.equal(frames(0.5, 7), frames(0.5, 7))  # still deterministic under a seed
    assert not torch.equal(frames(0.5, 7), clean)


def test_traced_backbone_renders_what_the_eager_one_does():
    rgb, depth, K, pose = street_start(2)
    eager = tiny_backbone(seed=3)
    traced = TinyBackbone(eager.autoencoder, eager.generator, trace=True)
    outputs = []
    for backbone in (eager, traced, traced):  # the second run reuses the traces
        model = WorldModel(backbone, num_envs=2)
        model.reset(rgb, K, pose, depth=depth)
        one = model.render(forward_poses(1, 2), K[:1], generator=torch.Generator().manual_seed(7), env_ids=[0])
        both = model.render(forward_poses(2, 2)[:, 1:], K, generator=torch.Generator().manual_seed(8))
        outputs.append((one.rgb, both.rgb))
    # UNet, re-encoder, decoder and depth head, one trace per batch shape, and the encoder (reset: 2)
    assert len(traced._traced) == 4 * 2 + 1
    for run in outputs[1:]:
        for a, b in zip(outputs[0], run):
            assert (a.int() - b.int()).abs().max() <= 1  # the same frames, up to rounding


@pytest.mark.parametrize("trace", [False, True])
def test_bfloat16_backbone_renders_float32_frames_close_to_the_float32_ones(trace):
    rgb, depth, K, pose = street_start(2)
    full = tiny_backbone(seed=3)
    half = TinyBackbone(full.autoencoder, full.generator, trace=trace, precision="bfloat16")
    frames = []
    for backbone in (full, half):
        model = WorldModel(backbone, num_envs=2)
        model.reset(rgb, K, pose, depth=depth)
        frames.append(model.render(forward_poses(2, 2), K, generator=torch.Generator().manual_seed(7)).rgb)
    latents = half.encode(torch.rand(2, 3, SIZE, SIZE))
    assert latents.dtype == half.estimate_depth(latents)[0].dtype == half.decode(latents).dtype == torch.float32
    difference = (frames[0].float() - frames[1].float()).abs()
    assert difference.max() > 0  # it did run in bfloat16 ...
    assert difference.mean() < 2.0  # ... which moves frames by rounding only (of 255 levels)
    with pytest.raises(ValueError, match="precision must be one of"):
        TinyBackbone(full.autoencoder, full.generator, precision="float16")


def test_bfloat16_on_a_cpu_that_emulates_it_warns(monkeypatch):
    import warnings

    from world_model import tiny_backbone as module

    full = tiny_backbone()
    monkeypatch.setattr(module, "_cpu_has_native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="emulated and slower"):
        TinyBackbone(full.autoencoder, full.generator, precision="bfloat16")
    monkeypatch.setattr(module, "_cpu_has_native_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TinyBackbone(full.autoencoder, full.generator, precision="bfloat16")
        TinyBackbone(full.autoencoder, full.generator)


def test_generator_too_narrow_for_its_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 32"):
        TinyGenerator(block_out_channels=(8, 16))


def test_pretrained_round_trip_and_clear_errors(tmp_path):
    backbone = tiny_backbone()
    path = backbone.save_pretrained(tmp_path / "model")
    loaded = TinyBackbone.from_pretrained(path, trace=False)  # eager, to compare exactly
    images = torch.rand(1, 3, SIZE, SIZE)
    assert torch.equal(loaded.decode(loaded.encode(images)), backbone.decode(backbone.encode(images)))
    weights = path / "generator" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="generator"):
        TinyBackbone.from_pretrained(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        TinyBackbone.from_pretrained(path)


def test_depth_head_confidence_falls_with_expected_error():
    autoencoder = tiny_backbone().autoencoder
    latents = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        autoencoder.depth_head[-1].bias.copy_(torch.tensor([math.log(10.0), math.log(0.01), -5.0]))
        autoencoder.depth_head[-1].weight.zero_()
        depth, sure = autoencoder.estimate_depth(latents)
        autoencoder.depth_head[-1].bias.copy_(torch.tensor([math.log(10.0), math.log(0.5), -5.0]))
        _, unsure = autoencoder.estimate_depth(latents)
        autoencoder.depth_head[-1].bias.copy_(torch.tensor([math.log(10.0), math.log(0.01), 5.0]))
        sky_depth, sky_confidence = autoencoder.estimate_depth(latents)
    assert torch.allclose(depth, torch.tensor(10.0)) and (sure > 0.8).all() and (unsure < 0.01).all()
    assert (sky_depth == 0).all() and (sky_confidence == 0).all()


def test_metrics():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=generator)
    assert torch.isinf(psnr(image, image)).logical_not().all() and (psnr(image, image) > 90).all()
    assert torch.allclose(psnr(image, (image + 0.1).clamp(0, 1)), psnr((image + 0.1).clamp(0, 1), image))
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-5)
    assert (ssim(image, torch.rand(2, 3, 32, 32, generator=generator)) < 0.2).all()
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1)
    assert (laplacian_variance(blurred) < 0.3 * laplacian_variance(image)).all()
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[..., :16] = True
    half_wrong = image.clone()
    half_wrong[..., 16:] = 0
    assert (psnr(half_wrong, image, mask) > 90).all() and (psnr(half_wrong, image) < 20).all()
    # Colour shift: the distance of mean colours in 8-bit levels, blind to where the pixels are.
    assert torch.allclose(colour_shift(image.flip(-1).flip(-2), image), torch.zeros(2), atol=1e-3)
    brighter = image.clamp(max=0.9) + 10 / 255
    expected = 255 * (brighter.mean(dim=(2, 3)) - image.mean(dim=(2, 3))).norm(dim=1)
    assert torch.allclose(colour_shift(brighter, image), expected) and (expected > 5).all()
    warmer = image.clone()
    warmer[:, 0] += 0.1
    assert torch.allclose(colour_shift(warmer, image), torch.full((2,), 25.5), atol=1e-3)


def test_env_frames_from_a_world_model_folder(tmp_path):
    """MirageWorld-v0 explores a user's start image with a world model loaded from a folder."""
    import gymnasium as gym
    import numpy as np

    import mirage_env  # noqa: F401  (registers the envs)

    path = tiny_backbone().save_pretrained(tmp_path / "model")
    env = gym.make("MirageWorld-v0", renderer="world_model", world_model_path=str(path), width=32, height=32,
                   world_model_reencode=0.5, world_model_anchor=0.25, world_model_precision="bfloat16")
    assert env.unwrapped.frames.model.config.reencode == 0.5
    assert env.unwrapped.frames.model.config.anchor == 0.25
    assert env.unwrapped.frames.model.backbone.precision == "bfloat16"
    start = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    observations = []
    for _ in range(2):
        obs, _ = env.reset(seed=5, options={"start_image": start, "start_depth": np.full((32, 32), 6.0)})
        obs, *_ = env.step(np.array([0, 0, 0.5, 0, 0, 0], dtype=np.float32))
        observations.append(obs["rgb"])
    assert observations[0].shape == (32, 32, 3) and np.array_equal(observations[0], observations[1])
    # Several frames per step are generated one after the other along the step: the frames of
    # three steps a third as long (the same poses, memory updates and noise draws).
    start_options = {"start_image": start, "start_depth": np.full((32, 32), 6.0)}
    forward = np.array([0, 0, 0.5, 0, 0, 0], dtype=np.float32)
    env = gym.make("MirageWorld-v0", renderer="world_model", world_model_path=str(path), width=32, height=32,
                   frames_per_step=3)
    thirds = gym.make("MirageWorld-v0", renderer="world_model", world_model_path=str(path), width=32, height=32,
                      max_translation_m=0.5 / 3)
    env.reset(seed=5, options=start_options)
    thirds.reset(seed=5, options=start_options)
    obs, _, _, _, info = env.step(forward)
    expected = [thirds.step(forward)[0]["rgb"] for _ in range(3)]
    assert info["frames"].shape == (3, 32, 32, 3) and np.array_equal(info["frames"][-1], obs["rgb"])
    assert all(np.array_equal(frame, other) for frame, other in zip(info["frames"], expected))
    assert not np.array_equal(expected[0], expected[2])
    with pytest.raises(FileNotFoundError, match="train-world-model"):
        gym.make("MirageWorld-v0", renderer="world_model", world_model_path=str(tmp_path / "nothing"))
