"""Conversion between libcarla's frame and ours (see ``world_model.camera`` for ours).

libcarla reads OpenDRIVE into Unreal's left-handed frame: its ``y`` is OpenDRIVE's ``-y``, and
its yaw [deg] turns from ``x`` towards its own ``+y`` (clockwise seen from above). Our world frame
is OpenDRIVE's own (right-handed, z up), so the conversion is a y flip: ``(x, y, z) -> (x, -y, z)``,
``yaw -> -yaw`` (and degrees to radians), pitch unchanged, roll negated. This module is the only
place that knows this; nothing else reads a ``carla.Location`` or ``carla.Rotation`` directly.
"""

from __future__ import annotations

import math

import carla
import numpy as np


def location_to_world(location: carla.Location) -> np.ndarray:
    """Our world point (3,) [m] of a libcarla location."""
    return np.array([location.x, -location.y, location.z], dtype=np.float64)


def world_to_location(point) -> carla.Location:
    """libcarla location of our world point ``(x, y, z)`` [m] (z defaults to 0 for 2-D points)."""
    x, y = float(point[0]), float(point[1])
    z = float(point[2]) if len(point) > 2 else 0.0
    return carla.Location(x=x, y=-y, z=z)


def rotation_to_world(rotation: carla.Rotation) -> tuple[float, float, float]:
    """Our ``(yaw, pitch, roll)`` [rad] of a libcarla rotation [deg]."""
    return (
        -math.radians(rotation.yaw),
        math.radians(rotation.pitch),
        -math.radians(rotation.roll),
    )


def world_to_rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> carla.Rotation:
    """libcarla rotation [deg] of our ``yaw, pitch, roll`` [rad]."""
    return carla.Rotation(pitch=math.degrees(pitch), yaw=-math.degrees(yaw), roll=-math.degrees(roll))


def planar_pose(transform: carla.Transform) -> tuple[float, float, float]:
    """Our ``(x, y, yaw)`` [m, m, rad] of a libcarla transform, as plain floats (for loops over
    many waypoints, where numpy's per-call cost dominates)."""
    location = transform.location
    return location.x, -location.y, rotation_to_world(transform.rotation)[0]


def transform_to_world(transform: carla.Transform) -> tuple[np.ndarray, float]:
    """Our position (3,) [m] and yaw [rad] of a libcarla transform."""
    return location_to_world(transform.location), rotation_to_world(transform.rotation)[0]
