"""Pseudo labels refined by a trained model's predictions, checked against the points.

One round of self-training: a model trained on S segments its own training tiles, and the
points decide what of that prediction becomes a label. Every annotated nucleus has exactly
one point, so a predicted instance that holds no point is not a nucleus, one that holds
several is several nuclei (split between its points), and a point that no prediction
covers keeps the label it had before, or is ignored around.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from instasam import IGNORE


def point_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each ``(x, y)`` point, rounded and kept inside the image."""
    h, w = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rows = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    return rows, cols


def instances_vouched_by_points(prediction: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``prediction`` renumbered so that nucleus k is point k-1's, the rest background.

    A predicted instance that holds one point becomes that point's nucleus; one that holds
    several is split between them, each pixel going to the nearest of its points; one that
    holds none becomes background.
    """
    prediction = np.asarray(prediction)
    out = np.zeros(prediction.shape, dtype=np.int32)
    if len(points) == 0:
        return out
    rows, cols = point_pixels(points, prediction.shape)
    owner = prediction[rows, cols]
    point_ids = np.arange(1, len(points) + 1, dtype=np.int32)
    inside = owner > 0
    ids, counts = np.unique(owner[inside], return_counts=True)
    lookup = np.zeros(int(prediction.max()) + 1, dtype=np.int32)
    single = ids[counts == 1]
    single_points = np.isin(owner, single) & inside
    lookup[owner[single_points]] = point_ids[single_points]
    out = lookup[prediction]
    for instance in ids[counts > 1]:
        mine = np.nonzero(owner == instance)[0]
        rr, cc = np.nonzero(prediction == instance)
        tree = cKDTree(np.column_stack([cols[mine], rows[mine]]))
        _, nearest = tree.query(np.column_stack([cc, rr]))
        out[rr, cc] = point_ids[mine[nearest]]
    return out


def refined_labels(
    prediction: np.ndarray,
    points: np.ndarray,
    previous: np.ndarray,
    ignore_radius: float = 8.0,
) -> np.ndarray:
    """Labels for the next round of training, from a prediction and the previous labels.

    Parameters
    ----------
    prediction : ndarray
        ``(H, W)`` instance map the model predicted for the training tile.
    points : ndarray
        ``(N, 2)`` ``(x, y)`` points, one per nucleus.
    previous : ndarray
        ``(H, W)`` labels the model was trained on (IGNORE, 0, k = point k-1's nucleus).
    ignore_radius : float
        A point that neither the prediction nor ``previous`` labels gets a disk of IGNORE
        this wide, so its nucleus is not taught as background.

    Returns
    -------
    ndarray
        ``(H, W)`` int32 labels: the point-checked prediction, with nuclei the prediction
        missed taken from ``previous`` where it labelled them (where no other nucleus lies).
    """
    out = instances_vouched_by_points(prediction, points)
    present = np.zeros(len(points) + 1, dtype=bool)
    present[np.unique(out[out > 0])] = True
    fallback = (previous > 0) & ~present[np.clip(previous, 0, len(points))] & (out == 0)
    out[fallback] = previous[fallback]
    present[np.unique(out[out > 0])] = True
    missing = np.nonzero(~present[1:])[0]
    if ignore_radius > 0 and missing.size:
        rows, cols = point_pixels(points[missing], out.shape)
        seeds = np.zeros(out.shape, dtype=bool)
        seeds[rows, cols] = True
        near = ndi.distance_transform_edt(~seeds) <= ignore_radius
        out[near & (out == 0)] = IGNORE
    return out
