"""One point per nucleus: centres from instance maps, and the paper's shifted points.

Points are ``(N, 2)`` float arrays of ``(x, y)`` = (column, row); the centre of pixel
``(r, c)`` is ``(x=c, y=r)``.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage as ndi

#: The paper's shifted-point settings: distance drawn uniformly from [low, high) pixels.
SHIFT_SETTINGS: dict[str, tuple[float, float]] = {
    "2-4": (2.0, 4.0),
    "4-6": (4.0, 6.0),
    "6-8": (6.0, 8.0),
}


def parse_shift(text: str) -> tuple[float, float]:
    """``"4-6"`` -> ``(4.0, 6.0)``; any ``low-high`` with ``0 <= low < high`` is accepted."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*", text)
    if not match:
        raise ValueError(f"shift must look like '4-6' (pixels), got {text!r}")
    low, high = float(match.group(1)), float(match.group(2))
    if not low < high:
        raise ValueError(f"shift range {text!r} needs low < high")
    return low, high


def points_from_instances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centre of each nucleus and its id.

    The centre is the centroid of the nucleus's pixels; when that falls outside the
    nucleus (crescents, rings) it is moved to the nucleus pixel nearest the centroid.

    Returns
    -------
    points : ndarray
        ``(N, 2)`` float64 ``(x, y)``, in increasing id order.
    ids : ndarray
        ``(N,)`` the instance id of each point.
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, 2)), ids.astype(np.int64)
    centres = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids), dtype=np.float64)
    rows = np.clip(np.round(centres[:, 0]).astype(int), 0, labels.shape[0] - 1)
    cols = np.clip(np.round(centres[:, 1]).astype(int), 0, labels.shape[1] - 1)
    outside = np.nonzero(labels[rows, cols] != ids)[0]
    if outside.size:
        boxes = ndi.find_objects(labels, max_label=int(ids.max()))
        for i in outside:
            box = boxes[ids[i] - 1]
            rr, cc = np.nonzero(labels[box] == ids[i])
            rr, cc = rr + box[0].start, cc + box[1].start
            j = np.argmin((rr - centres[i, 0]) ** 2 + (cc - centres[i, 1]) ** 2)
            centres[i] = rr[j], cc[j]
    return centres[:, ::-1].copy(), ids.astype(np.int64)


def shift_points(
    points: np.ndarray, shape: tuple[int, int], low: float, high: float, seed: int = 0
) -> np.ndarray:
    """Move each point a distance drawn uniformly from ``[low, high)`` in a uniformly
    random direction, reproducibly from ``seed``.

    Shifted points are clipped to the image ``(H, W)``, so a point near the border can
    end up closer to where it started than ``low``.
    """
    points = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    distance = rng.uniform(low, high, size=len(points))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=len(points))
    moved = points + np.column_stack([distance * np.cos(angle), distance * np.sin(angle)])
    h, w = shape
    moved[:, 0] = np.clip(moved[:, 0], 0, w - 1)
    moved[:, 1] = np.clip(moved[:, 1], 0, h - 1)
    return moved
