"""Stain densities of H&E images, and images brought toward a reference staining.

A network trained on one lab's slides sees another lab's paler or darker staining as
different tissue. Colour deconvolution (Ruifrok and Johnston's H&E-DAB matrix, as in
:func:`skimage.color.rgb2hed`) separates each pixel's haematoxylin and eosin optical
densities; scaling them moves an image's staining toward that of the training tiles while
keeping its structure.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.color import hed2rgb, rgb2hed

from instasam.config import StainConfig

PERCENTILE = 95.0  # the densest pixels are nuclei (haematoxylin) and dense stroma (eosin)


def stain_densities(image: np.ndarray) -> tuple[float, float]:
    """The 95th percentiles of an RGB image's haematoxylin and eosin optical densities."""
    hed = rgb2hed(_unit_rgb(image))
    h, e = np.percentile(hed[..., :2].reshape(-1, 2), PERCENTILE, axis=0)
    return float(h), float(e)


def reference_densities(images: Iterable[np.ndarray]) -> tuple[float, float]:
    """The median over ``images`` of :func:`stain_densities`: a training set's staining."""
    values = np.array([stain_densities(im) for im in images], dtype=np.float64)
    if not len(values):
        raise ValueError("no images to take a stain reference from")
    h, e = np.median(values, axis=0)
    return float(h), float(e)


def stain_factors(
    source: tuple[float, float], reference: tuple[float, float], strength: float, max_factor: float
) -> np.ndarray:
    """Per-stain factors taking ``source`` densities ``strength`` of the way (in log terms)
    to ``reference``, each within ``1 / max_factor .. max_factor``; 1 where a density is
    not positive."""
    src, ref = np.asarray(source, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    factors = np.ones(2)
    valid = (src > 0) & (ref > 0)
    factors[valid] = (ref[valid] / src[valid]) ** strength
    return np.clip(factors, 1.0 / max_factor, max_factor)


def standardise_stain(
    image: np.ndarray, config: StainConfig, source: tuple[float, float] | None = None
) -> np.ndarray:
    """``image`` (uint8 RGB) with its stains scaled toward ``config.reference``.

    ``source`` is the staining to correct, e.g. a whole slide's, so that all its tiles get
    the same factors; None: the image's own :func:`stain_densities`. Returns ``image``
    itself when standardisation is off or would change nothing.
    """
    if not config.active:
        return image
    source = stain_densities(image) if source is None else source
    factors = stain_factors(source, config.reference, config.strength, config.max_factor)
    if np.allclose(factors, 1.0):
        return image
    hed = rgb2hed(_unit_rgb(image))
    hed[..., :2] *= factors
    return np.clip(np.round(hed2rgb(hed) * 255.0), 0, 255).astype(np.uint8)


def _unit_rgb(image: np.ndarray) -> np.ndarray:
    rgb = np.asarray(image)[..., :3]
    return rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
