import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import LEFT_TURN_XODR
from mirage_env.layout import LayoutRasteriser
from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import RoadMap
from mirage_env.scene import dress_scene
from mirage_env.vehicle import CameraMount
from world_model.camera import relative_motion
from world_model.tiny_backbone import TinyAutoencoder, TinyBackbone, TinyGenerator
from world_model.metrics import psnr
from world_model import training
from world_model.training import (RolloutWorlds, StageConfig, decoder_student, encode_clips, generator_batch,
                                  generator_student, laplacian_pyramid_loss, reconstruction_psnr, rollout_batch,
                                  train_autoencoder, train_decoder, train_generator, train_reencoder, with_reencoder)

SIZE = 32


@pytest.fixture(scope="module")
def clips():
    """Two 6-frame clips driving along the conftest road, at 32 x 32."""
    road_map = RoadMap.from_xodr(LEFT_TURN_XODR, name="left_turn")
    scene = dress_scene(road_map, seed=0)
    renderer, layout = GroundTruthRenderer(scene), LayoutRasteriser(scene.ground)
    mount = CameraMount(width=SIZE, height=SIZE)
    K = mount.intrinsics()
    parts = {name: [] for name in ("rgb", "depth", "semantic", "cam_to_world", "layout")}
    for clip, x0 in enumerate((2.0, 6.0)):
        ego = np.stack([x0 + 0.6 * np.arange(6), np.full(6, -1.75), np.zeros(6)], 1)
        poses = mount.poses(ego)
        out = renderer.render(poses, K.expand(6, 3, 3), SIZE, SIZE)
        parts["rgb"].append(out.rgb)
        parts["depth"].append(out.depth.half())
        parts["semantic"].append(out.semantic.to(torch.uint8))
        parts["cam_to_world"].append(poses)
        parts["layout"].append((layout(poses, K.expand(6, 3, 3), SIZE, SIZE, 4) * 255).round().to(torch.uint8))
    tensors = {name: torch.stack(values) for name, values in parts.items()}
    tensors["K"] = K
    return tensors


def tiny_models():
    torch.manual_seed(0)
    autoencoder = TinyAutoencoder(encoder_channels=(8, 16), decoder_channels=(16, 8), decoder_blocks=(1, 1),
                                  depth_channels=8, norm_groups=4)
    return autoencoder, TinyGenerator(block_out_channels=(16, 32), norm_groups=8)


def test_stages_learn_checkpoint_and_resume(clips, tmp_path, monkeypatch):
    autoencoder, generator = tiny_models()
    images = clips["rgb"].flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    untrained = reconstruction_psnr(autoencoder, images)
    config = StageConfig(steps=60, batch_size=4, lr=2e-3, adversarial_start=40, checkpoint_every=20, log_every=20)
    train_autoencoder(autoencoder, clips, config, tmp_path, validation=clips)
    log = json.loads((tmp_path / "autoencoder_log.json").read_text())
    assert [entry["step"] for entry in log] == [20, 40, 60]
    assert reconstruction_psnr(autoencoder, images) > untrained + 2.0  # it learns to reconstruct
    assert "critic" in log[-1] and (tmp_path / "autoencoder_losses.png").stat().st_size > 0

    generator_config = StageConfig(steps=20, batch_size=2, adversarial_start=10, checkpoint_every=10, log_every=10)
    train_generator(autoencoder, generator, clips, generator_config, tmp_path, validation=clips)
    first_run = json.loads((tmp_path / "generator_log.json").read_text())
    assert [entry["step"] for entry in first_run] == [10, 20] and "val_psnr_covered" in first_run[-1]
    # A longer schedule resumes at the checkpoint instead of starting over.
    generator_config.steps = 30
    trained = train_generator(autoencoder, TinyGenerator(block_out_channels=(16, 32), norm_groups=8), clips,
                              generator_config, tmp_path)
    resumed = json.loads((tmp_path / "generator_log.json").read_text())
    assert [entry["step"] for entry in resumed] == [10, 20, 30]
    # A finished stage loads its weights and noise unit without encoding the clips again.
    monkeypatch.setattr(training, "encode_clips", lambda *args: pytest.fail("a finished stage encoded the clips"))
    again = train_generator(autoencoder, TinyGenerator(block_out_channels=(16, 32), norm_groups=8), clips,
                            generator_config, tmp_path)
    assert again.config.latent_std == trained.config.latent_std > 0
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), trained.state_dict().values()))


def test_rollout_batches_condition_on_generated_frames(clips):
    """A one-step rollout conditions on the true start frame; a longer one on what the model
    itself generated on the way, as the env does, with the truth as target."""
    autoencoder, generator = tiny_models()
    backbone = TinyBackbone(autoencoder, generator)
    encoded = encode_clips(autoencoder, clips)

    def batch(steps):
        return rollout_batch(clips, encoded, backbone, 3, torch.Generator().manual_seed(7), steps)

    def draws(steps):  # the rollout's clips and start frames, drawn as RolloutWorlds draws them
        sampler = torch.Generator().manual_seed(7)
        clip = torch.randint(0, 2, (3,), generator=sampler)
        return clip, (torch.rand(3, generator=sampler) * (6 - steps)).long()

    conditioning, target, images = batch(1)
    clip, start = draws(1)
    assert torch.allclose(conditioning.context[:, -1], encoded["latents"][clip, start].float(), atol=1e-2)
    assert torch.allclose(target, encoded["latents"][clip, start + 1].float())
    assert torch.equal(images, clips["rgb"][clip, start + 1].permute(0, 3, 1, 2).float() / 255)
    poses = clips["cam_to_world"]
    assert torch.allclose(conditioning.motion, relative_motion(poses[clip, start], poses[clip, start + 1]))
    assert conditioning.memory.valid.any()  # the start frame was written into the cache

    conditioning, target, _ = batch(4)
    clip, start = draws(4)
    truth = encoded["latents"][clip, start + 3].float()
    assert (conditioning.context[:, -1] - truth).abs().mean() > 0.1  # the untrained model's frame, not the truth
    assert torch.allclose(target, encoded["latents"][clip, start + 4].float())
    assert torch.allclose(conditioning.motion, relative_motion(poses[clip, start + 3], poses[clip, start + 4]))
    with pytest.raises(ValueError, match="rollouts must last 1 to 5 frames"):
        batch(6)


def test_rollout_worlds_continue_from_the_frames_they_are_given(clips):
    """Training advances the worlds with its own predictions: they become the next context (as
    the world model keeps them, partly re-encoded), and a world whose horizon is over starts
    again from a true frame."""
    autoencoder, generator = tiny_models()
    encoded = encode_clips(autoencoder, clips)
    backbone = TinyBackbone(autoencoder, generator)
    worlds = RolloutWorlds(clips, encoded, backbone, 4, torch.Generator().manual_seed(3), longest=2)
    reencode, anchor = worlds.world.config.reencode, worlds.world.config.anchor
    seen_restart = seen_continue = seen_anchor = False
    for _ in range(4):
        _, target, _ = worlds.targets()
        predicted = torch.randn_like(target)
        frame, left = worlds.frame.clone(), worlds.left.clone()
        worlds.advance(predicted)
        context = worlds.targets()[0].context[:, -1]
        for i in range(4):
            if left[i] > 1:  # goes on from the frame it was given, pulled toward its start frame
                seen_continue = True
                pose = clips["cam_to_world"][worlds.clip[i], worlds.frame[i]][None]
                start = worlds.world.memory.read(pose, worlds.K[:1], tuple(clips["rgb"].shape[2:4]),
                                                 cache_ids=worlds.world.observed_ids([i]))
                seen_anchor |= bool(start.valid.any())
                shown = torch.where(start.valid, torch.lerp(predicted[i : i + 1], start.latents, anchor),
                                    predicted[i : i + 1])
                kept = torch.lerp(shown, backbone.encode(backbone.decode(shown)), reencode)
                assert worlds.frame[i] == frame[i] + 1 and torch.allclose(context[i], kept[0], atol=1e-5)
            else:  # starts again from a clip frame, encoded
                seen_restart = True
                truth = encoded["latents"][worlds.clip[i], worlds.frame[i]].float()
                assert torch.allclose(context[i], truth, atol=1e-2) and 1 <= worlds.left[i] <= 2
    assert seen_restart and seen_continue and seen_anchor
    with pytest.raises(ValueError, match="`latents` must be"):
        worlds.world.observe(torch.zeros(4, 3, 8, 8), clips["cam_to_world"][0, :4], clips["K"][None].expand(4, 3, 3))


def test_generator_learns_from_rollouts(clips, tmp_path):
    autoencoder, generator = tiny_models()
    config = StageConfig(steps=6, batch_size=2, rollout_start=2, rollout_probability=1.0, rollout_steps=4,
                         checkpoint_every=3, log_every=3)
    before = [p.detach().clone() for p in generator.parameters()]
    train_generator(autoencoder, generator, clips, config, tmp_path, validation=clips)
    log = json.loads((tmp_path / "generator_log.json").read_text())
    assert [entry["step"] for entry in log] == [3, 6]
    assert all(np.isfinite(entry["val_psnr_rollout"]) for entry in log)
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))


def test_generator_trains_on_noised_inputs_and_saves_the_noise_unit(clips, tmp_path):
    autoencoder, generator = tiny_models()
    config = StageConfig(steps=4, batch_size=2, noise_augmentation_start=2, noise_augmentation_max=1.0,
                         checkpoint_every=2, log_every=2)
    before = [p.detach().clone() for p in generator.parameters()]
    train_generator(autoencoder, generator, clips, config, tmp_path)
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))
    latents = encode_clips(autoencoder, clips)["latents"]
    assert generator.config.latent_std == pytest.approx(float(latents[:8].float().std()), rel=1e-3)
    generator.save_pretrained(str(tmp_path / "generator"))
    loaded = TinyGenerator.from_pretrained(str(tmp_path / "generator"))
    assert loaded.config.latent_std == generator.config.latent_std


def test_memory_dropout_empties_the_memory_of_that_share_of_samples(clips):
    autoencoder, _ = tiny_models()
    encoded = encode_clips(autoencoder, clips)
    # An untrained depth head is unsure of everything, and the cache drops unsure tokens: make it sure.
    encoded["confidence"] = torch.ones_like(encoded["confidence"])

    def covered(dropout: float) -> torch.Tensor:  # per sample: the share of the target grid the memory covers
        conditioning, _, _ = generator_batch(clips, encoded, 64, autoencoder.downsample,
                                             torch.Generator().manual_seed(3), memory_dropout=dropout)
        return conditioning.memory.valid.float().mean(dim=(1, 2, 3))

    assert (covered(0.0) > 0).all()  # the context frame is always in the memory
    some = covered(0.5)
    assert 16 <= int((some == 0).sum()) <= 48
    assert (covered(1.0) == 0).all()  # every memory empty: still a batch, with nothing valid


def test_previous_frame_dropout_leaves_only_frames_further_away_in_memory(clips):
    autoencoder, _ = tiny_models()
    encoded = encode_clips(autoencoder, clips)
    encoded["confidence"] = torch.ones_like(encoded["confidence"])  # an untrained depth head is unsure

    def covered(window: int, dropout: float) -> torch.Tensor:  # per sample: the share the memory covers
        conditioning, _, _ = generator_batch(clips, encoded, 64, autoencoder.downsample,
                                             torch.Generator().manual_seed(5), window=window,
                                             previous_frame_dropout=dropout)
        return conditioning.memory.valid.float().mean(dim=(1, 2, 3))

    assert (covered(0, 0.0) > 0).all()  # a window of 0 frames: the previous frame alone
    assert (covered(0, 1.0) == 0).all()  # ... and without it nothing is left
    wide = covered(5, 1.0)  # frames further away in the clip: drawn for some samples, none for others
    assert (wide > 0).any() and (wide == 0).any()


def test_generator_trains_with_memory_dropout(clips, tmp_path):
    autoencoder, generator = tiny_models()
    before = [p.detach().clone() for p in generator.parameters()]
    config = StageConfig(steps=2, batch_size=2, memory_dropout=1.0, checkpoint_every=2, log_every=2)
    train_generator(autoencoder, generator, clips, config, tmp_path)
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))


def test_pyramid_loss_sees_lost_detail_that_plain_l1_weighs_like_a_colour_shift(clips):
    images = clips["rgb"][0, :4].permute(0, 3, 1, 2).float() / 255
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    shift = (blurred - images).abs().mean()
    shifted = images + shift  # the same plain L1 distance as the blur, but no detail lost
    assert (shifted - images).abs().mean() == pytest.approx(float(shift), rel=1e-4)
    assert laplacian_pyramid_loss(shifted, images) < 1e-5
    assert laplacian_pyramid_loss(blurred, images) > 0.5 * float(shift)


def test_decoder_fine_tuning_changes_only_the_decoder(clips, tmp_path):
    autoencoder, generator = tiny_models()
    frozen = {name: p.detach().clone() for name, p in [*autoencoder.encoder.named_parameters(prefix="encoder"),
                                                        *autoencoder.depth_head.named_parameters(prefix="depth"),
                                                        *generator.named_parameters(prefix="generator")]}
    decoder_before = [p.detach().clone() for p in autoencoder.decoder.parameters()]
    config = StageConfig(steps=4, batch_size=2, adversarial_start=2, checkpoint_every=2, log_every=2)
    train_decoder(autoencoder, generator, clips, config, tmp_path, validation=clips)
    log = json.loads((tmp_path / "decoder_log.json").read_text())
    assert [entry["step"] for entry in log] == [2, 4]
    assert all(entry["val_sharpness_ratio"] > 0 and "pyramid" in entry for entry in log)
    current = dict([*autoencoder.encoder.named_parameters(prefix="encoder"),
                    *autoencoder.depth_head.named_parameters(prefix="depth"),
                    *generator.named_parameters(prefix="generator")])
    assert all(torch.equal(value, current[name]) for name, value in frozen.items())
    assert any(not torch.equal(a, b) for a, b in zip(decoder_before, autoencoder.decoder.parameters()))


def test_decoder_distils_into_a_smaller_student(clips, tmp_path, monkeypatch):
    autoencoder, generator = tiny_models()
    train_autoencoder(autoencoder, clips, StageConfig(steps=30, batch_size=4, lr=2e-3, adversarial_start=1000,
                                                      log_every=10, checkpoint_every=30), tmp_path / "teacher")
    teacher = {name: p.detach().clone() for name, p in autoencoder.named_parameters()}
    student = decoder_student(autoencoder, (8, 4), (1, 1))
    assert sum(p.numel() for p in student.decoder.parameters()) < sum(p.numel() for p in autoencoder.decoder.parameters()) / 2
    latents = encode_clips(autoencoder, clips)["latents"].flatten(0, 1).float()

    def agreement() -> float:  # PSNR of the student's frames against the teacher's
        with torch.no_grad():
            return float(psnr(student.decode(latents), autoencoder.decode(latents)).mean())

    before = agreement()
    config = StageConfig(steps=40, batch_size=4, lr=3e-3, adversarial_start=30, checkpoint_every=20, log_every=20)
    trained = train_decoder(autoencoder, generator, clips, config, tmp_path / "student", validation=clips,
                            student=student)
    assert trained is student
    assert agreement() > before + 3  # it learned the teacher's decoding
    assert all(torch.equal(p, teacher[name]) for name, p in autoencoder.named_parameters())  # teacher untouched
    for part in ("encoder", "depth_head"):  # the student encodes and estimates depth exactly as the teacher
        assert all(torch.equal(a, b) for a, b in zip(getattr(student, part).parameters(),
                                                     getattr(autoencoder, part).parameters()))
    # Run again, finished: the checkpoint's student comes back without encoding the clips.
    monkeypatch.setattr(training, "encode_clips", lambda *args: pytest.fail("a finished stage encoded the clips"))
    again = train_decoder(autoencoder, generator, clips, config, tmp_path / "student",
                          student=decoder_student(autoencoder, (8, 4), (1, 1)))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values()))


def test_a_checkpoint_of_other_network_sizes_is_a_clear_error(clips, tmp_path):
    autoencoder, generator = tiny_models()
    config = StageConfig(steps=2, batch_size=2, adversarial_start=1000, checkpoint_every=2, log_every=2)
    train_decoder(autoencoder, generator, clips, config, tmp_path)  # fine-tunes the full-size decoder
    with pytest.raises(ValueError, match="decoder_checkpoint.pt holds a decoder stage of a different network size"):
        train_decoder(autoencoder, generator, clips, config, tmp_path, student=decoder_student(autoencoder, (8, 4), (1, 1)))


def test_generator_distils_into_a_smaller_student(clips, tmp_path):
    autoencoder, teacher = tiny_models()
    train_generator(autoencoder, teacher, clips, StageConfig(steps=20, batch_size=4, lr=2e-3, adversarial_start=1000,
                                                             log_every=10, checkpoint_every=20), tmp_path / "teacher")
    frozen = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    student = generator_student(teacher, (8, 32), 1)  # attention at the last level needs 32 channels
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    conditioning, _, _ = generator_batch(clips, encode_clips(autoencoder, clips), 8, autoencoder.downsample,
                                         torch.Generator().manual_seed(5))
    noise = torch.randn(8, teacher.config.noise_channels, *conditioning.memory.latents.shape[-2:])

    def gap() -> float:  # mean distance of the student's latents from the teacher's, same inputs and noise
        with torch.no_grad():
            return float((student(conditioning, noise) - teacher(conditioning, noise)).abs().mean())

    before = gap()
    config = StageConfig(steps=60, batch_size=4, lr=3e-3, adversarial_start=50, checkpoint_every=30, log_every=30)
    trained = train_generator(autoencoder, student, clips, config, tmp_path / "student", validation=clips,
                              teacher=teacher)
    assert trained is student and gap() < 0.5 * before
    assert (tmp_path / "student" / "generator_student_checkpoint.pt").is_file()
    assert all(torch.equal(p, frozen[name]) for name, p in teacher.named_parameters())  # teacher untouched


def test_reencoder_distils_the_encoder(clips, tmp_path, monkeypatch):
    autoencoder, generator = tiny_models()
    frozen = {name: p.detach().clone() for name, p in autoencoder.named_parameters()}
    student = with_reencoder(autoencoder, (8, 8))
    assert all(torch.equal(p, frozen[name]) for name, p in student.named_parameters() if name in frozen)
    assert sum(p.numel() for p in student.reencoder.parameters()) < sum(p.numel() for p in student.encoder.parameters())
    with torch.no_grad():  # decoded frames: what it learns to encode
        images = autoencoder.decode(autoencoder.encode(clips["rgb"].flatten(0, 1).permute(0, 3, 1, 2).float() / 255))
    with pytest.raises(ValueError, match="no re-encoder"):
        train_reencoder(autoencoder, generator, clips, StageConfig(steps=1), tmp_path / "none")

    def gap() -> float:  # mean distance of the re-encoder's latents from the encoder's
        with torch.no_grad():
            return float((student.reencode(images) - student.encode(images)).abs().mean())

    before = gap()
    config = StageConfig(steps=150, batch_size=4, lr=5e-3, checkpoint_every=50, log_every=50)
    trained = train_reencoder(student, generator, clips, config, tmp_path / "run", validation=clips)
    after = gap()
    assert trained is student and after < 0.5 * before, (before, after)
    assert all(torch.equal(p, frozen[name]) for name, p in student.named_parameters() if name in frozen)
    log = json.loads((tmp_path / "run" / "reencoder_log.json").read_text())
    assert log[-1]["val_latent_error"] < log[0]["val_latent_error"] and log[-1]["step"] == 150
    # Saved and loaded, the backbone re-encodes through it; without one, reencode is encode.
    loaded = TinyBackbone.from_pretrained(TinyBackbone(student, generator).save_pretrained(tmp_path / "model"))
    assert torch.allclose(loaded.reencode(images), student.reencode(images), atol=1e-5)
    assert not torch.allclose(loaded.reencode(images), loaded.encode(images), atol=1e-3)
    assert torch.equal(autoencoder.reencode(images), autoencoder.encode(images))
    # Finished, it comes back from its checkpoint without encoding the clips.
    monkeypatch.setattr(training, "encode_clips", lambda *args: pytest.fail("a finished stage encoded the clips"))
    again = train_reencoder(with_reencoder(autoencoder, (8, 8)), generator, clips, config, tmp_path / "run")
    assert torch.equal(again.reencode(images), student.reencode(images))


def test_train_world_model_command_smoke(tmp_path):
    """`mirage train-world-model` end to end at a toy size, in a subprocess."""
    command = [
        sys.executable, "-m", "mirage_env.cli", "train-world-model", f"out_dir={tmp_path / 'run'}",
        f"data.dir={tmp_path / 'data'}", "data.towns=1", "data.validation_towns=1", "data.size=32", "data.frames=4",
        "data.clips_per_town=1", "autoencoder.steps=4", "autoencoder.batch_size=2", "generator.steps=4",
        "decoder.steps=2", "decoder.batch_size=2", "decoder.channels=[16,8]",
        "generator_student.steps=2", "generator_student.batch_size=2", "generator_student.block_out_channels=[16,32,48]",
        "generator.batch_size=2", "reencoder.steps=2", "reencoder.batch_size=2", "reencoder.channels=[8,8]",
        "checkpoint_every=2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "data" / "town_0.safetensors").is_file()
    for part in ("autoencoder", "generator"):
        assert (tmp_path / "run" / "model" / part / "diffusion_pytorch_model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "model" / "autoencoder" / "config.json").read_text())
    assert saved["decoder_channels"] == [16, 8]  # the distilled decoder is the one saved
    card = (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    assert "decoder.channels=[16,8]" in card and "generator_student.block_out_channels=[16,32,48]" in card
    assert "data.size=32" in card and "generator.batch_size=2" in card  # every setting, not a chosen few
    saved = json.loads((tmp_path / "run" / "model" / "generator" / "config.json").read_text())
    assert saved["block_out_channels"] == [16, 32, 48]  # the distilled generator is the one saved
    # Continued with other settings, the card lists both commands, in order, to reproduce it.
    more = [*command[:-1], "generator.steps=6", "generator.memory_window=2", "checkpoint_every=2"]
    done = subprocess.run(more, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    first, second = card.index("generator.steps=4 "), card.index("generator.steps=6 ")
    assert first < second < card.index("generator.memory_window=2") and "run these in order" in card
    assert "| reencoder_steps | 2 |" in card
    # A re-encoder trained onto a finished model: its card keeps the model's rows and commands.
    onto = [*command[:4], *(setting for setting in command if setting.startswith("data.")),
            f"out_dir={tmp_path / 'onto'}", f"base_model={tmp_path / 'run' / 'model'}",
            "reencoder.steps=3", "reencoder.batch_size=2", "reencoder.channels=[8,16]", "checkpoint_every=3"]
    done = subprocess.run(onto, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = (tmp_path / "onto" / "model" / "MODEL_CARD.md").read_text()
    assert "| generator_steps | 6 |" in card and "| reencoder_steps | 3 |" in card
    assert card.index("generator.steps=4 ") < card.index("generator.steps=6 ") \
        < card.index(f"base_model={tmp_path / 'run' / 'model'}")
    saved = json.loads((tmp_path / "onto" / "model" / "autoencoder" / "config.json").read_text())
    assert saved["reencoder_channels"] == [8, 16] and saved["decoder_channels"] == [16, 8]
    saved = json.loads((tmp_path / "onto" / "model" / "generator" / "config.json").read_text())
    assert "_name_or_path" not in saved  # no local path of the base model in what it ships


def test_shards_are_reused_only_with_the_settings_they_were_rendered_with(tmp_path):
    from safetensors.torch import save_file

    from mirage_env.world_model_data import write_town_shards

    renders = []

    def render(seed: int) -> dict:
        renders.append(seed)
        return {"rgb": torch.full((1, 2), seed, dtype=torch.uint8), "K": torch.eye(3)}

    settings = {"size": 32, "antialias": 1}
    first = write_town_shards(tmp_path, [3, 4], render, "test/1", "rendering", settings)
    again = write_town_shards(tmp_path, [3, 4, 5], render, "test/1", "rendering", dict(settings))
    assert again[:2] == first and renders == [3, 4, 5]  # existing shards reused, the new one rendered
    with pytest.raises(ValueError, match=r"town_3\.safetensors was rendered with other settings \(antialias: 1 there, "
                                         r"3 asked\)"):
        write_town_shards(tmp_path, [3], render, "test/1", "rendering", {**settings, "antialias": 3})
    save_file({"K": torch.eye(3)}, str(tmp_path / "town_6.safetensors"), metadata={"format": "test/1"})
    with pytest.raises(ValueError, match="does not record the settings"):
        write_town_shards(tmp_path, [6], render, "test/1", "rendering", settings)
    assert renders == [3, 4, 5]  # nothing was overwritten
