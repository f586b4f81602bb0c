"""Augmented training crops of the nuclei network, with their targets.

Geometry is the paper's (:mod:`instasam.augment`: resize, flip, affine, rot90, crop);
colour is ours: the network reads raw RGB, and H&E varies from lab to lab far more than
between the 12 Kumar training tiles, so each crop's stain is jittered in
haematoxylin-eosin-DAB optical-density space (Ruifrok & Johnston's colour deconvolution)
and its brightness and contrast perturbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import hed2rgb, rgb2hed

from instasam import IGNORE
from instasam.augment import apply_to_image, apply_to_labels, random_transform
from instasam.config import AugmentConfig, NetTrainConfig
from instasam.targets import hv_maps


@dataclass
class LabelledTile:
    """A training image and the fixed labels it learns from (IGNORE / 0 / nucleus id)."""

    stem: str
    image: np.ndarray
    labels: np.ndarray


@dataclass
class CropTargets:
    """What the loss compares the network's three maps with, for one crop."""

    foreground: np.ndarray  # (H, W) float32 0/1
    distance: np.ndarray  # (2, H, W) float32, horizontal and vertical, in [-1, 1]
    weight: np.ndarray  # (H, W) float32: 0 on ignored pixels


def area_weights(tiles: list[LabelledTile]) -> np.ndarray:
    """Probability of drawing each tile: its share of the pixels (uniform over area)."""
    areas = np.array([t.image.shape[0] * t.image.shape[1] for t in tiles], dtype=np.float64)
    return areas / areas.sum()


def sample_crop(
    tile: LabelledTile, size: int, augment: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An augmented ``size`` x ``size`` crop: RGB uint8 and its labels (IGNORE outside)."""
    transform = random_transform(tile.labels.shape, size, augment, rng)
    image = apply_to_image(tile.image, transform)
    return image, apply_to_labels(tile.labels, transform, fill=IGNORE)


def jitter_colour(
    image: np.ndarray, config: NetTrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """``image`` with its stain and intensity randomly perturbed (uint8 RGB)."""
    rgb = image.astype(np.float64) / 255.0
    if config.hed_scale > 0 or config.hed_shift > 0:
        hed = rgb2hed(rgb)
        scale = 1.0 + rng.uniform(-config.hed_scale, config.hed_scale, size=3)
        shift = rng.uniform(-config.hed_shift, config.hed_shift, size=3)
        rgb = hed2rgb(hed * scale + shift)
    if config.intensity > 0:
        contrast = 1.0 + rng.uniform(-config.intensity, config.intensity)
        brightness = rng.uniform(-config.intensity, config.intensity) / 2
        rgb = (rgb - 0.5) * contrast + 0.5 + brightness
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def crop_targets(labels: np.ndarray, hv_scaling: str = "hovernet") -> CropTargets:
    """Foreground, distance maps and loss weight of a crop's label map."""
    known = labels != IGNORE
    instances = np.where(known, labels, 0).astype(np.int32)
    return CropTargets(
        foreground=(instances > 0).astype(np.float32),
        distance=hv_maps(instances, scaling=hv_scaling).astype(np.float32),
        weight=known.astype(np.float32),
    )


def training_batch(
    tiles: list[LabelledTile],
    config: NetTrainConfig,
    augment: AugmentConfig,
    hv_scaling: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[CropTargets]]:
    """``(B, H, W, 3)`` uint8 crops drawn over the tiles' area, and their targets."""
    p = area_weights(tiles)
    images, targets = [], []
    for _ in range(config.batch_size):
        tile = tiles[rng.choice(len(tiles), p=p)]
        image, labels = sample_crop(tile, config.crop_size, augment, rng)
        images.append(jitter_colour(image, config, rng))
        targets.append(crop_targets(labels, hv_scaling))
    return np.stack(images), targets
