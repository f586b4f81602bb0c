"""Pseudo instance labels from point annotations by prompting the SAM mask decoder.

For one window of the image: encode it (without adapters for the vanilla labels S, with
them for S'), prompt the mask decoder once per annotated nucleus, and turn the K mask
probabilities into one label map with the entropy/overlap rule of Eq. 2-4
(:mod:`instasam.pseudo_labels.rules`). A whole tile is labelled window by window and the
window cores are stitched; label k always means the nucleus of point k-1 of the tile.

Prompts follow the backbone (``PseudoLabelConfig.prompt``): SAM gets the point and up to
four negative points drawn from the other points in the window (the paper); LiteMedSAM,
which was trained with boxes only, gets a box centred on the point whose side is chosen
per nucleus among ``box_sizes`` by the decoder's own predicted IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from instasam import IGNORE
from instasam.config import PseudoLabelConfig
from instasam.model.instasam import InstaSAM, Prompts, image_to_tensor
from instasam.pseudo_labels.rules import labels_from_probabilities
from instasam.tiling import pad_to, windows


@dataclass
class WindowPrompts:
    """The nuclei to prompt in one window.

    Attributes
    ----------
    points : Tensor
        ``(K, 2)`` point coordinates ``(x, y)`` in window pixels.
    ids : Tensor
        ``(K,)`` label of each point's nucleus (its tile index + 1).
    """

    points: torch.Tensor
    ids: torch.Tensor


def prompt_style(model: InstaSAM, config: PseudoLabelConfig) -> str:
    """The prompt style in force: the config's, or the backbone's own for ``"auto"``."""
    return model.backbone.prompt_style if config.prompt == "auto" else config.prompt


def negative_indices(k: int, n_negatives: int, generator: torch.Generator) -> torch.Tensor:
    """``(K, n)`` indices of other points used as negatives, -1 where there are too few."""
    n = min(n_negatives, max(k - 1, 0))
    out = torch.full((k, n_negatives), -1, dtype=torch.long)
    if n == 0:
        return out
    scores = torch.rand((k, k), generator=generator)
    scores.fill_diagonal_(2.0)  # never pick the point itself
    out[:, :n] = scores.argsort(dim=1)[:, :n]
    return out


def build_prompts(
    points: torch.Tensor,
    style: str,
    box_side: float | None = None,
    negatives: torch.Tensor | None = None,
) -> Prompts:
    """Prompts in encoder-input coordinates.

    Parameters
    ----------
    points : Tensor
        ``(K, 2)`` positive points (input coordinates).
    style : str
        ``"box"``, ``"points"`` or ``"box+points"``.
    box_side : float, optional
        Side of the square box centred on each point (box styles).
    negatives : Tensor, optional
        ``(K, n)`` indices into ``points`` of negative points, -1 for none (point styles).
    """
    boxes = None
    if "box" in style:
        half = box_side / 2
        boxes = torch.cat([points - half, points + half], dim=1)
    if "points" not in style:
        return Prompts(boxes=boxes)
    k = points.shape[0]
    if negatives is None:
        negatives = torch.full((k, 0), -1, dtype=torch.long)
    neg_points = points[negatives.clamp(min=0)]
    neg_labels = torch.where(negatives >= 0, 0.0, -1.0)  # -1: SAM's padding point
    coords = torch.cat([points[:, None], neg_points], dim=1)
    labels = torch.cat([torch.ones((k, 1)), neg_labels], dim=1)
    return Prompts(boxes=boxes, points=coords, labels=labels)


def _mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    h = torch.nn.functional.binary_cross_entropy_with_logits(logits, p, reduction="none")
    support = p > 0.05  # the mask and its immediate surroundings, not the empty window
    return (h * support).sum((1, 2)) / support.sum((1, 2)).clamp(min=1)


def decoder_window_tokens(model: InstaSAM, window_px: int | None) -> int | None:
    """The decoding window in embedding tokens for a window given in tile pixels."""
    if window_px is None:
        return None
    grid = model.backbone.encoder.embedding_size
    return max(1, math.ceil(window_px * grid / model.crop_size))


def prompt_logits(
    model: InstaSAM,
    embedding: torch.Tensor,
    points: torch.Tensor,
    config: PseudoLabelConfig,
    frozen: bool,
    generator: torch.Generator | None = None,
    box_sides: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits ``(K, M, M)`` for the nuclei at ``points`` (window pixels), and the box
    side used for each (window pixels; NaN for point-only prompts).

    Box styles decode every candidate side in ``config.box_sizes`` (tile pixels) and keep,
    per nucleus, the candidate chosen by ``config.box_selection``, unless ``box_sides``
    gives each nucleus its side already (training reuses the sides chosen for S), or
    ``boxes`` (``(K, 4)`` ``x0, y0, x1, y1``, window pixels, NaN rows for none) gives a
    nucleus its box outright (a trained network's outline of it).
    """
    if boxes is not None and not torch.isnan(boxes).all():
        return _logits_with_given_boxes(model, embedding, points, config, frozen, generator, boxes)
    scale = model.input_size / model.crop_size
    pts = points * scale
    k = len(pts)
    style = prompt_style(model, config)
    negatives = None
    if "points" in style:
        generator = generator or torch.Generator().manual_seed(config.seed)
        negatives = negative_indices(k, config.n_negatives, generator)

    window = decoder_window_tokens(model, config.decoder_window)

    def decode(side: float | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return model.prompted_masks(
            embedding, build_prompts(pts, style, side, negatives), frozen=frozen, window=window
        )

    if "box" not in style:
        return decode(None)[0], torch.full((k,), float("nan"))
    if box_sides is not None and not torch.isnan(box_sides).any():
        return decode(box_sides[:, None] * scale)[0], box_sides
    sides = (config.fixed_box_size,) if config.box_selection == "fixed" else config.box_sizes
    candidates = [decode(float(side) * scale) for side in sides]
    if len(candidates) == 1:
        return candidates[0][0], torch.full((k,), float(sides[0]))
    logits = torch.stack([c[0] for c in candidates])  # (S, K, M, M)
    if config.box_selection == "entropy":
        choice = torch.stack([_mean_entropy(c[0]) for c in candidates]).argmin(0)
    else:
        choice = torch.stack([c[1] for c in candidates]).argmax(0)
    chosen = torch.tensor(sides, dtype=torch.float32)[choice]
    return logits[choice, torch.arange(k)], chosen


def _logits_with_given_boxes(
    model: InstaSAM,
    embedding: torch.Tensor,
    points: torch.Tensor,
    config: PseudoLabelConfig,
    frozen: bool,
    generator: torch.Generator | None,
    boxes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prompt_logits` where some nuclei come with their own box."""
    scale = model.input_size / model.crop_size
    given = ~torch.isnan(boxes).any(dim=1)
    window = decoder_window_tokens(model, config.decoder_window)
    prompts = Prompts(boxes=boxes[given] * scale)
    boxed, _ = model.prompted_masks(embedding, prompts, frozen=frozen, window=window)
    logits = boxed.new_empty((len(points), *boxed.shape[1:]))
    sides = torch.full((len(points),), float("nan"))
    logits[given] = boxed
    sides[given] = (boxes[given, 2:] - boxes[given, :2]).amax(dim=1)
    if not given.all():
        rest, rest_sides = prompt_logits(
            model, embedding, points[~given], config, frozen, generator
        )
        logits[~given], sides[~given] = rest, rest_sides
    return logits, sides


def window_probabilities(
    model: InstaSAM,
    embedding: torch.Tensor,
    points: torch.Tensor,
    config: PseudoLabelConfig,
    frozen: bool,
    generator: torch.Generator | None = None,
    boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, c, c)`` mask probabilities at window (crop) resolution, and the box sides."""
    logits, sides = prompt_logits(model, embedding, points, config, frozen, generator, boxes=boxes)
    if logits.shape[0]:
        logits = model.to_crop(logits[:, None])[:, 0]
    else:
        logits = logits.new_zeros((0, model.crop_size, model.crop_size))
    return torch.sigmoid(logits), sides


def window_labels(
    probabilities: torch.Tensor, ids: torch.Tensor, config: PseudoLabelConfig
) -> torch.Tensor:
    """Eq. 2-4 on one window: ``(c, c)`` int64 with tile-level nucleus ids and IGNORE."""
    local = labels_from_probabilities(
        probabilities,
        delta=config.delta,
        epsilon=config.epsilon,
        reject_overlapping_instances=config.reject_overlapping_instances,
        overlap_rule=config.overlap_rule,
    )
    lookup = torch.cat([torch.tensor([0]), ids.long()])  # local k -> tile id
    out = lookup[local.clamp(min=0)]
    out[local == IGNORE] = IGNORE
    return out


def points_in_core(points: np.ndarray, win) -> np.ndarray:
    """Indices of the points inside a window's core."""
    (y0, y1), (x0, x1) = win.core_y, win.core_x
    inside = (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
    return np.nonzero(inside)[0]


def points_in_window(points: np.ndarray, y: int, x: int, size: int) -> WindowPrompts:
    """Tile points that fall inside the window at ``(y, x)``, in window coordinates."""
    inside = (
        (points[:, 0] >= x)
        & (points[:, 0] < x + size)
        & (points[:, 1] >= y)
        & (points[:, 1] < y + size)
    )
    local = points[inside] - np.array([x, y], dtype=np.float64)
    return WindowPrompts(
        points=torch.from_numpy(local).float(),
        ids=torch.from_numpy(np.nonzero(inside)[0] + 1),
    )


@torch.no_grad()
def tile_pseudo_labels(
    model: InstaSAM,
    image: np.ndarray,
    points: np.ndarray,
    config: PseudoLabelConfig | None = None,
    adapt: bool = False,
    progress: bool = False,
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo instance labels for a whole tile, and the box side chosen per point.

    Parameters
    ----------
    model : InstaSAM
        The model whose encoder and mask decoder make the masks.
    image : ndarray
        ``(H, W, 3)`` uint8 RGB.
    points : ndarray
        ``(N, 2)`` points ``(x, y)``, one per nucleus.
    config : PseudoLabelConfig, optional
        The rule's parameters and the prompting scheme.
    adapt : bool
        False: original encoder and decoder (the vanilla labels S). True: adapters and the
        trained decoder (S').
    progress : bool
        Show a progress bar over windows.
    boxes : ndarray, optional
        ``(N, 4)`` box prompt ``x0, y0, x1, y1`` (tile pixels) of each point's nucleus, NaN
        rows for points prompted as usual (box styles only; see :func:`boxes_of_nuclei`).

    Returns
    -------
    labels : ndarray
        ``(H, W)`` int32: IGNORE, 0 = background, k = the nucleus of ``points[k - 1]``.
    box_sides : ndarray
        ``(N,)`` box side (tile pixels) used for each point, from the window whose core
        holds the point; NaN for point-only prompts.
    """
    config = config or PseudoLabelConfig()
    h, w = image.shape[:2]
    size = model.crop_size
    labels = np.zeros((h, w), dtype=np.int32)
    box_sides = np.full(len(points), np.nan)
    padded = pad_to(image, size)
    generator = torch.Generator().manual_seed(config.seed)
    overlap = min(config.tile_overlap, size // 2)
    for win in tqdm(windows((h, w), size, overlap), desc="pseudo labels", disable=not progress):
        crop = win.crop(padded)
        prompts = points_in_window(points, win.y, win.x, size)
        if len(prompts.ids) == 0:
            labels[win.core_slices] = 0
            continue
        encoded = model.encode(image_to_tensor(crop), adapt=adapt)
        local_boxes = None
        if boxes is not None:
            offset = np.array([win.x, win.y, win.x, win.y], dtype=np.float64)
            window_boxes = np.clip(boxes[prompts.ids.numpy() - 1] - offset, 0, size)
            local_boxes = torch.from_numpy(window_boxes).float()
        probs, sides = window_probabilities(
            model,
            encoded.embedding,
            prompts.points,
            config,
            frozen=not adapt,
            generator=generator,
            boxes=local_boxes,
        )
        local = window_labels(probs, prompts.ids, config).numpy()
        labels[win.core_slices] = local[win.core_local]
        in_core = points_in_core(points, win)
        box_sides[in_core] = sides.numpy()[np.isin(prompts.ids.numpy() - 1, in_core)]
    return labels, box_sides


def boxes_of_nuclei(labels: np.ndarray, n_points: int, margin: float) -> np.ndarray:
    """``(N, 4)`` box ``x0, y0, x1, y1`` around nucleus k = point k-1 of ``labels``, grown
    by ``margin`` pixels on each side; NaN rows for points whose nucleus has no pixel.

    Coordinates are pixel indices, as SAM's boxes are (the box of a nucleus covering
    columns 3-7 and rows 2-4 is ``3, 2, 7, 4``; the prompt encoder adds the half pixel).
    """
    out = np.full((n_points, 4), np.nan)
    labels = np.asarray(labels)
    found = ndimage.find_objects(np.where(labels > 0, labels, 0).astype(np.int32))
    for k, box in enumerate(found[:n_points]):
        if box is None:
            continue
        ys, xs = box
        x0, y0, x1, y1 = xs.start, ys.start, xs.stop - 1, ys.stop - 1
        out[k] = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
    return out
