"""CPM17: ``Images/<name>.png`` tiles with ``Labels/<name>.mat`` holding ``inst_map``.

The layout is the one HoVer-Net distributes (``cpm17/{train,test}/{Images,Labels}``);
lower-case ``images/`` and ``labels/`` are accepted too. ``inst_map`` is an ``(H, W)``
array of instance ids (0 = background), usually ``float64`` or ``int32``.

MATLAB v7.3 files are HDF5 containers, which SciPy cannot read: they are read with
``h5py`` when it is installed (MATLAB stores arrays column-major, so the HDF5 dataset is
the transpose of the map), and refused with that reason otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError, matfile_version

from instasam.errors import InputError
from instasam.io.folder import Sample, check_label_size, index_by_stem, pick_one, unique_images
from instasam.io.images import read_rgb
from instasam.io.labels import as_label_map

INST_KEY = "inst_map"


def read_cpm17_label(path: str | os.PathLike) -> np.ndarray:
    """The ``inst_map`` of a CPM17 ``.mat`` file as an ``(H, W)`` int32 instance map.

    Raises
    ------
    InputError
        If the file is missing, not a MATLAB file, a v7.3 file without ``h5py`` installed,
        has no ``inst_map`` (the variables it has are listed), or ``inst_map`` is not a 2-D
        array of non-negative integer ids.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        major, _ = matfile_version(path)
    except (OSError, ValueError, TypeError, MatReadError) as exc:
        raise InputError(path, f"not a MATLAB .mat file ({exc})") from None
    array = _read_hdf5_mat(path) if major == 2 else _read_classic_mat(path)
    if array.dtype.kind not in "biuf":
        raise InputError(path, f"'{INST_KEY}' is not a numeric array (MATLAB {array.dtype})")
    return as_label_map(array, path)


def _read_classic_mat(path: Path) -> np.ndarray:
    try:
        data = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as exc:
        raise InputError(path, f"cannot read .mat file ({exc.__class__.__name__}: {exc})") from None
    if INST_KEY not in data:
        raise InputError(path, f"no '{INST_KEY}' variable (found: {_names(data)})")
    return np.asarray(data[INST_KEY])


def _read_hdf5_mat(path: Path) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise InputError(
            path,
            "MATLAB v7.3 (HDF5) .mat file; install h5py to read it, "
            "or re-save it in MATLAB with save(..., '-v7')",
        ) from None
    try:
        with h5py.File(path, "r") as mat:
            if INST_KEY not in mat:
                raise InputError(path, f"no '{INST_KEY}' variable (found: {_names(mat)})")
            # MATLAB writes column-major: the dataset is the transposed map.
            return np.asarray(mat[INST_KEY]).T
    except OSError as exc:
        raise InputError(path, f"cannot read v7.3 .mat file ({exc})") from None


def _names(mapping: Collection[str]) -> str:
    names = [k for k in mapping if not k.startswith("#") and not k.startswith("__")]
    return ", ".join(names) or "none"


def cpm17_layout(src: str | os.PathLike) -> tuple[Path, Path]:
    """The ``Images`` and ``Labels`` folders of a CPM17 train or test folder."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "folder not found")
    images = next((src / n for n in ("Images", "images") if (src / n).is_dir()), None)
    labels = next((src / n for n in ("Labels", "labels") if (src / n).is_dir()), None)
    if images is None or labels is None:
        raise InputError(src, "expected Images/ and Labels/ folders (a CPM17 train or test folder)")
    return images, labels


def list_cpm17(src: str | os.PathLike, only: Collection[str] | None = None) -> list[Sample]:
    """One :class:`Sample` per image of a CPM17 folder, its ``label_path`` the ``.mat`` file.

    ``only`` keeps the images with these stems. An image without its ``.mat`` is an error.
    """
    images_dir, labels_dir = cpm17_layout(src)
    mats = index_by_stem(labels_dir, (".mat",))
    samples = []
    for image in unique_images(images_dir):
        if only is not None and image.stem not in only:
            continue
        mat = pick_one(mats, image.stem, labels_dir)
        if mat is None:
            raise InputError(labels_dir / f"{image.stem}.mat", f"missing; needed for {image.name}")
        samples.append(Sample(image.stem, image, mat))
    return samples


def load_cpm17_tile(
    image_path: str | os.PathLike, mat_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """A CPM17 tile and its instance map; a map of another size is an error naming both."""
    image = read_rgb(image_path)
    labels = read_cpm17_label(mat_path)
    check_label_size(labels, image, mat_path, image_path)
    return image, labels


__all__ = ["cpm17_layout", "list_cpm17", "load_cpm17_tile", "read_cpm17_label"]
