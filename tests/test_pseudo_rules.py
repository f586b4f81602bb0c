"""Eq. 2-4 on hand-made probabilities."""

from __future__ import annotations

import math

import numpy as np
import torch

from instasam import IGNORE
from instasam.pseudo_labels.rules import labels_from_probabilities, rule_stats


def _probs(*maps: list[list[float]]) -> torch.Tensor:
    return torch.tensor(maps, dtype=torch.float32)


def test_two_confident_separate_masks_give_two_labels_and_background():
    p = _probs(
        [[0.99, 0.99, 0.0, 0.0]],
        [[0.0, 0.0, 0.0, 0.99]],
    )
    # Pixel entropies: -0.99 ln 0.99 = 0.00995 < 0.3; zero where all p are 0.
    labels = labels_from_probabilities(p)
    assert labels.tolist() == [[1, 1, 0, 2]]


def test_pixel_claimed_by_two_masks_is_ignored():
    p = _probs([[0.9, 0.9]], [[0.0, 0.9]])
    # F = 2 at the second pixel (both > 0.5).
    assert labels_from_probabilities(p).tolist() == [[1, IGNORE]]


def test_high_entropy_pixel_is_ignored():
    # Three masks at 0.4: F = 0 (none > 0.5) but H = -3 * 0.4 ln 0.4 = 1.0995 >= 0.3.
    p = torch.full((3, 1, 1), 0.4)
    assert -3 * 0.4 * math.log(0.4) > 0.3
    assert labels_from_probabilities(p).item() == IGNORE


def test_low_entropy_below_delta_is_background():
    # One mask at 0.03: H = -0.03 ln 0.03 = 0.105 < 0.3 and p < delta -> background.
    p = torch.full((1, 1, 1), 0.03)
    assert labels_from_probabilities(p).item() == 0


def test_single_mask_above_delta_but_entropy_too_high_is_ignored():
    # p = 0.6: claims the pixel (F = 1) but H = -0.6 ln 0.6 = 0.306 >= 0.3.
    p = torch.full((1, 1, 1), 0.6)
    assert -0.6 * math.log(0.6) >= 0.3
    assert labels_from_probabilities(p).item() == IGNORE
    # p = 0.7: H = 0.250 < 0.3 -> labelled.
    assert labels_from_probabilities(torch.full((1, 1, 1), 0.7)).item() == 1


def test_argmax_picks_the_most_confident_mask():
    # Mask 2 at 0.97, mask 1 at 0.02: F = 1, H = 0.0295 + 0.0782 = 0.108 < 0.3 -> label 2.
    p = _probs([[0.02]], [[0.97]])
    assert labels_from_probabilities(p).item() == 2


def test_epsilon_and_delta_are_honoured():
    p = torch.full((1, 1, 1), 0.6)
    assert labels_from_probabilities(p, epsilon=0.35).item() == 1
    assert labels_from_probabilities(p, delta=0.65, epsilon=0.35).item() == 0


def test_whole_instance_rejection_drops_overlapping_instances_only():
    p = _probs(
        [[0.99, 0.99, 0.0, 0.0, 0.0]],
        [[0.0, 0.99, 0.99, 0.0, 0.0]],  # overlaps mask 1 at pixel 1
        [[0.0, 0.0, 0.0, 0.0, 0.99]],
    )
    per_pixel = labels_from_probabilities(p)
    assert per_pixel.tolist() == [[1, IGNORE, 2, 0, 3]]
    whole = labels_from_probabilities(p, reject_overlapping_instances=True)
    # Masks 1 and 2 are dropped: all their pixels become IGNORE; mask 3 is kept.
    assert whole.tolist() == [[IGNORE, IGNORE, IGNORE, 0, 3]]
    stats = rule_stats(whole, k=3)
    assert (stats.kept, stats.dropped) == (1, 2)
    assert math.isclose(stats.ignored_share, 3 / 5)


def test_no_prompts_and_one_prompt():
    assert labels_from_probabilities(torch.zeros((0, 2, 3))).tolist() == [[0, 0, 0]] * 2
    p = torch.tensor([[[0.99, 0.01]]])
    assert labels_from_probabilities(p).tolist() == [[1, 0]]


def test_zero_probabilities_do_not_produce_nan():
    p = torch.zeros((4, 8, 8))
    p[0, 2:4, 2:4] = 1.0
    labels = labels_from_probabilities(p)
    assert int((labels == 1).sum()) == 4 and int((labels == IGNORE).sum()) == 0
    assert np.array_equal(np.unique(labels.numpy()), [0, 1])
