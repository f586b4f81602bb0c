"""Augmented training crops of the nuclei network, with their targets.

Geometry is the paper's (:mod:`instasam.augment`: resize, flip, affine, rot90, crop);
colour is ours: the network reads raw RGB, and H&E varies from lab to lab far more than
between the 12 Kumar training tiles, so each crop's stain is jittered in
haematoxylin-eosin-DAB optical-density space (Ruifrok & Johnston's colour deconvolution)
and its brightness and contrast perturbed.

For the fused network each tile also carries SAM's whole-tile embedding (one cell per 4x4
px), resampled into the crop with the crop's own transform, so the embedding moves with
the image. Colour jitter does not reach it: it was computed once, from the tile as it is.

For a network with a centre head each tile also carries its points, and each crop a
Gaussian at every point, drawn where the crop's transform puts it (:func:`centre_heatmap`):
the one supervision the user gave, unfiltered by SAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed
from torch.nn import functional as F

from instasam import IGNORE
from instasam.augment import CropTransform, apply_to_image, apply_to_labels, random_transform
from instasam.config import AugmentConfig, NetTrainConfig
from instasam.model.sam_embedding import STRIDE
from instasam.predict.resolution import image_resized_to, resized_image
from instasam.targets import hv_maps


@dataclass
class LabelledTile:
    """A training image and the fixed labels it learns from (IGNORE / 0 / nucleus id)."""

    stem: str
    image: np.ndarray
    labels: np.ndarray
    embedding: np.ndarray | None = None  # (256, S/4, S/4) for the fused network
    points: np.ndarray | None = None  # (N, 2) x, y: for a network with a centre head


@dataclass
class CropTargets:
    """What the loss compares the network's three maps with, for one crop."""

    foreground: np.ndarray  # (H, W) float32 0/1
    distance: np.ndarray  # (2, H, W) float32, horizontal and vertical, in [-1, 1]
    weight: np.ndarray  # (H, W) float32: 0 on ignored pixels
    centres: np.ndarray | None = None  # (H, W) float32 in [0, 1]: Gaussians at the points
    inside: np.ndarray | None = None  # (H, W) float32: 1 where the crop samples the tile


def area_weights(tiles: list[LabelledTile]) -> np.ndarray:
    """Probability of drawing each tile: its share of the pixels (uniform over area)."""
    areas = np.array([t.image.shape[0] * t.image.shape[1] for t in tiles], dtype=np.float64)
    return areas / areas.sum()


def sample_crop(
    tile: LabelledTile, size: int, augment: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, CropTransform]:
    """An augmented ``size`` x ``size`` crop: RGB uint8, its labels (IGNORE outside) and
    the transform that made it."""
    transform = random_transform(tile.labels.shape, size, augment, rng)
    image = apply_to_image(tile.image, transform)
    return image, apply_to_labels(tile.labels, transform, fill=IGNORE), transform


def crop_embedding(embedding: np.ndarray, transform: CropTransform) -> np.ndarray:
    """``(C, size/4, size/4)``: a tile's embedding ``(C, h, w)`` resampled into the crop.

    Each crop cell takes the bilinear value at the tile position of its centre, so a crop
    at an offset that is a multiple of 4 px, without scaling, copies the tile's cells.
    """
    cells = transform.size // STRIDE
    centre = STRIDE * np.arange(cells) + (STRIDE - 1) / 2
    v, u = np.meshgrid(centre, centre, indexing="ij")
    m = transform.matrix
    x = (m[0, 0] * u + m[0, 1] * v + m[0, 2] - (STRIDE - 1) / 2) / STRIDE
    y = (m[1, 0] * u + m[1, 1] * v + m[1, 2] - (STRIDE - 1) / 2) / STRIDE
    h, w = embedding.shape[-2:]
    grid = np.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], axis=-1)
    sampled = F.grid_sample(
        torch.from_numpy(np.asarray(embedding, dtype=np.float32))[None],
        torch.from_numpy(grid.astype(np.float32))[None],
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return sampled[0].numpy()


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


def downscaled(image: np.ndarray, config: NetTrainConfig, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 RGB), with probability ``config.downscale_p`` shrunk by a factor
    from ``config.downscale_range`` and enlarged back to its size: the detail it keeps is
    what a lower magnification's scan has after resampling to the training's."""
    if config.downscale_p <= 0 or rng.random() >= config.downscale_p:
        return image
    factor = rng.uniform(*config.downscale_range)
    small = resized_image(image, factor)
    return image_resized_to(small, image.shape[:2])


def crop_targets(labels: np.ndarray, hv_scaling: str = "hovernet") -> CropTargets:
    """Foreground, distance maps and loss weight of a crop's label map."""
    known = labels != IGNORE
    instances = np.where(known, labels, 0).astype(np.int32)
    return CropTargets(
        foreground=(instances > 0).astype(np.float32),
        distance=hv_maps(instances, scaling=hv_scaling).astype(np.float32),
        weight=known.astype(np.float32),
    )


def centre_heatmap(points: np.ndarray, transform: CropTransform, sigma: float) -> np.ndarray:
    """``(size, size)`` float32: the larger of the Gaussians (peak 1, ``sigma`` px in the
    tile) at the tile's ``points`` (x, y), drawn in the crop.

    Points just outside the crop count too, since their Gaussians reach in; the crop's
    scale stretches each Gaussian as it stretches the nucleus.
    """
    size = transform.size
    heat = np.zeros((size, size), dtype=np.float32)
    if not len(points):
        return heat
    local = transform.points_to_crop(np.asarray(points, dtype=np.float64))
    crop_sigma = sigma * np.sqrt(abs(np.linalg.det(np.linalg.inv(transform.matrix[:, :2]))))
    reach = 3.0 * crop_sigma
    near = np.all((local >= -reach) & (local <= size - 1 + reach), axis=1)
    grid = np.arange(size, dtype=np.float64)
    for x, y in local[near]:
        c0, c1 = int(max(0, np.floor(x - reach))), int(min(size, np.ceil(x + reach) + 1))
        r0, r1 = int(max(0, np.floor(y - reach))), int(min(size, np.ceil(y + reach) + 1))
        if c0 >= c1 or r0 >= r1:
            continue
        gx = np.exp(-((grid[c0:c1] - x) ** 2) / (2 * crop_sigma**2))
        gy = np.exp(-((grid[r0:r1] - y) ** 2) / (2 * crop_sigma**2))
        np.maximum(heat[r0:r1, c0:c1], np.outer(gy, gx).astype(np.float32), out=heat[r0:r1, c0:c1])
    return heat


def inside_tile(transform: CropTransform, shape: tuple[int, int]) -> np.ndarray:
    """``(size, size)`` float32: 1 where the crop pixel samples the tile, 0 beyond it."""
    rows, cols = transform.tile_coordinates()
    inside = (rows >= -0.5) & (rows <= shape[0] - 0.5) & (cols >= -0.5) & (cols <= shape[1] - 0.5)
    return inside.astype(np.float32)


def training_batch(
    tiles: list[LabelledTile],
    config: NetTrainConfig,
    augment: AugmentConfig,
    hv_scaling: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[CropTargets], np.ndarray | None]:
    """``(B, H, W, 3)`` uint8 crops drawn over the tiles' area, their targets, and
    ``(B, 256, H/4, W/4)`` embeddings where the tiles have them (else None)."""
    p = area_weights(tiles)
    images, targets, embeddings = [], [], []
    for _ in range(config.batch_size):
        tile = tiles[rng.choice(len(tiles), p=p)]
        image, labels, transform = sample_crop(tile, config.crop_size, augment, rng)
        images.append(jitter_colour(downscaled(image, config, rng), config, rng))
        crop = crop_targets(labels, hv_scaling)
        if tile.points is not None:
            crop.centres = centre_heatmap(tile.points, transform, config.centre_sigma)
            crop.inside = inside_tile(transform, tile.labels.shape)
        targets.append(crop)
        if tile.embedding is not None:
            embeddings.append(crop_embedding(tile.embedding, transform))
    stacked = np.stack(embeddings) if embeddings else None
    return np.stack(images), targets, stacked
