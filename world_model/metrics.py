"""Image metrics of the fidelity benchmark and training: PSNR, SSIM, sharpness, colour shift.

Images are float (B, 3, H, W) in [0, 1]; an optional ``mask`` (B, 1, H, W) bool restricts a
metric to some pixels (e.g. the ones the memory covered).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) peak signal-to-noise ratio [dB] (peak 1); NaN where a mask selects nothing."""
    error = (prediction - target).pow(2).mean(dim=1, keepdim=True)
    if mask is None:
        mse = error.flatten(1).mean(1)
    else:
        weight = mask.float()
        mse = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def ssim(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) structural similarity (Gaussian window 11, sigma 1.5, on the mean of the RGB
    channels' SSIM maps), averaged over the masked pixels."""
    channels = prediction.shape[1]
    coords = torch.arange(11, dtype=prediction.dtype, device=prediction.device) - 5
    gauss = torch.exp(-coords**2 / (2 * 1.5**2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).expand(channels, 1, 11, 11)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), window, groups=channels)

    mu_p, mu_t = blur(prediction), blur(target)
    var_p = blur(prediction * prediction) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(prediction * target) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    ssim_map = ssim_map.mean(dim=1, keepdim=True)
    if mask is None:
        return ssim_map.flatten(1).mean(1)
    weight = mask.float()
    return (ssim_map * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """(B,) variance of the Laplacian of the grey image: high-frequency energy (sharpness)."""
    grey = images.mean(dim=1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=images.dtype,
                          device=images.device).view(1, 1, 3, 3)
    return F.conv2d(grey, kernel).flatten(1).var(dim=1)


def colour_shift(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) distance between the mean colours (over all pixels) of ``prediction`` and ``target``
    in 8-bit levels: how far a frame's overall colour and brightness have drifted, whatever its
    detail (the start frame shown again keeps the truth's colours; drifting generated frames
    do not)."""
    return 255 * (prediction.mean(dim=(2, 3)) - target.mean(dim=(2, 3))).norm(dim=1)
