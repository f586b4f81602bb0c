"""Cluster + Voronoi labels on a synthetic image, and pseudo-label quality."""

from __future__ import annotations

import time

import numpy as np

from instasam import IGNORE
from instasam.pseudo_labels.quality import pseudo_label_quality
from instasam.pseudo_labels.voronoi import cluster_voronoi_labels, voronoi_cells, voronoi_edges


def _disks(n_side: int = 5, spacing: int = 40, radius: int = 9, seed: int = 0):
    """Dark purple disks on a pink background, with their centres."""
    rng = np.random.default_rng(seed)
    size = n_side * spacing
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.float64)
    image[:] = (230, 190, 215)
    gt = np.zeros((size, size), np.int32)
    centres = []
    for i in range(n_side):
        for j in range(n_side):
            cy = i * spacing + spacing / 2 + rng.uniform(-4, 4)
            cx = j * spacing + spacing / 2 + rng.uniform(-4, 4)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            image[disk] = (95, 55, 140)
            gt[disk] = len(centres) + 1
            centres.append((cx, cy))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), gt, np.array(centres)


def test_voronoi_cells_and_edges():
    points = np.array([[2.0, 5.0], [12.0, 5.0]])
    cells = voronoi_cells((10, 15), points)
    assert cells[5, 0] == 1 and cells[5, 14] == 2
    edges = voronoi_edges(cells)
    assert edges[:, 6:8].any() and not edges[:, :5].any() and not edges[:, 9:].any()


def test_cluster_voronoi_gives_each_disk_its_own_label():
    image, gt, points = _disks()
    started = time.perf_counter()
    labels = cluster_voronoi_labels(image, points)
    assert time.perf_counter() - started < 5
    assert labels.dtype == np.int32 and labels.shape == gt.shape
    ious = []
    for k in range(1, len(points) + 1):
        a, b = labels == k, gt == k
        ious.append((a & b).sum() / (a | b).sum())
    assert np.median(ious) > 0.7 and min(ious) > 0.3
    # Pixels between two neighbouring disks are background or ignored, never a nucleus.
    assert labels[int(points[0, 1]), int((points[0, 0] + points[1, 0]) / 2)] in (0, IGNORE)
    quality = pseudo_label_quality(labels, gt)
    assert quality["nuclei_labelled"] == 1.0 and quality["fg_precision"] > 0.9
    assert quality["aji"] > 0.6


def test_no_points_means_nothing_is_known():
    image, _, _ = _disks(n_side=2)
    labels = cluster_voronoi_labels(image, np.zeros((0, 2)))
    assert (labels == IGNORE).all()


def test_quality_of_perfect_and_empty_pseudo_labels():
    _, gt, _ = _disks(n_side=2)
    perfect = pseudo_label_quality(gt, gt)
    assert perfect["aji"] == 1.0 and perfect["ignored"] == 0.0 and perfect["bg_precision"] == 1.0
    nothing = pseudo_label_quality(np.full(gt.shape, IGNORE), gt)
    assert nothing["ignored"] == 1.0 and nothing["nuclei_labelled"] == 0.0 and nothing["aji"] == 0.0
