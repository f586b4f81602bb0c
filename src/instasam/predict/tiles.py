"""Prediction on tiles: sliding windows at the backbone's native size, batched, stitched.

Each window is one encoder pass (LiteMedSAM: 256 px; SAM ViT: 224 px resized to 1024);
windows overlap by ``PredictConfig.overlap`` pixels and only each window's core is kept,
so every pixel comes from a window where it is away from an inner edge. The stitched
foreground probability and distance maps are then post-processed into instances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from instasam.config import PostprocessConfig, PredictConfig
from instasam.model.instasam import InstaSAM, load_model
from instasam.postprocess import instances_from_maps
from instasam.tiling import pad_to, windows


@torch.no_grad()
def predict_maps(
    model: InstaSAM,
    image: np.ndarray,
    config: PredictConfig | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability ``(H, W)`` and distance maps ``(2, H, W)`` for a tile."""
    config = config or PredictConfig()
    size = model.crop_size
    h, w = image.shape[:2]
    padded = pad_to(image, size)
    fg = np.zeros((h, w), dtype=np.float32)
    hv = np.zeros((2, h, w), dtype=np.float32)
    wins = windows((h, w), size, min(config.overlap, size // 2))
    batch = max(1, config.batch_size)
    for start in tqdm(range(0, len(wins), batch), desc="windows", disable=not progress):
        group = wins[start : start + batch]
        crops = np.stack([win.crop(padded) for win in group])
        tensor = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
        maps = model(tensor).numpy()
        for win, out in zip(group, maps, strict=True):
            fg[win.core_slices] = out[0][win.core_local]
            hv[(slice(None), *win.core_slices)] = out[1:][(slice(None), *win.core_local)]
    return fg, hv


def predict_instances(
    model: InstaSAM,
    image: np.ndarray,
    config: PredictConfig | None = None,
    postprocess: PostprocessConfig | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``(H, W)`` int32 instance map for an RGB tile."""
    fg, hv = predict_maps(model, image, config, progress)
    return instances_from_maps(fg, hv, postprocess or model.config.postprocess)


@dataclass
class ModelPredictor:
    """A trained model behind the :class:`~instasam.predict.InstancePredictor` protocol."""

    model: InstaSAM
    config: PredictConfig
    postprocess: PostprocessConfig
    mpp: float | None

    def predict_maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict_maps(self.model, image, self.config)

    def predict_instances(self, image: np.ndarray) -> np.ndarray:
        fg, hv = self.predict_maps(image)
        return instances_from_maps(fg, hv, self.postprocess)


def load_predictor(
    path: str | os.PathLike,
    config: PredictConfig | None = None,
    postprocess: PostprocessConfig | None = None,
    backbone_checkpoint: str | None = None,
) -> ModelPredictor:
    """Load ``RUN/model.pt`` as a predictor (settings default to those saved with it)."""
    model = load_model(path, backbone_checkpoint=backbone_checkpoint)
    return ModelPredictor(
        model=model,
        config=config or model.config.predict,
        postprocess=postprocess or model.config.postprocess,
        mpp=model.config.train.mpp,
    )
