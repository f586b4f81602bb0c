"""The paper's training augmentations as one random affine map per crop.

Random resize (0.8-1.25), horizontal flip, a random affine (probability 0.3) and a
random 90-degree rotation are composed into one 2x3 matrix from crop coordinates to tile
coordinates, so the image (bilinear), the label maps (nearest) and the points (exact)
move together and the image is resampled only once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from instasam.config import AugmentConfig

MAX_AFFINE_DEGREES = 15.0  # rotation of the "random affine" step
MAX_SHEAR = 0.1  # shear factor of the "random affine" step


@dataclass(frozen=True)
class CropTransform:
    """``tile = matrix @ [u, v, 1]`` for crop pixel ``(u, v)`` (x, y order)."""

    matrix: np.ndarray  # (2, 3)
    size: int

    def tile_coordinates(self) -> np.ndarray:
        """``(2, size, size)`` tile (row, col) sampled by each crop pixel."""
        v, u = np.mgrid[0 : self.size, 0 : self.size].astype(np.float64)
        x = self.matrix[0, 0] * u + self.matrix[0, 1] * v + self.matrix[0, 2]
        y = self.matrix[1, 0] * u + self.matrix[1, 1] * v + self.matrix[1, 2]
        return np.stack([y, x])

    def points_to_crop(self, points: np.ndarray) -> np.ndarray:
        """Map tile points ``(N, 2)`` (x, y) into crop coordinates."""
        linear, offset = self.matrix[:, :2], self.matrix[:, 2]
        return (np.linalg.inv(linear) @ (points - offset).T).T


def random_transform(
    tile_shape: tuple[int, int], size: int, config: AugmentConfig, rng: np.random.Generator
) -> CropTransform:
    """A random crop of ``size`` x ``size`` with the paper's augmentations."""
    linear = np.eye(2)
    scale = rng.uniform(*config.scale_range)
    linear = linear / scale  # zooming in by `scale` samples the tile more densely
    if rng.random() < config.hflip_p:
        linear = linear @ np.diag([-1.0, 1.0])
    if rng.random() < config.rot90_p:
        k = int(rng.integers(1, 4))
        c, s = np.cos(k * np.pi / 2), np.sin(k * np.pi / 2)
        linear = linear @ np.round(np.array([[c, -s], [s, c]]))
    if rng.random() < config.affine_p:
        angle = np.deg2rad(rng.uniform(-MAX_AFFINE_DEGREES, MAX_AFFINE_DEGREES))
        c, s = np.cos(angle), np.sin(angle)
        shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR)
        linear = linear @ np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    # Place the crop's centre uniformly over the tile positions that keep it inside when
    # the tile is large enough; reflection fills the rest otherwise.
    half = (size - 1) / 2
    extent = np.abs(linear) @ np.array([half, half])
    h, w = tile_shape
    cx = rng.uniform(min(extent[0], w / 2), max(w - 1 - extent[0], w / 2))
    cy = rng.uniform(min(extent[1], h / 2), max(h - 1 - extent[1], h / 2))
    offset = np.array([cx, cy]) - linear @ np.array([half, half])
    return CropTransform(np.column_stack([linear, offset]), size)


def apply_to_image(image: np.ndarray, transform: CropTransform) -> np.ndarray:
    """Resample an ``(H, W, 3)`` uint8 image into the crop (bilinear, reflected border)."""
    coords = transform.tile_coordinates()
    channels = [
        ndi.map_coordinates(image[..., c].astype(np.float32), coords, order=1, mode="mirror")
        for c in range(image.shape[2])
    ]
    return np.clip(np.round(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def apply_to_labels(labels: np.ndarray, transform: CropTransform, fill: int) -> np.ndarray:
    """Resample a label map into the crop (nearest); outside the tile gets ``fill``."""
    return ndi.map_coordinates(
        labels, transform.tile_coordinates(), order=0, mode="constant", cval=fill
    )


def points_in_crop(points: np.ndarray, transform: CropTransform) -> tuple[np.ndarray, np.ndarray]:
    """Crop coordinates of the points that land inside the crop, and their indices."""
    local = transform.points_to_crop(points) if len(points) else np.zeros((0, 2))
    inside = np.all((local >= 0) & (local <= transform.size - 1), axis=1)
    return local[inside], np.nonzero(inside)[0]
