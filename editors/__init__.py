"""The driving asset editor: inserts vehicles and pedestrians into generated frames.

``assets`` (the asset library: parametric boxes, user specs and meshes), ``motion``
(world-anchored tracks and the :class:`Traffic` simulation), ``placement`` (coarse 3D and fine
2D alignment to a frame's depth), ``composite`` (rendering, depth compositing, contact shadows,
labels and the dynamic mask) and ``refiner`` (the one-step refiner network). Works on frames,
depths, poses and road-map polylines passed in, never on :mod:`mirage_env`'s maps or envs. From
:mod:`world_model` it uses the camera geometry (:mod:`world_model.camera`), the refiner's residual
block (:mod:`world_model.tiny_backbone`) and, in refiner training, the loss plot
(:mod:`world_model.training`); the refiner is a ``diffusers`` model (``ModelMixin``), and user
meshes are read with ``trimesh``.
"""

from editors.assets import ASSET_CLASSES, VEHICLE_CLASSES, Asset, AssetBox, load_asset, make_asset
from editors.composite import AssetInstance, AssetLabel, AssetRender, Composite, composite, render_assets
from editors.motion import Polyline, Track, Traffic, crossing_path, follow_lane, parked, walk
from editors.placement import Placement, Refinement, place_on_ground, refine_placement


def __getattr__(name: str):
    # The refiner is a diffusers model, and importing diffusers takes seconds: load it on first
    # use, so envs without the refiner (and ground-truth envs) start without it.
    if name in ("AssetRefiner", "RefinerOutput", "load_refiner"):
        from editors import refiner

        return getattr(refiner, name)
    raise AttributeError(f"module 'editors' has no attribute {name!r}")


__all__ = [
    "ASSET_CLASSES", "VEHICLE_CLASSES", "Asset", "AssetBox", "load_asset", "make_asset",
    "AssetInstance", "AssetLabel", "AssetRender", "Composite", "composite", "render_assets",
    "Polyline", "Track", "Traffic", "crossing_path", "follow_lane", "parked", "walk",
    "Placement", "Refinement", "place_on_ground", "refine_placement",
    "AssetRefiner", "RefinerOutput", "load_refiner",
]
