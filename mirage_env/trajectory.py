"""Ground-truth trajectories and their file format.

A trajectory file is a safetensors file (``.safetensors``) with these tensors:

- ``timestamps`` (T,) float64 [s]
- ``ego`` (T, 4) float64: rear-axle ``x, y`` [m], ``yaw`` [rad], ``speed`` [m/s], our world frame
- ``controls`` (T, 2) float64: normalised ``steer, throttle`` applied from step t to t+1
- ``cam_to_world`` (T, 4, 4) float32: camera poses (conventions of ``world_model.camera``)
- ``intrinsics`` (3, 3) float32: pinhole matrix for ``mount.width`` x ``mount.height`` pixels

and string metadata ``format`` (``mirage-trajectory/1``), ``map_name`` and ``mount`` (JSON of the
:class:`CameraMount`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from mirage_env.vehicle import CameraMount

FORMAT = "mirage-trajectory/1"


@dataclass
class Trajectory:
    """See the module docstring for the fields."""

    map_name: str
    timestamps: np.ndarray
    ego: np.ndarray
    controls: np.ndarray
    cam_to_world: np.ndarray
    intrinsics: np.ndarray
    mount: CameraMount

    def __len__(self) -> int:
        return len(self.timestamps)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "timestamps": torch.as_tensor(self.timestamps, dtype=torch.float64),
            "ego": torch.as_tensor(self.ego, dtype=torch.float64),
            "controls": torch.as_tensor(self.controls, dtype=torch.float64),
            "cam_to_world": torch.as_tensor(self.cam_to_world, dtype=torch.float32),
            "intrinsics": torch.as_tensor(self.intrinsics, dtype=torch.float32),
        }
        metadata = {"format": FORMAT, "map_name": self.map_name, "mount": json.dumps(self.mount.to_dict())}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"trajectory file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises several types for corrupt files
            raise ValueError(f"{path} is not a readable safetensors trajectory file ({error})") from error
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format={metadata.get('format')!r})")
        return cls(
            map_name=metadata["map_name"],
            timestamps=tensors["timestamps"].numpy(),
            ego=tensors["ego"].numpy(),
            controls=tensors["controls"].numpy(),
            cam_to_world=tensors["cam_to_world"].numpy(),
            intrinsics=tensors["intrinsics"].numpy(),
            mount=CameraMount(**json.loads(metadata["mount"])),
        )
