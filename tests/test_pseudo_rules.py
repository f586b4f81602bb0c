"""Eq. 2-4 on hand-made probabilities, and the negative prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instasam import IGNORE
from instasam.pseudo_labels import negative_prompts, select_pseudo_labels
from instasam.pseudo_labels.rules import (
    labels_from_probabilities,
    labels_from_probabilities_np,
    rule_stats,
    select_pseudo_labels_np,
)


def _probs(*maps: list[list[float]]) -> torch.Tensor:
    return torch.tensor(maps, dtype=torch.float32)


def _literal_rule(p: np.ndarray, delta: float = 0.5, epsilon: float = 0.3) -> np.ndarray:
    """Eq. 2-4 written as plainly as possible, for comparison."""
    p = p.astype(np.float64)
    f = (p > delta).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
    stacked = np.concatenate([np.full((1, *p.shape[1:]), delta), p])
    labels = stacked.argmax(0)
    labels[(h >= epsilon) | (f >= 2)] = IGNORE
    return labels


def test_two_confident_separate_masks_give_their_labels_and_background_elsewhere():
    p = torch.zeros((2, 6, 8))
    p[0, 1:3, 1:4] = 0.99
    p[1, 3:5, 5:7] = 0.98
    # Entropy inside mask 1: -0.99 ln 0.99 = 0.00995; inside mask 2: -0.98 ln 0.98 = 0.0198;
    # 0 where all p are 0. All < 0.3, and F <= 1 everywhere.
    labels = labels_from_probabilities(p)
    expected = torch.zeros((6, 8), dtype=torch.long)
    expected[1:3, 1:4] = 1
    expected[3:5, 5:7] = 2
    assert torch.equal(labels, expected)


def test_pixel_claimed_by_two_masks_is_ignored():
    p = _probs([[0.99, 0.99]], [[0.0, 0.99]])
    # Second pixel: F = 2 (both > 0.5) although H = 2 * 0.00995 = 0.0199 < 0.3.
    assert labels_from_probabilities(p).tolist() == [[1, IGNORE]]


def test_high_entropy_pixel_is_ignored():
    # Three masks at 0.4: F = 0 (none > 0.5) but H = -3 * 0.4 ln 0.4 = 3 * 0.3665 = 1.0995.
    p = torch.full((3, 1, 1), 0.4)
    assert math.isclose(-3 * 0.4 * math.log(0.4), 1.0995, abs_tol=1e-4)
    assert labels_from_probabilities(p).item() == IGNORE
    # One mask at 0.45 alone: H = -0.45 ln 0.45 = 0.3593 >= 0.3 -> IGNORE as well.
    assert labels_from_probabilities(torch.full((1, 1, 1), 0.45)).item() == IGNORE


def test_single_mask_just_above_delta_needs_low_entropy_too():
    # p = 0.6 claims the pixel (F = 1) but H = -0.6 ln 0.6 = 0.3065 >= 0.3 -> IGNORE.
    assert -0.6 * math.log(0.6) >= 0.3
    assert labels_from_probabilities(torch.full((1, 1, 1), 0.6)).item() == IGNORE
    # p = 0.7: H = -0.7 ln 0.7 = 0.2497 < 0.3 -> labelled.
    assert labels_from_probabilities(torch.full((1, 1, 1), 0.7)).item() == 1


def test_delta_is_the_background_channel_of_the_argmax():
    # One mask at 0.65: H = -0.65 ln 0.65 = 0.2800 < 0.3, so the argmax decides.
    p = torch.full((1, 1, 1), 0.65)
    assert math.isclose(-0.65 * math.log(0.65), 0.2800, abs_tol=1e-4)
    # delta = 0.7: argmax over [0.7, 0.65] is index 0 -> background (F = 0).
    assert labels_from_probabilities(p, delta=0.7).item() == 0
    # delta = 0.6: argmax over [0.6, 0.65] is index 1 -> nucleus 1.
    assert labels_from_probabilities(p, delta=0.6).item() == 1
    # A tie with delta goes to the background: p = delta is not a claim (F counts p > delta).
    assert labels_from_probabilities(torch.full((1, 1, 1), 0.75), delta=0.75).item() == 0
    # Low probability, low entropy: -0.03 ln 0.03 = 0.105 -> background.
    assert labels_from_probabilities(torch.full((1, 1, 1), 0.03)).item() == 0


def test_argmax_picks_the_most_confident_mask():
    # Mask 2 at 0.97, mask 1 at 0.02: F = 1, H = 0.0782 + 0.0295 = 0.108 < 0.3 -> label 2.
    assert labels_from_probabilities(_probs([[0.02]], [[0.97]])).item() == 2


def test_epsilon_is_honoured():
    p = torch.full((1, 1, 1), 0.6)  # H = 0.3065
    assert labels_from_probabilities(p, epsilon=0.35).item() == 1
    assert labels_from_probabilities(p, epsilon=0.30).item() == IGNORE


def test_whole_instance_rejection_drops_the_overlapping_instances_only():
    p = _probs(
        [[0.99, 0.99, 0.0, 0.0, 0.0, 0.0]],
        [[0.0, 0.99, 0.99, 0.99, 0.0, 0.0]],  # overlaps mask 1 at pixel 1
        [[0.0, 0.0, 0.0, 0.0, 0.0, 0.99]],
    )
    labels, stats = select_pseudo_labels(p)
    assert labels.tolist() == [[1, IGNORE, 2, 2, 0, 3]]
    assert (stats.kept, stats.dropped, stats.rejected_overlapping) == (3, 0, 0)
    assert math.isclose(stats.overlap_share, 1 / 6)

    whole, stats = select_pseudo_labels(p, reject_overlapping_instances=True)
    # Masks 1 and 2 share pixel 1: both are dropped, every pixel they claim is IGNORE;
    # mask 3 and the background are untouched.
    assert whole.tolist() == [[IGNORE, IGNORE, IGNORE, IGNORE, 0, 3]]
    assert (stats.kept, stats.dropped, stats.rejected_overlapping) == (1, 2, 2)
    assert math.isclose(stats.ignored_share, 4 / 6)


def test_rejection_without_overlap_changes_nothing():
    p = _probs([[0.99, 0.0, 0.0]], [[0.0, 0.0, 0.99]])
    plain = labels_from_probabilities(p)
    assert torch.equal(labels_from_probabilities(p, reject_overlapping_instances=True), plain)


def test_no_prompts_is_all_background_and_one_prompt_works():
    labels, stats = select_pseudo_labels(torch.zeros((0, 2, 3)))
    assert labels.tolist() == [[0, 0, 0]] * 2
    assert (stats.n_prompts, stats.kept, stats.dropped, stats.ignored_share) == (0, 0, 0, 0.0)
    labels, stats = select_pseudo_labels(torch.tensor([[[0.99, 0.01, 0.5]]]))
    # Third pixel: p = 0.5 = delta is background in the argmax but H = 0.347 -> IGNORE.
    assert labels.tolist() == [[1, 0, IGNORE]]
    assert (stats.kept, stats.dropped) == (1, 0)


def test_zero_probabilities_do_not_produce_nan_and_nan_is_ignored():
    p = torch.zeros((4, 8, 8))
    p[0, 2:4, 2:4] = 1.0
    labels = labels_from_probabilities(p)
    assert int((labels == 1).sum()) == 4 and int((labels == IGNORE).sum()) == 0
    p[1, 0, 0] = float("nan")
    assert labels_from_probabilities(p)[0, 0].item() == IGNORE


def test_matches_the_literal_formula_for_any_slicing_and_dtype():
    rng = np.random.default_rng(0)
    # Seven blob masks (logit falling 2 per pixel from the rim, plus noise) that overlap
    # here and there and have soft rims.
    yy, xx = np.mgrid[:20, :24]
    logits = np.stack(
        [
            2.0 * (rng.uniform(3, 6) - np.hypot(yy - rng.uniform(0, 20), xx - rng.uniform(0, 24)))
            for _ in range(7)
        ]
    )
    logits = (logits + rng.normal(0, 1, logits.shape)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    expected = _literal_rule(p)
    assert (expected > 0).any() and (expected == 0).any() and (expected == IGNORE).any()
    for chunk in (None, 1, 3, 7):
        labels = labels_from_probabilities(torch.from_numpy(p), chunk=chunk)
        assert np.array_equal(labels.numpy(), expected), chunk
    from_logits = labels_from_probabilities(torch.from_numpy(logits), logits=True, chunk=2)
    assert np.array_equal(from_logits.numpy(), expected)
    doubled = labels_from_probabilities(torch.from_numpy(p.astype(np.float64)))
    assert np.array_equal(doubled.numpy(), expected)
    # Whole-instance rejection with slices equals without.
    whole = labels_from_probabilities(torch.from_numpy(p), reject_overlapping_instances=True)
    sliced = labels_from_probabilities(
        torch.from_numpy(p), reject_overlapping_instances=True, chunk=2
    )
    assert torch.equal(whole, sliced)
    _, stats = select_pseudo_labels(torch.from_numpy(p), reject_overlapping_instances=True)
    assert 0 < stats.rejected_overlapping < 7 and stats.kept > 0
    # Every instance still present after rejection never touches an F >= 2 pixel.
    claims = p > 0.5
    shared = claims.sum(0) >= 2
    for k in np.unique(whole.numpy()[whole.numpy() > 0]):
        assert not (claims[k - 1] & shared).any()


def test_numpy_wrappers_and_stats_from_a_label_map():
    p = np.zeros((2, 3, 3), dtype=np.float32)
    p[0, 0, 0] = 0.99
    p[1, 2, 2] = 0.6  # H = 0.3065 -> IGNORE, so mask 2 keeps no pixel
    labels = labels_from_probabilities_np(p)
    assert labels.dtype == np.int32
    assert labels.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, IGNORE]]
    same, stats = select_pseudo_labels_np(p)
    assert np.array_equal(same, labels)
    assert (stats.kept, stats.dropped) == (1, 1)
    assert math.isclose(stats.entropy_share, 1 / 9) and math.isclose(stats.ignored_share, 1 / 9)
    from_map = rule_stats(labels, k=2)
    assert (from_map.kept, from_map.dropped) == (1, 1)
    assert math.isclose(from_map.ignored_share, 1 / 9)


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        labels_from_probabilities(torch.zeros((4, 4)))


# --------------------------------------------------------------------------- negatives


def test_negative_prompts_are_reproducible_distinct_and_exclude_the_point():
    points = np.random.default_rng(1).uniform(0, 100, size=(50, 2))
    first = negative_prompts(points, seed=3)
    assert first.shape == (50, 4) and first.dtype == np.int64
    assert np.array_equal(first, negative_prompts(points, seed=3))
    assert not np.array_equal(first, negative_prompts(points, seed=4))
    assert ((first >= 0) & (first < 50)).all()
    assert not (first == np.arange(50)[:, None]).any()
    assert all(len(set(row)) == 4 for row in first.tolist())
    assert negative_prompts(points, n_negatives=2, seed=0).shape == (50, 2)


def test_negative_prompts_with_fewer_than_five_points():
    assert negative_prompts(np.zeros((0, 2))).shape == (0, 0)
    assert negative_prompts(np.zeros((1, 2))).shape == (1, 0)
    three = negative_prompts(np.zeros((3, 2)), seed=0)
    assert three.shape == (3, 2)
    for k, row in enumerate(three.tolist()):
        assert sorted(row) == sorted({0, 1, 2} - {k})  # all the others, fewer than 4
    five = negative_prompts(np.zeros((5, 2)), seed=0)
    for k, row in enumerate(five.tolist()):
        assert sorted(row) == sorted({0, 1, 2, 3, 4} - {k})


def test_negative_prompts_are_uniform_over_the_other_points():
    # K = 6, 4 negatives: each other point is in a row's set with probability 4/5 and
    # first in the row with probability 1/5.
    draws = np.stack([negative_prompts(np.zeros((6, 2)), seed=s)[0] for s in range(2000)])
    in_set = np.array([(draws == j).any(1).mean() for j in range(1, 6)])
    first = np.array([(draws[:, 0] == j).mean() for j in range(1, 6)])
    assert np.allclose(in_set, 0.8, atol=0.04), in_set
    assert np.allclose(first, 0.2, atol=0.04), first


def test_ablations_switch_off_one_rule_each():
    from instasam.pseudo_labels.rules import labels_from_probabilities

    p = torch.zeros((2, 1, 3))
    p[0, 0] = torch.tensor([0.9, 0.8, 0.55])  # pixel 1: both masks claim it
    p[1, 0] = torch.tensor([0.0, 0.7, 0.0])  # pixel 2: mask 1 alone, unsure (H > 0.3)
    full = labels_from_probabilities(p)
    assert full[0].tolist() == [1, IGNORE, IGNORE]
    no_f = labels_from_probabilities(p, overlap_rule=False, epsilon=float("inf"))
    assert no_f[0].tolist() == [1, 1, 1]  # 0.8 beats 0.7; the unsure pixel is kept
    no_f_but_h = labels_from_probabilities(p, overlap_rule=False)
    assert no_f_but_h[0].tolist() == [1, IGNORE, IGNORE]  # H is still too high on both
    no_h = labels_from_probabilities(p, epsilon=float("inf"))
    assert no_h[0].tolist() == [1, IGNORE, 1]
