"""Instance label maps: ``int32`` arrays ``(H, W)``, 0 = background, 1..N = nuclei.

On disk they are single-channel 16-bit PNG or TIFF (32-bit TIFF when ids exceed 65535),
or ``.npy``. Readers refuse colour masks and negative or fractional ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from instasam.errors import InputError
from instasam.io.atomic import atomic_path

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label map as ``int32`` ``(H, W)``.

    Raises
    ------
    InputError
        If the file is missing or unreadable, has more than one channel, or holds
        negative or non-integer values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            array = np.asarray(tifffile.imread(path, key=0))
        else:
            with Image.open(path) as im:
                array = np.asarray(im)
    # Codec errors (a truncated zlib or LZW strip) are RuntimeError subclasses in imagecodecs.
    except (
        OSError,
        ValueError,
        RuntimeError,
        UnidentifiedImageError,
        tifffile.TiffFileError,
    ) as exc:
        raise InputError(path, f"cannot read label map ({exc.__class__.__name__}: {exc})") from None
    return as_label_map(array, path)


def as_label_map(array: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Validate ``array`` as an instance label map and return it as ``int32``."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(
            path, f"label map must have one channel of instance ids, got shape {array.shape}"
        )
    if array.dtype == bool:
        raise InputError(path, "label map is a binary mask; instance ids are needed")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(path, "label map holds non-integer values")
    if array.size and array.min() < 0:
        raise InputError(path, "label map holds negative ids")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise InputError(path, "label map ids exceed the int32 range")
    return array.astype(np.int32)


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an instance label map atomically (TIFF: uint16 or uint32, zlib; PNG: uint16)."""
    path = Path(path)
    labels = np.asarray(labels)
    peak = int(labels.max()) if labels.size else 0
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, labels.astype(np.int32))
        elif suffix == ".png":
            if peak > 65535:
                raise ValueError(f"{path}: {peak} ids do not fit a 16-bit PNG; use .tif")
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
        else:
            dtype = np.uint16 if peak <= 65535 else np.uint32
            tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")


def find_label_file(folder: str | os.PathLike, stem: str) -> Path | None:
    """The label file named ``stem`` (any supported suffix) in ``folder``, if there is one."""
    for suffix in LABEL_SUFFIXES:
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None
