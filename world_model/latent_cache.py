"""The latent cache: a bounded spatial memory kept in the VAE's latent space.

Write
    Each latent token (one cell of the (h, w) latent grid, ``downsample`` image pixels on a side)
    gets one depth: the nearest valid depth among the image pixels at the cell's centre (the
    central 2 x 2 pixels for an even ``downsample``). Nearest, not mean or median, so a token on
    an object edge lands on the object instead of floating between it and the background. The
    intrinsics are rescaled to the latent grid with :func:`world_model.camera.scale_intrinsics`
    (exact under our pixel-centre convention), and the token is back-projected through its cell
    centre to a world point. Per-token depth (B, 1, h, w) is used as given.
Filter
    Tokens are dropped before they enter the cache when any pixel of their cell is dynamic, their
    depth is <= 0 (sky) or beyond ``max_range_m``, or their confidence is below
    ``min_confidence``. Every write filters; nothing is special about the first frame.
Fuse
    A token's voxel size follows its footprint (the width of its cell on the surface,
    ``depth / focal``): ``voxel_min_m * 2**level``, the smallest such size not below the
    footprint, so a surface seen again from a similar distance falls in the same voxels, one
    token per voxel and level. A voxel keeps its best observation: the most confident token,
    ties to the most recently written, together with any tokens of that same write tied with it
    (one frame's tokens are never merged with each other, which keeps a read from the writing
    pose exact). So the cache grows with the area seen, not the frames written: a surface is
    held at about one token per footprint at each distance band (a factor of 2) it was seen
    from. A token whose own voxel is still empty joins the neighbouring level's voxel when that
    one exists, so a surface seen again from a distance at a band boundary does not open new
    voxels. Voxels are centred on multiples of their size, so flat ground at z = 0 does not
    straddle a voxel boundary.
Storage
    A token takes 39 bytes with 8 float16 latent channels: its voxel key (8 bytes, which holds
    the cache id, level and voxel), its position as an int8 offset from the voxel centre (3;
    resolution voxel / 254), its patch half-axes in int8 units of voxel / 32 (6), the latent
    vector, a float16 confidence (2) and an int32 clock of its last use (4).
Budget
    Each cache holds at most ``budget_bytes``; beyond it the least recently used tokens (last
    written or shown by a read) are evicted first, lowest confidence first among equals.
Read
    Tokens are projected into the target latent grids and splatted over the cells their surface
    patch covers. At write time each token records its patch as two half-axes (half the vectors
    to its row and column neighbours' points on the same surface, i.e. depths within a factor of
    2; the fronto-parallel footprint across edges). At read time the patch corners are projected
    and the token covers every cell whose centre they span, its own cell always, at most
    ``max_splat_radius`` cells away: a road token seen at a grazing angle stretches over the
    rows it fills once the camera drives up to it, and surfaces seen up close leave no holes.
    A z-buffer keeps the nearest token per cell, where a splatted (non-centre) cell counts as
    ``1 + splat_depth_penalty * ring`` times deeper: with the default 1.0 a token's own cell
    beats a neighbour's splat unless that neighbour is more than twice as near, i.e. an
    occluder. With ``unsure_depth_penalty`` (20 by default) a token also counts ``1 + penalty *
    (1 - confidence)`` times deeper, so tokens of generated frames (the depth head's confidence,
    below 1) give way to observed ones (ground-truth depth: confidence 1) unless they are far
    nearer. Tokens behind the camera or off the grid are skipped. Remaining one-to-three-cell
    gaps are closed by a gap fill: an empty cell with valid cells on both sides along a row,
    column or diagonal, within ``max_splat_radius`` cells, takes the nearer of the two. Empty
    cells at the border of what the cache saw (sky, unexplored space) stay empty.

All caches of a batch (one per env) live in flat tensors sorted by voxel key, whose leading
field is the cache id: a cache's tokens are one range of them, and finding a voxel is a binary
search, so a write costs O(tokens written * log tokens held) plus one gather of the held tokens
per state tensor. Every step is tensor code with no Python loop over tokens or views. Works on
any torch device.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from world_model.camera import camera_points, check_intrinsics, check_poses, invert_pose, scale_intrinsics
from world_model.memory import MemoryFrame, MemoryRead, nearest_per_cell, token_depth

_STATE = ("key", "offset", "patch", "latent", "confidence", "last_used")
# Bits of the packed voxel key: x and y 20 each, z 11, level 4, cache id 8 (63 in all); the cache
# id is the top field, so a token's cache is ``key >> _CACHE_SHIFT`` and needs no tensor of its own.
_XY_BITS, _Z_BITS, _LEVEL_BITS, _CACHE_BITS = 20, 11, 4, 8
MAX_CACHES = 2**_CACHE_BITS  # caches one LatentCache holds (the cache id's bits in the key)
_CACHE_SHIFT = _LEVEL_BITS + 2 * _XY_BITS + _Z_BITS
_OFFSET_STEPS = 254  # a position's offset from its voxel centre in int8 units of voxel / 254
_PATCH_STEPS = 32  # patch half-axes in int8 units of voxel / 32 (up to ~4 voxels long)
_NEAR_M = 1e-3


@dataclass
class LatentCacheConfig:
    """Defaults of the latent cache (units in comments)."""

    downsample: int = 8  # image pixels per latent cell side (the VAE's factor)
    max_range_m: float = 100.0  # [m] tokens farther than this are not stored
    min_confidence: float = 0.5  # tokens with lower confidence are not stored
    voxel_min_m: float = 0.05  # [m] finest fusion voxel
    voxel_levels: int = 16  # voxel sizes voxel_min_m * 2**level, level < voxel_levels
    max_splat_radius: int = 3  # [cells] a token covers at most (2r + 1)^2 target cells
    splat_depth_penalty: float = 1.0  # z-buffer: a splat counts (1 + penalty * ring) times deeper
    unsure_depth_penalty: float = 20.0  # z-buffer: a token counts (1 + penalty * (1 - confidence)) times deeper
    budget_bytes: int = 32 * 2**20  # [bytes] per cache
    latent_dtype: str = "float16"  # storage precision of latent vectors

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.voxel_min_m <= 0 or self.max_range_m <= 0:
            raise ValueError("downsample, voxel_min_m and max_range_m must be positive")
        if not 1 <= self.voxel_levels <= 2**_LEVEL_BITS:
            raise ValueError(f"voxel_levels must be in [1, {2**_LEVEL_BITS}], got {self.voxel_levels}")


class LatentCache:
    """Bounded latent spatial memories for ``num_caches`` independent environments.

    Args:
        num_caches: independent caches (one per env), addressed by ``cache_ids``.
        channels: latent channels C.
        config: see :class:`LatentCacheConfig`.
        device: where the tokens live.
    """

    def __init__(self, num_caches: int, channels: int, config: LatentCacheConfig | None = None,
                 device: torch.device | str = "cpu"):
        if not 1 <= num_caches <= MAX_CACHES:
            raise ValueError(f"num_caches must be in [1, {MAX_CACHES}], got {num_caches}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.num_caches, self.channels = num_caches, channels
        self.config = config or LatentCacheConfig()
        self.device = torch.device(device)
        self.step = 0
        self.clear()

    # ------------------------------------------------------------------ state
    def clear(self, cache_ids: torch.Tensor | list[int] | None = None) -> None:
        """Empty the given caches (all when None)."""
        if cache_ids is None:
            int8 = dict(dtype=torch.int8, device=self.device)
            self.key = torch.zeros(0, dtype=torch.long, device=self.device)  # cache, level, voxel
            self.offset = torch.zeros(0, 3, **int8)  # position within the voxel
            self.patch = torch.zeros(0, 2, 3, **int8)  # surface patch half-axes
            self.latent = torch.zeros(0, self.channels, dtype=getattr(torch, self.config.latent_dtype), device=self.device)
            self.confidence = torch.zeros(0, dtype=torch.float16, device=self.device)
            self.last_used = torch.zeros(0, dtype=torch.int32, device=self.device)  # clock of the last write/read
            return
        ids = self._cache_ids(cache_ids, None)
        self._keep(~torch.isin(self.cache, ids))

    def __len__(self) -> int:
        return self.key.shape[0]

    @property
    def cache(self) -> torch.Tensor:
        """(N,) the cache id of each token."""
        return self.key >> _CACHE_SHIFT

    @property
    def position(self) -> torch.Tensor:
        """(N, 3) world position of each token [m]."""
        return self._positions(slice(None))[0]

    def _positions(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """World positions (n, 3) [m] and voxel sizes (n,) [m] of the tokens ``index``."""
        cell, voxel = self._unpack(self.key[index])
        return (cell + self.offset[index].float() / _OFFSET_STEPS) * voxel[:, None], voxel

    def count(self, cache_id: int) -> int:
        """Tokens held by one cache."""
        return int((self.cache == cache_id).sum())

    @property
    def bytes_per_token(self) -> int:
        """Bytes stored per token, summed over the state tensors."""
        return sum(getattr(self, name).element_size() * math.prod(getattr(self, name).shape[1:]) for name in _STATE)

    def nbytes(self, cache_id: int | None = None) -> int:
        """Bytes of token storage, of one cache or all."""
        tokens = len(self) if cache_id is None else self.count(cache_id)
        return tokens * self.bytes_per_token

    def _keep(self, mask: torch.Tensor) -> None:
        for name in _STATE:
            setattr(self, name, getattr(self, name)[mask])

    def _cache_ids(self, cache_ids, batch: int | None) -> torch.Tensor:
        if cache_ids is None:
            if batch is None or batch > self.num_caches:
                raise ValueError(f"pass `cache_ids`: batch {batch} does not map onto {self.num_caches} caches")
            return torch.arange(batch, device=self.device)
        ids = torch.as_tensor(cache_ids, dtype=torch.long, device=self.device).view(-1)
        if batch is not None and ids.numel() != batch:
            raise ValueError(f"`cache_ids` has {ids.numel()} entries for a batch of {batch}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_caches):
            raise ValueError(f"`cache_ids` must be in [0, {self.num_caches}), got {ids.tolist()}")
        return ids

    # ------------------------------------------------------------------ write
    @torch.no_grad()
    def write(self, frame: MemoryFrame, cache_ids=None) -> int:
        """Store the static, valid tokens of ``frame`` (see the module doc). Returns how many
        tokens passed the filters."""
        batch = frame.check()
        if frame.latents is None or frame.latents.shape[1] != self.channels:
            raise ValueError(f"`latents` must be (B, {self.channels}, h, w), got "
                             f"{None if frame.latents is None else tuple(frame.latents.shape)}")
        ids = self._cache_ids(cache_ids, batch)
        self.step += 1
        cfg = self.config
        latents = frame.latents.to(self.device)
        height, width = latents.shape[-2:]
        depth = self._token_depth(frame.depth.to(self.device), height, width)
        dynamic = self._token_any(frame.dynamic, height, width)
        confidence = torch.ones_like(depth)
        if frame.confidence is not None:
            if frame.confidence.shape[-2:] != (height, width):
                raise ValueError(f"`confidence` must be (B, 1, {height}, {width}), got {tuple(frame.confidence.shape)}")
            confidence = confidence * frame.confidence.to(self.device, torch.float32)
        keep = (depth > 0) & (depth <= cfg.max_range_m) & ~dynamic & (confidence >= cfg.min_confidence)

        K_latent = scale_intrinsics(frame.K.to(self.device, torch.float32), 1 / cfg.downsample, 1 / cfg.downsample)
        local = camera_points(depth, K_latent)  # (B, h, w, 3) in each writing camera's frame
        focal = 0.5 * (K_latent[:, 0, 0] + K_latent[:, 1, 1])
        footprint = depth / focal.view(-1, 1, 1, 1)
        local_patch = _fit_patch_to_cell(local, _patch_axes(local, depth, footprint), K_latent)

        # Only the kept tokens go to the world frame.
        mask = keep[:, 0]
        view = torch.arange(batch, device=self.device).view(-1, 1, 1).expand_as(mask)[mask]
        pose = frame.cam_to_world.to(self.device, torch.float32)[view]
        points = torch.einsum("nij,nj->ni", pose[:, :3, :3], local[mask]) + pose[:, :3, 3]
        patch = torch.einsum("nij,naj->nai", pose[:, :3, :3], local_patch[mask])
        key, cell, voxel = self._voxel_keys(points, footprint[:, 0][mask], ids[view])
        new = {
            "key": key,
            "offset": _to_int8((points / voxel[:, None] - cell) * _OFFSET_STEPS),
            "patch": _to_int8(_shrink_to_int8_range(patch / voxel[:, None, None] * _PATCH_STEPS)),
            "latent": latents.permute(0, 2, 3, 1)[mask].to(self.latent.dtype),
            "confidence": confidence[:, 0][mask].half(),
            "last_used": torch.full_like(view, self.step, dtype=torch.int32),
        }
        self._fuse(new)
        self._enforce_budget()
        return int(mask.sum())

    def _token_depth(self, depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, 1, h, w) nearest valid depth at each cell's centre pixels (0 if none)."""
        if depth.shape[-2:] == (height, width):
            return depth.float()
        ds = self.config.downsample
        if depth.shape[-2:] != (height * ds, width * ds):
            raise ValueError(f"`depth` must be (B, 1, {height * ds}, {width * ds}) for latents of "
                             f"{height}x{width} and downsample {ds}, or per token (B, 1, {height}, {width}); "
                             f"got {tuple(depth.shape)}")
        return token_depth(depth, ds)

    def _token_any(self, mask: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
        """(B, 1, h, w) True where any pixel of the cell is set."""
        if mask is None:
            return torch.zeros(1, 1, height, width, dtype=torch.bool, device=self.device)
        mask = mask.to(self.device).bool()
        if mask.shape[-2:] == (height, width):
            return mask
        ds = self.config.downsample
        if mask.shape[-2:] != (height * ds, width * ds):
            raise ValueError(f"`dynamic` must be (B, 1, {height * ds}, {width * ds}) or (B, 1, {height}, {width}), "
                             f"got {tuple(mask.shape)}")
        return mask.view(mask.shape[0], 1, height, ds, width, ds).any(dim=5).any(dim=3)

    def _voxel_keys(self, position: torch.Tensor, footprint: torch.Tensor, cache: torch.Tensor):
        """Packed keys (N,), voxel cells (N, 3) and voxel sizes (N,) [m] of new tokens."""
        cfg = self.config
        level = torch.ceil(torch.log2((footprint / cfg.voxel_min_m).clamp(min=1.0)))
        level = level.clamp(max=cfg.voxel_levels - 1).long()
        key, cell, voxel = self._pack(position, level, cache)
        # A surface seen again from about the same distance joins the voxels it already has:
        # a token at a level boundary takes the neighbouring level when that voxel exists and
        # its own does not, so small pose changes do not open new voxels.
        if len(self):
            for step in (1, -1):
                other = (level + step).clamp(0, cfg.voxel_levels - 1)
                other_key, other_cell, other_voxel = self._pack(position, other, cache)
                snap = ~self._holds(key) & self._holds(other_key)
                key = torch.where(snap, other_key, key)
                cell = torch.where(snap[:, None], other_cell, cell)
                voxel = torch.where(snap, other_voxel, voxel)
        return key, cell, voxel

    def _pack(self, position: torch.Tensor, level: torch.Tensor, cache: torch.Tensor):
        """Keys, cells and voxel sizes of ``position`` (N, 3) at voxel ``level`` (N,)."""
        cfg = self.config
        voxel = cfg.voxel_min_m * torch.pow(2.0, level.float())
        # Voxels centred on multiples of their size: flat ground at z = 0 sits mid-voxel instead
        # of on a boundary where rounding noise would split it in two.
        cell = torch.round(position / voxel[:, None]).long()
        xy_half, z_half = 2 ** (_XY_BITS - 1), 2 ** (_Z_BITS - 1)
        if cell.numel() and (cell[:, :2].abs().max() >= xy_half or cell[:, 2].abs().max() >= z_half):
            raise ValueError(
                f"a token lies too far from the world origin for the voxel key (|x|, |y| < "
                f"{xy_half * cfg.voxel_min_m:.0f} m, |z| < {z_half * cfg.voxel_min_m:.0f} m); re-centre the scene"
            )
        key = cache
        key = (key << _LEVEL_BITS) | level
        key = (key << _XY_BITS) | (cell[:, 0] + xy_half)
        key = (key << _XY_BITS) | (cell[:, 1] + xy_half)
        key = (key << _Z_BITS) | (cell[:, 2] + z_half)
        return key, cell, voxel

    def _unpack(self, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Voxel cells (N, 3) as float and voxel sizes (N,) [m] of packed keys."""
        z = (key & (2**_Z_BITS - 1)) - 2 ** (_Z_BITS - 1)
        y = ((key >> _Z_BITS) & (2**_XY_BITS - 1)) - 2 ** (_XY_BITS - 1)
        x = ((key >> (_Z_BITS + _XY_BITS)) & (2**_XY_BITS - 1)) - 2 ** (_XY_BITS - 1)
        level = (key >> (_Z_BITS + 2 * _XY_BITS)) & (2**_LEVEL_BITS - 1)
        voxel = self.config.voxel_min_m * torch.pow(2.0, level.float())
        return torch.stack([x, y, z], dim=1).float(), voxel

    def _holds(self, key: torch.Tensor) -> torch.Tensor:
        """(n,) bool: whether each of ``key`` (n,) is a voxel the cache holds (binary search in
        the sorted keys)."""
        if not len(self):
            return torch.zeros_like(key, dtype=torch.bool)
        index = torch.searchsorted(self.key, key).clamp(max=len(self) - 1)
        return self.key[index] == key

    def _fuse(self, new: dict[str, torch.Tensor]) -> None:
        """Fuse this write's tokens ``new`` (state name -> (n, ...)) into their voxels: in a voxel
        the most confident token wins, ties to the new write; if it is new, the new tokens with
        its confidence replace the voxel's old ones, else the old ones stay and the new are
        dropped. Voxels this write did not touch keep what they hold. Survivors are inserted
        in key order, which keeps every lookup a binary search."""
        order = torch.argsort(new["key"], stable=True)
        new = {name: value[order] for name, value in new.items()}
        key = new["key"]
        # The old tokens of the voxels this write touches: one short range of the sorted keys
        # per distinct new key.
        distinct = torch.ones_like(key, dtype=torch.bool)
        distinct[1:] = key[1:] != key[:-1]
        begin = torch.searchsorted(self.key, key[distinct])
        span = torch.searchsorted(self.key, key[distinct], right=True) - begin
        within = torch.arange(int(span.sum()), device=self.device) - (torch.cumsum(span, 0) - span).repeat_interleave(span)
        old = begin.repeat_interleave(span) + within
        # Decide each touched voxel among its old and new tokens: most confident first, new
        # before old among equals.
        keys = torch.cat([self.key[old], key])
        confidence = torch.cat([self.confidence[old], new["confidence"]]).float()
        is_new = torch.arange(len(keys), device=self.device) >= len(old)
        ranked = torch.argsort(is_new.int(), descending=True, stable=True)
        ranked = ranked[torch.argsort(confidence[ranked], descending=True, stable=True)]
        ranked = ranked[torch.argsort(keys[ranked], stable=True)]
        first = torch.ones_like(ranked, dtype=torch.bool)
        first[1:] = keys[ranked[1:]] != keys[ranked[:-1]]
        best = ranked[first][torch.cumsum(first.long(), 0) - 1]  # each token's voxel winner
        keep = torch.empty_like(is_new)
        keep[ranked] = torch.where(is_new[best], is_new[ranked] & (confidence[ranked] == confidence[best]),
                                   ~is_new[ranked])
        stays = torch.ones(len(self), dtype=torch.bool, device=self.device)
        stays[old] = keep[: len(old)]
        self._merge(stays, {name: value[keep[len(old):]] for name, value in new.items()})

    def _merge(self, stays: torch.Tensor, new: dict[str, torch.Tensor]) -> None:
        """Keep the tokens where ``stays`` (N,) and insert tokens ``new`` (sorted by key) after
        the equal keys, in one gather per state tensor."""
        count, added = len(self), len(new["key"])
        position = torch.searchsorted(self.key, new["key"], right=True)  # the old token each goes before
        old_slot = torch.arange(count, device=self.device)
        old_slot = old_slot + torch.searchsorted(position, old_slot, right=True)
        source = torch.empty(count + added, dtype=torch.long, device=self.device)
        source[old_slot] = torch.arange(count, device=self.device)
        source[position + torch.arange(added, device=self.device)] = torch.arange(count, count + added, device=self.device)
        source = source[torch.cat([stays, torch.ones(added, dtype=torch.bool, device=self.device)])[source]]
        for name in _STATE:
            setattr(self, name, torch.cat([getattr(self, name), new[name]])[source])

    def _enforce_budget(self) -> None:
        max_tokens = self.config.budget_bytes // self.bytes_per_token
        counts = torch.bincount(self.cache, minlength=self.num_caches)
        excess = (counts - max_tokens).clamp(min=0)
        if not excess.any():
            return
        # Rank tokens within their cache by (last_used, confidence), oldest and least sure first.
        order = torch.argsort(self.confidence, stable=True)
        order = order[torch.argsort(self.last_used[order], stable=True)]
        order = order[torch.argsort(self.cache[order], stable=True)]
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=self.device) - starts[self.cache[order]]
        evict = torch.zeros(len(order), dtype=torch.bool, device=self.device)
        evict[order] = rank < excess[self.cache[order]]
        self._keep(~evict)

    # ------------------------------------------------------------------ read
    @torch.no_grad()
    def read(self, cam_to_world: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int], cache_ids=None) -> MemoryRead:
        """Project the caches into target views.

        ``cam_to_world`` (B, 4, 4) and ``K`` (B, 3, 3) describe cameras with images of
        ``image_size`` = (H, W) pixels; the read is on their latent grid (H / downsample,
        W / downsample). Returns a :class:`MemoryRead`.
        """
        check_intrinsics(K)
        batch = K.shape[0]
        check_poses(cam_to_world, batch)
        ids = self._cache_ids(cache_ids, batch)
        self.step += 1
        cfg = self.config
        image_h, image_w = image_size
        if image_h % cfg.downsample or image_w % cfg.downsample:
            raise ValueError(f"image_size {image_size} is not a multiple of downsample {cfg.downsample}")
        height, width = image_h // cfg.downsample, image_w // cfg.downsample
        K_latent = scale_intrinsics(K.to(self.device, torch.float32), 1 / cfg.downsample, 1 / cfg.downsample)
        world_to_cam = invert_pose(cam_to_world.to(self.device, torch.float32))

        radius = cfg.max_splat_radius
        # Pair every view with each token of its cache, all views at once: the cache id leads
        # the sorted keys, so a cache's tokens are one range of them.
        begin = torch.searchsorted(self.key, ids << _CACHE_SHIFT)
        per_view = torch.searchsorted(self.key, (ids << _CACHE_SHIFT) | (2**_CACHE_SHIFT - 1), right=True) - begin
        view = torch.arange(batch, device=self.device).repeat_interleave(per_view)
        offset = torch.arange(len(view), device=self.device) - (torch.cumsum(per_view, 0) - per_view)[view]
        token = begin[view] + offset
        rotation, translation = world_to_cam[:, :3, :3], world_to_cam[:, :3, 3]
        position, voxel = self._positions(token)
        local = torch.einsum("nij,nj->ni", rotation[view], position) + translation[view]
        z = local[:, 2]
        fx, fy, cx, cy = (K_latent[view, row, col] for row, col in ((0, 0), (1, 1), (0, 2), (1, 2)))
        u = fx * local[:, 0] / z.clamp(min=_NEAR_M) + cx
        v = fy * local[:, 1] / z.clamp(min=_NEAR_M) + cy
        # Only tokens in front whose own cell is within a splat radius of the grid.
        near = ((z > _NEAR_M) & (u > -radius) & (u < width + radius) & (v > -radius) & (v < height + radius))
        keep = near.nonzero()[:, 0]
        view, token, local, u, v, voxel = view[keep], token[keep], local[keep], u[keep], v[keep], voxel[keep]
        fx, fy, cx, cy = fx[keep, None], fy[keep, None], cx[keep, None], cy[keep, None]
        # The token's surface patch (centre +- its two half-axes) projected into the target.
        axes = torch.einsum("nak,njk->naj", self.patch[token].float() * (voxel / _PATCH_STEPS)[:, None, None],
                            rotation[view])
        corners = local[:, None, :] + torch.cat([axes, -axes], 1)
        corner_z = corners[..., 2].clamp(min=_NEAR_M)
        corner_u = fx * corners[..., 0] / corner_z + cx
        corner_v = fy * corners[..., 1] / corner_z + cy
        home = torch.stack([torch.floor(u), torch.floor(v)], 1).long()
        # Cells whose centres (c + 0.5) the patch covers, always the token's own, at most
        # `radius` away; columns then rows, as (first, last) pairs.
        first = torch.ceil(torch.stack([corner_u.amin(1), corner_v.amin(1)], 1) - 0.5).long()
        last = torch.floor(torch.stack([corner_u.amax(1), corner_v.amax(1)], 1) - 0.5).long()
        first = torch.minimum(first, home).clamp(min=home - radius)
        last = torch.maximum(last, home).clamp(max=home + radius)
        on_grid = ((last >= 0).all(1) & (first[:, 0] < width) & (first[:, 1] < height)).nonzero()[:, 0]
        view, token, home, first, last = view[on_grid], token[on_grid], home[on_grid], first[on_grid], last[on_grid]
        z = local[on_grid, 2]

        # Expand each token to the cells of its splat rectangle.
        size = last - first + 1
        counts = size[:, 0] * size[:, 1]
        pair = torch.arange(len(token), device=self.device).repeat_interleave(counts)
        offset = torch.arange(int(counts.sum()), device=self.device) - (torch.cumsum(counts, 0) - counts)[pair]
        cols = size[pair, 0]
        col = first[pair, 0] + offset % cols
        row = first[pair, 1] + torch.div(offset, cols, rounding_mode="floor")
        ring = torch.maximum((col - home[pair, 0]).abs(), (row - home[pair, 1]).abs())
        inside = ((col >= 0) & (col < width) & (row >= 0) & (row < height)).nonzero()[:, 0]
        pair, col, row, ring = pair[inside], col[inside], row[inside], ring[inside]
        priority = z[pair] * (1 + cfg.splat_depth_penalty * ring.float())
        if cfg.unsure_depth_penalty:
            priority = priority * (1 + cfg.unsure_depth_penalty * (1 - self.confidence[token[pair]].float()))

        cells = batch * height * width
        cell = view[pair] * (height * width) + row * width + col
        winner = nearest_per_cell(cell, priority, pair, cells)
        valid = winner >= 0
        winner_token = token[winner[valid]]
        latents = torch.zeros(cells, self.channels, dtype=self.latent.dtype, device=self.device)
        latents[valid] = self.latent[winner_token]
        depth = torch.zeros(cells, device=self.device)
        depth[valid] = z[winner[valid]]
        self.last_used[winner_token] = self.step
        return _fill_gaps(
            MemoryRead(
                latents=latents.view(batch, height, width, self.channels).permute(0, 3, 1, 2).float(),
                valid=valid.view(batch, 1, height, width),
                depth=depth.view(batch, 1, height, width),
            ),
            reach=cfg.max_splat_radius,
        )

    # ------------------------------------------------------------------ snapshot
    def save(self, path: str | Path) -> Path:
        """Write the whole cache (tokens, clock, config) to a safetensors file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous().cpu() for name in _STATE}
        metadata = {"format": "mirage-latent-cache/1", "num_caches": str(self.num_caches),
                    "channels": str(self.channels), "step": str(self.step), "config": json.dumps(asdict(self.config))}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> LatentCache:
        """Restore a cache written by :meth:`save`, exactly."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent cache snapshot not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path), device=str(device))
        except Exception as error:  # safetensors raises several types for corrupt files
            raise ValueError(f"{path} is not a readable latent cache snapshot ({error})") from error
        if metadata.get("format") != "mirage-latent-cache/1":
            raise ValueError(f"{path} is not a latent cache snapshot (format={metadata.get('format')!r})")
        cache = cls(int(metadata["num_caches"]), int(metadata["channels"]),
                    LatentCacheConfig(**json.loads(metadata["config"])), device)
        order = torch.argsort(tensors["key"], stable=True)  # older snapshots are not in key order
        for name in _STATE:
            setattr(cache, name, tensors[name][order])
        cache.step = int(metadata["step"])
        return cache


def _to_int8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(-127, 127).to(torch.int8)


def _shrink_to_int8_range(axes: torch.Tensor) -> torch.Tensor:
    """Scale each half-axis (..., 3) down as a whole to fit int8: shorter, same direction, so
    the patch stays inside the cells it covered (clipping components would turn it)."""
    largest = axes.abs().amax(dim=-1, keepdim=True)
    return axes * (127 / largest.clamp(min=127))


_GAP_DIRECTIONS = ((1, 0), (0, 1), (1, 1), (1, -1))  # columns, rows and both diagonals


@functools.lru_cache(maxsize=16)
def _gap_neighbours(height: int, width: int, reach: int, device: str) -> torch.Tensor:
    """(4 directions, 2 sides, reach steps, h * w) flat index of each cell's neighbour that many
    steps along the direction on that side, -1 off the grid."""
    rows = torch.arange(height, device=device).view(-1, 1).expand(height, width).reshape(-1)
    cols = torch.arange(width, device=device).view(1, -1).expand(height, width).reshape(-1)
    table = torch.empty(len(_GAP_DIRECTIONS), 2, reach, height * width, dtype=torch.long, device=device)
    for d, (step_row, step_col) in enumerate(_GAP_DIRECTIONS):
        for side, sign in enumerate((1, -1)):
            for step in range(1, reach + 1):
                row, col = rows + sign * step_row * step, cols + sign * step_col * step
                inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
                table[d, side, step - 1] = torch.where(inside, row * width + col, -1)
    return table


def _fill_gaps(read: MemoryRead, reach: int) -> MemoryRead:
    """Fill empty cells lying between valid cells (see the module doc): per direction the
    nearest valid cell on each side within ``reach``, the nearer-depth side if both exist,
    and over the four directions the nearest candidate. All in a few batched gathers."""
    if reach < 1:
        return read
    batch, channels, height, width = read.latents.shape
    device = read.depth.device
    table = _gap_neighbours(height, width, reach, str(device))  # (4, 2, reach, hw)
    cells = height * width
    valid = read.valid.reshape(batch, cells)
    depth = torch.where(valid, read.depth.reshape(batch, cells), float("inf"))
    # Padding column `cells` stands for "off the grid": never valid, infinitely far.
    valid = torch.cat([valid, torch.zeros(batch, 1, dtype=torch.bool, device=device)], 1)
    depth = torch.cat([depth, torch.full((batch, 1), float("inf"), device=device)], 1)
    neighbour = torch.where(table >= 0, table, cells).view(-1)
    hit = valid[:, neighbour].view(batch, *table.shape)  # (B, 4, 2, reach, hw)
    # Per direction and side, the nearest valid cell within reach (a few elementwise passes:
    # a reduction along that short axis is far slower on CPU).
    source = table[:, :, 0].expand(batch, -1, -1, -1)  # (B, 4, 2, hw)
    found = torch.zeros_like(source, dtype=torch.bool)
    for step in reversed(range(reach)):  # the nearest step comes last and wins
        hit_step = hit[:, :, :, step]
        source = torch.where(hit_step, table[:, :, step], source)
        found |= hit_step
    source_depth = torch.where(found, depth.gather(1, source.clamp(min=0).reshape(batch, -1)).view_as(source),
                               float("inf"))
    both_sides = found.all(dim=2)  # (B, 4, hw)
    second_nearer = source_depth[:, :, 1] < source_depth[:, :, 0]  # else the first side, also on ties
    candidate = torch.where(second_nearer, source[:, :, 1], source[:, :, 0])
    candidate_depth = torch.where(both_sides, torch.minimum(source_depth[:, :, 0], source_depth[:, :, 1]),
                                  float("inf"))
    best_depth, direction = candidate_depth.min(dim=1)  # (B, hw) nearest over directions
    best = candidate.gather(1, direction[:, None])[:, 0]
    filled = (torch.isfinite(best_depth) & ~read.valid.reshape(batch, cells)).view_as(read.valid)
    fill = read.latents.reshape(batch, channels, -1).gather(2, best.clamp(min=0)[:, None].expand(-1, channels, -1))
    return MemoryRead(
        latents=torch.where(filled, fill.view_as(read.latents), read.latents),
        valid=read.valid | filled,
        depth=torch.where(filled, best_depth.view_as(read.depth), read.depth),
    )


def _patch_axes(points: torch.Tensor, depth: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """(B, h, w, 2, 3) half-axes of each token's surface patch along the grid's columns and rows,
    in the camera frame of ``points`` (B, h, w, 3).

    Half the vector between the token's neighbours' points where they lie on the same surface
    (valid depth within a factor of 2); across an edge or at the border, the camera's own axis
    scaled to half the fronto-parallel footprint.
    """
    height, width = depth.shape[-2:]
    # Zero padding stands for "no neighbour" past the border (depth 0 is no surface). The four
    # neighbours are stacked as (axis: columns, rows; side: ahead (+1), behind (-1)).
    padded_points = F.pad(points, (0, 0, 1, 1, 1, 1))
    padded_depth = F.pad(depth[:, 0], (1, 1, 1, 1))
    shifts = (((1, 2), (1, 0)), ((2, 1), (0, 1)))  # (row, column) offsets into the padding

    def neighbours(padded: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack([padded[:, r : r + height, c : c + width] for r, c in axis]) for axis in shifts],
                           dim=1)  # (2 sides, 2 axes, B, h, w, ...)

    other_points, other_depth = neighbours(padded_points), neighbours(padded_depth)
    depth = depth[:, 0]
    same = (other_depth > 0) & ((depth - other_depth).abs() < torch.minimum(depth, other_depth))
    step = torch.where(same[..., None], other_points - points, torch.zeros_like(points))
    (ahead, behind), (has_ahead, has_behind) = step, same
    half = torch.where((has_ahead & has_behind)[..., None], (ahead - behind) / 4, (ahead - behind) / 2)
    fallback = torch.zeros_like(half)  # (2 axes, B, h, w, 3): the camera's x for columns, y for rows
    fallback[0, ..., 0] = fallback[1, ..., 1] = footprint[:, 0] / 2
    axes = torch.where((has_ahead | has_behind)[..., None], half, fallback)
    return axes.permute(1, 2, 3, 0, 4)


def _fit_patch_to_cell(points: torch.Tensor, axes: torch.Tensor, K_latent: torch.Tensor) -> torch.Tensor:
    """Shrink each half-axis (B, h, w, 2, 3) of the patches centred on ``points`` (B, h, w, 3),
    both in the writing camera's frame, so that, seen from that camera, the patch stays inside
    the token's own cell: a read from the same pose then shows every stored token in its own
    cell and nowhere else."""
    fx, fy = K_latent[:, 0, 0].view(-1, 1, 1, 1, 1), K_latent[:, 1, 1].view(-1, 1, 1, 1, 1)
    centre = points[..., None, None, :]  # (B, h, w, 1, 1, 3)
    u0 = fx * centre[..., 0] / centre[..., 2].clamp(min=_NEAR_M)
    v0 = fy * centre[..., 1] / centre[..., 2].clamp(min=_NEAR_M)
    # Both ends of each half-axis: (B, h, w, 2 axes, 2 signs, 3).
    corner = centre + torch.tensor([1.0, -1.0], device=axes.device).view(1, 2, 1) * axes[..., None, :]
    z = corner[..., 2].clamp(min=_NEAR_M)
    reach = torch.maximum((fx * corner[..., 0] / z - u0).abs(), (fy * corner[..., 1] / z - v0).abs()).amax(dim=-1)
    scale = (0.49 / reach.clamp(min=1e-9)).clamp(max=1.0)
    return axes * scale[..., None]
