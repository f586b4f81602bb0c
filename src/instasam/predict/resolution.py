"""Images brought to the resolution a network was trained at, and its output brought back.

A network trained on 40x tiles (0.25 µm/px) sees a 20x nucleus as half its width, which
it has rarely met: on the Kumar test tiles shrunk to half size, the shipped model's AJI
falls from 57 to 42, and resampling them back to 0.25 µm/px first restores 54 (README).
"""

from __future__ import annotations

import numpy as np

# Within this relative difference of the network's resolution an image is used as it is:
# the training's scale augmentation (0.8-1.25) covers it, and resampling blurs.
TOLERANCE = 0.1


def resolution_scale(image_mpp: float | None, target_mpp: float | None) -> float:
    """The factor to resize an image at ``image_mpp`` µm/px by to reach ``target_mpp``;
    1 when either is unknown or they are within :data:`TOLERANCE` of each other."""
    if image_mpp is None or target_mpp is None:
        return 1.0
    scale = image_mpp / target_mpp
    return 1.0 if abs(scale - 1.0) <= TOLERANCE else scale


def resized_image(image: np.ndarray, scale: float) -> np.ndarray:
    """An RGB ``uint8`` image resized by ``scale`` (bilinear), at least 1 px each way."""
    h, w = image.shape[:2]
    return image_resized_to(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def image_resized_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGB ``uint8`` image resized to ``shape`` (rows, columns; bilinear)."""
    from PIL import Image

    return np.asarray(
        Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    )


def labels_resized_to(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An instance map resized to ``shape`` (nearest neighbour: ids are not blended)."""
    rows = _nearest_index(labels.shape[0], shape[0])
    cols = _nearest_index(labels.shape[1], shape[1])
    return np.ascontiguousarray(labels[rows][:, cols])


def maps_resized_to(
    fg: np.ndarray, hv: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground ``(H, W)`` and distance ``(2, H, W)`` maps (and a centre map, as a third
    channel) resized to ``shape`` (bilinear)."""
    return _float_resized(fg, shape), np.stack([_float_resized(m, shape) for m in hv])


def _float_resized(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode F
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _nearest_index(source: int, target: int) -> np.ndarray:
    """For each of ``target`` output pixels, the source pixel whose centre is nearest."""
    centres = (np.arange(target) + 0.5) * (source / target)
    return np.minimum(centres.astype(np.int64), source - 1)
