"""LiteMedSAM's frozen image embedding of a whole image, for the fused nuclei network.

The fused network (:class:`~instasam.model.unet.NucleiUNet` with ``sam_backbone`` set) adds
SAM's embedding to its own features at a quarter of the resolution, where one token covers
4x4 pixels. The encoder runs on the whole image at 1:1 scale, as the pseudo labels do,
rather than crop by crop: TinyViT's attention is windowed and its weights do not depend on
the input size, so an encoder built for a larger square reads the tile in one pass with
context across what would have been crop borders. The embedding of a tile therefore
differs from those of its 256-px crops (measured on a Kumar tile: a relative difference
of 54-70 % even more than 32 px inside the crop's edges); training and prediction both
use the whole-image form.

Embeddings are rounded to float16 when made, so one read back from the cache equals one
computed on the fly.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from instasam.io.atomic import atomic_path
from instasam.tiling import pad_bottom_right
from instasam.training.precision import autocast

MULTIPLE = 16  # side of the padded square: the encoder's strides and the U-Net's pooling
MIN_SIDE = 64
EMBEDDING_CHANNELS = 256
STRIDE = 4  # pixels per embedding cell
#: Backbones whose encoder can be built for any square input (TinyViT's windows).
EMBEDDING_BACKBONES = ("litemedsam", "litemedsam_tiny")

#: A whole image's embedding, as :class:`SamEmbedder` and :class:`CachedEmbedder` give it.
Embed = Callable[[np.ndarray], torch.Tensor]


def padded_side(height: int, width: int) -> int:
    """Side of the square an ``height`` x ``width`` image is padded to for the encoder."""
    side = max(height, width, MIN_SIDE)
    return -(-side // MULTIPLE) * MULTIPLE


class SamEmbedder:
    """``image (H, W, 3) uint8 -> (1, 256, S/4, S/4)`` float32, ``S = padded_side(H, W)``.

    The image is reflect-padded at the bottom and right to the square ``S``; cell
    ``(i, j)`` of the embedding covers pixels ``[4i, 4i + 4) x [4j, 4j + 4)``.

    Parameters
    ----------
    backbone : str
        ``"litemedsam"`` (the packaged weights) or ``"litemedsam_tiny"`` (tests).
    precision : str
        ``"bf16"`` or ``"fp32"``, as resolved by
        :func:`~instasam.training.precision.resolve_precision`.
    """

    def __init__(self, backbone: str = "litemedsam", precision: str = "fp32") -> None:
        from instasam.model import lite_medsam

        if backbone not in EMBEDDING_BACKBONES:
            raise ValueError(
                f"no whole-image embedding for backbone {backbone!r} "
                f"(one of {', '.join(EMBEDDING_BACKBONES)})"
            )
        self.backbone = backbone
        self.precision = precision
        self._arch = (
            lite_medsam.LITEMEDSAM_ARCH if backbone == "litemedsam" else lite_medsam.TINY_ARCH
        )
        self._state: dict[str, torch.Tensor] | None = None
        self._encoders: OrderedDict[int, torch.nn.Module] = OrderedDict()

    def _weights(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            from instasam.config import AdapterConfig
            from instasam.model.backbone import build_backbone

            source = build_backbone(self.backbone, adapter=AdapterConfig(enabled=False))
            self._state = source.encoder.state_dict()
        return self._state

    def _encoder(self, side: int) -> torch.nn.Module:
        """The frozen encoder built for a ``side`` x ``side`` input (two sizes kept)."""
        if side not in self._encoders:
            from instasam.config import AdapterConfig
            from instasam.model.lite_medsam import TinyViTEncoder

            encoder = TinyViTEncoder(dict(self._arch, img_size=side), AdapterConfig(enabled=False))
            encoder.load_state_dict(self._weights(), strict=True)
            self._encoders[side] = encoder.eval().requires_grad_(False)
            while len(self._encoders) > 2:
                self._encoders.popitem(last=False)
        self._encoders.move_to_end(side)
        return self._encoders[side]

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        side = padded_side(*image.shape[:2])
        square = pad_bottom_right(np.ascontiguousarray(image[..., :3]), side, side)
        rgb = torch.from_numpy(np.array(square, dtype=np.float32)).permute(2, 0, 1)[None]
        with autocast(self.precision):
            embedding = self._encoder(side)(rgb, adapt=False).embedding
        return embedding.float().half().float()

    def key(self, image: np.ndarray) -> str:
        """A name for ``image``'s embedding: its pixels, the backbone and the arithmetic."""
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
        digest.update(f"{image.shape}|{self.backbone}|{self.precision}".encode())
        return digest.hexdigest()[:20]


class CachedEmbedder:
    """A :class:`SamEmbedder` whose results are kept as ``.npy`` files (float16) in a folder.

    Training reads each tile's embedding many times (every crop, every validation), and
    the encoder costs far more than the nuclei network: it runs once per image.
    """

    def __init__(self, embedder: SamEmbedder, folder: str | os.PathLike) -> None:
        self.embedder = embedder
        self.folder = Path(folder)

    def path(self, image: np.ndarray) -> Path:
        return self.folder / f"{self.embedder.key(image)}.npy"

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        path = self.path(image)
        if path.is_file():
            return torch.from_numpy(np.load(path).astype(np.float32))[None]
        embedding = self.embedder(image)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, embedding[0].numpy().astype(np.float16))
        return embedding


def embedding_for(embedding: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The cells of ``embedding`` covering an ``height`` x ``width`` image (multiples of 4)."""
    h, w = height // STRIDE, width // STRIDE
    out = embedding[..., :h, :w]
    ph, pw = h - out.shape[-2], w - out.shape[-1]
    if ph > 0 or pw > 0:
        out = F.pad(out, (0, pw, 0, ph), mode="replicate")
    return out
