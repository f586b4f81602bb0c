"""Points from instance maps (centres snapped inside) and the paper's shifted points."""

from __future__ import annotations

import numpy as np
import pytest

from instasam.io.labels import read_label_map
from instasam.points import SHIFT_SETTINGS, parse_shift, points_from_instances, shift_points


def test_centroid_of_a_rectangle_is_its_centre_in_pixel_centre_coordinates():
    labels = np.zeros((20, 30), np.int32)
    labels[4:9, 10:17] = 3  # rows 4..8 -> y 6; cols 10..16 -> x 13
    labels[0, 0] = 8  # a one-pixel nucleus sits on its pixel's centre
    points, ids = points_from_instances(labels)
    assert ids.tolist() == [3, 8] and ids.dtype == np.int64
    assert points.dtype == np.float64 and np.allclose(points, [[13.0, 6.0], [0.0, 0.0]])


def test_centroid_outside_a_crescent_moves_to_the_nearest_nucleus_pixel():
    yy, xx = np.mgrid[:41, :41]
    outer = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2
    inner = (yy - 20) ** 2 + (xx - 26) ** 2 <= 13**2
    labels = (outer & ~inner).astype(np.int32) * 2
    rows, cols = np.nonzero(labels)
    centroid = np.array([cols.mean(), rows.mean()])
    assert labels[round(centroid[1]), round(centroid[0])] == 0  # the plain centroid misses
    points, _ = points_from_instances(labels)
    x, y = points[0]
    assert x == int(x) and y == int(y) and labels[int(y), int(x)] == 2
    nearest = np.hypot(cols - centroid[0], rows - centroid[1]).min()
    assert np.hypot(x - centroid[0], y - centroid[1]) == pytest.approx(nearest)


def test_ids_in_increasing_order_gaps_and_empty_maps():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:2] = 5
    labels[7:9, 7:9] = 2
    points, ids = points_from_instances(labels)
    assert ids.tolist() == [2, 5]
    assert np.allclose(points, [[7.5, 7.5], [0.5, 0.5]])
    empty_points, empty_ids = points_from_instances(np.zeros((4, 4), np.int32))
    assert empty_points.shape == (0, 2) and empty_ids.shape == (0,)


def test_huge_sparse_ids_and_a_map_without_background():
    labels = np.zeros((10, 10), np.int64)
    labels[0:2, 0:2] = 2_000_000_000
    labels[7:9, 7:9] = 7
    points, ids = points_from_instances(labels)
    assert ids.tolist() == [7, 2_000_000_000]
    assert np.allclose(points, [[7.5, 7.5], [0.5, 0.5]])
    full = np.ones((4, 6), np.int32)
    full[:, 3:] = 9
    assert np.allclose(points_from_instances(full)[0], [[1.0, 1.5], [4.0, 1.5]])


def test_every_point_of_a_thousand_nuclei_is_inside_its_nucleus():
    rng = np.random.default_rng(0)
    labels = np.zeros((1000, 1000), np.int32)
    yy, xx = np.mgrid[:13, :13]
    disk = (yy - 6) ** 2 + (xx - 6) ** 2 <= 36
    for k, (r, c) in enumerate(np.mgrid[0:1000:31, 0:1000:31].reshape(2, -1).T[:1000], 1):
        patch = labels[r : r + 13, c : c + 13]
        patch[disk[: patch.shape[0], : patch.shape[1]]] = k * 3  # ids with gaps
    labels[rng.random(labels.shape) < 0.001] = 0  # holes
    points, ids = points_from_instances(labels)
    assert len(ids) == 1000
    rows, cols = np.round(points[:, 1]).astype(int), np.round(points[:, 0]).astype(int)
    assert (labels[rows, cols] == ids).all()


@pytest.mark.realdata
def test_real_tile_points_are_inside_their_nuclei(monuseg_root):
    labels = read_label_map(
        monuseg_root / "train" / "labels_instance" / "TCGA-18-5592-01Z-00-DX1.png"
    )
    points, ids = points_from_instances(labels)
    assert len(ids) == len(np.unique(labels)) - 1 > 400
    rows, cols = np.round(points[:, 1]).astype(int), np.round(points[:, 0]).astype(int)
    assert (labels[rows, cols] == ids).all()


@pytest.mark.parametrize("setting", sorted(SHIFT_SETTINGS))
def test_shift_distances_in_range_reproducible_and_seed_dependent(setting):
    low, high = SHIFT_SETTINGS[setting]
    points = np.random.default_rng(1).uniform(20, 180, size=(2000, 2))  # away from borders
    moved = shift_points(points, (200, 200), low, high, seed=7)
    distance = np.hypot(*(moved - points).T)
    assert distance.min() >= low - 1e-9 and distance.max() < high
    # uniform in [low, high): each quarter of the range gets about a quarter of the points
    quarters = np.histogram(distance, bins=4, range=(low, high))[0]
    assert quarters.min() > 400
    # uniform directions: each quadrant gets about a quarter
    angles = np.arctan2(*(moved - points).T[::-1])
    assert np.histogram(angles, bins=4, range=(-np.pi, np.pi))[0].min() > 400
    assert np.array_equal(moved, shift_points(points, (200, 200), low, high, seed=7))
    other = shift_points(points, (200, 200), low, high, seed=8)
    assert not np.allclose(moved, other)


def test_shifted_points_stay_inside_the_image_clipping_shortens_the_shift():
    points = np.array([[0.0, 0.0], [99.0, 49.0], [50.0, 0.0], [0.0, 25.0]] * 50)
    moved = shift_points(points, (50, 100), 6, 8, seed=0)
    assert (moved[:, 0] >= 0).all() and (moved[:, 0] <= 99).all()
    assert (moved[:, 1] >= 0).all() and (moved[:, 1] <= 49).all()
    assert np.hypot(*(moved - points).T).min() < 6  # some were clipped at the border


def test_shift_points_refuses_bad_ranges():
    for low, high in ((4, 4), (6, 4), (-1, 2)):
        with pytest.raises(ValueError, match="low < high"):
            shift_points(np.zeros((1, 2)), (10, 10), low, high)


def test_parse_shift():
    for name, value in SHIFT_SETTINGS.items():
        assert parse_shift(name) == value
    assert parse_shift(" 2.5 - 3 ") == (2.5, 3.0)
    assert parse_shift("0-2") == (0.0, 2.0)
    assert parse_shift("4\u20136") == (4.0, 6.0)  # an en dash, as papers print it
    for bad in ("6-4", "4", "a-b", "4-4", "-2-4", "4-6-8", ""):
        with pytest.raises(ValueError):
            parse_shift(bad)
