"""Where the envs' camera frames come from.

The env logic (actions, poses, rewards) never renders itself: it asks a :class:`FrameSource`
for the frames of camera poses. One source serves any number of env *slots* and renders many
slots' poses in one call, so a batched vector env can step N envs with a single renderer (or
world-model) call:

.. code-block:: python

    poses = torch.stack([env.move(action) for env, action in zip(envs, actions)])
    frames = source.render(slots, poses, torch.stack([env.K for env in envs]))
    results = [env.finish_step(frame) for env, frame in zip(envs, frames)]

:class:`GroundTruthFrames` draws the scenario's scene exactly. The world-model source (learned
frames with a latent spatial memory) implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from mirage_env.renderer import GroundTruthRenderer
from mirage_env.scenario import MapScenario, Scenario, StartFrame
from world_model.camera import check_intrinsics, check_poses


class FrameSource(Protocol):
    """Renders camera frames of ``height`` x ``width`` pixels for env slots."""

    height: int
    width: int

    def reset(self, slot: int, start: StartFrame, scenario: Scenario) -> None:
        """Start a new episode in ``slot`` from ``start`` (the first frame, with depth when
        known, intrinsics and pose) in ``scenario`` (a map scenario carries its road map)."""
        ...

    def render(self, slots: Sequence[int], cam_to_world: torch.Tensor, K: torch.Tensor) -> np.ndarray:
        """Frames (B, H, W, 3) uint8 of ``cam_to_world`` (B, 4, 4) with intrinsics ``K``
        (B, 3, 3), pose ``b`` seen in ``slots[b]``'s episode."""
        ...


class GroundTruthFrames:
    """The exact frames of each slot's scene from :class:`~mirage_env.renderer.GroundTruthRenderer`.

    Slots in the same scene share one renderer call; a start image without a map has no scene,
    so it is refused.
    """

    def __init__(self, height: int, width: int):
        self.height = height
        self.width = width
        self._renderers: dict[int, GroundTruthRenderer] = {}

    def reset(self, slot: int, start: StartFrame, scenario: Scenario) -> None:
        if not isinstance(scenario, MapScenario):
            raise ValueError(
                "renderer='ground_truth' draws map scenarios only: a start image without a map has no scene "
                "to render. Use renderer='world_model' to explore from a start image."
            )
        self._renderers[slot] = scenario.assets.renderer

    def render(self, slots: Sequence[int], cam_to_world: torch.Tensor, K: torch.Tensor) -> np.ndarray:
        check_poses(cam_to_world, batch=len(slots))
        check_intrinsics(K, batch=len(slots))
        missing = [slot for slot in slots if slot not in self._renderers]
        if missing:
            raise RuntimeError(f"slots {missing} have not been reset: call reset(slot, ...) first")
        frames = np.empty((len(slots), self.height, self.width, 3), dtype=np.uint8)
        groups: dict[int, list[int]] = {}
        for index, slot in enumerate(slots):
            groups.setdefault(id(self._renderers[slot]), []).append(index)
        for indices in groups.values():
            renderer = self._renderers[slots[indices[0]]]
            out = renderer.render(cam_to_world[indices], K[indices], self.height, self.width)
            frames[indices] = out.rgb.cpu().numpy()
        return frames


def make_frame_source(renderer: str, height: int, width: int) -> FrameSource:
    """The frame source named by an env config's ``renderer``."""
    if renderer == "ground_truth":
        return GroundTruthFrames(height, width)
    if renderer == "world_model":
        raise NotImplementedError(
            "renderer='world_model' is not available yet: it lands with the world model. "
            "Use renderer='ground_truth' (the exact scene) meanwhile."
        )
    raise ValueError(f"unknown renderer {renderer!r}; choose 'ground_truth' or 'world_model'")
