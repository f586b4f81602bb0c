"""Training targets for the nuclei decoder: foreground map B and distance (HoVer) maps D.

Both are derived from an instance label map (ground truth) or a pseudo-label map S'
(``instasam.IGNORE`` = -1 for pixels that carry no loss). Ignored pixels get 0 in every
target; :func:`ignore_mask` says where they are so that the losses can skip them.

Distance maps follow HoVer-Net (Graham et al., 2019): for every nucleus, channel 0 holds the
horizontal offset ``x - x_c`` of each pixel from the nucleus's centre of mass ``(x_c, y_c)``
and channel 1 the vertical offset ``y - y_c``, then scaled to about [-1, 1]; background is 0.
Two scalings exist (``TargetConfig.hv_scaling``):

``"hovernet"``
    Each side scaled on its own: negative offsets divided by the largest negative distance,
    positive offsets by the largest positive distance, so every nucleus spans exactly
    [-1, 1] along each axis (the pixel column/row that holds the extreme reaches -1 or 1).
``"positive_max"``
    The authors' code: all offsets of a nucleus divided by its largest positive offset.
    The positive side spans [0, 1]; the negative side is *not* rescaled on its own, so its
    extreme is ``-(x_c - x_min) / (x_max - x_c)``. It is below -1 when the nucleus reaches
    further left (up) of its centre of mass than right (down), above -1 otherwise. Values
    are not clipped, as in the authors' code.

Differences from HoVer-Net's reference target code, on purpose: the centre of mass is the
exact mean of the pixel coordinates (HoVer-Net rounds it to a pixel and shifts its grid by
one pixel), and no object is dropped for being small or cut by the tile border. An id
whose pixels form several pieces is treated as one nucleus (one centre of mass), as in both
reference codes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from instasam import IGNORE

HVScaling = Literal["hovernet", "positive_max"]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"label map must hold integer ids, got dtype {labels.dtype}")
    if labels.size and labels.min() < IGNORE:
        raise ValueError(f"label map holds negative ids other than IGNORE ({IGNORE})")
    return labels


def ignore_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels that carry no loss: ``bool (H, W)``, True where ``labels == IGNORE``."""
    labels = _check_labels(labels)
    return labels == IGNORE


def foreground_map(labels: np.ndarray) -> np.ndarray:
    """Foreground target B: ``float32 (H, W)``, 1 inside nuclei, 0 on background and ignored."""
    labels = _check_labels(labels)
    return (labels > 0).astype(np.float32)


def hv_maps(labels: np.ndarray, scaling: HVScaling = "hovernet") -> np.ndarray:
    """Horizontal and vertical distance maps D: ``float32 (2, H, W)``.

    Parameters
    ----------
    labels
        Instance map ``(H, W)``: 0 background, ``k >= 1`` nucleus ``k`` (ids need not be
        consecutive), ``IGNORE`` (-1) for ignored pixels (0 in the output).
    scaling
        ``"hovernet"`` (each side to [-1, 1]) or ``"positive_max"`` (the authors' code:
        divided by the positive maximum only; see the module docstring for the negative side).

    Returns
    -------
    numpy.ndarray
        Channel 0: x (column) offset from the nucleus's centre of mass; channel 1: y (row)
        offset; scaled per nucleus, 0 outside nuclei.

    Notes
    -----
    Computed for all nuclei at once from per-id sums (``np.bincount``) and per-id extremes
    (``np.minimum.at`` / ``np.maximum.at``) over the foreground pixels only.
    """
    if scaling not in ("hovernet", "positive_max"):
        raise ValueError(f"unknown hv scaling {scaling!r}; use 'hovernet' or 'positive_max'")
    labels = _check_labels(labels)
    out = np.zeros((2, *labels.shape), dtype=np.float32)
    rows, cols = np.nonzero(labels > 0)
    if rows.size == 0:
        return out
    # Compact ids 0..K-1 so that per-id arrays stay small whatever the ids are.
    _, inverse = np.unique(labels[rows, cols], return_inverse=True)
    n_ids = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n_ids).astype(np.float64)
    for channel, coords in enumerate((cols, rows)):
        centre = np.bincount(inverse, weights=coords, minlength=n_ids) / counts
        offsets = coords - centre[inverse]
        out[channel, rows, cols] = _scaled(offsets, inverse, n_ids, scaling)
    return out


def _scaled(offsets: np.ndarray, inverse: np.ndarray, n_ids: int, scaling: str) -> np.ndarray:
    """Divide each id's offsets by its extreme(s); an id with no extent on a side keeps 0 there."""
    largest = np.zeros(n_ids)
    np.maximum.at(largest, inverse, offsets)
    pos_scale = np.where(largest > 0, largest, 1.0)
    if scaling == "positive_max":
        return offsets / pos_scale[inverse]
    smallest = np.zeros(n_ids)
    np.minimum.at(smallest, inverse, offsets)
    neg_scale = np.where(smallest < 0, -smallest, 1.0)
    scale = np.where(offsets > 0, pos_scale[inverse], neg_scale[inverse])
    return offsets / scale


__all__ = ["HVScaling", "foreground_map", "hv_maps", "ignore_mask"]
