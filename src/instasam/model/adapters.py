"""Adapters of Eq. 1 (SAM-Adapter style), shared by every backbone.

Before transformer block ``i`` of a stage the encoder adds
``A_i = MLP_up(GELU(MLP_tune_i(F_hfc + F_pe)))`` to the tokens, where ``F_pe`` projects
the tokens entering the stage down to ``width / reduction`` channels and ``F_hfc`` embeds
the image's high-frequency components to the same width with a strided convolution whose
stride maps the image onto the stage's token grid. A plain ViT is one stage; TinyViT has
one stage per token resolution (its convolutional first stage has no transformer blocks
and so no adapters).
"""

from __future__ import annotations

import torch
from torch import nn


def high_frequency_components(images: torch.Tensor, mask_ratio: float = 0.25) -> torch.Tensor:
    """High-pass filter each channel in the Fourier domain.

    Parameters
    ----------
    images : Tensor
        ``(B, C, H, W)`` images (normalised or not: the filter is linear).
    mask_ratio : float
        Area share of the centred low-frequency square set to zero (0.25: a square of
        half the side).

    Returns
    -------
    Tensor
        ``(B, C, H, W)`` real part of the inverse transform of the masked spectrum.
    """
    h, w = images.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.float(), norm="forward"), dim=(-2, -1))
    side = mask_ratio**0.5
    half_h, half_w = round(h * side / 2), round(w * side / 2)
    keep = torch.ones((h, w), dtype=torch.bool, device=images.device)
    keep[h // 2 - half_h : h // 2 + half_h, w // 2 - half_w : w // 2 + half_w] = False
    spectrum = spectrum * keep
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="forward")
    return filtered.real.to(images.dtype)


class StageAdapter(nn.Module):
    """Adapters for one stage: ``n_blocks`` tune layers and one shared up-projection.

    Parameters
    ----------
    width : int
        Token width of the stage's blocks.
    n_blocks : int
        Number of transformer blocks in the stage.
    patch : int
        Image pixels per token side at this stage (16 for SAM's ViT).
    reduction : int
        Hidden width = ``width // reduction`` (at least 1).
    in_chans : int
        Channels of the high-frequency image.
    """

    def __init__(
        self, width: int, n_blocks: int, patch: int, reduction: int = 32, in_chans: int = 3
    ) -> None:
        super().__init__()
        hidden = max(1, width // reduction)
        self.hidden = hidden
        self.embed_hfc = nn.Conv2d(in_chans, hidden, kernel_size=patch, stride=patch)
        self.embed_pe = nn.Linear(width, hidden)
        self.tune = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in range(n_blocks)
        )
        self.up = nn.Linear(hidden, width)
        # A zero up-projection makes the adapted encoder start as the original one, so S'
        # equals S at step 0 and training moves away from SAM's features only as it must.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def stage_features(self, tokens: torch.Tensor, hfc: torch.Tensor) -> torch.Tensor:
        """``F_hfc + F_pe`` shaped like ``tokens`` but ``hidden`` wide.

        ``tokens`` is channels-last: ``(B, N, width)`` with N a square grid, or
        ``(B, Hg, Wg, width)``.
        """
        hfc_tokens = self.embed_hfc(hfc)  # (B, hidden, Hg, Wg)
        if tokens.ndim == 3:
            hfc_tokens = hfc_tokens.flatten(2).transpose(1, 2)
        else:
            hfc_tokens = hfc_tokens.permute(0, 2, 3, 1)
        if hfc_tokens.shape[:-1] != tokens.shape[:-1]:
            raise ValueError(
                f"high-frequency grid {tuple(hfc_tokens.shape[:-1])} does not match the "
                f"token grid {tuple(tokens.shape[:-1])}"
            )
        return hfc_tokens + self.embed_pe(tokens)

    def prompt(self, block: int, features: torch.Tensor) -> torch.Tensor:
        """``A_i`` for block ``block`` of this stage, to be added to its input tokens."""
        return self.up(self.tune[block](features))


def count_trainable(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
