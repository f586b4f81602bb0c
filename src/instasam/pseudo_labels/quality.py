"""How good pseudo labels are, measured against ground truth."""

from __future__ import annotations

import numpy as np

from instasam import IGNORE
from instasam.metrics import compute_metrics


def pseudo_label_quality(pseudo: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Instance metrics of a pseudo-label map and what it leaves out.

    IGNORE pixels count as background for the instance metrics (``aji``, ``dice_obj``,
    ... as :func:`instasam.metrics.compute_metrics`): a nucleus that is all ignored is a
    missed nucleus. Also returned:

    * ``ignored``: share of pixels set to IGNORE;
    * ``nuclei_labelled``: share of ground-truth nuclei that overlap a pseudo instance;
    * ``fg_precision``: share of pseudo-nucleus pixels inside a true nucleus, and
      ``bg_precision``: share of pseudo-background pixels outside every true nucleus
      (how trustworthy the pixels that do carry a loss are).
    """
    pseudo = np.asarray(pseudo)
    gt = np.asarray(gt)
    instances = np.where(pseudo > 0, pseudo, 0)
    out = compute_metrics(gt, instances)
    fg, bg = pseudo > 0, pseudo == 0
    gt_ids = np.unique(gt[gt > 0])
    covered = np.unique(gt[fg & (gt > 0)])
    out["ignored"] = float((pseudo == IGNORE).mean())
    out["nuclei_labelled"] = float(len(covered) / len(gt_ids)) if len(gt_ids) else 1.0
    out["fg_precision"] = float((gt[fg] > 0).mean()) if fg.any() else 0.0
    out["bg_precision"] = float((gt[bg] == 0).mean()) if bg.any() else 0.0
    return out
