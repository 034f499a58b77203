import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from world_model.camera import camera_pose, intrinsics_from_fov, project_points, scale_intrinsics, unproject_depth
from world_model.latent_cache import LatentCache, LatentCacheConfig
from world_model.memory import MemoryFrame

SIZE = 128  # image pixels; the latent grid is 16 x 16 at downsample 8
EXACT = LatentCacheConfig(latent_dtype="float32")


@pytest.fixture(scope="module")
def street(town01, town01_renderer):
    """Ground-truth frames along a Town01 street: poses, intrinsics, depth, labels."""
    x, y, yaw = town01.spawn_points()[40]
    ahead = np.array([math.cos(yaw), math.sin(yaw)])
    centres = [np.r_[np.array([x, y]) + ahead * step, 1.6] for step in (0.0, 2.0, 4.0)]
    poses = camera_pose(torch.tensor(np.array(centres), dtype=torch.float32), torch.full((3,), float(yaw)))
    K = intrinsics_from_fov(90, SIZE, SIZE).expand(3, 3, 3)
    out = town01_renderer.render(poses, K, SIZE, SIZE)
    return poses, K, out


def stored_cells(cache: LatentCache, depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, h, w) cells whose token passes the depth filters (no dynamic mask, full confidence)."""
    token_depth = cache._token_depth(depth, height, width)
    return (token_depth > 0) & (token_depth <= cache.config.max_range_m)


def position_latents(cache_depth: torch.Tensor, K: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Latents that carry each token's own world position (x, y, z): easy to check geometry."""
    latent_depth = LatentCache(1, 3)._token_depth(cache_depth, SIZE // 8, SIZE // 8)
    points = unproject_depth(latent_depth, scale_intrinsics(K, 1 / 8, 1 / 8), poses)
    return points.permute(0, 3, 1, 2)


def test_write_then_read_at_the_same_pose_is_the_identity(street):
    poses, K, out = street
    latents = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    cache = LatentCache(1, 8, EXACT)
    stored = cache.write(MemoryFrame(latents, out.depth[:1], K[:1], poses[:1]))
    read = cache.read(poses[:1], K[:1], (SIZE, SIZE))
    written = stored_cells(cache, out.depth[:1], 16, 16).expand_as(latents)
    assert stored == written[:, 0].sum() > 0.5 * 16 * 16
    assert read.valid.expand_as(latents)[written].all()
    assert torch.equal(read.latents[written], latents[written])
    token_depth = cache._token_depth(out.depth[:1], 16, 16)[:, 0][written[:, 0]]
    assert torch.allclose(read.depth[:, 0][written[:, 0]], token_depth, rtol=1e-3)  # positions are stored to voxel / 254


def test_float16_storage_rounds_but_keeps_the_identity(street):
    poses, K, out = street
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cache = LatentCache(1, 4)  # float16 by default
    cache.write(MemoryFrame(latents, out.depth[:1], K[:1], poses[:1]))
    read = cache.read(poses[:1], K[:1], (SIZE, SIZE))
    written = stored_cells(cache, out.depth[:1], 16, 16).expand_as(latents)
    assert torch.equal(read.latents[written], latents.half().float()[written])


def test_moving_camera_sees_tokens_where_the_ground_truth_renderer_puts_them(street, town01_renderer):
    poses, K, out = street
    cache = LatentCache(1, 3, EXACT)
    cache.write(MemoryFrame(position_latents(out.depth[:1], K[:1], poses[:1]), out.depth[:1], K[:1], poses[:1]))
    target = poses[1:2]  # 2 m further down the street
    read = cache.read(target, K[1:2], (SIZE, SIZE))
    # Ground truth of the target latent grid: render at 16 x 16 with the rescaled intrinsics.
    truth = town01_renderer.render(target, scale_intrinsics(K[1:2], 1 / 8, 1 / 8), 16, 16)
    surfaces = truth.depth[0, 0] > 0
    assert (read.valid[0, 0] & surfaces).sum() > 0.9 * surfaces.sum()
    assert (read.valid[0, 0] & ~surfaces).sum() <= 8  # at most a few silhouette cells over the sky
    shown = read.latents[0].permute(1, 2, 0)[read.valid[0, 0]]  # world points of the shown tokens
    # Each shown token projects into the target within the splat reach of its cell...
    uv, token_depth = project_points(shown[None], scale_intrinsics(K[1:2], 1 / 8, 1 / 8), target)
    rows, cols = read.valid[0, 0].nonzero(as_tuple=True)
    assert ((uv[0, :, 0].floor() - cols).abs() <= 3).all() and ((uv[0, :, 1].floor() - rows).abs() <= 3).all()
    assert torch.allclose(read.depth[0, 0][read.valid[0, 0]], token_depth[0], rtol=1e-3)
    # ...and is visible from there: the ground-truth ray from the target camera through the
    # token's point reaches it (t = 1) rather than stopping at a nearer surface (t < 1).
    centre = target[0, :3, 3]
    _, t, _ = town01_renderer.cast(centre.expand(len(shown), 3), shown - centre)
    assert (t > 0.98).float().mean() > 0.9


def test_moving_forward_leaves_no_holes_on_the_road(street):
    poses, K, out = street
    cache = LatentCache(1, 3, EXACT)
    cache.write(MemoryFrame(position_latents(out.depth[:1], K[:1], poses[:1]), out.depth[:1], K[:1], poses[:1]))
    # 4 m ahead the road stretches over ~5x more rows than it filled; splats reach 3 cells, so
    # all but the 3 rows under the bumper (never seen: too close) are covered.
    read = cache.read(poses[2:3], K[2:3], (SIZE, SIZE))
    assert read.valid[0, 0, 8:13, :].all()


def test_near_surface_hides_far_surface():
    pose = camera_pose(torch.zeros(1, 3), torch.zeros(1))
    K = intrinsics_from_fov(90, 64, 64)[None]
    cache = LatentCache(1, 1, EXACT)
    far = torch.full((1, 1, 64, 64), 20.0)
    cache.write(MemoryFrame(torch.zeros(1, 1, 8, 8), far, K, pose))
    near = torch.zeros(1, 1, 64, 64)
    near[..., :32] = 5.0  # a near wall on the left half only; the right half is "no surface"
    cache.write(MemoryFrame(torch.ones(1, 1, 8, 8), near, K, pose))
    read = cache.read(pose, K, (64, 64))
    assert read.valid.all()
    assert (read.latents[0, 0, :, :4] == 1).all() and (read.latents[0, 0, :, 5:] == 0).all()
    assert torch.allclose(read.depth[0, 0, :, :4], torch.tensor(5.0), rtol=1e-3)
    # From behind the near wall's plane the far wall shows again.
    behind = camera_pose(torch.tensor([[10.0, 0.0, 0.0]]), torch.zeros(1))
    assert (cache.read(behind, K, (64, 64)).latents[0, 0][cache.read(behind, K, (64, 64)).valid[0, 0]] == 0).all()



def test_unsure_tokens_count_deeper_in_the_z_buffer():
    pose = camera_pose(torch.zeros(1, 3), torch.zeros(1))
    K = intrinsics_from_fov(90, 64, 64)[None]
    far, near = torch.full((1, 1, 64, 64), 20.0), torch.full((1, 1, 64, 64), 5.0)
    sure, unsure = torch.ones(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.6)

    def shown(penalty: float) -> list[float]:
        """Which wall a read shows: 0 for the sure far one, 1 for the unsure near one."""
        cache = LatentCache(1, 1, LatentCacheConfig(latent_dtype="float32", unsure_depth_penalty=penalty))
        cache.write(MemoryFrame(torch.zeros(1, 1, 8, 8), far, K, pose, confidence=sure))
        cache.write(MemoryFrame(torch.ones(1, 1, 8, 8), near, K, pose, confidence=unsure))
        return cache.read(pose, K, (64, 64)).latents.unique().tolist()

    assert shown(0.0) == [1.0]  # plain z-buffer: nearest wins
    assert shown(5.0) == [1.0]  # counts 5 * (1 + 5 * 0.4) = 15 m deep: still nearer than 20 m
    assert shown(10.0) == [0.0]  # counts 25 m deep: the sure wall wins

def test_dynamic_tokens_never_enter_the_cache(street):
    poses, K, out = street
    latents = torch.zeros(3, 2, 16, 16)
    latents[:, 0, 6:10, 6:10] = 7.0  # the "car" in the middle of every frame
    dynamic = torch.zeros(3, 1, SIZE, SIZE, dtype=torch.bool)
    dynamic[..., 48:80, 48:80] = True
    cache = LatentCache(3, 2, EXACT)
    for _ in range(3):  # every write filters, not only the first
        cache.write(MemoryFrame(latents, out.depth, K, poses, dynamic=dynamic))
    assert not (cache.latent[:, 0] == 7.0).any()
    for target in range(3):
        read = cache.read(poses, K, (SIZE, SIZE), cache_ids=[target] * 3)
        assert not (read.latents[:, 0] == 7.0).any()


def test_sky_far_and_unconfident_tokens_are_filtered():
    pose = camera_pose(torch.zeros(1, 3), torch.zeros(1))
    K = intrinsics_from_fov(90, 32, 32)[None]
    depth = torch.full((1, 1, 32, 32), 10.0)
    depth[..., :8, :] = 0.0  # sky: first latent row
    depth[..., 8:16, :] = 500.0  # beyond max range: second row
    confidence = torch.ones(1, 1, 4, 4)
    confidence[..., 2, :] = 0.1  # third row unconfident
    cache = LatentCache(1, 1, LatentCacheConfig(max_range_m=100.0, min_confidence=0.5))
    stored = cache.write(MemoryFrame(torch.ones(1, 1, 4, 4), depth, K, pose, confidence=confidence))
    assert stored == 4 and len(cache) == 4
    assert cache.read(pose, K, (32, 32)).valid[0, 0].nonzero()[:, 0].unique().tolist() == [3]


def test_revisiting_does_not_grow_the_cache(street):
    poses, K, out = street
    cache = LatentCache(1, 4)
    latents = torch.randn(3, 4, 16, 16)
    ids = [0, 0, 0]
    for frame in range(3):
        cache.write(MemoryFrame(latents[frame:frame + 1], out.depth[frame:frame + 1], K[:1], poses[frame:frame + 1]), ids[:1])
    sizes = [len(cache)]
    for lap in range(9):
        for frame in range(3):
            cache.write(MemoryFrame(latents[frame:frame + 1], out.depth[frame:frame + 1], K[:1], poses[frame:frame + 1]), ids[:1])
        sizes.append(len(cache))
    assert sizes[0] < 3 * 16 * 16  # overlapping frames already fused
    assert sizes[-1] <= 1.2 * sizes[0]  # lap 10 over lap 1
    assert sizes[-1] == sizes[-2] == sizes[-3]  # settled: revisits add nothing


def test_budget_evicts_least_recently_used(street):
    poses, K, out = street
    probe = LatentCache(1, 4)
    budget = 150 * probe.bytes_per_token
    cache = LatentCache(1, 4, LatentCacheConfig(budget_bytes=budget))
    cache.write(MemoryFrame(torch.randn(1, 4, 16, 16), out.depth[:1], K[:1], poses[:1]))
    assert cache.nbytes() <= budget and len(cache) == 150
    newest = cache.last_used.max()
    cache.write(MemoryFrame(torch.randn(1, 4, 16, 16), out.depth[2:3], K[:1], poses[2:3]))
    assert cache.nbytes() <= budget
    assert (cache.last_used > newest).sum() > 100  # the new frame's tokens stay


def test_caches_are_independent_and_batched(street):
    poses, K, out = street
    cache = LatentCache(2, 1, EXACT)
    cache.write(MemoryFrame(torch.full((1, 1, 16, 16), 3.0), out.depth[:1], K[:1], poses[:1]), cache_ids=[1])
    read = cache.read(poses[:1].expand(2, 4, 4), K[:2], (SIZE, SIZE), cache_ids=[0, 1])
    assert not read.valid[0].any() and read.valid[1].any()
    assert (read.latents[1][read.valid[1]] == 3.0).all()
    cache.clear([1])
    assert len(cache) == 0


def test_interleaved_caches_read_as_if_alone(street):
    """All caches share flat tensors kept in key order: interleaved writes into three caches
    and one batched read of all three match caches that saw only their own frames."""
    poses, K, out = street
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    shared, alone = LatentCache(3, 4, EXACT), [LatentCache(1, 4, EXACT) for _ in range(3)]
    for frame in range(3):
        for cache_id in (2, 0, 1):
            index = (frame + cache_id) % 3
            written = MemoryFrame(latents[index:index + 1], out.depth[index:index + 1], K[:1], poses[index:index + 1])
            shared.write(written, cache_ids=[cache_id])
            alone[cache_id].write(written)
    assert (shared.key[1:] >= shared.key[:-1]).all()
    assert [shared.count(i) for i in range(3)] == [len(cache) for cache in alone]
    read = shared.read(poses[[1, 1, 1]], K, (SIZE, SIZE), cache_ids=[0, 1, 2])
    for cache_id, cache in enumerate(alone):
        own = cache.read(poses[1:2], K[:1], (SIZE, SIZE))
        assert own.valid.any()
        assert torch.equal(read.valid[cache_id], own.valid[0]) and torch.equal(read.latents[cache_id], own.latents[0])


def test_snapshot_restores_exactly(street, tmp_path):
    poses, K, out = street
    cache = LatentCache(2, 4)
    cache.write(MemoryFrame(torch.randn(2, 4, 16, 16), out.depth[:2], K[:2], poses[:2]))
    restored = LatentCache.load(cache.save(tmp_path / "cache.safetensors"))
    for name in ("key", "offset", "patch", "latent", "confidence", "last_used", "position"):
        assert torch.equal(getattr(restored, name), getattr(cache, name)), name
    assert restored.config == cache.config and restored.step == cache.step
    a, b = cache.read(poses[2:3], K[:1], (SIZE, SIZE)), restored.read(poses[2:3], K[:1], (SIZE, SIZE))
    assert torch.equal(a.latents, b.latents) and torch.equal(a.valid, b.valid)
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="bad.safetensors"):
        LatentCache.load(tmp_path / "bad.safetensors")


def test_bad_input_is_a_clear_error():
    cache = LatentCache(2, 4)
    pose = camera_pose(torch.zeros(1, 3), torch.zeros(1))
    K = intrinsics_from_fov(90, 32, 32)[None]
    depth = torch.ones(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"`latents` must be \(B, 4, h, w\)"):
        cache.write(MemoryFrame(torch.zeros(1, 3, 4, 4), depth, K, pose))
    with pytest.raises(ValueError, match="`depth` must be"):
        cache.write(MemoryFrame(torch.zeros(1, 4, 4, 4), torch.ones(1, 1, 30, 32), K, pose))
    with pytest.raises(ValueError, match="batch"):
        cache.write(MemoryFrame(torch.zeros(2, 4, 4, 4), depth, K, pose))
    bad_pose = pose.clone()
    bad_pose[0, 1, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.read(bad_pose, K, (32, 32))
    with pytest.raises(ValueError, match="focal lengths must be > 0"):
        cache.read(pose, K * torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1), (32, 32))
    with pytest.raises(ValueError, match="multiple of downsample"):
        cache.read(pose, K, (30, 32))
    with pytest.raises(ValueError, match="cache_ids"):
        cache.read(pose, K, (32, 32), cache_ids=[5])
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.write(MemoryFrame(torch.zeros(1, 4, 4, 4), depth * float("nan"), K, pose))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.tuples(*[st.floats(-50, 50)] * 3),
    angles=st.tuples(st.floats(-math.pi, math.pi), st.floats(-1.4, 1.4), st.floats(-0.5, 0.5)),
    focal=st.tuples(st.floats(5, 200), st.floats(5, 200)),
    centre=st.tuples(st.floats(0, 32), st.floats(0, 24)),
    seed=st.integers(0, 2**16),
    sky_fraction=st.floats(0, 0.9),
)
def test_property_random_cameras_and_depths(position, angles, focal, centre, seed, sky_fraction):
    generator = torch.Generator().manual_seed(seed)
    pose = camera_pose(torch.tensor([position]), *[torch.tensor([a]) for a in angles])
    K = torch.tensor([[[focal[0], 0.0, centre[0]], [0.0, focal[1], centre[1]], [0.0, 0.0, 1.0]]])
    depth = torch.rand(1, 1, 24, 32, generator=generator) * 120 + 0.1
    depth[torch.rand(1, 1, 24, 32, generator=generator) < sky_fraction] = 0.0
    latents = torch.randn(1, 3, 3, 4, generator=generator)
    cache = LatentCache(1, 3, EXACT)
    cache.write(MemoryFrame(latents, depth, K, pose))
    read = cache.read(pose, K, (24, 32))
    assert torch.isfinite(read.latents).all() and torch.isfinite(read.depth).all()
    written = stored_cells(cache, depth, 3, 4).expand_as(latents)
    assert int(written[:, 0].sum()) == len(cache)
    assert read.valid.expand_as(latents)[written].all()
    assert torch.equal(read.latents[written], latents[written])
    moved = camera_pose(torch.tensor([position]) + 3.0, *[torch.tensor([a + 0.3]) for a in angles])
    other = cache.read(moved, K, (24, 32))
    assert torch.isfinite(other.latents).all() and (other.depth[other.valid] > 0).all()
