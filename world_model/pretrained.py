"""The default backbone's weights, shipped inside the package.

``world_model/weights/tiny/`` holds the :class:`~world_model.tiny_backbone.TinyBackbone` trained
by ``mirage train-world-model`` (``autoencoder/`` and ``generator/`` diffusers folders and a
``MODEL_CARD.md`` with its data, steps, training time and metrics), so the env works with no
training and no download.
"""

from __future__ import annotations

from pathlib import Path

import torch

from world_model.tiny_backbone import TinyBackbone

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "tiny"


def load_default_backbone(path: str | Path | None = None, device: torch.device | str = "cpu",
                          precision: str = "float32") -> TinyBackbone:
    """The backbone in ``path``, or the shipped default when None; ``precision``: see
    :class:`~world_model.tiny_backbone.TinyBackbone`."""
    folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not folder.is_dir():
        where = "the package's default world model" if path is None else "world model folder"
        raise FileNotFoundError(
            f"{where} not found at {folder}. Train one with `mirage train-world-model` and pass its "
            f"`<out_dir>/model` folder as world_model_path."
        )
    return TinyBackbone.from_pretrained(folder, device, precision=precision)
