"""Cluster + Voronoi labels from points (Qu et al., "Weakly supervised deep nuclei
segmentation using points annotation in histopathology images", MIDL 2019).

Two partial labels are made from the points alone and merged into one instance map:

* Voronoi label: the image is split into the Voronoi cells of the points; pixels on the
  cell borders lie between two nuclei and are background, the points are nucleus.
* Cluster label: k-means with three clusters on each pixel's (truncated) distance to the
  nearest point and its colour; the cluster nearest the points is nucleus, the farthest
  background, and the middle one is left unlabelled.

Merged (our instance form, for the same training code as the SAM labels): nucleus
pixels of point k's Voronoi cell that are connected to the point get label k; background
cluster and cell borders get 0; everything else is IGNORE.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.cluster.vq import kmeans2
from skimage.morphology import disk

from instasam import IGNORE
from instasam.config import VoronoiConfig


def voronoi_cells(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """``(H, W)`` int32: index + 1 of the nearest point (Euclidean) for every pixel."""
    h, w = shape
    seeds = np.ones((h, w), dtype=bool)
    rows, cols = _point_pixels(points, shape)
    seeds[rows, cols] = False
    index = np.full((h, w), 0, dtype=np.int32)
    index[rows, cols] = np.arange(1, len(points) + 1, dtype=np.int32)
    _, (ny, nx) = ndi.distance_transform_edt(seeds, return_indices=True)
    return index[ny, nx]


def voronoi_edges(cells: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour lies in another cell (one-pixel borders)."""
    edges = np.zeros(cells.shape, dtype=bool)
    edges[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    edges[:-1, :] |= cells[:-1, :] != cells[1:, :]
    return edges


def _point_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
    return rows, cols


def cluster_label(image: np.ndarray, points: np.ndarray, config: VoronoiConfig) -> np.ndarray:
    """``(H, W)`` int8: 1 nucleus cluster, 0 background cluster, -1 the middle cluster."""
    h, w = image.shape[:2]
    near = np.ones((h, w), dtype=bool)
    rows, cols = _point_pixels(points, (h, w))
    near[rows, cols] = False
    distance = np.minimum(ndi.distance_transform_edt(near), config.distance_clip)
    colour = image.reshape(-1, 3).astype(np.float64)
    features = np.column_stack([distance.ravel(), colour])
    features = (features - features.mean(0)) / np.maximum(features.std(0), 1e-6)
    features[:, 1:] *= config.colour_weight
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(features), size=min(config.n_fit_pixels, len(features)), replace=False)
    # Initial centres at distance quantiles make the run deterministic and well spread.
    order = np.argsort(features[sample, 0])
    init = features[sample][order[[len(order) // 10, len(order) // 2, 9 * len(order) // 10]]]
    centres, _ = kmeans2(features[sample], init, minit="matrix", seed=config.seed)
    assignment = np.argmin(((features[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    by_distance = np.argsort(centres[:, 0])  # nearest-to-points cluster first
    label = np.full(h * w, -1, dtype=np.int8)
    label[assignment == by_distance[0]] = 1
    label[assignment == by_distance[-1]] = 0
    return label.reshape(h, w)


def cluster_voronoi_labels(
    image: np.ndarray, points: np.ndarray, config: VoronoiConfig | None = None
) -> np.ndarray:
    """Instance pseudo labels from points: IGNORE, 0 background, k = point k-1's nucleus."""
    config = config or VoronoiConfig()
    h, w = image.shape[:2]
    if len(points) == 0:
        return np.full((h, w), IGNORE, dtype=np.int32)
    cells = voronoi_cells((h, w), points)
    clusters = cluster_label(image, points, config)
    nuclei = clusters == 1
    if config.opening_radius:
        nuclei = ndi.binary_opening(nuclei, structure=disk(config.opening_radius))
    rows, cols = _point_pixels(points, (h, w))
    sure = np.zeros((h, w), dtype=bool)
    sure[rows, cols] = True
    sure = (
        ndi.binary_dilation(sure, structure=disk(config.point_radius))
        if config.point_radius
        else sure
    )
    edges = voronoi_edges(cells)
    nuclei = (nuclei | sure) & ~edges
    # Keep, in each cell, only the nucleus pixels connected to the cell's own point.
    components, _ = ndi.label(nuclei & ~edges)
    owner = np.zeros(components.max() + 1, dtype=np.int32)
    hit = components[rows, cols]
    owner[hit[hit > 0]] = cells[rows, cols][hit > 0]
    labels = np.full((h, w), IGNORE, dtype=np.int32)
    labels[clusters == 0] = 0
    claimed = owner[components]
    own = nuclei & (claimed == cells)
    labels[own] = cells[own]
    labels[edges] = 0
    return labels
