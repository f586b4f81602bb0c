"""Losses with ignore masks: L = w_prompt * L_S' + w_fg * L_B + w_dist * L_D."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from instasam.config import LossConfig


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over pixels with ``weight > 0``."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``1 - sum(p t w) / (sum((p + t) w) - sum(p t w))`` per map, averaged over maps.

    Maps are the leading dimension; a map whose target and prediction are both empty
    contributes 0 (nothing to get wrong), not 1.
    """
    p = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    inter = (p * target * weight).sum(dims)
    union = ((p + target) * weight).sum(dims) - inter
    return (1.0 - (inter + 1e-6) / (union + 1e-6)).mean()


def masked_distance_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "l1"
) -> torch.Tensor:
    """L1 (paper) or SmoothL1 (authors' code) over pixels with ``weight > 0``.

    ``pred`` and ``target`` are ``(..., 2, H, W)``; ``weight`` broadcasts over the channel.
    """
    if kind == "smooth_l1":
        loss = F.smooth_l1_loss(pred, target, reduction="none")
    elif kind == "l1":
        loss = (pred - target).abs()
    else:
        raise ValueError(f"unknown distance loss {kind!r}")
    w = weight.expand_as(loss)
    return (loss * w).sum() / w.sum().clamp(min=1.0)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE + soft IoU, the loss used for both the prompt masks and the foreground."""
    return masked_bce(logits, target, weight) + soft_iou_loss(logits, target, weight)


def total_loss(parts: dict[str, torch.Tensor], config: LossConfig) -> torch.Tensor:
    """Weighted sum of the parts present (``prompt``, ``fg``, ``dist``)."""
    weights = {"prompt": config.w_prompt, "fg": config.w_fg, "dist": config.w_dist}
    return sum(weights[name] * value for name, value in parts.items())
