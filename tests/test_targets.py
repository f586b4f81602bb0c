"""Foreground and distance-map targets: values checked by hand on tiny shapes."""

from __future__ import annotations

import numpy as np
import pytest

from instasam import IGNORE
from instasam.targets import foreground_map, hv_maps, ignore_mask


def _rectangle(shape=(9, 11), rows=(2, 7), cols=(3, 8), label=1) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    labels[rows[0] : rows[1], cols[0] : cols[1]] = label
    return labels


def _disk(shape, centre, radius) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize("scaling", ["hovernet", "positive_max"])
def test_rectangle_maps_are_linear_from_minus_one_to_one(scaling):
    labels = _rectangle()  # 5 x 5 square, rows 2..6, columns 3..7
    hv = hv_maps(labels, scaling)
    assert hv.dtype == np.float32 and hv.shape == (2, 9, 11)
    ramp = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
    for r in range(2, 7):
        np.testing.assert_allclose(hv[0, r, 3:8], ramp, atol=1e-6)
    for c in range(3, 8):
        np.testing.assert_allclose(hv[1, 2:7, c], ramp, atol=1e-6)
    outside = labels == 0
    assert not hv[:, outside].any()


def test_wide_rectangle_horizontal_ramp_vertical_constant_rows():
    labels = _rectangle(shape=(6, 12), rows=(1, 4), cols=(2, 11))  # 3 rows x 9 columns
    hv = hv_maps(labels)
    np.testing.assert_allclose(hv[0, 2, 2:11], np.linspace(-1, 1, 9), atol=1e-6)
    np.testing.assert_allclose(hv[1, 1:4, 5], [-1, 0, 1], atol=1e-6)


def _lopsided(reverse: bool) -> np.ndarray:
    """Columns with 3, 1, 1 pixels (centre of mass x = 0.6 from the first), or mirrored."""
    labels = np.zeros((5, 7), dtype=np.int32)
    labels[1:4, 2] = 1
    labels[2, 3:5] = 1
    return labels[:, ::-1].copy() if reverse else labels


def test_hovernet_scaling_spans_both_sides_separately():
    hv = hv_maps(_lopsided(reverse=False), "hovernet")
    # x offsets from 2.6: -0.6 (x3), 0.4, 1.4 -> -0.6/0.6, 0.4/1.4, 1.4/1.4
    np.testing.assert_allclose(hv[0, 2, 2:5], [-1.0, 0.4 / 1.4, 1.0], atol=1e-6)
    np.testing.assert_allclose(hv[0, [1, 3], 2], [-1.0, -1.0], atol=1e-6)
    # y offsets from row 2: -1, 0, +1 in column 2
    np.testing.assert_allclose(hv[1, 1:4, 2], [-1.0, 0.0, 1.0], atol=1e-6)


def test_positive_max_divides_negative_side_by_positive_maximum():
    short_left = hv_maps(_lopsided(reverse=False), "positive_max")
    np.testing.assert_allclose(short_left[0, 2, 2:5], [-0.6 / 1.4, 0.4 / 1.4, 1.0], atol=1e-6)
    # Mirrored: the centre of mass sits near the long side, the negative side reaches
    # -1.4 / 0.6 < -1 and is not clipped (authors' code).
    long_left = hv_maps(_lopsided(reverse=True), "positive_max")
    np.testing.assert_allclose(long_left[0, 2, 2:5], [-1.4 / 0.6, -0.4 / 0.6, 1.0], atol=1e-6)
    assert long_left.min() < -1


def test_disk_is_antisymmetric_and_bounded():
    labels = _disk((31, 31), (15, 15), 9).astype(np.int32) * 4
    for scaling in ("hovernet", "positive_max"):
        hv = hv_maps(labels, scaling)
        np.testing.assert_allclose(hv[0], -hv[0][:, ::-1], atol=1e-6)
        np.testing.assert_allclose(hv[1], -hv[1][::-1, :], atol=1e-6)
        np.testing.assert_allclose(hv[0], hv[1].T, atol=1e-6)
        assert hv.min() == pytest.approx(-1) and hv.max() == pytest.approx(1)


def test_each_nucleus_has_its_own_centre_and_scale_whatever_its_id():
    labels = np.zeros((8, 20), dtype=np.int32)
    labels[2:5, 1:4] = 7  # 3 columns
    labels[2:5, 4:11] = 1000  # 7 columns, touching the first
    hv = hv_maps(labels)
    np.testing.assert_allclose(hv[0, 3, 1:4], [-1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(hv[0, 3, 4:11], np.linspace(-1, 1, 7), atol=1e-6)
    same_ids = np.where(labels == 7, 1, np.where(labels == 1000, 2, 0))
    np.testing.assert_array_equal(hv, hv_maps(same_ids))


def test_one_pixel_wide_object_has_zero_offsets_along_its_width():
    labels = np.zeros((7, 7), dtype=np.int32)
    labels[1:6, 3] = 2
    hv = hv_maps(labels)
    assert not hv[0].any()
    np.testing.assert_allclose(hv[1, 1:6, 3], [-1, -0.5, 0, 0.5, 1], atol=1e-6)


def test_ignored_pixels_get_zero_targets_and_are_reported():
    labels = _rectangle()
    labels[:, 9:] = IGNORE
    labels[0, :] = IGNORE
    hv = hv_maps(labels)
    np.testing.assert_array_equal(hv, hv_maps(_rectangle() * (labels != IGNORE)))
    mask = ignore_mask(labels)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, labels == IGNORE)
    fg = foreground_map(labels)
    assert fg.dtype == np.float32
    np.testing.assert_array_equal(fg, (labels > 0).astype(np.float32))
    assert not hv[:, mask].any() and not fg[mask].any()


def test_empty_map_gives_zero_targets():
    labels = np.zeros((4, 5), dtype=np.int32)
    assert not hv_maps(labels).any() and hv_maps(labels).shape == (2, 4, 5)
    assert not foreground_map(labels).any()
    assert not ignore_mask(labels).any()


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((2, 3, 4), dtype=np.int32),
        np.zeros((3, 4), dtype=np.float32),
        np.full((3, 4), -2, dtype=np.int32),
    ],
)
def test_bad_label_maps_are_refused(labels):
    with pytest.raises(ValueError):
        hv_maps(labels)
    with pytest.raises(ValueError):
        foreground_map(labels)


def test_unknown_scaling_is_refused():
    with pytest.raises(ValueError, match="scaling"):
        hv_maps(_rectangle(), "minmax")  # type: ignore[arg-type]


@pytest.mark.realdata
def test_real_tile_targets(monuseg_root):
    from instasam.io.labels import read_label_map

    labels = read_label_map(monuseg_root / "train/labels_instance/TCGA-21-5784-01Z-00-DX1.png")
    hv = hv_maps(labels)
    assert hv.min() == -1 and hv.max() == 1
    inside = labels > 0
    assert not hv[:, ~inside].any()
    # Every nucleus reaches 1 on both axes (0 only if it is one pixel wide).
    ids = labels[inside]
    present = np.bincount(ids) > 0
    present[0] = False
    for channel in range(2):
        peak = np.zeros(ids.max() + 1)
        np.maximum.at(peak, ids, hv[channel][inside])
        assert np.all(np.isclose(peak[present], 1.0) | (peak[present] == 0))
