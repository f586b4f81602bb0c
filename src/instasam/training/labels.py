"""The fixed labels a tile is trained on, for both architectures.

S (SAM prompted with the points, Eq. 2-4), cluster + Voronoi labels or the ground truth,
computed once per tile and cached beside the run (:func:`load_fixed_labels`), since the
frozen models that make them never change; or read from a folder written by ``instasam
pseudo`` (:func:`labels_from_pseudo_folder`). Pixels a label source knows nothing about
are ``IGNORE``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from instasam import IGNORE
from instasam.config import InstaSAMConfig
from instasam.errors import InputError
from instasam.io.labels import read_label_map, write_label_map
from instasam.model.instasam import InstaSAM
from instasam.pseudo_labels.sam import tile_pseudo_labels


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


def fixed_labels_key(config: InstaSAMConfig, points: np.ndarray, image: np.ndarray) -> str:
    """A digest of everything the fixed labels depend on (cache key)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "pseudo": config.train.pseudo,
                "backbone": config.train.backbone,
                "crop": config.augment.crop_size,
                "rule": _rule_key(config),
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    digest.update(np.ascontiguousarray(points, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(image[::7, ::7]).tobytes())
    return digest.hexdigest()[:16]


def _rule_key(config: InstaSAMConfig) -> dict:
    rule = dict(config.pseudo_labels.__dict__)
    if rule.pop("overlap_rule"):  # on, as before the switch existed: old caches stay valid
        return rule
    return {**rule, "overlap_rule": False}


def make_fixed_labels(
    model: InstaSAM,
    image: np.ndarray,
    points: np.ndarray,
    gt: np.ndarray | None,
    config: InstaSAMConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """S for one tile and the box side chosen per point (NaN where not applicable)."""
    source = config.train.pseudo
    nan_sides = np.full(len(points), np.nan)
    if source == "sam":
        labels, sides = tile_pseudo_labels(model, image, points, config.pseudo_labels)
        return labels, sides
    if source == "gt":
        if gt is None:
            raise ValueError("--pseudo gt needs label maps in DATA/labels")
        return relabel_by_points(gt, points), nan_sides
    if source == "cv":
        from instasam.pseudo_labels.voronoi import cluster_voronoi_labels

        return cluster_voronoi_labels(image, points), nan_sides
    raise ValueError(f"unknown pseudo-label source {source!r}")


def relabel_by_points(gt: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Ground truth with ids renumbered to match the points (k = points[k-1]'s nucleus).

    Nuclei that no point falls in are ignored rather than called background: a missing
    point says nothing about the pixels.
    """
    h, w = gt.shape
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
    lookup = np.full(int(gt.max()) + 1, IGNORE, dtype=np.int32)
    lookup[0] = 0
    hit = gt[rows, cols]
    lookup[hit[hit > 0]] = np.nonzero(hit > 0)[0].astype(np.int32) + 1
    return lookup[gt]


def load_fixed_labels(
    model: InstaSAM,
    stem: str,
    image: np.ndarray,
    points: np.ndarray,
    gt: np.ndarray | None,
    config: InstaSAMConfig,
    cache_dir: Path | None,
) -> tuple[np.ndarray, np.ndarray]:
    """S from the cache when its key matches, else computed and cached."""
    key = fixed_labels_key(config, points, image)
    if cache_dir is not None:
        labels_path = cache_dir / f"{stem}.{key}.tif"
        sides_path = cache_dir / f"{stem}.{key}.sides.npy"
        if labels_path.is_file() and sides_path.is_file():
            return read_label_map_signed(labels_path), np.load(sides_path)
    labels, sides = make_fixed_labels(model, image, points, gt, config)
    if cache_dir is not None:
        write_label_map_signed(labels_path, labels)
        np.save(sides_path, sides)
    return labels, sides


def write_label_map_signed(path: Path, labels: np.ndarray) -> None:
    """Label maps with IGNORE are stored shifted by one (IGNORE -> 0)."""
    write_label_map(path, labels.astype(np.int64) + 1)


def read_label_map_signed(path: Path) -> np.ndarray:
    return read_label_map(path) - 1
