"""Nuclei seen by two tiles: settled once, no shared pixels, gaps filled.

Candidates are built by hand here; ``test_predict_slides`` runs the shipped network over
a real MoNuSeg tile written as a slide.
"""

from __future__ import annotations

import numpy as np

from instasam.io.slides import tile_grid
from instasam.predict.seams import SeamCandidate, exclusive_box, settle_seams


def _disk(r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return (yy - c) ** 2 + (xx - c) ** 2 <= r * r


def _cand(tile, line, primary, margin, x0, y0, mask):
    return SeamCandidate(tile, line, primary, margin, x0, y0, mask)


def test_exclusive_box_is_the_part_no_neighbour_covers():
    tiles = tile_grid((1000, 600), 256, 64)
    covered = np.zeros((600, 1000), dtype=int)
    for t in tiles:
        covered[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    for t in tiles:
        x0, y0, x1, y1 = exclusive_box(t)
        assert (covered[y0:y1, x0:x1] == 1).all(), t.name
        # ...and it misses at most the one pixel of rounding at each inner side.
        own = covered[t.y : t.y + t.height, t.x : t.x + t.width] == 1
        assert own.sum() - (x1 - x0) * (y1 - y0) <= 2 * (t.width + t.height)


def test_the_same_nucleus_kept_by_two_tiles_is_kept_once_by_the_better_placed():
    disk = _disk(6, 15)
    shifted = np.roll(disk, 1, axis=1)  # the other tile's outline differs by a pixel
    a = _cand(0, 3, True, 40.0, 100, 100, disk)
    b = _cand(1, 0, True, 25.0, 100, 100, shifted)
    fate = settle_seams([b, a])
    assert fate[(1, 0)] is None
    assert np.array_equal(fate[(0, 3)], disk)
    assert fate[(0, 3)] is a.mask  # untouched: its own mask, so its outline is kept as is


def test_a_boundary_disagreement_is_trimmed_so_no_pixel_is_shared():
    left = np.zeros((10, 14), dtype=bool)
    left[:, :8] = True
    right = np.zeros((10, 14), dtype=bool)
    right[:, 6:] = True  # two columns claimed by both
    fate = settle_seams([_cand(0, 0, True, 50.0, 0, 0, left), _cand(1, 0, True, 10.0, 0, 0, right)])
    assert np.array_equal(fate[(0, 0)], left)
    trimmed = fate[(1, 0)]
    assert not (trimmed & left).any() and trimmed.sum() == right.sum() - 20


def test_a_nucleus_no_tile_owned_is_recovered_but_never_duplicated():
    disk = _disk(5, 12)
    lost = _cand(2, 7, False, 20.0, 300, 40, disk)  # nobody owns it: kept
    owned = _cand(0, 1, True, 30.0, 500, 40, disk)
    again = _cand(1, 4, False, 20.0, 501, 41, disk)  # someone owns it: dropped
    fate = settle_seams([lost, owned, again])
    assert fate[(2, 7)] is not None and fate[(0, 1)] is not None
    assert fate[(1, 4)] is None


def test_a_small_piece_inside_a_nucleus_is_absorbed_not_cut_out():
    big = _disk(9, 21)
    piece = np.zeros((4, 4), dtype=bool)
    piece[:] = True  # wholly inside big, placed at its centre
    fate = settle_seams([_cand(0, 0, True, 60.0, 8, 8, piece), _cand(1, 0, True, 20.0, 0, 0, big)])
    assert fate[(0, 0)] is None
    assert np.array_equal(fate[(1, 0)], big)
