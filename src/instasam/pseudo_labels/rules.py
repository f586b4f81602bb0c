"""The selection rule of Eq. 2-4: from K mask probabilities to one pseudo-label map.

For pixel j and prompted nuclei k = 1..K with probabilities p_k(j) (sigmoid of the mask
decoder's logits):

* F(j) = sum_k [p_k(j) > delta]        - how many masks claim the pixel;
* H(j) = -sum_k p_k(j) log p_k(j)      - how unsure the masks are together (0 log 0 = 0);
* label(j) = argmax over [delta, p_1(j), ..., p_K(j)] (index 0 = background)
  if H(j) < epsilon and F(j) < 2, else IGNORE.

Ties in the argmax go to the lower index, so a mask exactly at ``delta`` is background.
H sums over all K masks, so K masks that each leave a small probability p on a pixel add
up (-p log p each): prompt a window's nuclei, not a whole slide's, at once.

Whole-instance rejection (``reject_overlapping_instances``, the authors' code; the paper
states only the per-pixel rule, our default): mask k *overlaps* when some pixel has
p_k > delta and p_l > delta for another mask l (F >= 2 there). Every overlapping mask is
dropped - both masks of an overlapping pair - and every pixel it claims (p_k > delta)
becomes IGNORE; labels elsewhere are those of the per-pixel rule, in which the dropped
masks still count in F and H (they remain evidence that those pixels are uncertain). The
net effect: the per-pixel map with the dropped instances' ids replaced by IGNORE.

Memory: the probabilities are read in slices of ``chunk`` masks, so beyond the input
the rule holds O(chunk * H * W) floats and a few (H, W) maps, never a second
(K, H, W) array. A float32 input is used as it is; other dtypes are cast slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instasam import IGNORE

#: Masks per slice: about 16 M elements (64 MB float32) for a 1000x1000 window.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RuleStats:
    """What the rule did on one image.

    Attributes
    ----------
    n_prompts : int
        K, the number of masks.
    kept : int
        Masks with at least one pixel labelled with their id.
    dropped : int
        ``n_prompts - kept``: masks left without any pixel (rejected as overlapping, or all
        their pixels ignored or never claimed).
    rejected_overlapping : int
        Masks dropped by the whole-instance rule (0 when it is off).
    ignored_share : float
        Share of pixels set to IGNORE (for any reason).
    overlap_share : float
        Share of pixels claimed by two or more masks (F >= 2).
    entropy_share : float
        Share of pixels with H >= epsilon.
    """

    n_prompts: int
    kept: int
    dropped: int
    rejected_overlapping: int
    ignored_share: float
    overlap_share: float
    entropy_share: float


def _slices(k: int, pixels: int, chunk: int | None) -> list[slice]:
    step = chunk or max(1, DEFAULT_CHUNK_ELEMENTS // max(pixels, 1))
    return [slice(i, min(i + step, k)) for i in range(0, k, step)]


def _as_probabilities(part: torch.Tensor, logits: bool) -> torch.Tensor:
    part = part.float()
    return torch.sigmoid(part) if logits else part


def select_pseudo_labels(
    probabilities: torch.Tensor,
    delta: float = 0.5,
    epsilon: float = 0.3,
    reject_overlapping_instances: bool = False,
    *,
    logits: bool = False,
    chunk: int | None = None,
    overlap_rule: bool = True,
) -> tuple[torch.Tensor, RuleStats]:
    """Eq. 2-4 on ``(K, H, W)`` mask probabilities, with what the rule did.

    Parameters
    ----------
    probabilities : Tensor
        ``(K, H, W)`` p_k in [0, 1] (or logits, with ``logits=True``), any float dtype
        and device.
    delta, epsilon : float
        The claim threshold and the entropy limit (paper: 0.5 and 0.3).
    reject_overlapping_instances : bool
        Drop every mask k that has a pixel with p_k > delta and p_l > delta for some other
        mask l; all pixels with p_k > delta become IGNORE, nothing else changes (module
        notes).
    logits : bool
        The input holds logits; the sigmoid is applied slice by slice.
    chunk : int, optional
        Masks per slice (default: about 16 M elements per slice).
    overlap_rule : bool
        Ignore pixels claimed by two masks (F >= 2). False (an ablation of the paper's
        Table 3) gives them to the most probable mask; ``epsilon=inf`` likewise switches
        off the entropy rule.

    Returns
    -------
    labels : Tensor
        ``(H, W)`` int64 on the input's device: IGNORE (-1), 0 background, or k for the
        k-th mask (1-based). K = 0 gives all background.
    stats : RuleStats
    """
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities must be (K, H, W), got shape {tuple(probabilities.shape)}")
    k, h, w = probabilities.shape
    device = probabilities.device
    claims = torch.zeros((h, w), dtype=torch.int32, device=device)  # F
    entropy = torch.zeros((h, w), dtype=torch.float32, device=device)  # H
    best = torch.full((h, w), float(delta), dtype=torch.float32, device=device)
    labels = torch.zeros((h, w), dtype=torch.long, device=device)
    parts = _slices(k, h * w, chunk)
    for part in parts:
        p = _as_probabilities(probabilities[part], logits)
        claims += (p > delta).sum(0, dtype=torch.int32)
        entropy -= torch.special.xlogy(p, p).sum(0)  # xlogy(0, 0) = 0, not NaN
        value, index = p.max(0)  # first maximum within the slice
        better = value > best  # strict: earlier masks (and the background) win ties
        best = torch.where(better, value, best)
        labels = torch.where(better, index + (part.start + 1), labels)
    overlap = claims >= 2
    uncertain = ~(entropy < epsilon)  # NaN input counts as uncertain
    labels[(overlap if overlap_rule else torch.zeros_like(overlap)) | uncertain] = IGNORE

    rejected = 0
    if reject_overlapping_instances and k and bool(overlap.any()):
        dropped = torch.zeros(k + 1, dtype=torch.bool, device=device)  # index 0: background
        for part in parts:
            p = _as_probabilities(probabilities[part], logits)
            dropped[part.start + 1 : part.stop + 1] = ((p > delta) & overlap).flatten(1).any(1)
        rejected = int(dropped.sum())
        # A dropped mask's claimed pixels are either labelled with its id or already
        # IGNORE (F >= 2 or H >= epsilon), so withdrawing its id is the whole rejection.
        labels[dropped[labels.clamp(min=0)] & (labels > 0)] = IGNORE

    present = torch.zeros(k + 1, dtype=torch.bool, device=device)
    present[labels[labels > 0]] = True
    kept = int(present.sum())
    pixels = max(h * w, 1)
    stats = RuleStats(
        n_prompts=k,
        kept=kept,
        dropped=k - kept,
        rejected_overlapping=rejected,
        ignored_share=float((labels == IGNORE).sum()) / pixels,
        overlap_share=float(overlap.sum()) / pixels,
        entropy_share=float(uncertain.sum()) / pixels,
    )
    return labels, stats


def labels_from_probabilities(
    probabilities: torch.Tensor,
    delta: float = 0.5,
    epsilon: float = 0.3,
    reject_overlapping_instances: bool = False,
    *,
    logits: bool = False,
    chunk: int | None = None,
    overlap_rule: bool = True,
) -> torch.Tensor:
    """Eq. 2-4 on ``(K, H, W)`` probabilities -> ``(H, W)`` int64 labels.

    :func:`select_pseudo_labels` without the statistics.
    """
    labels, _ = select_pseudo_labels(
        probabilities,
        delta,
        epsilon,
        reject_overlapping_instances,
        logits=logits,
        chunk=chunk,
        overlap_rule=overlap_rule,
    )
    return labels


def select_pseudo_labels_np(
    probabilities: np.ndarray,
    delta: float = 0.5,
    epsilon: float = 0.3,
    reject_overlapping_instances: bool = False,
    *,
    logits: bool = False,
    chunk: int | None = None,
) -> tuple[np.ndarray, RuleStats]:
    """NumPy form of :func:`select_pseudo_labels`: int32 labels (shares the input's memory)."""
    tensor = torch.from_numpy(np.ascontiguousarray(probabilities))
    labels, stats = select_pseudo_labels(
        tensor, delta, epsilon, reject_overlapping_instances, logits=logits, chunk=chunk
    )
    return labels.numpy().astype(np.int32), stats


def labels_from_probabilities_np(
    probabilities: np.ndarray,
    delta: float = 0.5,
    epsilon: float = 0.3,
    reject_overlapping_instances: bool = False,
) -> np.ndarray:
    """NumPy form of :func:`labels_from_probabilities` (returns int32)."""
    return select_pseudo_labels_np(probabilities, delta, epsilon, reject_overlapping_instances)[0]


def rule_stats(labels: torch.Tensor | np.ndarray, k: int) -> RuleStats:
    """Statistics recoverable from a finished label map of ``k`` masks.

    ``rejected_overlapping``, ``overlap_share`` and ``entropy_share`` need the
    probabilities and are reported as 0 here; use :func:`select_pseudo_labels` for them.
    """
    labels = torch.as_tensor(labels)
    present = torch.unique(labels)
    kept = int(((present > 0) & (present <= k)).sum())
    return RuleStats(
        n_prompts=k,
        kept=kept,
        dropped=k - kept,
        rejected_overlapping=0,
        ignored_share=float((labels == IGNORE).double().mean()) if labels.numel() else 0.0,
        overlap_share=0.0,
        entropy_share=0.0,
    )


def negative_prompts(
    points: np.ndarray, n_negatives: int = 4, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """For each point, the indices of up to ``n_negatives`` other points, drawn at random.

    Each row is a uniformly random subset of the other points, without replacement and in
    random order; every row has ``min(n_negatives, K - 1)`` entries.

    Parameters
    ----------
    points : ndarray
        ``(K, 2)`` points (only K is used).
    n_negatives : int
        Negatives per prompt (paper: 4).
    seed : int or Generator
        The same seed and K give the same draw.

    Returns
    -------
    ndarray
        ``(K, min(n_negatives, K - 1))`` int64; ``(K, 0)`` when K <= 1.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (K, 2), got shape {points.shape}")
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
    k = len(points)
    n = min(n_negatives, max(k - 1, 0))
    rng = np.random.default_rng(seed)
    chosen = np.empty((k, n), dtype=np.int64)
    if n == 0:
        return chosen
    # Floyd's sampling of n distinct values from 0..K-2 per row, all rows at once
    # (O(K n) memory, no K x K matrix), then shifted past the row's own index.
    others = k - 1
    for i, top in enumerate(range(others - n, others)):
        draw = rng.integers(0, top + 1, size=k)
        taken = (chosen[:, :i] == draw[:, None]).any(1)
        chosen[:, i] = np.where(taken, top, draw)
    chosen = rng.permuted(chosen, axis=1)  # Floyd's order is not uniform; the set is
    own = np.arange(k)[:, None]
    return chosen + (chosen >= own)
