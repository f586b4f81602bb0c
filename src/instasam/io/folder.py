"""The dataset folder every command after ``prepare`` reads.

::

    DIR/images/<stem>.png|tif|...     RGB tiles
    DIR/labels/<stem>.tif|png|npy     instance label maps (optional: ground truth)
    DIR/points/<stem>.csv|geojson     one point per nucleus (optional)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instasam.errors import InputError
from instasam.io.images import list_images, read_rgb
from instasam.io.labels import find_label_file, read_label_map
from instasam.io.points import POINT_SUFFIXES, check_points_inside, read_points


@dataclass(frozen=True)
class Sample:
    """Where one image's files are."""

    stem: str
    image_path: Path
    label_path: Path | None = None
    points_path: Path | None = None


@dataclass
class LoadedSample:
    """One image's data, validated against each other."""

    stem: str
    image: np.ndarray
    labels: np.ndarray | None
    points: np.ndarray | None


def _points_file(folder: Path, stem: str) -> Path | None:
    for suffix in POINT_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def list_samples(
    folder: str | os.PathLike, require_labels: bool = False, require_points: bool = False
) -> list[Sample]:
    """The samples of a dataset folder, sorted by stem.

    Raises
    ------
    InputError
        If ``images/`` is missing or empty, two images share a stem, or a required label
        or points file is missing (the first missing one is named).
    """
    folder = Path(folder)
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise InputError(folder, "not a dataset folder (no images/ inside)")
    images = list_images(images_dir)
    if not images:
        raise InputError(images_dir, "no images")
    stems = [p.stem for p in images]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate:
        raise InputError(images_dir, f"two images are named {duplicate!r}")
    samples = []
    for image in images:
        label = find_label_file(folder / "labels", image.stem)
        points = _points_file(folder / "points", image.stem)
        if require_labels and label is None:
            raise InputError(folder / "labels", f"no label map for {image.name}")
        if require_points and points is None:
            raise InputError(folder / "points", f"no points file for {image.name}")
        samples.append(Sample(image.stem, image, label, points))
    return samples


def load_sample(sample: Sample, mpp: float | None = None) -> LoadedSample:
    """Read a sample's files and check they agree (sizes, points inside the image)."""
    image = read_rgb(sample.image_path)
    labels = None
    if sample.label_path is not None:
        labels = read_label_map(sample.label_path)
        if labels.shape != image.shape[:2]:
            raise InputError(
                sample.label_path,
                f"size {labels.shape[1]}x{labels.shape[0]} differs from its image "
                f"{sample.image_path.name} ({image.shape[1]}x{image.shape[0]})",
            )
    points = None
    if sample.points_path is not None:
        points = read_points(sample.points_path, mpp=mpp)
        check_points_inside(points, image.shape[:2], sample.points_path)
    return LoadedSample(sample.stem, image, labels, points)
