"""The asset library: vehicles and pedestrians as parametric compositions of boxes.

An :class:`Asset` is a set of axis-aligned boxes in the asset's own frame (the body frame of
:mod:`world_model.camera`: ``x`` forward, ``y`` left, ``z`` up, metres), with its origin at the
centre of its ground contact: the lowest box bottom is at ``z = 0``. :func:`make_asset` builds
the built-in classes with real-world dimensions, shapes and colours varied by seed; users add
their own with :meth:`Asset.from_dict` (the documented parametric spec, also read from a
``.json`` file by :func:`load_asset`) or :meth:`Asset.from_mesh` (any mesh file trimesh reads:
OBJ, STL, PLY, GLB, OFF, ...). A mesh is voxelised into boxes (runs of filled voxels along x
merged into one box), so every renderer and collision test keeps working on boxes; the pitch
sets the detail (default: 1/24 of the mesh's longest side).

Spec of a user asset (every size in metres, colours in [0, 1])::

    {"kind": "car",                       # one of ASSET_CLASSES
     "boxes": [{"centre": [0, 0, 0.7],    # box centre in the asset frame
                "size": [4.5, 1.8, 0.8],  # full length (x), width (y), height (z), all > 0
                "colour": [0.8, 0.1, 0.1],
                "part": "body"},          # free-form name (body, cabin, wheel, ...)
               ...]}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VEHICLE_CLASSES = ("car", "suv", "van", "truck", "bus")
ASSET_CLASSES = (*VEHICLE_CLASSES, "pedestrian")

# Nominal (length, width, height) [m] of each class, varied by +-6 % per seed. Typical values:
# compact/mid car ~4.5 x 1.8 x 1.45 (VW Golf 4.28 x 1.79 x 1.46, Toyota Camry 4.88 x 1.84 x 1.45);
# SUV ~4.7 x 1.9 x 1.75 (Toyota RAV4 4.60 x 1.86 x 1.69); panel van ~5.5 x 2.0 x 2.5 (Ford Transit
# L2H2 5.53 x 2.06 x 2.55); box truck ~7.5 x 2.5 x 3.4 (EU width limit 2.55 m); city bus
# 12 x 2.55 x 3.1 (Mercedes Citaro 12.1 x 2.55 x 3.12); pedestrian shoulder width ~0.45, standing
# height 1.55-1.90 (adult stature).
_NOMINAL_SIZE = {
    "car": (4.5, 1.8, 1.45),
    "suv": (4.7, 1.9, 1.75),
    "van": (5.5, 2.0, 2.5),
    "truck": (7.5, 2.5, 3.4),
    "bus": (12.0, 2.55, 3.1),
}
_PAINT = np.array([
    [0.85, 0.85, 0.87], [0.1, 0.1, 0.12], [0.55, 0.57, 0.6], [0.7, 0.1, 0.1], [0.12, 0.25, 0.6],
    [0.9, 0.75, 0.15], [0.2, 0.45, 0.25], [0.45, 0.3, 0.2],
])
_CLOTHES = np.array([
    [0.15, 0.15, 0.2], [0.2, 0.3, 0.55], [0.6, 0.15, 0.15], [0.8, 0.8, 0.78], [0.3, 0.4, 0.25],
    [0.45, 0.35, 0.25],
])
_SKIN = np.array([[0.95, 0.78, 0.65], [0.78, 0.57, 0.42], [0.45, 0.3, 0.2]])
_GLASS = (0.12, 0.16, 0.22)
_TYRE = (0.05, 0.05, 0.05)
_WHEEL_DIAMETER_M = {"car": 0.64, "suv": 0.72, "van": 0.72, "truck": 0.95, "bus": 1.0}  # [m]
_CLEARANCE_M = 0.15  # [m] ground clearance of the body's underside (passenger cars)


@dataclass(frozen=True)
class AssetBox:
    """One axis-aligned box of an asset: ``centre`` (3,) and full ``size`` (3,) [m] in the asset
    frame, ``colour`` (3,) in [0, 1], ``part`` a free-form name."""

    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    colour: tuple[float, float, float]
    part: str = "body"


@dataclass(frozen=True)
class Asset:
    """A vehicle or pedestrian: its class ``kind`` (one of :data:`ASSET_CLASSES`) and its boxes.

    Validated at construction: a known class, at least one box, finite sizes > 0, colours in
    [0, 1], and the lowest box resting on the ground (bottom at z = 0 within 1 cm), since
    placement puts the origin on the road surface.
    """

    kind: str
    boxes: tuple[AssetBox, ...]

    def __post_init__(self) -> None:
        if self.kind not in ASSET_CLASSES:
            raise ValueError(f"unknown asset class {self.kind!r}; expected one of {ASSET_CLASSES}")
        if not self.boxes:
            raise ValueError(f"asset {self.kind!r} has no boxes")
        for i, box in enumerate(self.boxes):
            centre, size, colour = (np.asarray(v, dtype=float) for v in (box.centre, box.size, box.colour))
            if centre.shape != (3,) or size.shape != (3,) or colour.shape != (3,):
                raise ValueError(f"box {i} ({box.part}) of {self.kind!r}: centre, size and colour must have 3 values")
            if not (np.isfinite(centre).all() and np.isfinite(size).all()):
                raise ValueError(f"box {i} ({box.part}) of {self.kind!r}: centre and size must be finite, "
                                 f"got centre={centre.tolist()} size={size.tolist()}")
            if (size <= 0).any():
                raise ValueError(f"box {i} ({box.part}) of {self.kind!r}: sizes must be > 0 m, got {size.tolist()}")
            if not ((colour >= 0) & (colour <= 1)).all():
                raise ValueError(f"box {i} ({box.part}) of {self.kind!r}: colour must be in [0, 1], "
                                 f"got {colour.tolist()}")
        bottom = float(self.lower[2])
        if abs(bottom) > 0.01:
            raise ValueError(f"asset {self.kind!r} must rest on the ground: its lowest box bottom is at "
                             f"z={bottom:.3f} m, expected 0 (the origin is the ground contact centre)")

    @classmethod
    def from_dict(cls, spec: dict) -> Asset:
        """An asset from the parametric spec in the module docstring."""
        if "kind" not in spec or "boxes" not in spec:
            raise ValueError(f"an asset spec needs 'kind' and 'boxes', got keys {sorted(spec)}")
        boxes = []
        for i, box in enumerate(spec["boxes"]):
            if not isinstance(box, dict):
                raise ValueError(f"box {i} of {spec['kind']!r} must be a dict with centre, size and colour, "
                                 f"got {box!r}")
            missing = [key for key in ("centre", "size", "colour") if key not in box]
            if missing:
                raise ValueError(f"box {i} ({box.get('part', 'body')}) of {spec['kind']!r} is missing "
                                 f"{', '.join(missing)}; every box needs centre, size and colour "
                                 "(see editors/assets.py)")
            boxes.append(AssetBox(tuple(box["centre"]), tuple(box["size"]), tuple(box["colour"]),
                                  box.get("part", "body")))
        return cls(spec["kind"], tuple(boxes))

    @classmethod
    def from_mesh(cls, mesh, kind: str, colour=None, scale: float = 1.0, up: str = "z",
                  pitch_m: float | None = None) -> Asset:
        """An asset from a triangle mesh: ``mesh`` a path trimesh can load or a ``trimesh.Trimesh``.

        The mesh is in metres times ``scale``, with ``x`` forward and ``up`` (``"z"`` or ``"y"``,
        glTF's convention) up; it is centred on its footprint and set on the ground (lowest point
        at z = 0), then voxelised at ``pitch_m`` [m] (default: longest side / 24). Each box takes
        the mesh's face colour nearest to it when the mesh has face or vertex colours, else
        ``colour`` (3,) in [0, 1] (default mid grey)."""
        import trimesh

        if kind not in ASSET_CLASSES:
            raise ValueError(f"unknown asset class {kind!r}; expected one of {ASSET_CLASSES}")
        source = mesh
        if not isinstance(mesh, trimesh.Trimesh):
            try:
                mesh = trimesh.load(str(mesh), force="mesh")
            except Exception as error:  # trimesh raises several types for missing or unreadable files
                raise ValueError(f"could not read a mesh from {source!r}: {error}") from error
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError(f"{source!r} holds no triangles; give a mesh file with faces")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"`scale` must be > 0, got {scale}")
        if up not in ("z", "y"):
            raise ValueError(f"`up` must be 'z' or 'y', got {up!r}")
        mesh = mesh.copy()
        vertices = np.asarray(mesh.vertices, dtype=float) * scale
        if up == "y":  # y-up meshes (glTF, many OBJ exports): (x, y, z) -> (x, -z, y), x stays forward
            vertices = vertices[:, [0, 2, 1]] * np.array([1.0, -1.0, 1.0])
        lower, upper = vertices.min(0), vertices.max(0)
        vertices -= np.array([(lower[0] + upper[0]) / 2, (lower[1] + upper[1]) / 2, lower[2]])
        mesh.vertices = vertices
        extent = upper - lower
        if not np.isfinite(extent).all() or extent.max() <= 0:
            raise ValueError(f"mesh {source!r} has no extent (all vertices coincide or are not finite)")
        pitch = float(pitch_m) if pitch_m is not None else float(extent.max()) / 24
        if not (np.isfinite(pitch) and pitch > 0):
            raise ValueError(f"`pitch_m` must be a finite voxel size > 0 m, got {pitch_m}")
        grid = mesh.voxelized(pitch)
        try:
            grid = grid.fill()  # solid interior for closed meshes; open meshes keep their shell
        except Exception:  # noqa: BLE001 - filling fails on some open meshes: the shell is enough
            pass
        filled = np.asarray(grid.matrix, dtype=bool)
        origin = np.asarray(grid.transform)[:3, 3]  # centre of voxel (0, 0, 0)
        base_colour = tuple(float(c) for c in (colour if colour is not None else (0.5, 0.5, 0.5)))
        face_colours = None
        if mesh.visual.kind in ("face", "vertex"):
            face_colours = np.asarray(mesh.visual.face_colors, dtype=float)[:, :3] / 255
        cuboids = _merge_voxels(filled)  # (N, 6) voxel index bounds [x0, x1) [y0, y1) [z0, z1)
        if not len(cuboids):
            raise ValueError(f"mesh {source!r} voxelised to nothing at pitch {pitch:.3f} m; lower `pitch_m`")
        low = origin - pitch / 2 + pitch * cuboids[:, 0::2]
        high = origin - pitch / 2 + pitch * cuboids[:, 1::2]
        # Voxels overhang the surface by up to half a pitch: scale back to the mesh's own extent,
        # footprint centred and resting on z = 0, so the asset keeps its real dimensions.
        box_low, box_high = low.min(0), high.max(0)
        stretch = extent / (box_high - box_low)
        target_low = np.array([-extent[0] / 2, -extent[1] / 2, 0.0])
        low, high = target_low + (low - box_low) * stretch, target_low + (high - box_low) * stretch
        centres, sizes = (low + high) / 2, high - low
        colours = [base_colour] * len(centres)
        if face_colours is not None:
            from scipy.spatial import cKDTree

            # The face whose centroid is nearest (trimesh's exact query needs the optional rtree).
            _, triangle = cKDTree(mesh.triangles_center).query(centres)
            colours = [tuple(face_colours[t]) for t in triangle]
        return cls(kind, tuple(AssetBox(tuple(map(float, c)), tuple(map(float, z)), colours[i], "voxels")
                               for i, (c, z) in enumerate(zip(centres, sizes))))

    @property
    def is_pedestrian(self) -> bool:
        return self.kind == "pedestrian"

    @property
    def centres(self) -> np.ndarray:
        """(N, 3) box centres [m] in the asset frame."""
        return np.array([b.centre for b in self.boxes], dtype=float)

    @property
    def sizes(self) -> np.ndarray:
        """(N, 3) full box sizes [m]."""
        return np.array([b.size for b in self.boxes], dtype=float)

    @property
    def colours(self) -> np.ndarray:
        """(N, 3) box colours in [0, 1]."""
        return np.array([b.colour for b in self.boxes], dtype=float)

    @property
    def lower(self) -> np.ndarray:
        """(3,) minimum corner of the asset's bounding box [m]."""
        return (self.centres - self.sizes / 2).min(axis=0)

    @property
    def upper(self) -> np.ndarray:
        """(3,) maximum corner of the asset's bounding box [m]."""
        return (self.centres + self.sizes / 2).max(axis=0)

    def bounding_corners(self) -> np.ndarray:
        """(8, 3) corners of the bounding box in the asset frame, corner ``i`` taking the upper
        bound on x if bit 2 is set, on y if bit 1, on z if bit 0."""
        lower, upper = self.lower, self.upper
        bits = np.array([[i & 4, i & 2, i & 1] for i in range(8)]) > 0
        return np.where(bits, upper, lower)


def _merge_voxels(filled: np.ndarray) -> np.ndarray:
    """Greedy cuboids covering the filled voxels of ``filled`` (X, Y, Z) bool exactly: runs
    along x, merged with identical runs at the next y, then identical rectangles at the next z.
    Returns (N, 6) int bounds ``x0, x1, y0, y1, z0, z1`` (ends exclusive)."""
    rectangles: list[list[int]] = []  # per z layer: x0, x1, y0, y1, z
    for k in range(filled.shape[2]):
        open_runs: dict[tuple[int, int], list[int]] = {}
        for j in range(filled.shape[1]):
            row = np.concatenate([[0], filled[:, j, k].astype(int), [0]])
            edges = np.flatnonzero(np.diff(row))
            runs = set(zip(edges[::2].tolist(), edges[1::2].tolist()))
            for run in list(open_runs):
                if run not in runs:
                    rectangles.append(open_runs.pop(run))
            for run in runs:
                if run in open_runs:
                    open_runs[run][3] = j + 1
                else:
                    open_runs[run] = [run[0], run[1], j, j + 1, k]
        rectangles += open_runs.values()
    cuboids: list[list[int]] = []
    growing: dict[tuple[int, ...], list[int]] = {}
    for x0, x1, y0, y1, k in sorted(rectangles, key=lambda r: r[4]):
        key = (x0, x1, y0, y1)
        if key in growing and growing[key][5] == k:
            growing[key][5] = k + 1
        else:
            if key in growing:
                cuboids.append(growing[key])
            growing[key] = [x0, x1, y0, y1, k, k + 1]
    cuboids += growing.values()
    return np.array(cuboids, dtype=int).reshape(-1, 6)


MESH_SUFFIXES = (".obj", ".stl", ".ply", ".glb", ".gltf", ".off", ".dae")


def load_asset(path, kind: str | None = None, **mesh_options) -> Asset:
    """An asset from a file: a ``.json`` parametric spec (module docstring) or a mesh
    (:data:`MESH_SUFFIXES`, needs ``kind``; ``mesh_options`` go to :meth:`Asset.from_mesh`)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"asset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); see editors/assets.py for the spec") from error
        return Asset.from_dict(spec)
    if suffix in MESH_SUFFIXES:
        if kind is None:
            raise ValueError(f"a mesh asset needs its class: load_asset({str(path)!r}, kind=...) with one of "
                             f"{ASSET_CLASSES}")
        return Asset.from_mesh(path, kind, **mesh_options)
    raise ValueError(f"unknown asset file type {suffix!r} ({path}); use .json or one of {MESH_SUFFIXES}")


def make_asset(kind: str, seed: int = 0) -> Asset:
    """A built-in asset of class ``kind`` whose proportions and colours follow ``seed``."""
    if kind not in ASSET_CLASSES:
        raise ValueError(f"unknown asset class {kind!r}; expected one of {ASSET_CLASSES}")
    rng = np.random.default_rng([seed, ASSET_CLASSES.index(kind)])
    if kind == "pedestrian":
        return _pedestrian(rng)
    length, width, height = np.array(_NOMINAL_SIZE[kind]) * rng.uniform(0.94, 1.06, size=3)
    paint = tuple(_PAINT[rng.integers(len(_PAINT))])
    wheel = _WHEEL_DIAMETER_M[kind] * rng.uniform(0.95, 1.05)
    if kind in ("car", "suv"):
        boxes = _passenger_car(rng, length, width, height, paint)
    elif kind == "van":
        boxes = _van(rng, length, width, height, paint)
    elif kind == "truck":
        boxes = _truck(rng, length, width, height, paint)
    else:
        boxes = _bus(length, width, height, paint)
    # Buses have long overhangs; other vehicles about one wheel diameter from each end.
    axle_inset = 0.18 * length if kind == "bus" else 1.1 * wheel
    return Asset(kind, (*boxes, *_wheels(length, width, wheel, axle_inset)))


def _box(x0: float, x1: float, width: float, z0: float, z1: float, colour, part: str) -> AssetBox:
    """A box centred on y = 0 spanning ``[x0, x1]`` and ``[z0, z1]``."""
    return AssetBox(((x0 + x1) / 2, 0.0, (z0 + z1) / 2), (x1 - x0, width, z1 - z0), tuple(colour), part)


def _wheels(length: float, width: float, diameter: float, axle_inset: float) -> list[AssetBox]:
    """Four dark boxes standing on the ground under the body (they carry the ground contact);
    set in 2 cm so they do not poke through the body's sides."""
    tyre_width = 0.22 if diameter < 0.8 else 0.3
    y = width / 2 - tyre_width / 2 - 0.02
    x = length / 2 - axle_inset
    return [AssetBox((sx * x, sy * y, diameter / 2), (diameter, tyre_width, diameter), _TYRE, "wheel")
            for sx in (1, -1) for sy in (1, -1)]


def _passenger_car(rng, length, width, height, paint) -> list[AssetBox]:
    # Body to about 55-62 % of the height; the greenhouse (cabin with windows) sits on it,
    # shorter and a little narrower, set back from the bonnet.
    belt = height * rng.uniform(0.55, 0.62)
    cabin_length = length * rng.uniform(0.45, 0.6)
    cabin_front = length / 2 - length * rng.uniform(0.22, 0.3)
    return [
        _box(-length / 2, length / 2, width, _CLEARANCE_M, belt, paint, "body"),
        _box(cabin_front - cabin_length, cabin_front, width * 0.9, belt, height, _GLASS, "cabin"),
    ]


def _van(rng, length, width, height, paint) -> list[AssetBox]:
    # A short bonnet, then a tall cargo body with a glazed cab at the front.
    bonnet = length * rng.uniform(0.1, 0.16)
    belt = height * 0.45
    return [
        _box(-length / 2, length / 2, width, 0.2, belt, paint, "body"),
        _box(-length / 2, length / 2 - bonnet - 0.8, width * 0.98, belt, height, paint, "cargo"),
        _box(length / 2 - bonnet - 0.8, length / 2 - bonnet, width * 0.95, belt, height * 0.92, _GLASS, "cabin"),
    ]


def _truck(rng, length, width, height, paint) -> list[AssetBox]:
    # A cab at the front and a box body behind it, both on a chassis.
    cab_length = rng.uniform(1.8, 2.3)
    box_colour = tuple(_PAINT[rng.integers(3)])  # cargo boxes are mostly white/black/grey
    return [
        _box(-length / 2, length / 2, width * 0.9, 0.45, 1.1, (0.15, 0.15, 0.15), "chassis"),
        _box(length / 2 - cab_length, length / 2, width * 0.96, 1.1, height * 0.82, paint, "cab"),
        _box(-length / 2, length / 2 - cab_length - 0.15, width, 1.1, height, box_colour, "cargo"),
    ]


def _bus(length, width, height, paint) -> list[AssetBox]:
    # One tall body with a window band along its upper half.
    return [
        _box(-length / 2, length / 2, width, 0.3, height * 0.5, paint, "body"),
        _box(-length / 2, length / 2, width, height * 0.5, height * 0.9, _GLASS, "windows"),
        _box(-length / 2, length / 2, width, height * 0.9, height, paint, "roof"),
    ]


def _pedestrian(rng) -> Asset:
    stature = rng.uniform(1.55, 1.9)  # [m] adult standing height
    leg, torso = 0.47 * stature, 0.36 * stature  # leg length and torso, proportions of stature
    head = stature - leg - torso
    shoulders = 0.26 * stature
    trousers, shirt = (tuple(_CLOTHES[i]) for i in rng.integers(len(_CLOTHES), size=2))
    skin = tuple(_SKIN[rng.integers(len(_SKIN))])
    legs = [AssetBox((0.0, side * 0.055 * stature, leg / 2), (0.14, 0.12, leg), trousers, "leg") for side in (1, -1)]
    return Asset("pedestrian", (
        *legs,
        AssetBox((0.0, 0.0, leg + torso / 2), (0.24, shoulders, torso), shirt, "torso"),
        AssetBox((0.0, 0.0, leg + torso + head / 2), (0.2, 0.16, head), skin, "head"),
    ))
