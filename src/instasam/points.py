"""One point per nucleus: centres from instance maps, and the paper's shifted points.

Points are ``(N, 2)`` float64 arrays of ``(x, y)`` = (column, row) in pixels; the centre of
pixel ``(r, c)`` is ``(x=c, y=r)`` (``docs/CONVENTIONS.md``).
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage as ndi

#: The paper's shifted-point settings: each point moves a distance drawn uniformly from
#: ``[low, high)`` pixels in a uniformly random direction.
SHIFT_SETTINGS: dict[str, tuple[float, float]] = {
    "2-4": (2.0, 4.0),
    "4-6": (4.0, 6.0),
    "6-8": (6.0, 8.0),
}

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SHIFT_PATTERN = re.compile(rf"\s*{_NUMBER}\s*[-\u2013]\s*{_NUMBER}\s*")


def parse_shift(text: str) -> tuple[float, float]:
    """Parse a shift range ``"LOW-HIGH"`` in pixels, e.g. ``"4-6"`` -> ``(4.0, 6.0)``.

    Any range with ``0 <= LOW < HIGH`` is accepted, not only :data:`SHIFT_SETTINGS`.

    Raises
    ------
    ValueError
        If ``text`` is not of that form or ``LOW >= HIGH``.
    """
    match = _SHIFT_PATTERN.fullmatch(text)
    if not match:
        raise ValueError(f"shift must look like 4-6 (LOW-HIGH pixels), got {text!r}")
    low, high = float(match.group(1)), float(match.group(2))
    if not low < high:
        raise ValueError(f"shift range {text!r} needs LOW < HIGH")
    return low, high


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` renumbered 1..K in id order (0 stays background), and the K original ids."""
    peak = int(labels.max())
    if peak <= 4 * labels.size + 1024:  # ids are usually dense: a lookup table is O(pixels)
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=peak + 1))
        ids = present[present > 0]
        lut = np.zeros(peak + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[labels], ids
    ids, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape)
    if ids[0] == 0:
        return compact, ids[1:]
    return compact + 1, ids


def points_from_instances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centre of each nucleus and its id.

    The centre is the centroid of the nucleus's pixel centres. When the pixel containing
    the centroid is not part of the nucleus (crescents, rings, some touching shapes), the
    point moves to the centre of the nucleus pixel nearest to the centroid.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` instance map, 0 = background; ids need not be consecutive.

    Returns
    -------
    points : ndarray
        ``(N, 2)`` float64 ``(x, y)``, in increasing id order.
    ids : ndarray
        ``(N,)`` int64, the instance id of each point.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.size == 0 or not labels.any():
        return np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.int64)
    if labels.min() < 0:
        raise ValueError("labels hold negative ids")
    compact, ids = _compact_labels(labels.astype(np.int64, copy=False))
    flat = compact.ravel()
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    counts = np.bincount(flat, minlength=ids.size + 1)[1:]
    centre_r = np.bincount(flat, weights=rows, minlength=ids.size + 1)[1:] / counts
    centre_c = np.bincount(flat, weights=cols, minlength=ids.size + 1)[1:] / counts
    # The centroid lies in pixel round(centre); both are inside the image's pixel range.
    r = np.round(centre_r).astype(np.intp)
    c = np.round(centre_c).astype(np.intp)
    outside = np.flatnonzero(compact[r, c] != np.arange(1, ids.size + 1))
    if outside.size:
        boxes = ndi.find_objects(compact, max_label=ids.size)
        for i in outside:
            box = boxes[i]
            rr, cc = np.nonzero(compact[box] == i + 1)
            rr, cc = rr + box[0].start, cc + box[1].start
            j = np.argmin((rr - centre_r[i]) ** 2 + (cc - centre_c[i]) ** 2)
            centre_r[i], centre_c[i] = rr[j], cc[j]
    points = np.column_stack([centre_c, centre_r]).astype(np.float64)
    return points, ids.astype(np.int64)


def shift_points(
    points: np.ndarray,
    shape: tuple[int, int],
    low: float,
    high: float,
    seed: int | np.random.SeedSequence = 0,
) -> np.ndarray:
    """Move each point a random distance in a random direction (the paper's shifted points).

    Each point moves a distance drawn uniformly from ``[low, high)`` pixels in a direction
    drawn uniformly from ``[0, 2 pi)``, and is then clipped to the image: ``x`` to
    ``[0, W - 1]``, ``y`` to ``[0, H - 1]`` (the centres of the border pixels). Clipping can
    shorten the shift of a point near the border below ``low``.

    Parameters
    ----------
    points : ndarray
        ``(N, 2)`` ``(x, y)``.
    shape : (int, int)
        ``(H, W)`` of the image.
    low, high : float
        The distance range, ``0 <= low < high``.
    seed : int or SeedSequence
        The same seed and points give the same shifted points.

    Returns
    -------
    ndarray
        ``(N, 2)`` float64, the shifted points.
    """
    if not 0 <= low < high:
        raise ValueError(f"shift range needs 0 <= low < high, got [{low}, {high})")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    distance = rng.uniform(low, high, size=len(points))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=len(points))
    moved = points + np.column_stack([distance * np.cos(angle), distance * np.sin(angle)])
    h, w = shape
    moved[:, 0] = np.clip(moved[:, 0], 0, w - 1)
    moved[:, 1] = np.clip(moved[:, 1], 0, h - 1)
    return moved


__all__ = ["SHIFT_SETTINGS", "parse_shift", "points_from_instances", "shift_points"]
