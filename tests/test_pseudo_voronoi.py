"""Cluster + Voronoi labels on synthetic images, and pseudo-label quality."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from instasam import IGNORE
from instasam.config import VoronoiConfig
from instasam.pseudo_labels.quality import pseudo_label_quality
from instasam.pseudo_labels.voronoi import (
    cluster_label,
    cluster_voronoi_labels,
    kmeans,
    voronoi_cells,
    voronoi_edges,
    voronoi_label,
)


def _disks(n_side: int = 5, spacing: int = 40, radius: int = 9, seed: int = 0):
    """Dark purple disks on a pink background (with noise), and their centres ``(x, y)``."""
    rng = np.random.default_rng(seed)
    size = n_side * spacing
    image = np.empty((size, size, 3), np.float64)
    image[:] = (230, 190, 215)
    gt = np.zeros((size, size), np.int32)
    centres = []
    for i in range(n_side):
        for j in range(n_side):
            cy = i * spacing + spacing / 2 + rng.uniform(-4, 4)
            cx = j * spacing + spacing / 2 + rng.uniform(-4, 4)
            r0, c0 = int(cy) - radius - 1, int(cx) - radius - 1
            yy, xx = np.mgrid[r0 : r0 + 2 * radius + 3, c0 : c0 + 2 * radius + 3]
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            image[yy[disk], xx[disk]] = (95, 55, 140)
            gt[yy[disk], xx[disk]] = len(centres) + 1
            centres.append((cx, cy))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), gt, np.array(centres)


def _point_distance(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Distance from every pixel centre to the nearest point."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = [np.hypot(xx - x, yy - y) for x, y in points]
    return np.min(d, axis=0)


def _ious(labels: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    out = []
    for k in range(1, n + 1):
        a, b = labels == k, gt == k
        out.append((a & b).sum() / (a | b).sum())
    return np.array(out)


def test_voronoi_cells_and_two_pixel_edges():
    points = np.array([[2.0, 5.0], [12.0, 5.0]])  # (x, y): the border is at x = 7
    cells = voronoi_cells((10, 15), points)
    assert cells[5, 0] == 1 and cells[5, 14] == 2
    assert (cells[:, :7] == 1).all() and (cells[:, 8:] == 2).all()
    edges = voronoi_edges(cells)
    # Both sides of the border are marked; nothing else.
    columns = np.flatnonzero(edges.any(0))
    assert edges[:, columns].all() and len(columns) == 2 and 6 <= columns[0] < columns[1] <= 8


def test_voronoi_label_marks_points_and_borders_only():
    points = np.array([[10.0, 10.0], [30.0, 10.0]])
    label = voronoi_label((21, 41), points)
    assert label.dtype == np.int8
    assert label[10, 10] == 1 and label[10, 12] == 1 and label[10, 13] == IGNORE  # radius 2
    assert label[12, 12] == IGNORE  # distance 2.83 > 2
    assert (label[:, 19:22] == 0).any(1).all()  # the border at x = 20, every row
    assert set(np.unique(label)) == {IGNORE, 0, 1}
    assert (voronoi_label((5, 5), np.zeros((0, 2))) == IGNORE).all()


def test_cluster_voronoi_gives_each_disk_its_own_label():
    image, gt, points = _disks()
    labels = cluster_voronoi_labels(image, points)
    assert labels.dtype == np.int32 and labels.shape == gt.shape
    assert labels.min() >= IGNORE and labels.max() == len(points)
    ious = _ious(labels, gt, len(points))
    # Qu et al.'s refinement shrinks each nucleus by 2 px: radius 9 -> 7, IoU ~ 49 / 81.
    assert (ious > 0.5).mean() >= 0.9 and ious.min() > 0.3, ious
    # Every pseudo nucleus lies in its own disk.
    for k in range(1, len(points) + 1):
        assert (gt[labels == k] == k).mean() > 0.95
    quality = pseudo_label_quality(labels, gt)
    assert quality["nuclei_labelled"] == 1.0 and quality["fg_precision"] > 0.95
    assert quality["bg_precision"] > 0.99 and quality["aji"] > 0.5


def test_voronoi_borders_between_neighbouring_disks_are_background():
    image, _, points = _disks()
    labels = cluster_voronoi_labels(image, points)
    edges = voronoi_edges(voronoi_cells(labels.shape, points))
    assert edges.sum() > 1000 and (labels[edges] == 0).all()
    # Walking from a disk's centre to its right neighbour's, one meets background between
    # the two nuclei, never one label straight after the other.
    for k in range(4):  # the first row of disks, left to right
        (x0, y0), (x1, y1) = points[k], points[k + 1]
        t = np.linspace(0, 1, 200)
        path = labels[
            np.round(y0 + t * (y1 - y0)).astype(int), np.round(x0 + t * (x1 - x0)).astype(int)
        ]
        assert path[0] == k + 1 and path[-1] == k + 2
        assert set(np.unique(path)) <= {IGNORE, 0, k + 1, k + 2}
        first_other = np.argmax(path == k + 2)
        assert (path[:first_other] == 0).any()


def test_cluster_label_finds_disks_and_background():
    image, gt, points = _disks(n_side=3)
    label = cluster_label(image, points)
    assert label.dtype == np.int8 and set(np.unique(label)) <= {IGNORE, 0, 1}
    assert (gt[label == 1] > 0).mean() > 0.95 and (gt[label == 0] == 0).all()
    # Nothing within 10 px of a point is background (Qu et al.'s margin).
    assert (label[_point_distance(label.shape, points) <= 10] != 0).all()


@pytest.mark.parametrize("roles", ["distance", "points"])
def test_both_cluster_role_rules_work(roles):
    image, gt, points = _disks(n_side=3)
    labels = cluster_voronoi_labels(image, points, VoronoiConfig(cluster_roles=roles))
    assert (_ious(labels, gt, len(points)) > 0.5).all()


def test_labels_are_deterministic_and_follow_the_seed():
    image, _, points = _disks(n_side=3)
    a = cluster_voronoi_labels(image, points)
    assert np.array_equal(a, cluster_voronoi_labels(image, points))
    other = cluster_voronoi_labels(image, points, replace(VoronoiConfig(), seed=5))
    assert other.shape == a.shape  # a different draw, still a valid map
    assert set(np.unique(other)) <= set(range(IGNORE, len(points) + 1))


def test_no_points_means_nothing_is_known_and_one_point_has_no_borders():
    image, gt, points = _disks(n_side=2)
    assert (cluster_voronoi_labels(image, np.zeros((0, 2))) == IGNORE).all()
    assert (cluster_label(image, np.zeros((0, 2))) == IGNORE).all()
    one = cluster_voronoi_labels(image, points[:1])
    r, c = np.round(points[0, ::-1]).astype(int)
    assert one[r, c] == 1 and set(np.unique(one)) <= {IGNORE, 0, 1}
    assert ((one == 1) & (gt == 1)).sum() > 0.5 * (gt == 1).sum()


def test_points_on_the_border_and_in_the_same_pixel():
    image, _, points = _disks(n_side=2)
    extra = np.array([[-3.0, 5.0], [79.6, 79.6], points[0]])  # clipped, clipped, duplicate
    labels = cluster_voronoi_labels(image, np.concatenate([points, extra]))
    assert labels[5, 0] == 5 and labels[79, 79] == 6
    # Two points in one pixel share one cell: the later one owns it.
    r, c = np.round(points[0, ::-1]).astype(int)
    assert labels[r, c] == 7 and not (labels == 1).any()
    with pytest.raises(ValueError):
        cluster_voronoi_labels(image, np.array([[np.nan, 1.0]]))


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.5, (200, 2)) for c in truth])
    centres = kmeans(x, 3, n_init=3, seed=0)
    order = np.lexsort(centres.T[::-1])
    assert np.allclose(centres[order], truth[np.lexsort(truth.T[::-1])], atol=0.2)
    assert np.array_equal(centres, kmeans(x, 3, n_init=3, seed=0))


def test_a_1000_pixel_tile_with_700_points_finds_its_nuclei():
    # Its speed is measured by benchmarks/pseudo_quality.py, not here.
    image, gt, points = _disks(n_side=26, spacing=38, radius=8, seed=1)  # 988 x 988, 676
    labels = cluster_voronoi_labels(image, points)
    assert (_ious(labels, gt, len(points)) > 0.5).mean() > 0.9


def test_quality_of_perfect_empty_and_partly_ignored_labels():
    _, gt, _ = _disks(n_side=2)
    perfect = pseudo_label_quality(gt, gt)
    assert perfect["aji"] == 1.0 and perfect["dice_obj"] == 1.0 and perfect["ignored"] == 0.0
    assert perfect["bg_precision"] == 1.0 and perfect["fg_precision"] == 1.0
    nothing = pseudo_label_quality(np.full(gt.shape, IGNORE), gt)
    assert nothing["ignored"] == 1.0 and nothing["nuclei_labelled"] == 0.0
    assert nothing["aji"] == 0.0 and nothing["fg_precision"] == 0.0
    # Nucleus 1 ignored, the rest exact: IGNORE counts as background, so nucleus 1 is a
    # miss (AJI = the other three's area over all four) and no false positive.
    partly = np.where(gt == 1, IGNORE, gt)
    q = pseudo_label_quality(partly, gt)
    areas = np.bincount(gt.ravel())[1:]
    assert q["aji"] == pytest.approx(areas[1:].sum() / areas.sum())
    assert q["nuclei_labelled"] == 0.75 and q["fg_precision"] == 1.0
    assert q["ignored"] == pytest.approx(areas[0] / gt.size)
    assert q["fg_recall"] == pytest.approx(areas[1:].sum() / areas.sum())
    with pytest.raises(ValueError):
        pseudo_label_quality(gt[:-1], gt)
