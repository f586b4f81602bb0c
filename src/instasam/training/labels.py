"""The fixed labels the nuclei network learns from.

They come from :func:`instasam.train.load_fixed_labels` (S from SAM prompted with the
points, cluster + Voronoi, or the ground truth, cached beside the run) or from a folder
written by ``instasam pseudo`` (``labels/<stem>.tif`` with ``ignored/<stem>.png``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from instasam import IGNORE
from instasam.errors import InputError
from instasam.io.labels import read_label_map


def labels_from_pseudo_folder(folder: Path, stem: str, shape: tuple[int, int]) -> np.ndarray:
    """S of one tile as ``instasam pseudo`` wrote it, with IGNORE where it said so."""
    labels_path = folder / "labels" / f"{stem}.tif"
    ignored_path = folder / "ignored" / f"{stem}.png"
    for path in (labels_path, ignored_path):
        if not path.is_file():
            raise InputError(path, "missing (run `instasam pseudo` on the same data)")
    labels = read_label_map(labels_path).astype(np.int32)
    ignored = read_rgb_mask(ignored_path)
    if labels.shape != shape or ignored.shape != shape:
        raise InputError(labels_path, f"size {labels.shape} differs from its image's {shape}")
    labels[ignored] = IGNORE
    return labels


def read_rgb_mask(path: Path) -> np.ndarray:
    """A black/white PNG as a boolean mask (any channel above half)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def ignore_around_unlabelled_points(
    labels: np.ndarray, points: np.ndarray, radius: float
) -> np.ndarray:
    """``labels`` with a disk of IGNORE around each point whose nucleus got no label.

    Pseudo labels miss some nuclei (S labels about 90 % of the Kumar training nuclei); the
    point still says a nucleus is there, so its surroundings must not be taught as
    background. Labelled pixels of other nuclei are left alone.
    """
    if radius <= 0 or len(points) == 0:
        return labels
    out = labels.copy()
    h, w = labels.shape
    present = np.zeros(len(points) + 1, dtype=bool)
    ids = labels[labels > 0]
    present[ids[ids <= len(points)]] = True
    seeds = np.zeros((h, w), dtype=bool)
    for k, (x, y) in enumerate(points, start=1):
        if not present[k]:
            seeds[min(h - 1, max(0, round(y))), min(w - 1, max(0, round(x)))] = True
    if not seeds.any():
        return out
    near = ndi.distance_transform_edt(~seeds) <= radius
    out[near & (labels == 0)] = IGNORE
    return out
