"""Nucleus outlines drawn over an image, for `instasam predict --overlay` and the report."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from instasam.io.images import write_rgb

#: Colours that stay visible on H&E (pink/purple) and apart for red-green colour blindness.
GT_COLOUR = (0, 255, 255)  # cyan
PRED_COLOUR = (255, 215, 0)  # yellow
#: Background for overlays drawn without an image.
GREY = 128

Colour = tuple[int, int, int] | str


def as_rgb_colour(colour: Colour) -> tuple[int, int, int]:
    """``(r, g, b)`` from a tuple of 0..255 ints or a ``"#rrggbb"`` string."""
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if len(text) != 6:
            raise ValueError(f"colour {colour!r} is not '#rrggbb'")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    rgb = tuple(int(v) for v in colour)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {colour!r} is not three values in 0..255")
    return rgb  # type: ignore[return-value]


def outline_mask(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels of each nucleus within ``thickness`` pixels of its border (inner outline).

    A nucleus pixel belongs to the outline when a pixel of another id (background
    included) lies in the ``(2 * thickness + 1)`` square around it, so touching nuclei
    keep separate outlines.
    """
    labels = np.asarray(labels)
    if thickness < 1:
        raise ValueError("thickness must be at least 1")
    size = 2 * thickness + 1
    high = ndi.maximum_filter(labels, size=size, mode="nearest")
    low = ndi.minimum_filter(labels, size=size, mode="nearest")
    return (labels > 0) & ((high != labels) | (low != labels))


def _background(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if image is None:
        return np.full((*shape, 3), GREY, dtype=np.uint8)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey, got {image.shape}")
    if image.shape[:2] != shape:
        raise ValueError(f"image size {image.shape[:2]} does not match the labels {shape}")
    return np.array(image, dtype=np.uint8, copy=True)


def overlay_outlines(
    image: np.ndarray | None,
    labels_list: Sequence[np.ndarray],
    colours: Sequence[Colour],
    thickness: int = 1,
) -> np.ndarray:
    """Draw the outlines of each label map on ``image``; later maps are drawn on top.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8, (H, W) grey, or None
        Background; ``None`` gives a plain grey background.
    labels_list : sequence of ndarray (H, W)
        Instance label maps, 0 = background.
    colours : sequence of colours
        One ``(r, g, b)`` or ``"#rrggbb"`` per label map.
    thickness : int
        Outline width in pixels.

    Returns
    -------
    ndarray (H, W, 3) uint8
        A new RGB image; ``image`` is left unchanged.
    """
    if len(labels_list) != len(colours):
        raise ValueError(f"{len(labels_list)} label maps but {len(colours)} colours")
    if not labels_list and image is None:
        raise ValueError("nothing to draw: no image and no label map")
    shape = np.asarray(labels_list[0]).shape if labels_list else np.asarray(image).shape[:2]
    out = _background(image, tuple(shape))
    for labels, colour in zip(labels_list, colours, strict=True):
        labels = np.asarray(labels)
        if labels.shape != out.shape[:2]:
            raise ValueError(f"label map size {labels.shape} does not match {out.shape[:2]}")
        out[outline_mask(labels, thickness)] = as_rgb_colour(colour)
    return out


def write_overlay_png(
    path: str | os.PathLike,
    image: np.ndarray | None,
    labels: np.ndarray,
    colour: Colour = PRED_COLOUR,
    thickness: int = 1,
) -> None:
    """Write ``image`` with the outlines of ``labels`` as a PNG, atomically."""
    write_rgb(path, overlay_outlines(image, [labels], [colour], thickness))


def downscale_for_display(
    image: np.ndarray | None, labels_list: Sequence[np.ndarray], max_side: int
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Shrink an image (area averaging) and its label maps (nearest id) to ``max_side``.

    Label maps are shrunk before the outlines are drawn so that the outlines stay one
    pixel wide and visible instead of being averaged away.
    """
    shape = np.asarray(labels_list[0]).shape if labels_list else np.asarray(image).shape[:2]
    height, width = int(shape[0]), int(shape[1])
    scale = max_side / max(height, width)
    if scale >= 1:
        return image, [np.asarray(lab) for lab in labels_list]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = ((np.arange(new_h) + 0.5) * height / new_h).astype(np.intp)
    cols = ((np.arange(new_w) + 0.5) * width / new_w).astype(np.intp)
    small_labels = [np.asarray(lab)[rows][:, cols] for lab in labels_list]
    small_image = None
    if image is not None:
        pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
        small_image = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BOX))
    return small_image, small_labels


def overlay_png_bytes(
    image: np.ndarray | None,
    labels_list: Sequence[np.ndarray],
    colours: Sequence[Colour],
    max_side: int | None = None,
    thickness: int = 1,
) -> bytes:
    """Compact PNG of :func:`overlay_outlines`, optionally shrunk to ``max_side`` pixels.

    The background is reduced to a 256-colour palette that reserves one exact entry per
    outline colour: about a third of the size of an RGB PNG of an H&E tile, outlines
    unchanged.
    """
    if len(labels_list) != len(colours):
        raise ValueError(f"{len(labels_list)} label maps but {len(colours)} colours")
    if max_side is not None:
        image, labels_list = downscale_for_display(image, labels_list, max_side)
    if not labels_list and image is None:
        raise ValueError("nothing to draw: no image and no label map")
    shape = np.asarray(labels_list[0]).shape if labels_list else np.asarray(image).shape[:2]
    base = _background(image, tuple(shape))
    n_reserved = len(colours)
    palette_image = Image.fromarray(base).quantize(colors=256 - n_reserved)
    index = np.array(palette_image, dtype=np.uint8)
    palette = palette_image.getpalette()[: 3 * (256 - n_reserved)]
    palette += [0] * (3 * (256 - n_reserved) - len(palette))
    for k, (labels, colour) in enumerate(zip(labels_list, colours, strict=True)):
        labels = np.asarray(labels)
        if labels.shape != index.shape:
            raise ValueError(f"label map size {labels.shape} does not match {index.shape}")
        index[outline_mask(labels, thickness)] = 256 - n_reserved + k
        palette += list(as_rgb_colour(colour))
    out = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    out.putpalette(palette)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
