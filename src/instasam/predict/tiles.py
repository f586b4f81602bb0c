"""Prediction on tiles: sliding windows at the backbone's native size, batched, stitched.

Each window is one encoder pass (LiteMedSAM: 256 px; SAM ViT: 224 px resized to 1024);
windows overlap by ``PredictConfig.overlap`` pixels and only each window's core is kept,
so every pixel comes from a window where it is away from an inner edge. The stitched
foreground probability and distance maps are then post-processed into instances.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from instasam.config import PostprocessConfig, PredictConfig, StainConfig
from instasam.errors import InputError
from instasam.model.instasam import InstaSAM, image_to_tensor, load_model, load_payload
from instasam.model.sam_embedding import Embed, embedding_for
from instasam.model.unet import NucleiUNet, is_net_checkpoint, net_from_payload
from instasam.postprocess import instances_from_maps
from instasam.pretrained import resolve_model
from instasam.stain import standardise_stain
from instasam.tiling import pad_to, pad_to_multiple, windows
from instasam.training.precision import autocast, resolve_device, resolve_precision


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
    precision: str = "auto",
    flips: bool = False,
    device: str = "cpu",
    stain_strength: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ModelPredictor | NetPredictor:
    """Load a model as a predictor: a shipped model's name, a nuclei network's or an
    InstaSAM run's ``model.pt``. Settings default to those saved with the model (with
    ``flips``, a nuclei network's setting for flips where it has one); ``overrides``
    replaces single post-processing settings (e.g. ``fg_threshold``).

    ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"``) is where a nuclei network runs; the
    paper's InstaSAM models run on the CPU only. ``stain_strength`` replaces a nuclei network's
    saved stain strength (:class:`~instasam.config.StainConfig`).
    """
    path = resolve_model(path)
    device = resolve_device(device)
    payload = load_payload(path)
    if is_net_checkpoint(payload):
        net, net_config = net_from_payload(payload, path)
        saved = net_config.postprocess_for(flips)
        postprocess = replace(postprocess or saved, **(overrides or {}))
        _check_markers(postprocess, net_config.net.centre_head, path)
        net.to(device)
        chosen = resolve_precision(precision, device=device)
        embed = None
        if net_config.net.sam_backbone is not None:
            from instasam.model.sam_embedding import SamEmbedder

            embed = SamEmbedder(net_config.net.sam_backbone, chosen)
        return NetPredictor(
            net=net,
            postprocess=postprocess,
            mpp=net_config.train.mpp,
            precision=chosen,
            flips=flips,
            embed=embed,
            stain=stain_with_strength(net_config.stain, stain_strength, path),
        )
    if stain_strength:
        raise InputError(path, "an InstaSAM (--arch instasam) model has no stain standardisation")
    if device != "cpu":
        raise InputError(path, "an InstaSAM (--arch instasam) model runs on the CPU only")
    model = load_model(path, backbone_checkpoint=backbone_checkpoint, payload=payload)
    postprocess = replace(postprocess or model.config.postprocess, **(overrides or {}))
    _check_markers(postprocess, False, path)
    return ModelPredictor(
        model=model,
        config=config or model.config.predict,
        postprocess=postprocess,
        mpp=model.config.train.mpp,
    )


def _check_markers(postprocess: PostprocessConfig, centre_head: bool, path) -> None:
    if postprocess.markers != "edges" and not centre_head:
        reason = f"has no centre head, so its watershed cannot use --markers {postprocess.markers}"
        raise InputError(path, reason)


# -- the full-resolution nuclei network ----------------------------------------------------
NET_WINDOW = 1024  # larger images go through in windows this big, to bound memory
NET_OVERLAP = 64  # more than the network's receptive-field margin that matters (see tests)


@torch.no_grad()
def predict_net_maps(
    net: NucleiUNet,
    image: np.ndarray,
    precision: str = "fp32",
    flips: bool = False,
    window: int = NET_WINDOW,
    embed: Embed | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability ``(H, W)`` and distance maps ``(2, H, W)`` from the network
    (``(3, H, W)`` for a network with a centre head: the centre probability follows).

    An image up to ``window`` px a side is one forward pass; a larger one is cut into
    overlapping windows whose cores are stitched. ``flips`` averages the maps of the image
    and its three flips (the distance maps' signs turned back), at 4x the cost. A fused
    network needs ``embed``, which gives each window's SAM embedding (the flipped passes
    flip it rather than encode again).
    """
    if net.fused and embed is None:
        raise ValueError("this nuclei network is fused with SAM: pass embed")
    h, w = image.shape[:2]
    if h <= window and w <= window:
        return _net_maps_once(net, image, precision, flips, embed)
    fg = np.zeros((h, w), dtype=np.float32)
    hv = np.zeros((3 if net.centre_head is not None else 2, h, w), dtype=np.float32)
    padded = pad_to(image, window)
    for win in windows((h, w), window, NET_OVERLAP):
        f, d = _net_maps_once(net, win.crop(padded), precision, flips, embed)
        fg[win.core_slices] = f[win.core_local]
        hv[(slice(None), *win.core_slices)] = d[(slice(None), *win.core_local)]
    return fg, hv


def _net_maps_once(
    net: NucleiUNet,
    image: np.ndarray,
    precision: str,
    flips: bool,
    embed: Embed | None,
) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    sam = None
    if net.fused:  # padded here so that the flipped passes flip image and embedding alike
        image = pad_to_multiple(image, net.multiple)
        sam = embedding_for(embed(image), *image.shape[:2])
    device = next(net.parameters()).device  # the network's: CPU, or a GPU it was moved to
    rgb = image_to_tensor(image).to(device)
    sam = sam.to(device) if sam is not None else None
    # (flip dims, sign of h, sign of v): a flip along x mirrors the horizontal map's sign.
    variants = [((), 1.0, 1.0)]
    if flips:
        variants += [((3,), -1.0, 1.0), ((2,), 1.0, -1.0), ((2, 3), -1.0, -1.0)]
    total = None
    for dims, sh, sv in variants:
        x = rgb.flip(dims) if dims else rgb
        e = sam.flip(dims) if dims and sam is not None else sam
        with autocast(precision, device.type):
            out = net.forward_any(x, e).float()
        out = out.flip(dims) if dims else out
        # A centre head's map, if any, follows the distance maps; a flip keeps its sign.
        probabilities = torch.sigmoid(out[:, :1]), torch.sigmoid(out[:, 3:])
        distances = out[:, 1:2] * sh, out[:, 2:3] * sv
        out = torch.cat([probabilities[0], *distances, probabilities[1]], dim=1)
        total = out if total is None else total + out
    maps = (total / len(variants))[0, :, :h, :w].cpu().numpy()
    return np.ascontiguousarray(maps[0]), np.ascontiguousarray(maps[1:])


def stain_with_strength(
    stain: StainConfig, strength: float | None, path: os.PathLike | str
) -> StainConfig:
    """A network's saved stain standardisation with ``strength`` (None: as saved); a
    strength above 0 for a network saved without a reference is an :class:`InputError`."""
    if strength is None:
        return stain
    if strength > 0 and stain.reference is None:
        raise InputError(
            path,
            "holds no stain reference (trained before instasam saved one): retrain or "
            "leave out --stain-strength",
        )
    return replace(stain, strength=strength)


@dataclass
class NetPredictor:
    """The nuclei network behind the :class:`~instasam.predict.InstancePredictor` protocol."""

    net: NucleiUNet
    postprocess: PostprocessConfig
    mpp: float | None
    precision: str = "fp32"
    flips: bool = False
    embed: Embed | None = None  # the fused network's SAM embedding
    stain: StainConfig = field(default_factory=StainConfig)
    # The staining to correct (e.g. a slide's, for all its tiles); None: each image's own.
    stain_source: tuple[float, float] | None = None

    @property
    def device(self) -> str:
        """Where the network runs: ``"cpu"`` or ``"cuda"``."""
        return next(self.net.parameters()).device.type

    def predict_maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = standardise_stain(image, self.stain, self.stain_source)
        return predict_net_maps(self.net, image, self.precision, self.flips, embed=self.embed)

    def predict_instances(self, image: np.ndarray) -> np.ndarray:
        fg, hv = self.predict_maps(image)
        return instances_from_maps(fg, hv, self.postprocess)
