"""Cluster + Voronoi pseudo labels from points (Qu et al., "Weakly supervised deep nuclei
segmentation using points annotation in histopathology images", MIDL 2019; TMI 2020).

Qu et al. make two partial, semantic labels from the points alone:

* **Voronoi label** (:func:`voronoi_label`): the image is split into the Voronoi cells of
  the points. A cell border runs between two neighbouring nuclei, so border pixels are
  background; the points, dilated by a disk of radius 2, are nucleus; the rest is unknown.
* **Cluster label** (:func:`cluster_label`): k-means with three clusters on per-pixel
  features ``(R, G, B) / 10`` and the distance to the nearest point clipped at 20 px (the
  scaling puts colour and distance on similar ranges). The cluster nearest the points is
  nuclei, the farthest background, the third unknown. Our default ranks the clusters by
  their mean distance feature; the authors' code takes the cluster holding most point
  pixels as nuclei and, of the other two, the one with fewest pixels within 5 px of a
  point as background (``cluster_roles="points"``). The nuclei cluster is refined:
  components under 30 px are dropped, then inside each Voronoi cell the cell's nucleus
  pixels are dilated by a disk of radius 5, holes filled, and eroded by a disk of radius 7.
  Background is the background cluster minus refined nuclei minus everything within 10 px
  of a point.

The numbers are those of the authors' code release, which the paper describes in words;
they are the defaults of :class:`~instasam.config.VoronoiConfig`. Ours: k-means is fitted
on a seeded random sample of 50,000 pixels (the authors fit all of them) and then assigns
every pixel, which keeps a 1000x1000 tile near one second.

Our training needs ONE instance map, so :func:`cluster_voronoi_labels` merges the two:

* 0 (background): Voronoi borders, and the cluster label's background;
* k (the nucleus of ``points[k - 1]``): in point k's Voronoi cell (borders excluded), the
  refined nucleus component that contains the point (or, when none does, the one nearest
  to it if it comes within ``max_component_gap`` px), plus the Voronoi label's disk of
  radius 2 around the point; the point's own pixel always;
* IGNORE: everything else - the unknown cluster, the ring around each point that is
  neither refined nucleus nor allowed to be background, and nucleus components that
  belong to no point.

Geometry: a point ``(x, y)`` sits in pixel ``(round(y), round(x))`` (clipped into the
image); pixel distances are Euclidean between pixel centres, and "within r" means
distance <= r, i.e. the disk ``skimage.morphology.disk(r)``. Voronoi cells are the
discrete nearest-point partition (ties broken arbitrarily but deterministically). Two
points in the same pixel share one cell: the later point gets it and the earlier one gets
no label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from instasam import IGNORE
from instasam.config import VoronoiConfig

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for nucleus components


@dataclass
class PointGeometry:
    """Where the points are and which of them each pixel is nearest to.

    Attributes
    ----------
    rows, cols : ndarray
        ``(K,)`` pixel of each point.
    cells : ndarray
        ``(H, W)`` int32, 1-based index of the nearest point (the Voronoi cell).
    distance : ndarray
        ``(H, W)`` float32, distance to the nearest point's pixel.
    """

    rows: np.ndarray
    cols: np.ndarray
    cells: np.ndarray
    distance: np.ndarray


def point_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the pixel holding each point, clipped into the image."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) (x, y), got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points hold non-finite coordinates")
    h, w = shape
    rows = np.clip(np.round(points[:, 1]).astype(np.intp), 0, h - 1)
    cols = np.clip(np.round(points[:, 0]).astype(np.intp), 0, w - 1)
    return rows, cols


def point_geometry(shape: tuple[int, int], points: np.ndarray) -> PointGeometry:
    """Voronoi cells of the points and the distance to the nearest one (one EDT pass)."""
    h, w = shape
    rows, cols = point_pixels(points, shape)
    if len(rows) == 0:
        raise ValueError("point geometry needs at least one point")
    owner = np.zeros((h, w), dtype=np.int32)
    owner[rows, cols] = np.arange(1, len(rows) + 1, dtype=np.int32)
    distance, (ny, nx) = ndi.distance_transform_edt(owner == 0, return_indices=True)
    return PointGeometry(rows, cols, owner[ny, nx], distance.astype(np.float32))


def voronoi_cells(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """``(H, W)`` int32: 1-based index of the nearest point (Euclidean) for every pixel."""
    return point_geometry(shape, points).cells


def voronoi_edges(cells: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels with a 4-neighbour in another cell.

    Both sides of a border are marked, so borders are two pixels wide, like the authors'
    one-pixel erosion of each cell.
    """
    edges = np.zeros(cells.shape, dtype=bool)
    horizontal = cells[:, :-1] != cells[:, 1:]
    vertical = cells[:-1, :] != cells[1:, :]
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    return edges


def voronoi_label(
    shape: tuple[int, int], points: np.ndarray, config: VoronoiConfig | None = None
) -> np.ndarray:
    """Qu et al.'s Voronoi label: ``(H, W)`` int8, 1 nucleus, 0 background, IGNORE unknown.

    Nucleus: within ``config.point_radius`` of a point; background: Voronoi borders (which
    win where both hold, the point pixels excepted). No points: all IGNORE.
    """
    config = config or VoronoiConfig()
    label = np.full(shape, IGNORE, dtype=np.int8)
    if len(points) == 0:
        return label
    geometry = point_geometry(shape, points)
    label[geometry.distance <= config.point_radius] = 1
    label[voronoi_edges(geometry.cells)] = 0
    label[geometry.rows, geometry.cols] = 1
    return label


# --------------------------------------------------------------------------- clustering


def kmeans(
    x: np.ndarray,
    k: int,
    n_init: int = 10,
    seed: int | np.random.Generator = 0,
    max_iter: int = 100,
) -> np.ndarray:
    """Centres ``(k, D)`` of k-means on samples ``x`` ``(N, D)``.

    Lloyd iterations from k-means++ starts, best of ``n_init`` starts by inertia;
    deterministic for a given ``seed``. An emptied cluster restarts at the sample farthest
    from its centre.
    """
    xt = np.ascontiguousarray(np.asarray(x, dtype=np.float64).T)  # (D, N): fast per-centre sums
    n = xt.shape[1]
    if n < k:
        raise ValueError(f"k-means needs at least {k} samples, got {n}")
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(max(1, n_init)):
        centres = _kmeans_plus_plus(xt, k, rng)
        assignment = None
        for _ in range(max_iter):
            d2 = squared_distances(xt, centres)
            new = d2.argmin(0)
            if assignment is not None and np.array_equal(new, assignment):
                break
            assignment = new
            counts = np.bincount(assignment, minlength=k)
            centres = _cluster_means(xt, assignment, counts, d2)
        inertia = squared_distances(xt, centres).min(0).sum()
        if inertia < best_inertia:
            best, best_inertia = centres.copy(), inertia
    return best


def _cluster_means(
    xt: np.ndarray, assignment: np.ndarray, counts: np.ndarray, d2: np.ndarray
) -> np.ndarray:
    k = len(counts)
    sums = np.stack([np.bincount(assignment, weights=row, minlength=k) for row in xt], axis=1)
    centres = sums / np.maximum(counts, 1)[:, None]
    for c in np.flatnonzero(counts == 0):
        centres[c] = xt[:, d2.min(0).argmax()]
    return centres


def _kmeans_plus_plus(xt: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = xt.shape[1]
    centres = np.empty((k, xt.shape[0]))
    centres[0] = xt[:, rng.integers(n)]
    nearest = squared_distances(xt, centres[:1])[0]
    for c in range(1, k):
        total = nearest.sum()
        index = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres[c] = xt[:, index]
        nearest = np.minimum(nearest, squared_distances(xt, centres[c : c + 1])[0])
    return centres


def squared_distances(xt: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(k, N)`` squared distances of samples ``xt`` ``(D, N)`` to ``centres`` ``(k, D)``.

    Written as per-centre sums, not a matrix product: BLAS threads on a tiny inner
    dimension were 50x slower on a busy 2-core machine.
    """
    centres = centres.astype(xt.dtype, copy=False)
    return np.stack([((xt - centre[:, None]) ** 2).sum(0) for centre in centres])


def pixel_features(image: np.ndarray, distance: np.ndarray, config: VoronoiConfig) -> np.ndarray:
    """``(4, H * W)`` float32: R, G, B times ``colour_scale``, and the clipped point distance."""
    features = np.empty((4, distance.size), dtype=np.float32)
    features[:3] = image.reshape(-1, 3).T
    features[:3] *= np.float32(config.colour_scale)
    np.minimum(distance.reshape(-1), np.float32(config.distance_clip), out=features[3])
    return features


def cluster_assignment(
    image: np.ndarray, geometry: PointGeometry, config: VoronoiConfig
) -> np.ndarray:
    """``(H, W)`` int8: 1 nuclei cluster, 0 background cluster, IGNORE the third (unrefined)."""
    h, w = image.shape[:2]
    features = pixel_features(image, geometry.distance, config)  # (4, H * W) float32
    rng = np.random.default_rng(config.seed)
    n_fit = min(config.n_fit_pixels, features.shape[1])
    sample = rng.choice(features.shape[1], size=n_fit, replace=False)
    centres = kmeans(features[:, sample].T, 3, n_init=config.n_init, seed=rng)
    assignment = squared_distances(features, centres).argmin(0).reshape(h, w)
    nuclei, background = _cluster_roles(assignment, centres, geometry, config)
    out = np.full((h, w), IGNORE, dtype=np.int8)
    out[assignment == nuclei] = 1
    out[assignment == background] = 0
    return out


def _cluster_roles(
    assignment: np.ndarray, centres: np.ndarray, geometry: PointGeometry, config: VoronoiConfig
) -> tuple[int, int]:
    """Indices of the nuclei and background clusters."""
    if config.cluster_roles == "distance":
        order = np.argsort(centres[:, 3], kind="stable")
        return int(order[0]), int(order[-1])
    if config.cluster_roles != "points":
        raise ValueError(f"unknown cluster_roles {config.cluster_roles!r}")
    at_points = np.bincount(assignment[geometry.rows, geometry.cols], minlength=3)
    nuclei = int(at_points.argmax())
    near = np.bincount(assignment[geometry.distance <= config.roles_radius], minlength=3)
    others = [c for c in range(3) if c != nuclei]
    background = min(others, key=lambda c: near[c])
    return nuclei, int(background)


def _without_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    if min_area <= 1:
        return mask
    components, n = ndi.label(mask, structure=_EIGHT)
    if n == 0:
        return mask
    areas = np.bincount(components.ravel(), minlength=n + 1)
    keep = areas >= min_area
    keep[0] = False
    return keep[components]


def refine_nuclei(
    nuclei: np.ndarray, geometry: PointGeometry, config: VoronoiConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Qu et al.'s refinement of the nuclei cluster, and each point's nucleus.

    Returns
    -------
    refined : ndarray
        ``(H, W)`` bool, the union over Voronoi cells of (cell's nucleus pixels dilated by
        ``refine_dilation``, holes filled, eroded by ``refine_erosion``).
    instances : ndarray
        ``(H, W)`` int32: k on the refined component of cell k chosen for point k (see the
        module notes), 0 elsewhere. Cell borders are not removed here.
    """
    h, w = nuclei.shape
    nuclei = _without_small_components(nuclei, config.min_nucleus_area)
    refined = np.zeros((h, w), dtype=bool)
    instances = np.zeros((h, w), dtype=np.int32)
    dilation, erosion = config.refine_dilation, config.refine_erosion
    # A margin wide enough that the dilated set never reaches the crop's inner borders and
    # its erosion never needs pixels outside the crop.
    pad = int(np.ceil(dilation + erosion)) + 1
    cells = geometry.cells
    candidates = np.unique(cells[nuclei])
    boxes = ndi.find_objects(cells)
    for k in candidates:
        box = boxes[k - 1]
        r0, r1 = max(box[0].start - pad, 0), min(box[0].stop + pad, h)
        c0, c1 = max(box[1].start - pad, 0), min(box[1].stop + pad, w)
        in_cell = cells[r0:r1, c0:c1] == k
        own = nuclei[r0:r1, c0:c1] & in_cell
        # Dilation and erosion by disks through distance transforms: dist <= r is exactly
        # skimage's disk(r). Outside the image counts as inside the set for the erosion
        # (an image border is not a nucleus border).
        grown = ndi.distance_transform_edt(~own) <= dilation
        grown = ndi.binary_fill_holes(grown)
        if grown.all():
            shrunk = grown
        else:
            shrunk = ndi.distance_transform_edt(grown) > erosion
        refined[r0:r1, c0:c1] |= shrunk
        chosen = _component_for_point(
            shrunk & in_cell, geometry.rows[k - 1] - r0, geometry.cols[k - 1] - c0, config
        )
        if chosen is not None:
            instances[r0:r1, c0:c1][chosen] = k
    return refined, instances


def _component_for_point(
    mask: np.ndarray, row: int, col: int, config: VoronoiConfig
) -> np.ndarray | None:
    """The component of ``mask`` holding ``(row, col)``, else the nearest one within reach."""
    components, n = ndi.label(mask, structure=_EIGHT)
    if n == 0:
        return None
    hit = components[row, col]
    if hit:
        return components == hit
    rr, cc = np.nonzero(components)
    d2 = (rr - row) ** 2 + (cc - col) ** 2
    nearest = int(d2.argmin())
    if d2[nearest] > config.max_component_gap**2:
        return None
    return components == components[rr[nearest], cc[nearest]]


def cluster_label(
    image: np.ndarray, points: np.ndarray, config: VoronoiConfig | None = None
) -> np.ndarray:
    """Qu et al.'s cluster label: ``(H, W)`` int8, 1 nucleus, 0 background, IGNORE unknown.

    Nucleus: the refined nuclei cluster (:func:`refine_nuclei`). Background: the background
    cluster outside refined nuclei and farther than ``background_margin`` from every
    point. No points: all IGNORE.
    """
    config = config or VoronoiConfig()
    image = _checked_image(image)
    label = np.full(image.shape[:2], IGNORE, dtype=np.int8)
    if len(points) == 0:
        return label
    geometry = point_geometry(image.shape[:2], points)
    clusters = cluster_assignment(image, geometry, config)
    refined, _ = refine_nuclei(clusters == 1, geometry, config)
    label[_background(clusters, refined, geometry, config)] = 0
    label[refined] = 1
    return label


def _background(
    clusters: np.ndarray, refined: np.ndarray, geometry: PointGeometry, config: VoronoiConfig
) -> np.ndarray:
    return (clusters == 0) & ~refined & (geometry.distance > config.background_margin)


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    return image


def cluster_voronoi_labels(
    image: np.ndarray, points: np.ndarray, config: VoronoiConfig | None = None
) -> np.ndarray:
    """Instance pseudo labels from points, merging Qu et al.'s Voronoi and cluster labels.

    Parameters
    ----------
    image : ndarray
        ``(H, W, 3)`` RGB, uint8 (0-255; ``colour_scale`` assumes that range).
    points : ndarray
        ``(K, 2)`` ``(x, y)``, one per nucleus.
    config : VoronoiConfig, optional
        Qu et al.'s parameters by default.

    Returns
    -------
    ndarray
        ``(H, W)`` int32: IGNORE, 0 background, k = the nucleus of ``points[k - 1]`` (see
        the module notes for the rules). No points: all IGNORE (nothing is known; an
        image without annotated nuclei may still hold some).
    """
    config = config or VoronoiConfig()
    image = _checked_image(image)
    h, w = image.shape[:2]
    labels = np.full((h, w), IGNORE, dtype=np.int32)
    if len(points) == 0:
        return labels
    geometry = point_geometry((h, w), points)
    clusters = cluster_assignment(image, geometry, config)
    refined, instances = refine_nuclei(clusters == 1, geometry, config)
    edges = voronoi_edges(geometry.cells)
    labels[_background(clusters, refined, geometry, config)] = 0
    near_point = geometry.distance <= config.point_radius
    labels[near_point] = geometry.cells[near_point]
    labels[instances > 0] = instances[instances > 0]
    labels[edges] = 0
    labels[geometry.rows, geometry.cols] = geometry.cells[geometry.rows, geometry.cols]
    return labels
