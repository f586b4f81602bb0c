"""Point annotations in and out: CSV, QuPath GeoJSON, QuPath measurement tables.

Our points are ``(x, y)`` with the centre of pixel ``(r, c)`` at ``(x=c, y=r)``. QuPath
measures from the image's top-left *corner*, so a pixel centre is at ``c + 0.5`` there:
readers of QuPath files subtract 0.5 and the GeoJSON writer adds it back, so a round
trip through QuPath is exact.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from instasam.errors import InputError
from instasam.io.atomic import atomic_path, write_text_atomic

POINT_SUFFIXES = (".csv", ".tsv", ".txt", ".geojson", ".json")
QUPATH_OFFSET = 0.5  # QuPath pixel-centre coordinate minus ours


def read_points(path: str | os.PathLike, mpp: float | None = None) -> np.ndarray:
    """Read points ``(N, 2)`` from CSV/TSV (ours or QuPath's export) or GeoJSON.

    Parameters
    ----------
    path : path
        ``.csv``/``.tsv``/``.txt``: a table with ``x,y`` columns (our pixels), or QuPath's
        ``Centroid X px``/``Centroid Y px`` or ``Centroid X µm``/``Centroid Y µm``.
        ``.geojson``/``.json``: a FeatureCollection, a list of features or one Feature
        with Point or MultiPoint geometries (other geometries are skipped).
    mpp : float, optional
        Microns per pixel, needed for tables in µm.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return _read_geojson(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_table(path, mpp)
    raise InputError(path, f"unknown points format {suffix!r}; use CSV, TSV or GeoJSON")


def _read_table(path: Path, mpp: float | None) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read points table ({exc.__class__.__name__})") from None
    lines = text.splitlines()
    if not lines:
        raise InputError(path, "empty points file")
    delimiter = "\t" if "\t" in lines[0] else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    columns, scale, offset = _point_columns(header, path, mpp)
    points = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            x, y = float(row[columns[0]]), float(row[columns[1]])
        except (ValueError, IndexError):
            raise InputError(path, f"line {line_no}: x/y are not numbers") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(path, f"line {line_no}: x/y are not finite")
        points.append((x * scale - offset, y * scale - offset))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _point_columns(
    header: list[str], path: Path, mpp: float | None
) -> tuple[tuple[int, int], float, float]:
    """Column indices of x and y, the unit scale to pixels, and the origin offset."""
    lower = [h.lower() for h in header]
    if "x" in lower and "y" in lower:
        return (lower.index("x"), lower.index("y")), 1.0, 0.0
    for unit in ("px", "pixels"):
        names = (f"centroid x {unit}", f"centroid y {unit}")
        if all(n in lower for n in names):
            return (lower.index(names[0]), lower.index(names[1])), 1.0, QUPATH_OFFSET
    for unit in ("µm", "μm", "um"):
        names = (f"centroid x {unit}", f"centroid y {unit}")
        if all(n in lower for n in names):
            if not mpp:
                raise InputError(path, "centroids are in µm; pass --mpp (microns per pixel)")
            return (lower.index(names[0]), lower.index(names[1])), 1.0 / mpp, QUPATH_OFFSET
    raise InputError(path, "no point columns: expected 'x,y' or QuPath's 'Centroid X/Y' columns")


def _read_geojson(path: Path) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"malformed GeoJSON ({exc})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError(path, "expected a GeoJSON FeatureCollection, Feature or list of features")
    points: list[list[float]] = []
    for feature in features:
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict):
            continue
        coords = geometry.get("coordinates")
        try:
            if geometry.get("type") == "Point":
                points.append([float(coords[0]), float(coords[1])])
            elif geometry.get("type") == "MultiPoint":
                points += [[float(c[0]), float(c[1])] for c in coords]
        except (TypeError, ValueError, IndexError):
            raise InputError(path, f"bad {geometry.get('type')} coordinates") from None
    if not points:
        raise InputError(path, "no Point or MultiPoint features")
    return np.asarray(points, dtype=np.float64) - QUPATH_OFFSET


def write_points_csv(path: str | os.PathLike, points: np.ndarray) -> None:
    """``x,y`` CSV (our pixel coordinates), written atomically."""
    rows = ["x,y"] + [f"{x:.2f},{y:.2f}" for x, y in np.asarray(points).reshape(-1, 2)]
    write_text_atomic(path, "\n".join(rows) + "\n")


def write_points_geojson(
    path: str | os.PathLike, points: np.ndarray, name: str = "Nucleus"
) -> None:
    """A FeatureCollection of Point annotations that QuPath imports (atomic)."""
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Point",
                "coordinates": [round(x + QUPATH_OFFSET, 3), round(y + QUPATH_OFFSET, 3)],
            },
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }
        for x, y in np.asarray(points).reshape(-1, 2)
    ]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def check_points_inside(
    points: np.ndarray, shape: tuple[int, int], path: str | os.PathLike
) -> None:
    """Raise :class:`InputError` if any point lies outside an ``(H, W)`` image."""
    h, w = shape
    points = np.asarray(points).reshape(-1, 2)
    outside = (
        (points[:, 0] < -0.5)
        | (points[:, 0] > w - 0.5)
        | (points[:, 1] < -0.5)
        | (points[:, 1] > h - 0.5)
    )
    if outside.any():
        x, y = points[np.argmax(outside)]
        raise InputError(
            path,
            f"{int(outside.sum())} point(s) outside the {w}x{h} image, e.g. ({x:.1f}, {y:.1f})",
        )
