"""Predicted nuclei as QuPath detections: a GeoJSON FeatureCollection, streamed to disk.

What QuPath reads (its GeoJSON support as rewritten for v0.4, qupath/qupath PR #1099, which
still reads v0.3.2's files):

* ``properties.objectType``: ``"detection"`` makes a detection (v0.4+ reads ``objectType``;
  v0.3 only read ``object_type``/``type``, so this file targets QuPath 0.4 and 0.5).
* ``properties.classification``: ``{"name": ..., "color": [r, g, b]}``. From v0.4 on, an
  object with a name but *no colour* fails to parse, so the colour is always written.
* ``properties.measurements``: v0.4+ write a ``{name: value}`` object and read either that
  or the older list of ``{"name", "value"}`` records (the only form v0.3 read). We write the
  object form, as QuPath 0.4/0.5 do.
* Feature ``"id"``: v0.4+ take it as the object's UUID when it parses as one (anything
  else is ignored). Ours are UUID-5s of the rounded centroid (and a namespace such as the
  slide's name), so re-running on the same slide gives the same ids.
* Coordinates: pixels of the full-resolution image (level 0), x then y, origin at the
  image's top-left *corner* (pixel ``(r, c)`` covers ``[c, c+1] x [r, r+1]``), 2 decimals.
  This is :data:`instasam.io.points.QUPATH_OFFSET`: a pixel centre, ``(c, r)`` in our
  convention, is ``(c + 0.5, r + 0.5)`` here, as in the point files.
  Ring orientation does not matter to QuPath (JTS); we write the exterior ring
  counter-clockwise by the shoelace sign of the written numbers (RFC 7946's rule).

Contours: each nucleus's outline runs along its pixel boundary, through pixel *corners*
(crack following on the label map's crop around the nucleus), so a nucleus of ``n`` pixels
gives a polygon of area exactly ``n`` and every pixel of the nucleus lies inside it. Only
the vertices where the boundary turns are written: no collinear vertices and no smoothing
(the outline QuPath shows is the staircase of the mask, faithful to what the model
predicted; a 1000 x 1000 tile with 700 nuclei is outlined in about 0.1 s). A nucleus is
one region: its holes are filled (the polygon is the outer ring only, and the area counts
the filled pixels), and an id split into several pieces (4-connected: pieces touching only
at a corner count as two) keeps its largest piece, so that the outer ring is always a
simple polygon. Measurements describe exactly that filled piece.

Measurements (QuPath's names): ``Area px^2``, ``Centroid X px``, ``Centroid Y px`` in
level-0 pixels, plus ``Area µm^2``, ``Centroid X µm``, ``Centroid Y µm`` when the pixel
size is known.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
from scipy import ndimage

from instasam.io.atomic import atomic_path

NUCLEUS_CLASS = "Nucleus"
NUCLEUS_COLOR = (0, 170, 255)  # QuPath needs a colour with the class name (v0.4+)
COORD_DECIMALS = 2  # what QuPath itself writes
_ID_ROOT = uuid.UUID("5b7e3a8c-51c5-4b7e-9c33-7d4f0e6a2b10")  # our namespace for ids


def id_namespace(name: str) -> uuid.UUID:
    """The UUID namespace that makes feature ids stable for one image (e.g. a slide name)."""
    return uuid.uuid5(_ID_ROOT, name)


def feature_id(namespace: uuid.UUID, x: float, y: float) -> str:
    """A stable UUID for the nucleus whose level-0 centroid is ``(x, y)`` (QuPath coordinates)."""
    return str(uuid.uuid5(namespace, f"{x:.{COORD_DECIMALS}f},{y:.{COORD_DECIMALS}f}"))


def detection_feature(
    ring: np.ndarray | Sequence[Sequence[float]],
    measurements: dict[str, float],
    *,
    fid: str | None = None,
    name: str = NUCLEUS_CLASS,
    color: Sequence[int] = NUCLEUS_COLOR,
) -> dict[str, Any]:
    """One QuPath detection Feature.

    Parameters
    ----------
    ring : array-like ``(N, 2)``
        Exterior ring in QuPath coordinates (x, y), open or closed; it is closed here and
        oriented counter-clockwise (positive shoelace area).
    measurements : dict
        Measurement name -> value.
    fid : str, optional
        Feature id (a UUID string for QuPath to keep it).
    """
    coords = [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)] for x, y in ring]
    if len(coords) > 1 and coords[0] == coords[-1]:
        coords.pop()
    if len(coords) < 3:
        raise ValueError("a polygon needs at least 3 distinct vertices")
    if _ring_area(coords) < 0:
        coords.reverse()
    coords.append(coords[0])
    feature: dict[str, Any] = {"type": "Feature"}
    if fid is not None:
        feature["id"] = fid
    feature["geometry"] = {"type": "Polygon", "coordinates": [coords]}
    feature["properties"] = {
        "objectType": "detection",
        "classification": {"name": name, "color": [int(c) for c in color]},
        "measurements": {k: float(v) for k, v in measurements.items()},
    }
    return feature


def encode_feature(feature: dict[str, Any]) -> str:
    """Compact one-line JSON for a feature (the form the streaming writer stores)."""
    return json.dumps(feature, separators=(",", ":"), ensure_ascii=False)


def instance_features(
    labels: np.ndarray,
    *,
    ids: Iterable[int] | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] | float = 1.0,
    mpp: float | None = None,
    namespace: uuid.UUID | None = None,
    name: str = NUCLEUS_CLASS,
    color: Sequence[int] = NUCLEUS_COLOR,
    image: np.ndarray | None = None,
    measure: bool = True,
) -> list[dict[str, Any]]:
    """QuPath detections, one per nucleus of an instance map.

    Parameters
    ----------
    labels : ndarray ``(H, W)``
        Instance map, 0 = background.
    ids : iterable of int, optional
        The ids to export (default: all).
    offset, scale :
        Map label-map corner coordinates ``(x, y)`` to level-0 QuPath coordinates:
        ``X = offset_x + x * scale_x`` (likewise y), where label pixel ``(r, c)`` spans
        ``[c, c + 1] x [r, r + 1]``. ``scale`` is the size of one label pixel in level-0
        pixels (e.g. the level's downsample divided by any resize of the tile).
    mpp : float, optional
        Microns per level-0 pixel; adds the µm measurements.
    namespace : uuid.UUID, optional
        Makes stable feature ids (see :func:`id_namespace`); None: no ids.
    image : ndarray ``(H, W, 3)``, optional
        The RGB tile ``labels`` segments: adds each nucleus's mean haematoxylin and eosin
        optical density and mean colour (:func:`instasam.measure.nucleus_measurements`).
    measure : bool
        Add the shape measurements (perimeter, axes, eccentricity, solidity, orientation)
        to area and centroid.

    Returns
    -------
    list of dict
        Features in increasing id order (ids absent from ``labels`` are skipped).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got {labels.shape}")
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    ox, oy = offset
    labels, ids = _compact(labels, ids)
    boxes = ndimage.find_objects(labels)
    extra: dict[int, dict[str, float]] = {}
    if measure:
        from instasam.measure import nucleus_measurements

        extra = nucleus_measurements(labels, image, scale=math.sqrt(sx * sy), mpp=mpp)
    wanted = (
        range(1, len(boxes) + 1)
        if ids is None
        else sorted({int(i) for i in ids if 0 < int(i) <= len(boxes)})
    )
    features = []
    for label in wanted:
        box = boxes[label - 1]
        if box is None:
            continue
        ring, count, (cx, cy) = outline(labels[box] == label)
        y0, x0 = box[0].start, box[1].start
        ring = [(ox + (x + x0) * sx, oy + (y + y0) * sy) for x, y in ring]
        cx, cy = ox + (cx + x0) * sx, oy + (cy + y0) * sy
        measurements = {
            "Area px^2": round(count * sx * sy, 4),
            "Centroid X px": round(cx, COORD_DECIMALS),
            "Centroid Y px": round(cy, COORD_DECIMALS),
        }
        if mpp:
            measurements["Area µm^2"] = round(count * sx * sy * mpp * mpp, 4)
            measurements["Centroid X µm"] = round(cx * mpp, 4)
            measurements["Centroid Y µm"] = round(cy * mpp, 4)
        measurements |= extra.get(label, {})
        fid = None if namespace is None else feature_id(namespace, cx, cy)
        features.append(detection_feature(ring, measurements, fid=fid, name=name, color=color))
    return features


Point = tuple[float, float]


def _compact(
    labels: np.ndarray, ids: Iterable[int] | None
) -> tuple[np.ndarray, Iterable[int] | None]:
    """int32 labels; sparse large ids renumbered 1..N (``find_objects`` allocates per id)."""
    labels = labels.astype(np.int32, copy=False)
    if labels.size == 0 or int(labels.max()) <= max(labels.size, 65535):
        return labels, ids
    values, inverse = np.unique(labels, return_inverse=True)
    start = 0 if values[0] == 0 else 1  # 0 stays background; ids become 1..N
    renumbered = (inverse.reshape(labels.shape) + start).astype(np.int32)
    if ids is not None:
        wanted = np.asarray(list(ids), dtype=np.int64)
        pos = np.searchsorted(values, wanted)
        found = (pos < len(values)) & (values[np.minimum(pos, len(values) - 1)] == wanted)
        ids = (pos[found] + start).tolist()
    return renumbered, ids


def outline(mask: np.ndarray) -> tuple[list[Point], int, Point]:
    """Outer ring, pixel count and centroid of one nucleus's mask (see the module notes).

    Parameters
    ----------
    mask : ndarray of bool ``(H, W)``
        The nucleus, with at least one pixel.

    Returns
    -------
    ring : list of (x, y)
        Open ring of corner coordinates (pixel ``(r, c)`` spans ``[c, c+1] x [r, r+1]``),
        one vertex per turn of the boundary, counter-clockwise by the shoelace sign.
    count : int
        Pixels of the region outlined (holes filled, largest piece); equals the ring's area.
    centroid : (x, y)
        Mean of that region's pixel centres, in the same corner coordinates.
    """
    mask = np.asarray(mask, dtype=bool)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("empty mask")
    ring = _trace(mask)
    if _ring_area(ring) != count or len(set(ring)) != len(ring):
        # Holes, several 4-connected pieces, or a piece touching itself at a corner (which
        # encloses a hole): the ring traced from the first pixel does not describe the
        # mask, or is not simple. Keep the largest piece, fill its holes, trace again.
        pieces, n = ndimage.label(mask)
        sizes = np.bincount(pieces.ravel(), minlength=n + 1)
        sizes[0] = 0
        mask = ndimage.binary_fill_holes(pieces == int(np.argmax(sizes)))
        count = int(mask.sum())
        ring = _trace(mask)
    per_row, per_col = mask.sum(axis=1), mask.sum(axis=0)
    centroid = (
        float(per_col @ np.arange(mask.shape[1])) / count + 0.5,
        float(per_row @ np.arange(mask.shape[0])) / count + 0.5,
    )
    return ring, count, centroid


def _trace(mask: np.ndarray) -> list[Point]:
    """Corners where the boundary turns, around the 4-connected piece of the first pixel.

    Crack following: walk the pixel edges with the piece on the right-hand side (image
    axes, y down), starting east along the top edge of the first pixel in raster order. At
    each corner the two pixels ahead decide: right one background -> turn right; both
    foreground -> turn left; else straight on. Turning right when only the left one is
    foreground treats pixels touching at a corner as separate (4-connectivity), so the walk
    never crosses itself. Pure Python on a byte string: a nucleus has tens of edges, where
    NumPy's per-call cost would dominate.
    """
    h, w = mask.shape
    stride = w + 2
    padded = np.zeros((h + 2, stride), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    cells = padded.tobytes()
    start = cells.index(1)  # the pixel, padded; its top-left corner has the same index
    # Directions east, south, west, north: index step of a corner, and the offsets (from a
    # corner's index) of the pixels ahead on the left and on the right.
    steps = (1, stride, -1, -stride)
    ahead = ((-stride, 0), (0, -1), (-1, -stride - 1), (-stride - 1, -stride))
    corners = [start]
    vertex, direction = start, 0
    while True:
        vertex += steps[direction]
        if vertex == start:
            break
        left, right = ahead[direction]
        if not cells[vertex + right]:
            direction = (direction + 1) % 4
        elif cells[vertex + left]:
            direction = (direction - 1) % 4
        else:
            continue
        corners.append(vertex)
    # Corner index -> (x, y) of the unpadded crop (the padding shifts both by one).
    return [(v % stride - 1, v // stride - 1) for v in corners]


def _ring_area(ring: Sequence[Sequence[float]]) -> float:
    """Shoelace area of an open or closed ring: positive when counter-clockwise in (x, y)."""
    total = 0.0
    px, py = ring[-1]
    for x, y in ring:
        total += px * y - x * py
        px, py = x, y
    return 0.5 * total


class GeoJSONDetectionWriter:
    """Stream features into a GeoJSON FeatureCollection that appears only when complete.

    Features go to a hidden temporary file beside ``path`` as they come (memory stays flat
    however many there are); :meth:`close` finishes the JSON and renames it onto ``path``
    atomically. Used as a context manager, an exception (or Ctrl-C) inside the block
    removes the temporary file and leaves ``path`` as it was.

    Examples
    --------
    >>> with GeoJSONDetectionWriter("nuclei.geojson") as writer:  # doctest: +SKIP
    ...     for labels, (x, y) in tiles:
    ...         writer.write_instances(labels, offset=(x, y), mpp=0.25)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.count = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._fh: TextIO | None = open(tmp, "w", encoding="utf-8")
        self._fh.write('{"type":"FeatureCollection","features":[')

    def write(self, feature: dict[str, Any]) -> None:
        """Append one feature."""
        self.write_encoded([encode_feature(feature)])

    def write_features(self, features: Iterable[dict[str, Any]]) -> int:
        """Append features; returns how many."""
        return self.write_encoded(encode_feature(f) for f in features)

    def write_encoded(self, lines: Iterable[str]) -> int:
        """Append features already encoded as one-line JSON (see :func:`encode_feature`)."""
        fh = self._open_handle()
        n = 0
        for line in lines:
            line = line.strip()
            if not line:
                continue
            fh.write("\n" if self.count == 0 else ",\n")
            fh.write(line)
            self.count += 1
            n += 1
        return n

    def write_instances(self, labels: np.ndarray, **kwargs: Any) -> int:
        """Append the nuclei of an instance map (keywords as :func:`instance_features`)."""
        return self.write_features(instance_features(labels, **kwargs))

    def close(self) -> Path:
        """Finish the collection and move it onto ``path``; returns ``path``."""
        fh = self._open_handle()
        fh.write("\n]}\n")
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._fh = None
        self._stack.close()  # os.replace onto the destination
        return self.path

    def abort(self) -> None:
        """Drop everything written; ``path`` is left untouched. Safe to call twice."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _open_handle(self) -> TextIO:
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        return self._fh

    def __enter__(self) -> GeoJSONDetectionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self._fh is not None:
                self.close()
        else:
            self.abort()


def write_detections(path: str | os.PathLike, labels: np.ndarray, **kwargs: Any) -> int:
    """Write the nuclei of one instance map as a QuPath GeoJSON file (atomic).

    Keywords as :func:`instance_features`. Returns the number of features written.
    """
    with GeoJSONDetectionWriter(path) as writer:
        return writer.write_instances(labels, **kwargs)


def detection_mask(
    feature: dict[str, Any], downsample: tuple[float, float] = (1.0, 1.0)
) -> tuple[int, int, np.ndarray]:
    """``(x0, y0, mask)``: a detection's outline filled on a pixel grid.

    The grid is level 0 divided by ``downsample``. Outlines written here run along pixel
    corners (:func:`outline`), so filling the pixels whose centres lie inside gives back
    the segmented pixels exactly on the grid they were traced on.
    """
    from skimage.draw import polygon as draw_polygon

    dx, dy = downsample
    ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
    xs, ys = ring[:, 0] / dx, ring[:, 1] / dy
    x0, y0 = int(np.floor(xs.min())), int(np.floor(ys.min()))
    shape = (int(np.ceil(ys.max())) - y0, int(np.ceil(xs.max())) - x0)
    rr, cc = draw_polygon(ys - y0 - 0.5, xs - x0 - 0.5, shape)
    mask = np.zeros(shape, dtype=bool)
    mask[rr, cc] = True
    return x0, y0, mask


def labels_from_detections(
    features: Iterable[dict[str, Any]], shape: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """An instance map of detections (k = the k-th feature) and how many pixels two claim.

    Where outlines overlap the later feature wins; a GeoJSON written by ``predict-wsi``
    has no such pixel.
    """
    labels = np.zeros(shape, dtype=np.int32)
    shared = 0
    for k, feature in enumerate(features, start=1):
        x0, y0, mask = detection_mask(feature)
        ys, xs = np.nonzero(mask)
        ys, xs = ys + y0, xs + x0
        inside = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
        ys, xs = ys[inside], xs[inside]
        shared += int((labels[ys, xs] > 0).sum())
        labels[ys, xs] = k
    return labels, shared
