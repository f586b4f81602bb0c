"""Point annotations in and out: our CSV, QuPath GeoJSON and QuPath measurement tables.

Our points are ``(x, y)`` in pixels with the centre of pixel ``(r, c)`` at ``(x=c, y=r)``;
``x,y`` CSV files use that convention. QuPath measures from the image's top-left *corner*
(its docs: "taking the origin (0, 0) as the top left corner of the full-resolution
image"), so the centre of pixel ``(r, c)`` is ``(c + 0.5, r + 0.5)`` there: readers of
QuPath files (GeoJSON, ``Centroid X/Y`` tables) subtract 0.5 and the GeoJSON writer adds
it back, so a round trip through QuPath leaves points where they were.

QuPath formats read here:

* GeoJSON from *File > Export objects as GeoJSON* / ``exportObjectsToGeoJson``: a
  ``FeatureCollection``, a bare list of features, or a single ``Feature``. Point and
  MultiPoint geometries give points (a QuPath points annotation is one MultiPoint);
  other geometries (polygons of cells, regions) are ignored with one warning that
  counts them.
* Measurement tables (*Measure > Export measurements*, tab- or comma-separated) with
  ``Centroid X px``/``Centroid Y px``, or ``Centroid X µm``/``Centroid Y µm``, which need
  the image's microns per pixel (``mpp``) to become pixels.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from instasam.errors import InputError
from instasam.io.atomic import write_text_atomic

POINT_SUFFIXES = (".csv", ".tsv", ".txt", ".geojson", ".json")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
GEOJSON_SUFFIXES = (".geojson", ".json")
QUPATH_OFFSET = 0.5  # QuPath's coordinate of a pixel centre minus ours

_MICRONS = ("µm", "μm", "um")  # micro sign, Greek mu, ASCII


def read_points(path: str | os.PathLike, mpp: float | None = None) -> np.ndarray:
    """Read points as an ``(N, 2)`` float64 array of ``(x, y)`` in our pixel convention.

    Parameters
    ----------
    path : path
        ``.csv``/``.tsv``/``.txt``: a table with ``x,y`` columns (``X,Y`` too; extra
        columns are ignored), or a QuPath measurement table with ``Centroid X px`` /
        ``Centroid Y px`` or ``Centroid X µm``/``Centroid Y µm`` columns.
        ``.geojson``/``.json``: QuPath GeoJSON (see the module notes).
    mpp : float, optional
        Microns per pixel, needed for tables in µm only.

    Raises
    ------
    InputError
        If the file is missing or of an unknown suffix, has no point columns, a value is
        missing or not a finite number (the line is named), µm columns come without
        ``mpp``, or a GeoJSON file is malformed or holds no Point/MultiPoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        return _read_geojson(path)
    if suffix in TABLE_SUFFIXES:
        return _read_table(path, mpp)
    raise InputError(
        path, f"unknown points format {suffix!r}; use .csv, .tsv, .txt, .geojson or .json"
    )


def _read_table(path: Path, mpp: float | None) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read points table ({exc.__class__.__name__})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(path, "empty points file (expected a header such as x,y)")
    tab = path.suffix.lower() == ".tsv" or "\t" in lines[0]
    reader = csv.reader(lines, delimiter="\t" if tab else ",")
    header = [h.strip() for h in next(reader)]
    (ix, iy), scale, offset = _point_columns(header, path, mpp)
    points = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if max(ix, iy) >= len(row):
            raise InputError(path, f"line {line_no}: missing x/y value")
        try:
            x, y = float(row[ix]), float(row[iy])
        except ValueError:
            raise InputError(
                path, f"line {line_no}: x/y are not numbers ({row[ix]!r}, {row[iy]!r})"
            ) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(path, f"line {line_no}: x/y are not finite ({x}, {y})")
        points.append((x * scale - offset, y * scale - offset))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _point_columns(
    header: list[str], path: Path, mpp: float | None
) -> tuple[tuple[int, int], float, float]:
    """Indices of the x and y columns, the factor to pixels, and the origin offset."""
    lower = [h.lower() for h in header]

    def find(*names: str) -> tuple[int, int] | None:
        x_name, y_name = names
        if x_name in lower and y_name in lower:
            return lower.index(x_name), lower.index(y_name)
        return None

    columns = find("x", "y")
    if columns:
        return columns, 1.0, 0.0
    columns = find("centroid x px", "centroid y px")
    if columns:
        return columns, 1.0, QUPATH_OFFSET
    for unit in _MICRONS:
        columns = find(f"centroid x {unit}", f"centroid y {unit}")
        if columns:
            if mpp is None:
                raise InputError(path, "centroids are in µm; pass --mpp (microns per pixel)")
            if not (np.isfinite(mpp) and mpp > 0):
                raise InputError(path, f"microns per pixel must be positive, got {mpp}")
            return columns, 1.0 / mpp, QUPATH_OFFSET
    shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
    raise InputError(
        path,
        f"no point columns: expected 'x,y' or QuPath's 'Centroid X/Y px|µm' (header: {shown})",
    )


def _features(data: object, path: Path) -> list:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise InputError(path, "FeatureCollection without a 'features' list")
        return features
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, list):
        return data
    raise InputError(path, "expected a GeoJSON FeatureCollection, a Feature or a list of features")


def _read_geojson(path: Path) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"malformed GeoJSON ({exc})") from None
    points: list[tuple[float, float]] = []
    ignored: Counter[str] = Counter()
    for number, feature in enumerate(_features(data, path), start=1):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in ("Point", "MultiPoint"):
            ignored[str(kind or "no geometry")] += 1
            continue
        coords = geometry.get("coordinates")
        try:
            pairs = [coords] if kind == "Point" else list(coords)
            xy = [(float(c[0]), float(c[1])) for c in pairs]
        except (TypeError, ValueError, IndexError, KeyError):
            raise InputError(path, f"feature {number}: bad {kind} coordinates") from None
        if not np.isfinite(xy).all():
            raise InputError(path, f"feature {number}: {kind} coordinates are not finite")
        points += xy
    if not points:
        found = ", ".join(f"{n} {k}" for k, n in ignored.most_common()) or "no features"
        raise InputError(path, f"no Point or MultiPoint features (found: {found})")
    if ignored:
        kinds = ", ".join(f"{k}: {n}" for k, n in ignored.most_common())
        warnings.warn(
            f"{path}: ignored {sum(ignored.values())} feature(s) that are not points ({kinds})",
            UserWarning,
            stacklevel=3,
        )
    return np.asarray(points, dtype=np.float64) - QUPATH_OFFSET


def _number(value: float) -> str:
    """Shortest fixed-point text with at most 3 decimals (1/1000 px is below any use)."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_points_csv(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write an ``x,y`` CSV in our pixel convention (3 decimals), atomically."""
    rows = ["x,y"] + [f"{_number(x)},{_number(y)}" for x, y in np.asarray(points).reshape(-1, 2)]
    write_text_atomic(path, "\n".join(rows) + "\n")


def write_points_geojson(
    path: str | os.PathLike,
    points: np.ndarray,
    classification: str | None = None,
    colour: tuple[int, int, int] = (255, 200, 0),
) -> None:
    """Write a GeoJSON FeatureCollection of Point annotations that QuPath imports, atomically.

    One Feature per point, ``"properties": {"objectType": "annotation"}``, coordinates in
    QuPath's convention (ours + 0.5). With ``classification``, each point also gets
    ``"classification": {"name": classification, "color": [r, g, b]}``: QuPath 0.4+ refuses
    a classification without a colour.
    """
    features = []
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        properties: dict[str, object] = {"objectType": "annotation"}
        if classification:
            properties["classification"] = {"name": classification, "color": list(colour)}
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [
                        round(float(x) + QUPATH_OFFSET, 3),
                        round(float(y) + QUPATH_OFFSET, 3),
                    ],
                },
                "properties": properties,
            }
        )
    write_text_atomic(path, json.dumps({"type": "FeatureCollection", "features": features}))


def write_points(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write points as CSV or GeoJSON, chosen by the suffix (``.csv`` or ``.geojson``/``.json``)."""
    suffix = Path(path).suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        write_points_geojson(path, points)
    elif suffix == ".csv":
        write_points_csv(path, points)
    else:
        raise ValueError(f"{path}: points are written as .csv or .geojson, not {suffix!r}")


def check_points_inside(
    points: np.ndarray, shape: tuple[int, int], path: str | os.PathLike | None
) -> None:
    """Raise :class:`InputError` naming ``path`` if a point lies outside an ``(H, W)`` image.

    The image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the outer edges of its border
    pixels); a non-finite point counts as outside.
    """
    h, w = shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    with np.errstate(invalid="ignore"):
        inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        bx, by = points[bad[0]]
        raise InputError(
            path,
            f"{bad.size} point(s) outside the {w}x{h} image, e.g. point {bad[0] + 1} at "
            f"({bx:.1f}, {by:.1f})",
        )


__all__ = [
    "GEOJSON_SUFFIXES",
    "POINT_SUFFIXES",
    "QUPATH_OFFSET",
    "TABLE_SUFFIXES",
    "check_points_inside",
    "read_points",
    "write_points",
    "write_points_csv",
    "write_points_geojson",
]
