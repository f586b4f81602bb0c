"""Nuclei instance segmentation metrics on instance label maps.

Every metric follows from one sparse contingency table between the ground-truth (GT) and
the predicted nuclei (:func:`overlap_table`): the area of each nucleus and the intersection
of every overlapping (GT, prediction) pair. Nothing loops over pairs of nuclei in Python,
so all metrics of a 1000 x 1000 tile with ~700 nuclei take a few tens of milliseconds.

Inputs are instance label maps (integer ``(H, W)``, 0 = background, any positive ids, not
necessarily consecutive). A nucleus is the set of pixels carrying its id, connected or not.

Definitions (``G_i`` GT nuclei, ``S_j`` predicted nuclei, ``|.|`` pixel count):

``dice_obj``
    Object-level Dice (Sirinukunwattana et al. 2017, the InstaSAM paper's "Dice")::

        1/2 [ sum_i |G_i|/sum|G| Dice(G_i, S*(G_i)) + sum_j |S_j|/sum|S| Dice(G*(S_j), S_j) ]

    ``S*(G_i)`` is the predicted nucleus with the largest intersection with ``G_i`` (Dice 0
    when none overlaps it); ``G*(S_j)`` symmetrically. Ties in intersection go to the
    candidate giving the higher Dice (the smaller one), so the value never depends on ids.
``aji``
    Aggregated Jaccard Index (Kumar et al. 2017): every GT nucleus picks the predicted
    nucleus of highest IoU; ``AJI = sum |G_i & S_j| / (sum |G_i | S_j| + sum of the areas
    of predicted nuclei that no GT nucleus picked)``. Ties in IoU go to the larger
    intersection, then to the smaller predicted id. A GT nucleus that overlaps no
    prediction picks nothing and adds its own area to the union (as in HoVer-Net's
    ``get_fast_aji``; Kumar's original script would pick an arbitrary prediction). One
    prediction may be picked by several GT nuclei.
``aji_plus``
    AJI+ (Graham et al. 2019, HoVer-Net): as AJI, but GT and predicted nuclei are paired
    one-to-one by the matching that maximises the summed IoU (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`, solved separately on each connected
    group of overlapping nuclei, which gives the same optimum as on the full matrix);
    pairs with IoU 0 are not pairs. Unpaired GT and predicted nuclei add their areas to
    the union.
``pq``, ``dq``, ``sq``
    Panoptic quality (Kirillov et al. 2019) with pairs at IoU > 0.5, unique by
    construction: ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = mean IoU of the TP pairs``,
    ``PQ = DQ * SQ``. IoU exactly 0.5 is not a match (tested on integers, no rounding).
``dice_pixel``
    Dice of the foregrounds: ``2 |G & S| / (|G| + |S|)`` with ``G``, ``S`` the ids > 0.
``precision``, ``recall``, ``f1``
    Detection: a GT nucleus is detected (TP) when a predicted nucleus overlaps it with
    IoU > 0.5 (the PQ pairs); ``precision = TP / #pred``, ``recall = TP / #GT``,
    ``f1 = 2 TP / (#GT + #pred)``, which equals ``dq``.

Edge cases: when both maps are empty (no nucleus in either) every metric is 1.0 (nothing
to find, nothing found). Otherwise a ratio whose denominator is 0 is 0.0: with no GT
nucleus, ``recall`` and the GT half of ``dice_obj`` are 0; with no prediction,
``precision`` and the prediction half of ``dice_obj`` are 0; with no pair at IoU > 0.5,
``sq`` is 0 (as in HoVer-Net). Hence a non-empty map against an empty one scores 0 on
every metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

METRIC_KEYS = (
    "dice_obj",
    "aji",
    "aji_plus",
    "pq",
    "dq",
    "sq",
    "dice_pixel",
    "precision",
    "recall",
    "f1",
)

#: Short column titles for tables and plots.
METRIC_LABELS = {
    "dice_obj": "Dice_obj",
    "aji": "AJI",
    "aji_plus": "AJI+",
    "pq": "PQ",
    "dq": "DQ",
    "sq": "SQ",
    "dice_pixel": "Dice_pix",
    "precision": "Prec",
    "recall": "Rec",
    "f1": "F1",
}

# Dense look-up tables and dense pair tables are used up to this many entries (int64: 64 MiB).
_DENSE_LIMIT = 1 << 23


@dataclass(frozen=True)
class OverlapTable:
    """Sparse contingency table of two instance label maps.

    Nuclei are indexed ``0..n-1`` in increasing order of their ids (``gt_ids``,
    ``pred_ids``). The pair arrays list every (GT, prediction) pair that shares at least
    one pixel, sorted by GT index then prediction index.

    Attributes
    ----------
    gt_ids, pred_ids : ndarray of int64
        Original ids of the nuclei.
    gt_area, pred_area : ndarray of int64
        Pixel count of each nucleus.
    pair_gt, pair_pred : ndarray of int64
        GT and prediction index of each overlapping pair.
    intersection : ndarray of int64
        Shared pixel count of each pair (> 0).
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray

    @property
    def n_gt(self) -> int:
        return int(self.gt_area.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_area.size)

    @property
    def union(self) -> np.ndarray:
        """Union pixel count of each pair."""
        return self.gt_area[self.pair_gt] + self.pred_area[self.pair_pred] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        """IoU of each pair."""
        return self.intersection / self.union

    @property
    def both_empty(self) -> bool:
        return self.n_gt == 0 and self.n_pred == 0


# --------------------------------------------------------------------------- table


def _validated_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    for name, array in (("gt", gt), ("pred", pred)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D instance label map, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}")
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {gt.shape} vs pred {pred.shape}")
    return gt, pred


def _dense_index(labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel index 0 (background) or 1..n, the ids, and the areas of the nuclei."""
    flat = labels.ravel()
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if np.issubdtype(flat.dtype, np.signedinteger) and flat.min() < 0:
        raise ValueError(f"{name} holds negative ids")
    peak = int(flat.max())
    if peak > np.iinfo(np.int64).max:
        raise ValueError(f"{name} ids exceed the int64 range")
    if peak <= max(_DENSE_LIMIT, 4 * flat.size):
        # Ids are small enough for a look-up table: O(pixels), no sort.
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=peak + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(peak + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids.astype(np.int64), counts[ids].astype(np.int64)
    values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    index = inverse.reshape(-1).astype(np.int64)
    if values[0] != 0:  # no background pixel: shift so that index 0 stays unused
        return index + 1, values.astype(np.int64), counts.astype(np.int64)
    return index, values[1:].astype(np.int64), counts[1:].astype(np.int64)


def overlap_table(gt: np.ndarray, pred: np.ndarray) -> OverlapTable:
    """Build the sparse contingency table of two instance label maps.

    Parameters
    ----------
    gt, pred : ndarray of int, shape (H, W)
        Instance label maps, 0 = background.

    Raises
    ------
    ValueError
        If the shapes differ, a map is not 2-D or not integer, or holds negative ids.
    """
    gt, pred = _validated_pair(gt, pred)
    g, gt_ids, gt_area = _dense_index(gt, "gt")
    p, pred_ids, pred_area = _dense_index(pred, "pred")
    n_pred = pred_ids.size
    both = (g > 0) & (p > 0)
    code = (g[both] - 1) * n_pred + (p[both] - 1)
    n_cells = gt_ids.size * n_pred
    if n_cells <= max(_DENSE_LIMIT, 4 * code.size):
        counts = np.bincount(code, minlength=n_cells)
        cells = np.flatnonzero(counts)
        inter = counts[cells]
    else:
        cells, inter = np.unique(code, return_counts=True)
    return OverlapTable(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        gt_area=gt_area,
        pred_area=pred_area,
        pair_gt=(cells // max(n_pred, 1)).astype(np.int64),
        pair_pred=(cells % max(n_pred, 1)).astype(np.int64),
        intersection=inter.astype(np.int64),
    )


# --------------------------------------------------------------------------- helpers


def _ratio(numerator: float, denominator: float, table: OverlapTable) -> float:
    """``numerator / denominator``; 1.0 when both maps are empty, 0.0 for other 0/0."""
    if table.both_empty:
        return 1.0
    if denominator == 0:
        return 0.0
    return float(numerator / denominator)


def _first_per_group(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of one pair per group: the smallest by ``keys`` (first key most significant)."""
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((*keys[::-1], group))
    sorted_group = group[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_group[1:] != sorted_group[:-1]
    return order[first]


def _half_dice_obj(table: OverlapTable, side: str) -> float:
    """Area-weighted Dice of each nucleus of one side with its most overlapping partner."""
    if side == "gt":
        own, own_area, other_area = table.pair_gt, table.gt_area, table.pred_area
        other = table.pair_pred
    else:
        own, own_area, other_area = table.pair_pred, table.pred_area, table.gt_area
        other = table.pair_gt
    inter = table.intersection
    dice = 2.0 * inter / (own_area[own] + other_area[other])
    # Largest intersection first; a tie goes to the higher Dice (value independent of ids).
    best = _first_per_group(own, -inter, -dice)
    return _ratio(float(np.sum(own_area[own[best]] * dice[best])), float(own_area.sum()), table)


def _aji_from_pairs(table: OverlapTable, pairs: np.ndarray) -> float:
    """AJI given the chosen pairs (indices into the pair arrays); each GT at most once."""
    inter = float(table.intersection[pairs].sum())
    union = float(table.union[pairs].sum())
    picked_gt = np.zeros(table.n_gt, dtype=bool)
    picked_gt[table.pair_gt[pairs]] = True
    picked_pred = np.zeros(table.n_pred, dtype=bool)
    picked_pred[table.pair_pred[pairs]] = True
    union += float(table.gt_area[~picked_gt].sum()) + float(table.pred_area[~picked_pred].sum())
    return _ratio(inter, union, table)


def _one_to_one_pairs(table: OverlapTable) -> np.ndarray:
    """Pairs of the one-to-one matching of maximal summed IoU (indices into the pair arrays).

    The overlap graph splits into connected groups that can be matched independently.
    A group with a single GT or a single predicted nucleus is solved by taking its best
    pair (vectorised); only groups with several nuclei on both sides go to the Hungarian
    algorithm, one small dense problem each.
    """
    n_pairs = table.intersection.size
    if n_pairs == 0:
        return np.zeros(0, dtype=np.int64)
    n_gt, n_pred = table.n_gt, table.n_pred
    graph = coo_matrix(
        (np.ones(n_pairs), (table.pair_gt, n_gt + table.pair_pred)),
        shape=(n_gt + n_pred, n_gt + n_pred),
    )
    _, node_group = connected_components(graph, directed=False)
    group = node_group[table.pair_gt]
    gt_per_group = np.bincount(node_group[:n_gt], minlength=node_group.max() + 1)
    pred_per_group = np.bincount(node_group[n_gt:], minlength=node_group.max() + 1)
    star = np.minimum(gt_per_group, pred_per_group)[group] == 1
    iou = table.iou
    star_pairs = np.flatnonzero(star)
    chosen = [
        star_pairs[
            _first_per_group(
                group[star_pairs],
                -iou[star_pairs],
                -table.intersection[star_pairs],
                table.pair_pred[star_pairs],
            )
        ]
    ]
    rest = np.flatnonzero(~star)
    if rest.size:
        rest = rest[np.argsort(group[rest], kind="stable")]
        bounds = np.flatnonzero(np.diff(group[rest])) + 1
        for members in np.split(rest, bounds):  # one loop turn per cluster of nuclei
            rows, row_of = np.unique(table.pair_gt[members], return_inverse=True)
            cols, col_of = np.unique(table.pair_pred[members], return_inverse=True)
            weights = np.zeros((rows.size, cols.size))
            pair_at = np.full((rows.size, cols.size), -1, dtype=np.int64)
            weights[row_of, col_of] = iou[members]
            pair_at[row_of, col_of] = members
            r, c = linear_sum_assignment(weights, maximize=True)
            matched = pair_at[r, c]
            chosen.append(matched[matched >= 0])
    return np.concatenate(chosen)


def _matched_at_half(table: OverlapTable) -> np.ndarray:
    """Pairs with IoU > 0.5, i.e. 2 * intersection > union (exact, on integers)."""
    return np.flatnonzero(2 * table.intersection > table.union)


# --------------------------------------------------------------------------- from a table


def metrics_from_table(table: OverlapTable) -> dict[str, float]:
    """All metrics of :data:`METRIC_KEYS` from one contingency table."""
    matched = _matched_at_half(table)
    tp = int(matched.size)
    fp = table.n_pred - tp
    fn = table.n_gt - tp
    dq_value = _ratio(tp, tp + 0.5 * fp + 0.5 * fn, table)
    sq_value = _ratio(float(table.iou[matched].sum()), tp, table)
    return {
        "dice_obj": 0.5 * (_half_dice_obj(table, "gt") + _half_dice_obj(table, "pred")),
        "aji": _aji_from_pairs(table, _aji_pairs(table)),
        "aji_plus": _aji_from_pairs(table, _one_to_one_pairs(table)),
        "pq": dq_value * sq_value,
        "dq": dq_value,
        "sq": sq_value,
        "dice_pixel": _ratio(
            2.0 * float(table.intersection.sum()),
            float(table.gt_area.sum() + table.pred_area.sum()),
            table,
        ),
        "precision": _ratio(tp, table.n_pred, table),
        "recall": _ratio(tp, table.n_gt, table),
        "f1": _ratio(2 * tp, table.n_gt + table.n_pred, table),
    }


def _aji_pairs(table: OverlapTable) -> np.ndarray:
    # Highest IoU; ties: larger intersection, then smaller predicted id.
    return _first_per_group(table.pair_gt, -table.iou, -table.intersection, table.pair_pred)


# --------------------------------------------------------------------------- public API


def compute_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All metrics of one image, keyed by :data:`METRIC_KEYS` (fractions in [0, 1]).

    Parameters
    ----------
    gt, pred : ndarray of int, shape (H, W)
        Ground-truth and predicted instance label maps, 0 = background.

    Raises
    ------
    ValueError
        If the shapes differ, a map is not 2-D or not integer, or holds negative ids.
    """
    return metrics_from_table(overlap_table(gt, pred))


def dice_obj(gt: np.ndarray, pred: np.ndarray) -> float:
    """Object-level Dice (Sirinukunwattana et al. 2017); see the module notes."""
    table = overlap_table(gt, pred)
    return 0.5 * (_half_dice_obj(table, "gt") + _half_dice_obj(table, "pred"))


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017); see the module notes for ties."""
    table = overlap_table(gt, pred)
    return _aji_from_pairs(table, _aji_pairs(table))


def aji_plus(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ with one-to-one pairs of maximal summed IoU (HoVer-Net's definition)."""
    table = overlap_table(gt, pred)
    return _aji_from_pairs(table, _one_to_one_pairs(table))


def pq(gt: np.ndarray, pred: np.ndarray) -> float:
    """Panoptic quality ``DQ * SQ`` with pairs at IoU > 0.5."""
    return compute_metrics(gt, pred)["pq"]


def dq(gt: np.ndarray, pred: np.ndarray) -> float:
    """Detection quality ``TP / (TP + FP/2 + FN/2)``, pairs at IoU > 0.5."""
    return compute_metrics(gt, pred)["dq"]


def sq(gt: np.ndarray, pred: np.ndarray) -> float:
    """Segmentation quality: mean IoU of the pairs at IoU > 0.5 (0 when there is none)."""
    return compute_metrics(gt, pred)["sq"]


def dice_pixel(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice of the foregrounds (ids > 0), ignoring instances."""
    table = overlap_table(gt, pred)
    return _ratio(
        2.0 * float(table.intersection.sum()),
        float(table.gt_area.sum() + table.pred_area.sum()),
        table,
    )


def precision(gt: np.ndarray, pred: np.ndarray) -> float:
    """Detection precision: predicted nuclei paired with a GT nucleus at IoU > 0.5 / #pred."""
    return compute_metrics(gt, pred)["precision"]


def recall(gt: np.ndarray, pred: np.ndarray) -> float:
    """Detection recall: GT nuclei paired with a predicted nucleus at IoU > 0.5 / #GT."""
    return compute_metrics(gt, pred)["recall"]


def f1(gt: np.ndarray, pred: np.ndarray) -> float:
    """Detection F1 ``2 TP / (#GT + #pred)`` with TP the pairs at IoU > 0.5 (equals DQ)."""
    return compute_metrics(gt, pred)["f1"]


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over images (the paper reports means over test images)."""
    if not per_image:
        raise ValueError("no images to average")
    return {key: float(np.mean([m[key] for m in per_image])) for key in METRIC_KEYS}
