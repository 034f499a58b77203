import torch

from world_model.camera import camera_pose, intrinsics_from_fov
from world_model.latent_cache import LatentCache
from world_model.memory import MemoryFrame
from world_model.pixel_memory import PixelMemory


def average_pool_encoder(images: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE encoder: 8 x 8 average pooling (the real one is passed by the world model)."""
    return torch.nn.functional.avg_pool2d(images, 8)


def frame(depth_value: float, seed: int = 0):
    pose = camera_pose(torch.zeros(1, 3), torch.zeros(1))
    K = intrinsics_from_fov(90, 32, 32)[None]
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return MemoryFrame(latents=None, depth=torch.full((1, 1, 32, 32), depth_value), K=K, cam_to_world=pose, rgb=rgb)


def test_render_at_the_writing_pose_reproduces_the_frame():
    memory = PixelMemory(1, average_pool_encoder)
    written = frame(10.0)
    memory.write(written)
    image, valid, depth = memory.render(written.cam_to_world, written.K, (32, 32))
    assert valid.all()
    assert torch.allclose(image, (written.rgb * 255 + 0.5).floor() / 255, atol=1e-6)
    assert torch.allclose(depth, torch.full_like(depth, 10.0), rtol=1e-5)
    read = memory.read(written.cam_to_world, written.K, (32, 32))
    assert read.latents.shape == (1, 3, 4, 4) and read.valid.all()


def test_pixel_memory_grows_with_every_frame_while_the_latent_cache_does_not():
    memory, cache = PixelMemory(1, average_pool_encoder), LatentCache(1, 3)
    for seed in range(5):
        written = frame(10.0, seed)
        written.latents = average_pool_encoder(written.rgb)
        memory.write(written)
        cache.write(written)
    assert memory.nbytes() == 5 * 32 * 32 * (12 + 3 + 8)
    assert len(cache) == 16  # the same 4 x 4 tokens, fused


def test_sky_and_dynamic_pixels_are_not_stored():
    memory = PixelMemory(1, average_pool_encoder)
    written = frame(10.0)
    written.depth[..., :16, :] = 0.0
    written.dynamic = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    written.dynamic[..., 16:, :8] = True
    assert memory.write(written) == 32 * 32 - 16 * 32 - 16 * 8
