"""How good a pseudo-label map is, measured against the ground truth it stands in for."""

from __future__ import annotations

import numpy as np

from instasam import IGNORE
from instasam.metrics import compute_metrics


def pseudo_label_quality(pseudo: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Instance metrics of a pseudo-label map, and how much and how well it labels.

    Parameters
    ----------
    pseudo : ndarray
        ``(H, W)`` int pseudo-label map: IGNORE (-1), 0 background, k >= 1 nucleus k.
    gt : ndarray
        ``(H, W)`` ground-truth instance map, 0 background.

    Returns
    -------
    dict
        Every key of :func:`instasam.metrics.compute_metrics` (``aji``, ``dice_obj``,
        ``aji_plus``, ``pq``, ...) computed with IGNORE pixels counted as background: the
        pseudo instances are what the labels would teach as nuclei, so a nucleus left all
        ignored counts as missed and ignored pixels never count as a false nucleus. Also:

        * ``ignored``: share of all pixels that are IGNORE;
        * ``nuclei_labelled``: share of ground-truth nuclei that overlap a pseudo instance
          by at least one pixel (1.0 when there is no ground-truth nucleus);
        * ``fg_precision``: share of pseudo-nucleus pixels (label > 0) that lie inside a true
          nucleus - the precision of the foreground that carries a loss;
        * ``bg_precision``: share of pseudo-background pixels (label 0) outside every true
          nucleus;
        * ``fg_recall``: share of true-nucleus pixels labelled as some pseudo nucleus.

        A share whose denominator is empty is 0.0 (``nuclei_labelled`` excepted).
    """
    pseudo = np.asarray(pseudo)
    gt = np.asarray(gt)
    if pseudo.shape != gt.shape:
        raise ValueError(f"shape mismatch: pseudo {pseudo.shape} vs gt {gt.shape}")
    if pseudo.size and pseudo.min() < IGNORE:
        raise ValueError(f"pseudo labels below IGNORE ({IGNORE})")
    fg, bg, true_fg = pseudo > 0, pseudo == 0, gt > 0
    out = compute_metrics(gt, np.where(fg, pseudo, 0))
    gt_ids = np.unique(gt[true_fg])
    covered = np.unique(gt[fg & true_fg])
    out["ignored"] = float((pseudo == IGNORE).mean()) if pseudo.size else 0.0
    out["nuclei_labelled"] = float(covered.size / gt_ids.size) if gt_ids.size else 1.0
    out["fg_precision"] = _share(true_fg[fg])
    out["bg_precision"] = _share(~true_fg[bg])
    out["fg_recall"] = _share(fg[true_fg])
    return out


def _share(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0
