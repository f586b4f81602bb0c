"""The full-resolution nuclei network: a U-Net on the RGB tile.

InstaSAM's nuclei decoder reads LiteMedSAM's 64x64 embedding of a 256-px crop, one token
per 4x4 pixels; a nucleus of ~20 px spans ~5 tokens, and the decoder trained on that
embedding levelled off near validation AJI 0.47 on the Kumar tiles however long it
trained (issue 12). This network sees every pixel instead. SAM's part in the method stays
where it earns its place: its point-prompted masks are the pseudo labels this network
learns from. The outputs are those of the nuclei decoder - a foreground logit and the
two HoVer-style distance maps - so training losses, targets and the watershed are shared.
With ``NucleiNetConfig.centre_head`` a fourth output, a nucleus-centre map, learns from the
points themselves, so the watershed can be seeded with one marker per nucleus found.

Being fully convolutional, it takes a whole tile in one pass (padded to a multiple of
``2 ** depth``), which is what makes CPU inference fast.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from instasam.config import NetConfig, NucleiNetConfig
from instasam.errors import InputError
from instasam.io.atomic import atomic_path
from instasam.model.sam_embedding import (
    EMBEDDING_BACKBONES,
    EMBEDDING_CHANNELS,
    MULTIPLE,
    embedding_for,
)

# Per-channel mean and std of 0..255 RGB (SAM's), so inputs are centred like the encoder's.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class NucleiUNet(nn.Module):
    """RGB ``(B, 3, H, W)`` in 0..255 -> ``(B, 3, H, W)``: foreground logit, h and v distance
    (``(B, 4, H, W)`` with a centre head: then the centre logit follows).

    ``H`` and ``W`` must be multiples of :attr:`multiple`; :meth:`forward_any` pads.
    """

    def __init__(self, config: NucleiNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NucleiNetConfig()
        widths = self.config.widths
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.down = nn.ModuleList()
        c_in = 3
        for width in widths:
            self.down.append(_double_conv(c_in, width))
            c_in = width
        self.fusion = None
        if self.config.sam_backbone is not None:
            self.fusion = nn.Sequential(
                nn.Conv2d(EMBEDDING_CHANNELS, widths[self.config.fusion_level], 1, bias=False),
                nn.BatchNorm2d(widths[self.config.fusion_level]),
                nn.ReLU(inplace=True),
            )
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1)
        )
        # Separate last layers: the foreground and the distance maps want different features.
        self.fg_head = nn.Conv2d(widths[0], 1, 1)
        self.dist_head = nn.Sequential(
            nn.Conv2d(widths[0], widths[0], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], 2, 1),
        )
        self.centre_head = nn.Conv2d(widths[0], 1, 1) if self.config.centre_head else None

    @property
    def fused(self) -> bool:
        """Whether the network also reads a SAM embedding (:mod:`~instasam.model.sam_embedding`)."""
        return self.fusion is not None

    @property
    def multiple(self) -> int:
        pooling = 2 ** (len(self.config.widths) - 1)
        return max(pooling, MULTIPLE) if self.fused else pooling

    def forward(self, rgb: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Maps of ``rgb``; a fused network also needs its ``(B, 256, H/4, W/4)`` embedding."""
        if self.fused and embedding is None:
            raise ValueError("this nuclei network is fused with SAM: pass the image's embedding")
        x = (rgb - self.pixel_mean) / self.pixel_std
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            if self.fusion is not None and i == self.config.fusion_level:
                sam = embedding.to(x.dtype)
                if sam.shape[-2:] != x.shape[-2:]:
                    sam = F.interpolate(sam, x.shape[-2:], mode="bilinear", align_corners=False)
                x = x + self.fusion(sam)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        maps = [self.fg_head(x), torch.tanh(self.dist_head(x))]
        if self.centre_head is not None:
            maps.append(self.centre_head(x))
        return torch.cat(maps, dim=1)

    def forward_any(self, rgb: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` on any size: reflect-padded to :attr:`multiple`, cropped back.

        ``embedding`` is the padded image's, as :class:`~instasam.model.sam_embedding.SamEmbedder`
        makes it (it may cover more than the image; the cells beyond are dropped).
        """
        h, w = rgb.shape[-2:]
        m = self.multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            rgb = F.pad(rgb, (0, pw, 0, ph), mode=mode)
        if embedding is not None:
            embedding = embedding_for(embedding, h + ph, w + pw)
        return self(rgb, embedding)[..., :h, :w]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- checkpoints ---------------------------------------------------------------------------
NET_FORMAT = "instasam-net-1"


def save_net(path: str | os.PathLike, net: NucleiUNet, config: NetConfig, **extra: Any) -> None:
    """Write the network's weights and its whole configuration atomically."""
    payload = {
        "format": NET_FORMAT,
        "config": config.to_dict(),
        "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def is_net_checkpoint(payload: dict[str, Any]) -> bool:
    return payload.get("format") == NET_FORMAT


def _with_legacy_fields(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's configuration with what it lacks because it predates the field: a
    network saved before the centre head existed has none."""
    net = config.get("net") if isinstance(config, dict) else None
    if isinstance(net, dict) and "centre_head" not in net:
        return {**config, "net": {**net, "centre_head": False}}
    return config


def net_from_payload(
    payload: dict[str, Any], path: str | os.PathLike
) -> tuple[NucleiUNet, NetConfig]:
    """Rebuild the network of a checkpoint, strictly (every tensor present and used)."""
    try:
        config = NetConfig.from_dict(_with_legacy_fields(payload["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"bad configuration in checkpoint ({exc})") from None
    fused_with = config.net.sam_backbone
    if fused_with is not None and fused_with not in EMBEDDING_BACKBONES:
        raise InputError(path, f"bad configuration in checkpoint (sam_backbone {fused_with!r})")
    net = NucleiUNet(config.net)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(path, f"checkpoint does not fit its network ({first})") from None
    net.eval()
    return net, config
