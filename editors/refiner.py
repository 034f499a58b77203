"""The one-step refiner: turns a rough composite (assets pasted by :func:`editors.composite`) into
a coherent frame, in one forward pass.

Design (after Mirage, arXiv 2512.24227, scaled down to a CPU):

- Main path, the "video" autoencoder: per frame, two stride-2 levels down to a bottleneck at
  1/4 resolution, where a **causal temporal mix** adds the previous frame's bottleneck features
  (a zero-initialised 1x1 convolution over ``[current, previous]``), then two levels up. Its
  coarse features carry the lighting and colour of the scene around the asset and change
  smoothly from frame to frame.
- Per-frame 2D encoder: a shallow full-resolution convolution stack over the same input whose
  features are **injected into the decoder** at full and half resolution through zero-initialised
  1x1 convolutions (the paper's temporally agnostic latents), restoring edges and detail that the
  bottleneck loses without making the temporal path see anything but its own features.
- Output: a colour correction added to the composite only inside the asset mask grown by
  ``band_px`` pixels (edges and the shadow's fringe), so the rest of the frame is returned
  exactly and the background never flickers.

Input: ``rgb`` (B, 3, H, W) in [0, 1] (the composite) and ``mask`` (B, 1, H, W) (pixels of
inserted assets); H and W multiples of 4. ``previous``: the ``state`` of the previous frame of
the same stream (None at a stream's start). Trained by ``mirage train-editor`` on pairs from the
ground-truth renderer (asset pasted vs rendered in the scene); the trained weights ship in
``editors/weights/refiner`` (:func:`load_refiner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from world_model.tiny_backbone import ResidualBlock

DEFAULT_REFINER_DIR = Path(__file__).parent / "weights" / "refiner"


@dataclass
class RefinerOutput:
    """``rgb`` (B, 3, H, W) the refined frames in [0, 1]; ``state`` (B, C, H/4, W/4) bottleneck
    features to pass as ``previous`` with the next frame of the same stream."""

    rgb: torch.Tensor
    state: torch.Tensor


def _zero_conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels_in, channels_out, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AssetRefiner(ModelMixin, ConfigMixin):
    """See the module doc. ``channels``: widths of the main path at 1/2 and 1/4 resolution;
    ``detail_channels``: width of the per-frame 2D encoder; ``band_px``: pixels around the
    asset mask the refiner may change."""

    @register_to_config
    def __init__(self, channels: tuple[int, int] = (32, 64), detail_channels: int = 16, norm_groups: int = 8,
                 band_px: int = 2):
        super().__init__()
        if len(channels) != 2:
            raise ValueError(f"`channels` must give the two main-path widths, got {channels}")
        half, quarter = channels
        inputs = 4  # rgb and mask
        self.down_half = nn.Sequential(nn.Conv2d(inputs, half, 3, stride=2, padding=1), nn.SiLU(),
                                       ResidualBlock(half, norm_groups))
        self.down_quarter = nn.Sequential(nn.Conv2d(half, quarter, 3, stride=2, padding=1), nn.SiLU(),
                                          ResidualBlock(quarter, norm_groups))
        self.temporal = _zero_conv(2 * quarter, quarter)
        self.middle = ResidualBlock(quarter, norm_groups)
        self.up_half = nn.Sequential(nn.Conv2d(quarter, half * 4, 3, padding=1), nn.PixelShuffle(2))
        self.decode_half = ResidualBlock(half, norm_groups)
        self.up_full = nn.Sequential(nn.Conv2d(half, detail_channels * 4, 3, padding=1), nn.PixelShuffle(2))
        self.detail_full = nn.Sequential(nn.Conv2d(inputs, detail_channels, 3, padding=1), nn.SiLU(),
                                         nn.Conv2d(detail_channels, detail_channels, 3, padding=1), nn.SiLU())
        self.detail_half = nn.Sequential(nn.Conv2d(detail_channels, detail_channels, 3, stride=2, padding=1),
                                         nn.SiLU())
        self.inject_half = _zero_conv(detail_channels, half)
        self.inject_full = _zero_conv(detail_channels, detail_channels)
        self.out = nn.Sequential(nn.Conv2d(detail_channels, detail_channels, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(detail_channels, 3, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # untrained, the refiner returns the composite unchanged
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, rgb: torch.Tensor, mask: torch.Tensor, previous: torch.Tensor | None = None) -> RefinerOutput:
        _check_inputs(rgb, mask)
        x = torch.cat([rgb * 2 - 1, mask.float()], dim=1)
        features = self.down_quarter(self.down_half(x))
        if previous is not None and previous.shape != features.shape:
            raise ValueError(f"`previous` must be the state of the previous frame, {tuple(features.shape)}, got "
                             f"{tuple(previous.shape)}; pass None at the start of a stream")
        past = features if previous is None else previous.to(features)
        h = self.middle(features + self.temporal(torch.cat([features, past], dim=1)))
        detail = self.detail_full(x)
        h = self.decode_half(self.up_half(h) + self.inject_half(self.detail_half(detail)))
        h = self.up_full(h) + self.inject_full(detail)
        correction = self.out(h)
        region = edit_region(mask, self.config.band_px)
        return RefinerOutput(rgb=(rgb + region * correction).clamp(0, 1), state=features)

    @torch.no_grad()
    def refine_clip(self, rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Refine the frames of one stream in order: ``rgb`` (T, 3, H, W), ``mask`` (T, 1, H, W)."""
        state, out = None, []
        for t in range(rgb.shape[0]):
            result = self(rgb[t:t + 1], mask[t:t + 1], state)
            out.append(result.rgb)
            state = result.state
        return torch.cat(out)


def edit_region(mask: torch.Tensor, band_px: int) -> torch.Tensor:
    """(B, 1, H, W) float: ``mask`` grown by ``band_px`` pixels (a max filter)."""
    mask = mask.float()
    if band_px <= 0:
        return mask
    return F.max_pool2d(mask, 2 * band_px + 1, stride=1, padding=band_px)


def load_refiner(path: str | Path | None = None, device: torch.device | str = "cpu") -> AssetRefiner:
    """The refiner in ``path`` (a ``save_pretrained`` folder), or the one shipped in the package."""
    folder = Path(path) if path is not None else DEFAULT_REFINER_DIR
    for required in ("config.json", "diffusion_pytorch_model.safetensors"):
        if not (folder / required).is_file():
            where = "the package's refiner" if path is None else "refiner folder"
            raise FileNotFoundError(f"{where}: {folder / required} is missing. Train one with `mirage train-editor` "
                                    f"and pass its `<out_dir>/model` folder.")
    try:
        model = AssetRefiner.from_pretrained(str(folder))
    except Exception as error:  # diffusers/safetensors raise several types for corrupt files
        raise ValueError(f"could not load the refiner from {folder} ({error}); re-train or re-copy the folder") from error
    return model.to(device).eval()


def _check_inputs(rgb: torch.Tensor, mask: torch.Tensor) -> None:
    if rgb.ndim != 4 or rgb.shape[1] != 3 or not rgb.is_floating_point():
        raise ValueError(f"`rgb` must be float (B, 3, H, W) in [0, 1], got {tuple(rgb.shape)} {rgb.dtype}")
    if mask.shape != (rgb.shape[0], 1, *rgb.shape[2:]):
        raise ValueError(f"`mask` must be (B, 1, H, W) matching `rgb` {tuple(rgb.shape)}, got {tuple(mask.shape)}")
    if rgb.shape[-2] % 4 or rgb.shape[-1] % 4:
        raise ValueError(f"image size {tuple(rgb.shape[-2:])} must be a multiple of 4; pad or resize the frames")
