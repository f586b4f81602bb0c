"""Overlapping windows over an image and the seams between them.

A window's *core* is the part of it closer to its own centre than to any neighbour's:
stitching the cores of all windows covers the image exactly once, and every pixel comes
from a window where it lies at least ``overlap / 2`` pixels from an inner window edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``[0, length)`` with ``overlap``.

    The last window is moved back to end exactly at ``length``; an axis shorter than one
    window gets a single window at 0 (the caller pads).
    """
    if size <= overlap:
        raise ValueError(f"window size {size} must exceed the overlap {overlap}")
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return sorted(set(starts))


def core_spans(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each window's core along one axis (absolute coordinates)."""
    spans = []
    for i, start in enumerate(starts):
        lo = 0 if i == 0 else (start + starts[i - 1] + size) // 2
        hi = (
            min(length, start + size)
            if i == len(starts) - 1
            else (starts[i + 1] + start + size) // 2
        )
        spans.append((lo, hi))
    return spans


@dataclass(frozen=True)
class Window:
    """One window: its position and the part of it that is kept when stitching."""

    y: int
    x: int
    size: int
    core_y: tuple[int, int]
    core_x: tuple[int, int]

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The window's pixels from an ``(H, W, ...)`` array (padded beyond its border)."""
        return array[self.y : self.y + self.size, self.x : self.x + self.size]

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """Absolute slices of the core."""
        return slice(*self.core_y), slice(*self.core_x)

    @property
    def core_local(self) -> tuple[slice, slice]:
        """The core as slices into the window."""
        return (
            slice(self.core_y[0] - self.y, self.core_y[1] - self.y),
            slice(self.core_x[0] - self.x, self.core_x[1] - self.x),
        )


def windows(shape: tuple[int, int], size: int, overlap: int) -> list[Window]:
    """Windows covering an ``(H, W)`` image, row by row."""
    h, w = shape
    ys, xs = window_starts(h, size, overlap), window_starts(w, size, overlap)
    spans_y, spans_x = core_spans(ys, size, h), core_spans(xs, size, w)
    return [
        Window(y, x, size, sy, sx)
        for y, sy in zip(ys, spans_y, strict=True)
        for x, sx in zip(xs, spans_x, strict=True)
    ]


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Pad ``(H, W, ...)`` at the bottom/right to at least ``size`` by reflection."""
    return pad_bottom_right(image, size, size)


def pad_bottom_right(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad ``(H, W, ...)`` at the bottom/right to at least ``height`` x ``width``, reflected."""
    h, w = image.shape[:2]
    ph, pw = max(0, height - h), max(0, width - w)
    if not ph and not pw:
        return image
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Pad ``(H, W, ...)`` at the bottom/right to multiples of ``multiple``, reflected."""
    h, w = image.shape[:2]
    return pad_bottom_right(image, h + -h % multiple, w + -w % multiple)
