"""The dataset folder that ``instasam prepare`` writes and every later command reads.

::

    DIR/images/<stem>.png|tif|tiff|jpg|jpeg|bmp   RGB tiles
    DIR/labels/<stem>.tif|tiff|png|npy             instance label maps (optional)
    DIR/points/<stem>.csv|tsv|txt|geojson|json     one point per nucleus (optional)

Files are matched by stem (the name without its suffix; suffixes are matched without
regard to case). Two files with the same stem in one folder (``a.png`` and ``a.tif``) are
refused rather than one of them picked silently. Files in ``labels/`` or ``points/``
without an image are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instasam.errors import InputError
from instasam.io.images import list_images, read_rgb
from instasam.io.labels import LABEL_SUFFIXES, read_label_map
from instasam.io.points import POINT_SUFFIXES, check_points_inside, read_points


@dataclass(frozen=True)
class Sample:
    """Where one image's files are (``None``: the sample has no such file)."""

    stem: str
    image_path: Path
    label_path: Path | None = None
    points_path: Path | None = None


@dataclass
class LoadedSample:
    """One image's data, checked against each other (same size, points inside)."""

    stem: str
    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray | None  # (H, W) int32
    points: np.ndarray | None  # (N, 2) float64 (x, y)


def index_by_stem(folder: str | os.PathLike, suffixes: Iterable[str]) -> dict[str, list[Path]]:
    """Files directly in ``folder`` whose suffix is one of ``suffixes``, grouped by stem.

    A missing folder gives an empty index; hidden files are skipped.
    """
    folder = Path(folder)
    wanted = {s.lower() for s in suffixes}
    index: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return index
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in wanted and not path.name.startswith("."):
            index.setdefault(path.stem, []).append(path)
    return index


def pick_one(index: dict[str, list[Path]], stem: str, folder: str | os.PathLike) -> Path | None:
    """The file for ``stem`` in an :func:`index_by_stem` index; two candidates are an error."""
    candidates = index.get(stem, [])
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise InputError(folder, f"more than one file for {stem!r} ({names}); keep one")
    return candidates[0] if candidates else None


def find_by_stem(folder: str | os.PathLike, stem: str, suffixes: Iterable[str]) -> Path | None:
    """The one file named ``<stem><suffix>`` in ``folder`` (None if there is none)."""
    return pick_one(index_by_stem(folder, suffixes), stem, folder)


def unique_images(folder: str | os.PathLike) -> list[Path]:
    """The images in ``folder`` sorted by name; two images with one stem are an error."""
    images = list_images(folder)
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise InputError(
                folder,
                f"two images are named {image.stem!r} ({seen[image.stem].name}, "
                f"{image.name}); keep one",
            )
        seen[image.stem] = image
    return images


def check_label_size(
    labels: np.ndarray,
    image: np.ndarray,
    label_path: str | os.PathLike,
    image_path: str | os.PathLike,
) -> None:
    """Raise :class:`InputError` naming both files when ``labels`` and ``image`` differ in size."""
    if labels.shape[:2] != image.shape[:2]:
        raise InputError(
            label_path,
            f"size {labels.shape[1]}x{labels.shape[0]} differs from its image "
            f"{image_path} ({image.shape[1]}x{image.shape[0]})",
        )


def list_samples(
    folder: str | os.PathLike, require_labels: bool = False, require_points: bool = False
) -> list[Sample]:
    """The samples of a dataset folder, sorted by stem.

    Raises
    ------
    InputError
        If ``images/`` is missing or empty, two images (or two label or points files)
        share a stem, or a required label or points file is missing (the image is named).
    """
    folder = Path(folder)
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise InputError(folder, "not a dataset folder (no images/ inside)")
    images = unique_images(images_dir)
    if not images:
        raise InputError(images_dir, "no images")
    labels_dir, points_dir = folder / "labels", folder / "points"
    label_index = index_by_stem(labels_dir, LABEL_SUFFIXES)
    point_index = index_by_stem(points_dir, POINT_SUFFIXES)
    samples = []
    for image in images:
        label = pick_one(label_index, image.stem, labels_dir)
        points = pick_one(point_index, image.stem, points_dir)
        if require_labels and label is None:
            raise InputError(labels_dir, f"no label map for {image.name}")
        if require_points and points is None:
            raise InputError(points_dir, f"no points file for {image.name}")
        samples.append(Sample(image.stem, image, label, points))
    return samples


def load_sample(sample: Sample, mpp: float | None = None) -> LoadedSample:
    """Read a sample's files and check that they agree.

    Parameters
    ----------
    sample : Sample
        From :func:`list_samples`.
    mpp : float, optional
        Microns per pixel, for points tables in µm (QuPath measurement exports).

    Raises
    ------
    InputError
        If a file is bad, the label map's size differs from the image's (both files are
        named), or a point lies outside the image.
    """
    image = read_rgb(sample.image_path)
    labels = None
    if sample.label_path is not None:
        labels = read_label_map(sample.label_path)
        check_label_size(labels, image, sample.label_path, sample.image_path)
    points = None
    if sample.points_path is not None:
        points = read_points(sample.points_path, mpp=mpp)
        check_points_inside(points, image.shape[:2], sample.points_path)
    return LoadedSample(sample.stem, image, labels, points)


def check_training_points(samples: list[Sample], loaded: list[LoadedSample]) -> None:
    """Refuse a tile to learn from that has no points.

    A points file may be empty (``prepare`` writes one for a tile without nuclei, and
    QuPath exports one for a tile nobody annotated); learning from it would teach the whole
    tile as background, or, with SAM pseudo labels, ignore all of it. Either way it is
    almost always a forgotten annotation, so it is an error naming the file, as an empty
    GeoJSON already is.
    """
    for sample, data in zip(samples, loaded, strict=True):
        if data.points is not None and len(data.points) == 0:
            raise InputError(
                sample.points_path,
                "no points (a header but no rows): annotate the tile or remove it",
            )


def training_samples(folder: str | os.PathLike, require_labels: bool = False) -> list[LoadedSample]:
    """Every tile of a prepared folder to learn from, read and checked, each with points."""
    samples = list_samples(folder, require_points=True, require_labels=require_labels)
    loaded = [load_sample(s) for s in samples]  # every file is checked before any work
    check_training_points(samples, loaded)
    return loaded


__all__ = [
    "LoadedSample",
    "Sample",
    "check_label_size",
    "check_training_points",
    "find_by_stem",
    "index_by_stem",
    "list_samples",
    "load_sample",
    "pick_one",
    "training_samples",
    "unique_images",
]
