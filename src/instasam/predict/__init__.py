"""Inference: tiles (``predict.tiles``) and whole slides (``predict.slides``).

Anything that turns an RGB tile into an instance label map can drive the slide pipeline;
the trained InstaSAM model is one such :class:`InstancePredictor`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class InstancePredictor(Protocol):
    """Maps an RGB tile to nuclei.

    Attributes
    ----------
    mpp : float or None
        Microns per pixel of the images the model was trained on (None: unknown).
    """

    mpp: float | None

    def predict_instances(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB of any size -> ``(H, W)`` int32 instance map, 0 = background."""
        ...
