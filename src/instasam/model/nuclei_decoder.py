"""The prompt-free nuclei decoder: foreground and HoVer-style distance maps.

It mirrors SAM's mask decoder (a two-way transformer between learned output tokens and the
image embedding, then hypernetwork heads on an upscaled embedding) with its own tokens -
one for the foreground, one per distance map - and no prompts: the dense prompt is SAM's
``no_mask`` embedding. Features of an early encoder stage are fused into the upscaled
embedding (the role of HQ-SAM's extra tokens in the authors' model) for sharper borders.

By default the distance maps come from a small convolution branch on the upscaled
embedding instead of hypernetwork tokens (``NucleiDecoderConfig.distance_head``). A
hypernetwork output is one weighted sum of the embedding's channels per image; the
distance target runs from -1 to 1 across every nucleus, and SAM's channels describe
"inside a nucleus", not "left or right of its centre", so the weighted sum stays flat
and its gradient cancels between the two halves of each nucleus. Convolutions see the
neighbourhood and so can measure where a pixel lies within its nucleus.
"""

from __future__ import annotations

import copy

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn
from torch.nn import functional as F

#: Output channels: foreground logit, horizontal and vertical distance.
MAP_NAMES = ("foreground", "horizontal", "vertical")

#: Dilations of the distance branch's 3x3 convolutions: a 31-pixel receptive field on the
#: upscaled embedding (a nucleus at 40x is about 10-30 pixels across).
DISTANCE_DILATIONS = (1, 2, 4, 8)


class DistanceBranch(nn.Sequential):
    """Dilated 3x3 convolutions, ``(B, C, H, W)`` features -> ``(B, 2, H, W)`` distances.

    The last layer starts at zero, so the maps start flat at 0 (the target outside
    nuclei); its gradient is not zero, because the hidden features vary across a nucleus.
    """

    def __init__(self, channels: int) -> None:
        layers: list[nn.Module] = []
        for dilation in DISTANCE_DILATIONS:
            layers += [
                nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation),
                LayerNorm2d(channels),
                nn.GELU(),
            ]
        out = nn.Conv2d(channels, len(MAP_NAMES) - 1, kernel_size=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        super().__init__(*layers, out)


class NucleiDecoder(nn.Module):
    """Predicts ``(B, 3, 4E, 4E)`` maps from an ``(B, 256, E, E)`` embedding.

    Parameters
    ----------
    mask_decoder : MaskDecoder
        SAM's decoder; its transformer and upscaling layers are copied as the starting
        point when ``init_from_mask_decoder`` (otherwise only their shapes are reused).
    early_channels : int or None
        Channels of the early encoder features to fuse (None: no fusion).
    init_from_mask_decoder : bool
        Start from SAM's decoder weights rather than from random ones.
    distance_head : {"conv", "hypernetwork"}
        Read the distance maps out with a :class:`DistanceBranch` or with hypernetwork
        tokens like the foreground.
    """

    def __init__(
        self,
        mask_decoder: MaskDecoder,
        early_channels: int | None = None,
        init_from_mask_decoder: bool = True,
        distance_head: str = "conv",
    ) -> None:
        super().__init__()
        dim = mask_decoder.transformer_dim
        self.transformer = copy.deepcopy(mask_decoder.transformer)
        self.output_upscaling = copy.deepcopy(mask_decoder.output_upscaling)
        if not init_from_mask_decoder:
            for module in (*self.transformer.modules(), *self.output_upscaling.modules()):
                if hasattr(module, "reset_parameters") and module is not self:
                    module.reset_parameters()
        if distance_head not in ("conv", "hypernetwork"):
            raise ValueError(f"unknown distance head {distance_head!r}")
        n_tokens = 1 if distance_head == "conv" else len(MAP_NAMES)
        self.output_tokens = nn.Embedding(n_tokens, dim)
        self.heads = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(n_tokens))
        self.distance_branch = DistanceBranch(dim // 8) if distance_head == "conv" else None
        if init_from_mask_decoder:
            self._start_from_mask_token(mask_decoder)
        self.early_fusion = None
        if early_channels:
            self.early_fusion = nn.Sequential(
                nn.Conv2d(early_channels, dim // 8, kernel_size=1),
                LayerNorm2d(dim // 8),
                nn.GELU(),
                nn.Conv2d(dim // 8, dim // 8, kernel_size=3, padding=1),
            )

    @torch.no_grad()
    def _start_from_mask_token(self, mask_decoder: MaskDecoder) -> None:
        """Every output starts as SAM's single-mask output: the foreground map then begins
        as SAM's own unprompted mask, and the distance heads begin from features SAM
        already uses to delineate objects.

        The distance heads' last layer starts at zero, so the maps start flat at 0 (the
        target outside nuclei). Scaling SAM's layer by 0.1 instead left distances of
        magnitude ~1.6 on a MoNuSeg crop, and the first steps went into undoing them
        (L_D 1.63 at step 0 against 0.08 with the zero start)."""
        token = mask_decoder.mask_tokens.weight[0]
        self.output_tokens.weight.copy_(token.expand_as(self.output_tokens.weight))
        for i, head in enumerate(self.heads):
            head.load_state_dict(mask_decoder.output_hypernetworks_mlps[0].state_dict())
            if i > 0:
                nn.init.zeros_(head.layers[-1].weight)
                nn.init.zeros_(head.layers[-1].bias)

    def forward(
        self,
        embedding: torch.Tensor,
        prompt_encoder: PromptEncoder,
        early: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return ``(B, 3, 4E, 4E)``: foreground logit, horizontal and vertical distance."""
        b = embedding.shape[0]
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = embedding + dense
        pos = prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        tokens = self.output_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        hs, src = self.transformer(src, pos, tokens)
        _, c, h, w = embedding.shape
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        if self.early_fusion is not None and early is not None:
            fused = self.early_fusion(early)
            if fused.shape[-2:] != upscaled.shape[-2:]:
                fused = F.interpolate(
                    fused, size=upscaled.shape[-2:], mode="bilinear", align_corners=False
                )
            upscaled = upscaled + fused
        weights = torch.stack([head(hs[:, i]) for i, head in enumerate(self.heads)], dim=1)
        b, c, h, w = upscaled.shape
        maps = (weights @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        if self.distance_branch is not None:
            maps = torch.cat([maps, self.distance_branch(upscaled)], dim=1)
        return maps
