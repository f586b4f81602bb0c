"""The selection rule of Eq. 2-4: from K mask probabilities to one pseudo-label map.

For pixel j and prompted nuclei k = 1..K with probabilities p_k(j):

* F(j) = sum_k [p_k(j) > delta]        - how many masks claim the pixel;
* H(j) = -sum_k p_k(j) log p_k(j)      - how unsure the masks are together;
* label(j) = argmax over [delta, p_1(j), ..., p_K(j)] (index 0 = background)
  if H(j) < epsilon and F(j) < 2, else IGNORE.

The authors' code additionally drops a whole instance when any of its pixels is claimed
by another mask too (``reject_overlapping_instances``); the paper states only the
per-pixel rule, which is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instasam import IGNORE


@dataclass
class RuleStats:
    """What the rule did on one image."""

    ignored_share: float  # share of pixels set to IGNORE
    kept: int  # prompted nuclei with at least one labelled pixel
    dropped: int  # prompted nuclei left without any labelled pixel


def _entropy_sum(p: torch.Tensor) -> torch.Tensor:
    # p log p -> 0 as p -> 0; xlogy gives exactly 0 there instead of NaN.
    return -torch.special.xlogy(p, p).sum(0)


def labels_from_probabilities(
    probabilities: torch.Tensor,
    delta: float = 0.5,
    epsilon: float = 0.3,
    reject_overlapping_instances: bool = False,
) -> torch.Tensor:
    """Eq. 2-4 on ``(K, H, W)`` probabilities -> ``(H, W)`` int64 labels.

    Returns IGNORE (-1), 0 (background) or k (the k-th prompt, 1-based). Memory: one
    extra ``(K, H, W)`` boolean and a few ``(H, W)`` maps; callers with many nuclei work
    in windows (see :func:`instasam.pseudo_labels.sam.tile_pseudo_labels`).

    With ``reject_overlapping_instances``, an instance is dropped when any pixel it
    claims (p > delta) is also claimed by another mask; the dropped instance's pixels
    become IGNORE (they are nucleus-like but of unknown identity), and the rule is then
    applied to the remaining masks.
    """
    p = probabilities.float()
    k, h, w = p.shape
    if k == 0:
        return torch.zeros((h, w), dtype=torch.long, device=p.device)
    claims = p > delta
    count = claims.sum(0)
    dropped_pixels = None
    if reject_overlapping_instances:
        shared = count >= 2
        overlapping = (claims & shared).flatten(1).any(1)
        if overlapping.any():
            dropped_pixels = claims[overlapping].any(0)
            p = p.clone()
            p[overlapping] = 0.0
            claims = p > delta
            count = claims.sum(0)
    background = torch.full((1, h, w), delta, dtype=p.dtype, device=p.device)
    labels = torch.cat([background, p]).argmax(0)
    uncertain = (_entropy_sum(p) >= epsilon) | (count >= 2)
    labels[uncertain] = IGNORE
    if dropped_pixels is not None:
        labels[dropped_pixels] = IGNORE
    return labels


def rule_stats(labels: torch.Tensor | np.ndarray, k: int) -> RuleStats:
    """Ignored share and how many of the ``k`` prompted nuclei kept pixels."""
    labels = torch.as_tensor(labels)
    present = torch.unique(labels)
    kept = int(((present > 0) & (present <= k)).sum())
    return RuleStats(
        ignored_share=float((labels == IGNORE).double().mean()), kept=kept, dropped=k - kept
    )


def labels_from_probabilities_np(probabilities: np.ndarray, **kwargs: float | bool) -> np.ndarray:
    """NumPy wrapper of :func:`labels_from_probabilities` (returns int32)."""
    out = labels_from_probabilities(torch.from_numpy(np.asarray(probabilities)), **kwargs)
    return out.numpy().astype(np.int32)
