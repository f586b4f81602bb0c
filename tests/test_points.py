"""Points from instance maps and the paper's shifted points."""

from __future__ import annotations

import numpy as np
import pytest

from instasam.points import SHIFT_SETTINGS, parse_shift, points_from_instances, shift_points


def test_centroid_of_a_rectangle_is_its_centre():
    labels = np.zeros((20, 30), np.int32)
    labels[4:9, 10:17] = 3  # rows 4..8 -> y 6; cols 10..16 -> x 13
    points, ids = points_from_instances(labels)
    assert ids.tolist() == [3]
    assert np.allclose(points, [[13.0, 6.0]])


def test_centroid_outside_a_crescent_is_moved_inside():
    yy, xx = np.mgrid[:41, :41]
    outer = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2
    inner = (yy - 20) ** 2 + (xx - 26) ** 2 <= 13**2
    labels = (outer & ~inner).astype(np.int32)
    assert labels[20, 20] == 0  # the plain centroid region is empty
    points, _ = points_from_instances(labels)
    x, y = np.round(points[0]).astype(int)
    assert labels[y, x] == 1


def test_points_follow_id_order_and_skip_missing_ids():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:2] = 5
    labels[7:9, 7:9] = 2
    points, ids = points_from_instances(labels)
    assert ids.tolist() == [2, 5]
    assert np.allclose(points, [[7.5, 7.5], [0.5, 0.5]])
    empty_points, empty_ids = points_from_instances(np.zeros((4, 4), np.int32))
    assert empty_points.shape == (0, 2) and empty_ids.size == 0


@pytest.mark.parametrize("setting", sorted(SHIFT_SETTINGS))
def test_shift_distances_are_in_range_and_reproducible(setting):
    low, high = SHIFT_SETTINGS[setting]
    rng = np.random.default_rng(1)
    points = rng.uniform(20, 180, size=(500, 2))
    moved = shift_points(points, (200, 200), low, high, seed=7)
    distance = np.hypot(*(moved - points).T)
    assert distance.min() >= low and distance.max() < high
    assert np.array_equal(moved, shift_points(points, (200, 200), low, high, seed=7))
    assert not np.array_equal(moved, shift_points(points, (200, 200), low, high, seed=8))
    # directions cover the circle, not one quadrant
    angles = np.arctan2(*(moved - points).T[::-1])
    assert np.histogram(angles, bins=4, range=(-np.pi, np.pi))[0].min() > 80


def test_shifted_points_stay_inside_the_image():
    points = np.array([[0.0, 0.0], [99.0, 49.0], [50.0, 0.0]])
    moved = shift_points(points, (50, 100), 6, 8, seed=0)
    assert (moved[:, 0] >= 0).all() and (moved[:, 0] <= 99).all()
    assert (moved[:, 1] >= 0).all() and (moved[:, 1] <= 49).all()


def test_parse_shift():
    assert parse_shift("4-6") == (4.0, 6.0)
    assert parse_shift(" 2.5 - 3 ") == (2.5, 3.0)
    for bad in ("6-4", "4", "a-b", "4-4"):
        with pytest.raises(ValueError):
            parse_shift(bad)
