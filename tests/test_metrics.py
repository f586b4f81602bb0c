"""Metrics: hand-computed values, identities, invariances, and a slow reference cross-check."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from instasam import metrics
from instasam.metrics import (
    METRIC_KEYS,
    aji,
    aji_plus,
    compute_metrics,
    dice_obj,
    dice_pixel,
    dq,
    f1,
    mean_metrics,
    overlap_table,
    pq,
    precision,
    recall,
    sq,
)

# --------------------------------------------------------------------------- hand examples


def split_missed_fp_example() -> tuple[np.ndarray, np.ndarray]:
    """GT: A (id 1) and C (id 5) on the left, B (id 2) top right; all 2 x 4 = 8 px.

    Prediction: A split in two halves (ids 3 and 7, 4 px each), C covered by id 2 on
    3 of its 4 columns (6 px), B missed, a false positive (id 9, 6 px) bottom right.
    """
    gt = np.zeros((6, 10), np.int32)
    gt[0:2, 0:4] = 1  # A
    gt[0:2, 6:10] = 2  # B
    gt[4:6, 0:4] = 5  # C
    pred = np.zeros((6, 10), np.int32)
    pred[0:2, 0:2] = 3  # left half of A
    pred[0:2, 2:4] = 7  # right half of A
    pred[4:6, 0:3] = 2  # most of C
    pred[4:6, 7:10] = 9  # false positive
    return gt, pred


def test_hand_computed_split_missed_false_positive():
    gt, pred = split_missed_fp_example()
    m = compute_metrics(gt, pred)
    # Areas: GT A=B=C=8 (sum 24); pred P3=P7=4, P2=6, P9=6 (sum 20).
    # Overlaps: A&P3=4 (IoU 4/8), A&P7=4 (IoU 4/8), C&P2=6 (IoU 6/8).
    #
    # dice_obj, GT half: A -> P3 or P7 (tie, same Dice 2*4/(8+4)=2/3); B -> 0; C -> 2*6/14=6/7.
    #   (8*2/3 + 8*0 + 8*6/7) / 24 = 32/63
    # pred half: P3, P7 -> A (2/3 each); P2 -> C (6/7); P9 -> 0.
    #   (4*2/3 + 4*2/3 + 6*6/7 + 0) / 20 = 11/21 = 33/63
    # dice_obj = (32/63 + 33/63) / 2 = 65/126
    assert m["dice_obj"] == pytest.approx(65 / 126)
    # AJI: A picks P3 (IoU tie 0.5, same intersection, smaller id): I=4, U=8;
    #   B picks nothing: U += 8; C picks P2: I=6, U=8; unpicked P7 (4) and P9 (6): U += 10.
    #   AJI = (4 + 6) / (8 + 8 + 8 + 10) = 10/34
    assert m["aji"] == pytest.approx(10 / 34)
    # AJI+: pairs A-P3 (or A-P7) and C-P2; unpaired B (8), P7 (4), P9 (6): same 10/34.
    assert m["aji_plus"] == pytest.approx(10 / 34)
    # PQ: IoU exactly 0.5 is NOT a match, so only C-P2 (0.75): TP=1, FP=3, FN=2.
    #   DQ = 1 / (1 + 3/2 + 2/2) = 2/7; SQ = 0.75; PQ = 2/7 * 3/4 = 3/14
    assert m["dq"] == pytest.approx(2 / 7)
    assert m["sq"] == pytest.approx(0.75)
    assert m["pq"] == pytest.approx(3 / 14)
    # Detection: precision = 1/4, recall = 1/3, F1 = 2*1 / (3 + 4) = 2/7.
    assert m["precision"] == pytest.approx(1 / 4)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 / 7)
    # Pixel Dice: overlap 4 + 4 + 6 = 14; 2*14 / (24 + 20) = 7/11.
    assert m["dice_pixel"] == pytest.approx(7 / 11)


def merge_example() -> tuple[np.ndarray, np.ndarray]:
    """Two GT nuclei D (id 1) and E (id 2), 4 px each, merged into one prediction M (8 px)."""
    gt = np.array([[1, 1, 1, 1, 2, 2, 2, 2]], np.int32)
    pred = np.array([[4, 4, 4, 4, 4, 4, 4, 4]], np.int32)
    return gt, pred


def test_merge_aji_counts_the_prediction_twice_aji_plus_once():
    gt, pred = merge_example()
    # AJI: D and E both pick M: I = 4 + 4, U = 8 + 8 -> 1/2 (M's extra pixels count twice).
    assert aji(gt, pred) == pytest.approx(0.5)
    # AJI+: M pairs with one of them (IoU 1/2 each): I = 4, U = 8 + 4 (the other) -> 1/3.
    assert aji_plus(gt, pred) == pytest.approx(1 / 3)
    # dice_obj: GT half: D, E each Dice 2*4/12 = 2/3; pred half: M -> D (tie, same Dice) 2/3.
    assert dice_obj(gt, pred) == pytest.approx(2 / 3)
    # No pair reaches IoU > 0.5: TP 0, FP 1, FN 2 -> DQ 0, SQ 0 (no match), PQ 0.
    assert (pq(gt, pred), dq(gt, pred), sq(gt, pred)) == (0.0, 0.0, 0.0)
    assert dice_pixel(gt, pred) == 1.0


def test_aji_is_not_symmetric():
    gt, pred = merge_example()
    # Swapped: M (now GT) picks D (IoU tie 1/2, same intersection, smaller id): I=4, U=8;
    # E never picked: U += 4 -> 4/12.
    assert aji(pred, gt) == pytest.approx(1 / 3)
    assert aji(gt, pred) != pytest.approx(aji(pred, gt))


def test_aji_tie_in_iou_goes_to_larger_intersection():
    # GT nucleus: 6 px. X covers 2 of them (area 2): IoU 2/6 = 1/3.
    # Y covers 3 of them plus 3 outside (area 6): IoU 3/(6+6-3) = 1/3. Tie -> Y (I=3 > 2).
    gt = np.array([[1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    pred = np.array([[1, 1, 2, 2, 2, 0, 2, 2, 2]], np.int32)
    # AJI = 3 / (9 + area of unpicked X = 2) = 3/11 (picking X would give 2/(6 + 6) = 1/6).
    assert aji(gt, pred) == pytest.approx(3 / 11)


def test_dice_obj_tie_in_intersection_goes_to_higher_dice():
    # GT nucleus of 4 px; P1 covers 2 of them (area 2), P2 covers the other 2 plus 4 outside.
    # Both intersect by 2: Dice 2*2/(4+2) = 2/3 (P1) vs 2*2/(4+6) = 2/5 (P2) -> P1.
    gt = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
    pred = np.array([[2, 2, 1, 1, 1, 1, 1, 1]], np.int32)  # ids chosen so P1 has the larger id
    # GT half: 2/3. Pred half: id2 (2 px) -> Dice 2/3; id1 (6 px) -> Dice 2/5.
    #   (2*2/3 + 6*2/5) / 8 = (4/3 + 12/5) / 8 = (56/15) / 8 = 7/15.
    expected = (Fraction(2, 3) + Fraction(7, 15)) / 2
    assert dice_obj(gt, pred) == pytest.approx(float(expected))


def test_iou_just_above_half_is_a_match():
    gt = np.array([[1, 1, 1, 1, 1, 0]], np.int32)
    pred = np.array([[0, 0, 1, 1, 1, 1]], np.int32)  # I = 3, U = 6: exactly 0.5 -> no match
    assert recall(gt, pred) == 0.0
    pred = np.array([[0, 1, 1, 1, 1, 1]], np.int32)  # I = 4, U = 6 -> match
    assert recall(gt, pred) == 1.0
    assert precision(gt, pred) == 1.0
    assert sq(gt, pred) == pytest.approx(4 / 6)


# --------------------------------------------------------------------------- identities


def random_labels(rng: np.random.Generator, shape=(64, 64), n=25, max_id=None) -> np.ndarray:
    """Touching blobs with random, non-consecutive ids (some ids in two pieces)."""
    seeds = np.zeros(shape, np.int32)
    rows = rng.integers(0, shape[0], n)
    cols = rng.integers(0, shape[1], n)
    seeds[rows, cols] = np.arange(1, n + 1)
    dist, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[ri, ci]
    radius = rng.uniform(2, 9, n + 1)
    labels = np.where(dist <= radius[nearest], nearest, 0)
    ids = rng.choice(max_id or 10 * n, size=n + 1, replace=False) + 1
    ids[0] = 0
    ids[rng.integers(1, n + 1)] = ids[rng.integers(1, n + 1)]  # two blobs, one id
    return ids[labels].astype(np.int32)


def perturbed(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """Shifted, partly dropped, partly merged copy of ``gt`` plus new blobs."""
    pred = np.roll(gt, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
    ids = np.unique(pred[pred > 0])
    mapping = {int(i): int(i) for i in ids}
    for i in ids[rng.random(ids.size) < 0.15]:
        mapping[int(i)] = 0
    for i in ids[rng.random(ids.size) < 0.15]:
        mapping[int(i)] = int(rng.choice(ids))
    lut_keys = np.array(list(mapping), dtype=np.int64)
    lut_vals = np.array([mapping[int(k)] for k in lut_keys], dtype=np.int64)
    out = pred.copy()
    fg = pred > 0
    out[fg] = lut_vals[np.searchsorted(lut_keys, pred[fg])]
    extra = random_labels(rng, gt.shape, n=6) * 1000  # new ids, placed where out is empty
    return np.where(out == 0, extra, out).astype(np.int32)


def test_identity_gives_all_ones():
    rng = np.random.default_rng(1)
    gt = random_labels(rng)
    assert compute_metrics(gt, gt) == {k: 1.0 for k in METRIC_KEYS}
    ids = np.unique(gt)
    relabelled = np.zeros(ids.max() + 1, np.int32)
    relabelled[ids[1:]] = rng.permutation(ids.size - 1) + 77
    assert compute_metrics(gt, relabelled[gt]) == {k: 1.0 for k in METRIC_KEYS}


def test_disjoint_maps_give_zeros():
    gt = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    gt[:4, :4] = 3
    gt[6:, :4] = 8
    pred[:4, 6:] = 1
    assert compute_metrics(gt, pred) == {k: 0.0 for k in METRIC_KEYS}


def test_invariant_to_relabelling_including_huge_ids():
    rng = np.random.default_rng(2)
    gt = random_labels(rng, n=30)
    pred = perturbed(rng, gt)
    reference = compute_metrics(gt, pred)

    def relabel(labels: np.ndarray, offset: int) -> np.ndarray:
        ids = np.unique(labels[labels > 0])
        new = rng.permutation(ids.size).astype(np.int64) * 7919 + offset
        out = np.zeros(labels.shape, np.int64)
        out[labels > 0] = new[np.searchsorted(ids, labels[labels > 0])]
        return out

    for offset in (1, 2_000_000_000):  # the second takes the sort path (ids beyond any LUT)
        got = compute_metrics(relabel(gt, offset), relabel(pred, offset + 5))
        for key in METRIC_KEYS:
            assert got[key] == pytest.approx(reference[key], abs=1e-12), key


def test_symmetries():
    rng = np.random.default_rng(3)
    for _ in range(5):
        gt = random_labels(rng, n=30)
        pred = perturbed(rng, gt)
        a, b = compute_metrics(gt, pred), compute_metrics(pred, gt)
        for key in ("dice_obj", "aji_plus", "pq", "dq", "sq", "dice_pixel", "f1"):
            assert a[key] == pytest.approx(b[key], abs=1e-12), key
        assert a["precision"] == pytest.approx(b["recall"])
        assert a["recall"] == pytest.approx(b["precision"])
        assert a["f1"] == pytest.approx(a["dq"])
        assert a["pq"] == pytest.approx(a["dq"] * a["sq"])
        assert all(0.0 <= v <= 1.0 for v in a.values())


# --------------------------------------------------------------------------- edge cases


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((8, 8), np.int32)
    full = np.zeros((8, 8), np.int32)
    full[2:5, 2:5] = 4
    assert compute_metrics(empty, empty) == {k: 1.0 for k in METRIC_KEYS}
    assert compute_metrics(empty, full) == {k: 0.0 for k in METRIC_KEYS}
    assert compute_metrics(full, empty) == {k: 0.0 for k in METRIC_KEYS}
    assert compute_metrics(np.zeros((0, 0), np.int32), np.zeros((0, 0), np.int32))["aji"] == 1.0


def test_no_background_pixel():
    gt = np.array([[1, 1, 2, 2]], np.int32)
    pred = np.array([[5, 5, 5, 6]], np.int32)
    # pairs 1-5 (I 2, U 3), 2-5 (I 1, U 4), 2-6 (I 1, U 2): AJI 1->5, 2->6 (IoU 1/2 > 1/4)
    # = (2 + 1) / (3 + 2) = 3/5
    assert aji(gt, pred) == pytest.approx(3 / 5)
    assert dice_pixel(gt, pred) == 1.0


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), "shape mismatch"),
        (np.zeros((4, 4, 1), np.int32), np.zeros((4, 4, 1), np.int32), "2-D"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32), "integer"),
        (np.full((4, 4), -1, np.int32), np.zeros((4, 4), np.int32), "negative"),
    ],
)
def test_bad_inputs_raise_value_error(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(gt, pred)


def test_public_functions_match_compute_metrics():
    rng = np.random.default_rng(4)
    gt = random_labels(rng)
    pred = perturbed(rng, gt)
    m = compute_metrics(gt, pred)
    for key in METRIC_KEYS:
        assert getattr(metrics, key)(gt, pred) == pytest.approx(m[key]), key
    assert f1(gt, pred) == pytest.approx(m["f1"])


def test_mean_metrics():
    rows = [dict.fromkeys(METRIC_KEYS, 0.2), dict.fromkeys(METRIC_KEYS, 0.6)]
    assert mean_metrics(rows) == pytest.approx(dict.fromkeys(METRIC_KEYS, 0.4))
    with pytest.raises(ValueError):
        mean_metrics([])


def test_overlap_table_contents():
    gt, pred = split_missed_fp_example()
    table = overlap_table(gt, pred)
    assert table.gt_ids.tolist() == [1, 2, 5]
    assert table.pred_ids.tolist() == [2, 3, 7, 9]
    assert table.gt_area.tolist() == [8, 8, 8]
    assert table.pred_area.tolist() == [6, 4, 4, 6]
    pairs = list(
        zip(
            table.gt_ids[table.pair_gt].tolist(),
            table.pred_ids[table.pair_pred].tolist(),
            table.intersection.tolist(),
            strict=True,
        )
    )
    assert pairs == [(1, 3, 4), (1, 7, 4), (5, 2, 6)]


# --------------------------------------------------------------------------- slow reference


def slow_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Straightforward loops over nuclei and pairs, boolean masks, same tie rules."""
    gt_ids = [int(i) for i in np.unique(gt) if i]
    pred_ids = [int(i) for i in np.unique(pred) if i]
    gmask = {i: gt == i for i in gt_ids}
    pmask = {j: pred == j for j in pred_ids}
    inter = np.zeros((len(gt_ids), len(pred_ids)))
    union = np.zeros((len(gt_ids), len(pred_ids)))
    for a, i in enumerate(gt_ids):
        for b, j in enumerate(pred_ids):
            inter[a, b] = np.sum(gmask[i] & pmask[j])
            union[a, b] = np.sum(gmask[i] | pmask[j])
    garea = np.array([gmask[i].sum() for i in gt_ids], float)
    parea = np.array([pmask[j].sum() for j in pred_ids], float)

    def half(inter_rows, own_area, other_area):
        total = 0.0
        for a in range(len(own_area)):
            best_dice, best_inter = 0.0, 0.0
            for b in range(len(other_area)):
                i = inter_rows[a, b]
                d = 2 * i / (own_area[a] + other_area[b])
                if i > best_inter or (i == best_inter and i > 0 and d > best_dice):
                    best_inter, best_dice = i, d
            total += own_area[a] * best_dice
        return total / own_area.sum()

    dice = 0.5 * (half(inter, garea, parea) + half(inter.T, parea, garea))

    # AJI, Kumar: best IoU, then larger intersection, then smaller pred id.
    inter_sum, union_sum, used = 0.0, 0.0, set()
    for a in range(len(gt_ids)):
        best = None
        for b in range(len(pred_ids)):
            if inter[a, b] == 0:
                continue
            key = (inter[a, b] / union[a, b], inter[a, b], -b)
            if best is None or key > best[0]:
                best = (key, b)
        if best is None:
            union_sum += garea[a]
        else:
            b = best[1]
            inter_sum += inter[a, b]
            union_sum += union[a, b]
            used.add(b)
    union_sum += sum(parea[b] for b in range(len(pred_ids)) if b not in used)
    aji_value = inter_sum / union_sum

    # AJI+: Hungarian on the full IoU matrix (HoVer-Net style), pairs with IoU > 0 kept.
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-iou) if iou.size else ([], [])
    keep = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] > 0]
    i_sum = sum(inter[r, c] for r, c in keep)
    u_sum = sum(union[r, c] for r, c in keep)
    u_sum += sum(garea[r] for r in range(len(gt_ids)) if r not in {k[0] for k in keep})
    u_sum += sum(parea[c] for c in range(len(pred_ids)) if c not in {k[1] for k in keep})
    aji_plus_value = i_sum / u_sum

    tp_ious = [
        iou[a, b] for a in range(len(gt_ids)) for b in range(len(pred_ids)) if iou[a, b] > 0.5
    ]
    tp = len(tp_ious)
    dq_value = tp / (tp + 0.5 * (len(pred_ids) - tp) + 0.5 * (len(gt_ids) - tp))
    sq_value = sum(tp_ious) / tp if tp else 0.0
    return {
        "dice_obj": dice,
        "aji": aji_value,
        "aji_plus": aji_plus_value,
        "pq": dq_value * sq_value,
        "dq": dq_value,
        "sq": sq_value,
        "dice_pixel": 2 * np.sum((gt > 0) & (pred > 0)) / ((gt > 0).sum() + (pred > 0).sum()),
        "precision": tp / len(pred_ids),
        "recall": tp / len(gt_ids),
        "f1": 2 * tp / (len(gt_ids) + len(pred_ids)),
    }


@pytest.mark.parametrize("seed", range(12))
def test_matches_slow_reference_on_random_maps(seed):
    rng = np.random.default_rng(100 + seed)
    gt = random_labels(rng, shape=(48, 56), n=int(rng.integers(5, 30)))
    # Half the cases compare against a perturbed copy, half against an unrelated map.
    pred = perturbed(rng, gt) if seed % 2 == 0 else random_labels(rng, (48, 56), n=20)
    fast, slow = compute_metrics(gt, pred), slow_metrics(gt, pred)
    for key in METRIC_KEYS:
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key


def test_hungarian_clusters_match_reference():
    # A chain of nuclei where every prediction straddles two GT nuclei: one big cluster,
    # so the Hungarian path (not the one-GT-or-one-prediction shortcut) is exercised.
    gt = np.repeat(np.arange(1, 9), 5)[None, :].repeat(3, axis=0).astype(np.int32)
    pred = np.roll(gt, 2, axis=1)
    pred[:, :2] = 0
    pred[1, :] = np.roll(pred[1, :], 1)
    assert aji_plus(gt, pred) == pytest.approx(slow_metrics(gt, pred)["aji_plus"], abs=1e-12)
