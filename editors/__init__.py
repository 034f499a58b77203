"""The driving asset editor: inserts vehicles and pedestrians into generated frames.

``assets`` (the parametric asset library), ``motion`` (world-anchored tracks), ``placement``
(coarse 3D and fine 2D alignment to a frame's depth) and ``composite`` (rendering, depth
compositing, contact shadows, labels and the dynamic mask). Works on frames, depths, poses and
road-map polylines passed in; imports only :mod:`world_model` geometry.
"""

from editors.assets import ASSET_CLASSES, VEHICLE_CLASSES, Asset, AssetBox, make_asset
from editors.composite import AssetInstance, AssetLabel, AssetRender, Composite, composite, render_assets
from editors.motion import Polyline, Track, crossing_path, follow_lane, parked, walk
from editors.placement import Placement, Refinement, place_on_ground, refine_placement

__all__ = [
    "ASSET_CLASSES", "VEHICLE_CLASSES", "Asset", "AssetBox", "make_asset",
    "AssetInstance", "AssetLabel", "AssetRender", "Composite", "composite", "render_assets",
    "Polyline", "Track", "crossing_path", "follow_lane", "parked", "walk",
    "Placement", "Refinement", "place_on_ground", "refine_placement",
]
