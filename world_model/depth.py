"""Image-to-depth models from transformers, for lifting generated frames into the memory.

:class:`TransformersDepth` wraps a depth-estimation model (Depth Anything, DPT, ZoeDepth, ...)
loaded from a local folder and plugs into ``WorldModel(depth_model=...)`` or
``WanBackbone(depth_model=...)``: images (B, 3, H, W) in [0, 1] in, metric depth (B, 1, H, W)
[m] out, at the input size.

The memory needs metric depth: use a metric variant (Depth Anything metric checkpoints,
ZoeDepth), whose output is in metres (``scale`` corrects a known unit or calibration factor).
Relative models (Depth Anything relative, DPT) predict relative inverse depth, which has no
unit: they need a ``scale`` from the caller, and depth is taken as ``scale / prediction``
(zero prediction: no surface). That ignores the unknown shift of affine-invariant inverse
depth, so relative models are a fallback, not a substitute.

Preprocessing runs in torch on the model's device from the folder's image-processor settings
(DPT-style: ``size``, ``keep_aspect_ratio``, ``ensure_multiple_of``, ``image_mean``,
``image_std``), so frames never leave the GPU; resizing is bicubic with antialiasing, close to
but not bit-identical with the processor's PIL resize.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoImageProcessor,
    AutoModelForDepthEstimation,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessorPil,
)

SKY_FRACTION_OF_MAX_DEPTH = 0.95  # metric Depth Anything saturates at max_depth on sky


class TransformersDepth:
    """Metric depth from a transformers depth-estimation model (see the module doc).

    Args:
        model: an ``AutoModelForDepthEstimation`` model.
        processor: its image processor (settings read, see the module doc).
        scale: metres per output unit for metric models (default 1); for relative models
            (inverse depth) required: depth = ``scale / prediction``.
        far_m: predicted depths at or beyond this [m] become 0 (no surface): metric models
            saturate on sky instead of saying "no surface". Default: 95% of the model's
            ``max_depth`` for metric Depth Anything, else none.
    """

    def __init__(self, model, processor, scale: float | None = None, far_m: float | None = None):
        self.model, self.processor = model.eval(), processor
        config = model.config
        self.inverse = getattr(config, "depth_estimation_type", None) == "relative" or config.model_type == "dpt"
        if self.inverse and scale is None:
            raise ValueError(f"{config.model_type} predicts relative inverse depth, not metres: pass `scale` "
                             "(depth = scale / prediction) or use a metric variant")
        if scale is not None and scale <= 0:
            raise ValueError(f"`scale` must be > 0, got {scale}")
        self.scale = 1.0 if scale is None else float(scale)
        if far_m is None and getattr(config, "depth_estimation_type", None) == "metric":
            far_m = SKY_FRACTION_OF_MAX_DEPTH * config.max_depth * self.scale
        self.far_m = far_m

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu", scale: float | None = None,
                        far_m: float | None = None) -> TransformersDepth:
        """Load the model and its image processor from a local folder (``config.json``, weights
        and ``preprocessor_config.json``)."""
        folder = Path(path)
        for required in ("config.json", "preprocessor_config.json"):
            if not (folder / required).is_file():
                raise FileNotFoundError(f"depth model folder incomplete: {folder / required} is missing")
        try:
            model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).to(device)
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except Exception as error:  # transformers/safetensors raise several types for bad files
            raise ValueError(f"could not load the depth model from {folder}: {error}") from error
        return cls(model, processor, scale, far_m)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> metric depth (B, 1, H, W) [m], 0 for no surface."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"`images` must be float (B, 3, H, W) in [0, 1], got {tuple(images.shape)} {images.dtype}")
        size = images.shape[-2:]
        prediction = self.model(pixel_values=self._preprocess(images.to(self.device))).predicted_depth
        prediction = F.interpolate(prediction[:, None].float(), size=size, mode="bilinear", align_corners=False)
        if self.inverse:
            depth = torch.where(prediction > 0, self.scale / prediction.clamp(min=1e-6), torch.zeros_like(prediction))
        else:
            depth = self.scale * prediction.clamp(min=0)
        if self.far_m is not None:
            depth = torch.where(depth >= self.far_m, torch.zeros_like(depth), depth)
        return depth

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalise as the processor's settings say; (B, 3, H', W')."""
        processor = self.processor
        if getattr(processor, "do_resize", True):
            target = processor.size
            if getattr(target, "height", None) is None or getattr(target, "width", None) is None:
                raise ValueError(f"the image processor's size must give height and width, got {target}")
            height, width = _resized_size(images.shape[-2:], (target.height, target.width),
                                          getattr(processor, "keep_aspect_ratio", False),
                                          getattr(processor, "ensure_multiple_of", 1))
            images = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1)
        if getattr(processor, "do_normalize", True):
            mean = torch.tensor(processor.image_mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(processor.image_std, device=images.device).view(1, 3, 1, 1)
            images = (images - mean) / std
        return images.to(self.model.dtype)


def _resized_size(size: tuple[int, int], target: tuple[int, int], keep_aspect_ratio: bool,
                  multiple: int) -> tuple[int, int]:
    """DPT-style output size: towards ``target``, with the aspect ratio kept by the scale that
    changes the image least, each side rounded to a multiple of ``multiple``."""
    scale_h, scale_w = target[0] / size[0], target[1] / size[1]
    if keep_aspect_ratio:
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h

    def to_multiple(value: float) -> int:
        return max(multiple, round(value / multiple) * multiple)

    return to_multiple(scale_h * size[0]), to_multiple(scale_w * size[1])


def make_tiny_depth_model(path: str | Path, seed: int = 0, metric: bool = True, max_depth: int = 80) -> Path:
    """Write a tiny random Depth Anything model (metric, or relative when ``metric`` is False;
    a 2-layer DINOv2 backbone, patch 14, 28 x 28 input) and its DPT image processor to
    ``path``, for tests."""
    folder = Path(path)
    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=28, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                                 reassemble_factors=[2, 1], fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="metric" if metric else "relative", max_depth=max_depth)
    DepthAnythingForDepthEstimation(config).save_pretrained(str(folder))
    DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(str(folder))
    return folder
