"""Reading and writing RGB tiles.

Every reader returns ``uint8`` arrays of shape ``(H, W, 3)``. Inputs that an H&E model
cannot use as they are get one documented treatment each:

* RGBA: composited over white (slide background is white); fully opaque alpha is dropped.
* 16-bit RGB: scaled to 8 bit (``round(v / 257)``).
* palette images: expanded to RGB.
* greyscale, two-channel, float or more than four channels: refused with :class:`InputError`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from instasam.errors import InputError
from instasam.io.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")


def _raw_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            # A broken TIFF makes tifffile log a warning and return an empty array: keep the
            # CLI's one error line (InputError) instead of an extra log line on stderr.
            tiff_log = logging.getLogger("tifffile")
            level = tiff_log.level
            tiff_log.setLevel(logging.ERROR)
            try:
                array = np.asarray(tifffile.imread(path, key=0))
            finally:
                tiff_log.setLevel(level)
            if array.size == 0:
                raise InputError(path, "cannot read image (no image data in the TIFF)")
            return array
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im)
            return np.asarray(im)
    except InputError:
        raise
    # Codec errors (a truncated zlib or LZW strip) are RuntimeError subclasses in imagecodecs.
    except (
        OSError,
        ValueError,
        RuntimeError,
        UnidentifiedImageError,
        tifffile.TiffFileError,
    ) as exc:
        raise InputError(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None


def as_rgb_uint8(array: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Return ``array`` as an ``(H, W, 3)`` uint8 RGB image, or raise :class:`InputError`."""
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 2)):
        raise InputError(path, "greyscale image; H&E segmentation needs an RGB image")
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(path, f"expected an RGB image, got an array of shape {array.shape}")
    if array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {array.dtype}; expected 8- or 16-bit RGB")
    if array.shape[2] == 4:
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        rgb = array[..., :3].astype(np.float32)
        array = np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(path, "empty image")
    return np.ascontiguousarray(array)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Raises
    ------
    InputError
        If the file is missing, unreadable, or not convertible to RGB (see module notes).
    """
    path = Path(path)
    return as_rgb_uint8(_raw_array(path), path)


def write_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image atomically; the format follows the suffix."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format=_pil_format(path))


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a boolean mask as an 8-bit greyscale PNG (255 = True), atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(tmp, format="PNG")


def _pil_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    return {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(
        suffix, "PNG"
    )


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
