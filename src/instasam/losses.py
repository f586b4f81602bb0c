"""Losses with ignore masks: L = w_prompt * L_S' + w_fg * L_B + w_dist * L_D (+ w_grad * L_G
+ w_centre * L_C)."""

from __future__ import annotations

from functools import lru_cache

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


@lru_cache(maxsize=4)
def _derivative_kernel(size: int) -> torch.Tensor:
    """``(2, 1, size, size)``: d/dx and d/dy as HoVer-Net's MSGE takes them.

    Each neighbour at offset ``(dy, dx)`` weighs ``dx / (dx^2 + dy^2)`` (``dy / ...`` for
    d/dy), not normalised: on a map rising by 1 per pixel the 5x5 kernel gives 12, so the
    loss is 144 times the squared error of the per-pixel slopes, and ``w_grad = 1`` is
    HoVer-Net's weighting beside a foreground loss of weight 1.
    """
    half = size // 2
    dy, dx = torch.meshgrid(
        torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij"
    )
    kx = dx / (dx**2 + dy**2).clamp(min=1.0)
    return torch.stack([kx, kx.T])[:, None]


def masked_gradient_loss(
    pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """HoVer-Net's MSGE: mean squared error of the distance maps' derivatives along their
    own axes (horizontal map along x, vertical along y), over nucleus pixels.

    Between two touching nuclei the target falls from +1 to -1 within a pixel or two; the
    value loss (L_D) barely notices a prediction that blurs that fall, which is what lets
    the watershed merge the two. Only nucleus pixels whose whole 5x5 neighbourhood is
    labelled count, so ignored pixels (target 0 there by convention) teach nothing.

    ``pred`` and ``target`` are ``(B, 2, H, W)``; ``foreground`` and ``weight`` ``(B, H, W)``.
    """
    kernel = _derivative_kernel(5).to(pred.device, pred.dtype)
    both = torch.cat([pred, target], dim=0)
    derivative = F.conv2d(both, kernel, padding=2, groups=2)
    error = (derivative[: pred.shape[0]] - derivative[pred.shape[0] :]) ** 2
    labelled = -F.max_pool2d(-weight[:, None], 5, stride=1, padding=2)
    focus = (foreground[:, None] * labelled).expand_as(error)
    return (error * focus).sum() / focus.sum().clamp(min=1.0)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE + soft IoU, the loss used for both the prompt masks and the foreground."""
    return masked_bce(logits, target, weight) + soft_iou_loss(logits, target, weight)


def total_loss(parts: dict[str, torch.Tensor], config: LossConfig) -> torch.Tensor:
    """Weighted sum of the parts present (``prompt``, ``fg``, ``dist``, ``grad``, ``centre``)."""
    weights = {
        "prompt": config.w_prompt,
        "fg": config.w_fg,
        "dist": config.w_dist,
        "grad": config.w_grad,
        "centre": config.w_centre,
    }
    return sum(weights[name] * value for name, value in parts.items())
