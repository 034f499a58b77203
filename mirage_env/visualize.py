"""Pictures people look at: colourised depth and labels, contact sheets, videos."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

from mirage_env.scene import Semantic

SEMANTIC_COLOURS = np.array(
    [
        (135, 190, 235),  # sky
        (70, 70, 75),  # road
        (250, 240, 90),  # lane marking
        (200, 170, 200),  # sidewalk
        (120, 170, 70),  # terrain
        (180, 90, 60),  # building
        (30, 120, 30),  # vegetation
        (250, 170, 30),  # pole
        (20, 40, 200),  # vehicle
        (220, 20, 60),  # pedestrian
    ],
    dtype=np.uint8,
)
assert len(SEMANTIC_COLOURS) == len(Semantic)


def colourise_semantic(labels: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 labels -> (..., H, W, 3) uint8 colours."""
    return SEMANTIC_COLOURS[np.asarray(labels)]


def colourise_depth(depth: np.ndarray, max_depth_m: float = 80.0) -> np.ndarray:
    """(..., H, W) metric depth -> (..., H, W, 3) uint8; near is bright, no surface is black."""
    depth = np.asarray(depth, dtype=np.float32)
    nearness = np.where(depth > 0, 1.0 - np.clip(np.log1p(depth) / np.log1p(max_depth_m), 0, 1), 0.0)
    ramp = np.stack([nearness**0.5, nearness**1.5, 0.3 + 0.7 * nearness**3], -1) * (depth > 0)[..., None]
    return (ramp * 255).astype(np.uint8)


def contact_sheet(frames: np.ndarray, captions: list[str], columns: int = 4, title: str = "") -> Image.Image:
    """A grid of ``frames`` (N, H, W, 3) uint8 with a caption under each and a title on top."""
    count, height, width, _ = frames.shape
    rows = (count + columns - 1) // columns
    caption_h, title_h, pad = 14, 20 if title else 0, 4
    sheet = Image.new("RGB", (columns * (width + pad) + pad, title_h + rows * (height + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 4), title, fill="black")
    for i, (frame, caption) in enumerate(zip(frames, captions)):
        x = pad + (i % columns) * (width + pad)
        y = title_h + pad + (i // columns) * (height + caption_h + pad)
        sheet.paste(Image.fromarray(frame), (x, y))
        draw.text((x + 2, y + height + 1), caption, fill="black")
    return sheet


def write_video(path: str | Path, frames, fps: float, quality: int = 8) -> Path:
    """Write an iterable of (H, W, 3) uint8 frames to an H.264 mp4 of imageio ``quality`` (0-10)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=quality, macro_block_size=8) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame))
    return path
