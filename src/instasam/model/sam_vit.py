"""SAM's ViT-B/L/H image encoders (the paper's backbones) with Eq. 1 adapters.

The trunk is ``segment_anything.modeling.ImageEncoderViT`` built with the official
hyper-parameters, so the official checkpoints (``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) load strictly. The forward pass is our
own loop over the trunk's pieces so that an adapter term can be added before every block:

    patch_embed -> + position embedding -> [+ A_i, block_i] x depth -> neck

A plain ViT is a single stage, so one :class:`~instasam.model.adapters.StageAdapter` serves
all blocks (width = embed dim, patch 16). ``F_pe`` is computed from the patch embedding
*before* the absolute position embedding is added, as SAM-Adapter does; the position
embedding is the same for every image, so adding it would only shift the adapter's bias.
The early features for the nuclei decoder are the output of the first global-attention
block (HQ-SAM's choice), channels first.

Crop and input size
-------------------
``crop_size`` is the side of the H&E window one encoder pass covers; the window is resized
to ``input_size`` before encoding. The settings offered, with ViT-B's cost measured by
``benchmarks/bench_vit.py --measure-tile`` on this project's 2-core CPU (torch 2.14.1,
random weights, batch 1, nothing else running; figures in
``benchmarks/results/vit.json``). A pass is encoder + nuclei decoder; a training step is
the adapted encoder forward and backward plus the decoders; a tile is 1000x1000 at 80 px
overlap, estimated as passes x pass (LiteMedSAM's real tile took 82 s against its 77 s
estimate):

=========================  ====  =====  ======  ======  ===================  =========
registered name            crop  input  pass    step    1000x1000 tile       peak RSS
=========================  ====  =====  ======  ======  ===================  =========
``vit_b`` (paper)          224   1024   22 s    51 s    49 passes, ~18 min   8.9 GB
``vit_b-crop512-in1024``   512   1024   22 s    51 s    9 passes, ~3.3 min   8.9 GB
``vit_b-crop1024-in1024``  1024  1024   22 s    51 s    1 pass, ~0.4 min     8.9 GB
``vit_b-crop224-in512``    224   512    3.6 s   6.1 s   49 passes, ~2.9 min  2.6 GB
``litemedsam`` (default)   256   256    2.1 s   4.4 s   36 passes, ~1.3 min  2.3 GB
=========================  ====  =====  ======  ======  ===================  =========

(peak RSS while training; inference peaks at 4.0 GB for input 1024, 1.6 GB for 512.)

* ``224 -> 1024`` is the paper's setting (every 224 crop enlarged 4.6x): nuclei span
  several 16-pixel tokens. It is the default.
* ``1024 -> 1024`` is SAM's native use (pixels fed 1:1): one pass per 1000x1000 tile, but
  a nucleus (15-30 px at 40x) covers one or two 16-pixel tokens instead of several.
* ``512 -> 1024`` enlarges 2x: a middle ground with 9 passes per tile.
* ``224 -> 512`` keeps the paper's crops but encodes at 512 with the absolute position
  embedding resized bicubically to the 32x32 token grid (SAM's relative position tables of
  the global-attention blocks are resized linearly by SAM's own code). It is verified to
  equal SAM built at that size with the tables so resized; how much accuracy the
  pretrained weights lose at this size is not measured here (no official weights on this
  machine).

Each setting other than the default is also registered as its own backbone name
(``vit_b-crop1024-in1024`` and so on), so a trained model records it in its configuration
and is rebuilt with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn
from torch.nn import functional as F

from instasam.config import AdapterConfig
from instasam.errors import InputError
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
from instasam.weights import require_checkpoint

#: SAM's pixel statistics (ImageNet mean/std on the 0..255 scale).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: The paper's crop side (pixels of the H&E image per encoder pass).
PAPER_CROP_SIZE = 224


@dataclass(frozen=True)
class ViTArch:
    """Hyper-parameters of a SAM image encoder.

    ``img_size`` is the input side the parameters are shaped for (position embedding of
    ``img_size / patch_size`` tokens a side, relative-position tables of the global blocks);
    the encoder may run at a smaller input with those embeddings resized.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    img_size: int = 1024
    out_chans: int = 256


#: The official SAM encoders (``segment_anything.build_sam``).
SAM_VIT_ARCHS: dict[str, ViTArch] = {
    "vit_b": ViTArch(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": ViTArch(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": ViTArch(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
#: A small random ViT in SAM's layout for tests (16x16 tokens at its 256 input).
TINY_VIT_ARCH = ViTArch(
    embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, img_size=256
)

#: ``(crop_size, input_size)`` settings registered besides the default, see the module doc.
FAST_SETTINGS: tuple[tuple[int, int], ...] = ((1024, 1024), (512, 1024), (224, 512))


def sam_vit_trunk(arch: ViTArch) -> ImageEncoderViT:
    """``ImageEncoderViT`` with SAM's settings (rel. pos, qkv bias, LayerNorm eps 1e-6)."""
    return ImageEncoderViT(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        in_chans=3,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=4.0,
        out_chans=arch.out_chans,
        qkv_bias=True,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        use_abs_pos=True,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=arch.window_size,
        global_attn_indexes=arch.global_attn_indexes,
    )


class SamViTEncoder(ImageEncoder):
    """SAM ViT trunk + neck with one adapter stage spanning all blocks.

    Parameters
    ----------
    arch : ViTArch
        Encoder hyper-parameters.
    adapter : AdapterConfig
        Adapter settings (``enabled=False``: no adapters).
    input_size : int, optional
        Encoder input side (default ``arch.img_size``); a multiple of the patch size, at
        most ``arch.img_size``. Smaller inputs use a resized position embedding.
    """

    pixel_mean = SAM_PIXEL_MEAN
    pixel_std = SAM_PIXEL_STD

    def __init__(self, arch: ViTArch, adapter: AdapterConfig, input_size: int | None = None):
        super().__init__()
        input_size = input_size or arch.img_size
        if input_size % arch.patch_size or not arch.patch_size * 2 <= input_size <= arch.img_size:
            raise ValueError(
                f"input_size must be a multiple of {arch.patch_size} between "
                f"{arch.patch_size * 2} and {arch.img_size}, got {input_size}"
            )
        self.arch = arch
        self.trunk = sam_vit_trunk(arch)
        self.input_size = input_size
        self.embedding_size = input_size // arch.patch_size
        self.early_channels = arch.embed_dim
        self.early_block = arch.global_attn_indexes[0]
        self.hfc_mask_ratio = adapter.hfc_mask_ratio
        self.freeze_trunk()
        self.adapters = None
        if adapter.enabled:
            self.adapters = nn.ModuleList(
                [
                    StageAdapter(
                        width=arch.embed_dim,
                        n_blocks=arch.depth,
                        patch=arch.patch_size,
                        reduction=adapter.reduction,
                    )
                ]
            )

    def position_embedding(self, grid: int) -> torch.Tensor:
        """``(1, grid, grid, C)`` absolute position embedding for a ``grid``-token side."""
        pos = self.trunk.pos_embed
        if pos.shape[1] == grid:
            return pos
        resized = F.interpolate(
            pos.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False
        )
        return resized.permute(0, 2, 3, 1)

    def encode(self, x: torch.Tensor, adapt: bool, early: bool) -> EncoderOutput:
        trunk = self.trunk
        patches = trunk.patch_embed(x)  # (B, G, G, C), channels last
        tokens = patches + self.position_embedding(patches.shape[1])
        adapter = self.adapters[0] if adapt else None
        features = None
        if adapter is not None:
            hfc = high_frequency_components(x, self.hfc_mask_ratio)
            features = adapter.stage_features(patches, hfc)  # F_hfc + F_pe, (B, G, G, hidden)
        early_features = None
        for i, block in enumerate(trunk.blocks):
            if adapter is not None:
                tokens = tokens + adapter.prompt(i, features)
            tokens = block(tokens)
            if early and i == self.early_block:
                early_features = tokens.permute(0, 3, 1, 2)
        embedding = trunk.neck(tokens.permute(0, 3, 1, 2))
        return EncoderOutput(embedding=embedding, early=early_features)


def backbone_name(arch_name: str, crop_size: int, input_size: int) -> str:
    """Registry name of a crop/input setting: the bare name for the default (224 -> native
    input), else e.g. ``vit_b-crop512-in1024``."""
    arch = TINY_VIT_ARCH if arch_name == "vit_tiny" else SAM_VIT_ARCHS[arch_name]
    if (crop_size, input_size) == (PAPER_CROP_SIZE, arch.img_size):
        return arch_name
    return f"{arch_name}-crop{crop_size}-in{input_size}"


def _assemble(
    name: str, arch: ViTArch, adapter: AdapterConfig, crop_size: int, input_size: int | None
) -> Backbone:
    if crop_size < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    with seeded_init(0):  # random weights are reproducible, so a checkpoint can rebuild them
        encoder = SamViTEncoder(arch, adapter, input_size)
        prompt_encoder = sam_prompt_encoder(encoder.input_size, encoder.embedding_size)
        mask_decoder = sam_mask_decoder()
    return Backbone(
        name=name,
        encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        crop_size=crop_size,
        pretrained=False,
        prompt_style="points",
    )


def load_sam_checkpoint(backbone: Backbone, path: str | Path) -> None:
    """Load an official-layout SAM checkpoint file strictly into ``backbone``.

    Raises :class:`~instasam.errors.InputError` naming the file when it is missing,
    unreadable or does not match the architecture key for key. On success the backbone is
    labelled ``pretrained`` (weights came from a file, not from random initialisation).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "SAM checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise InputError(path, f"cannot read SAM checkpoint ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(path, "not a SAM state dict")
    try:
        load_sam_layout_state(backbone, state)
    except KeyError as exc:
        raise InputError(path, str(exc.args[0])) from None
    backbone.pretrained = True


def build_sam_vit(
    arch_name: str,
    checkpoint: str | None = None,
    adapter: AdapterConfig | None = None,
    pretrained: bool = True,
    crop_size: int = PAPER_CROP_SIZE,
    input_size: int = 1024,
) -> Backbone:
    """SAM ViT-B/L/H backbone.

    Parameters
    ----------
    arch_name : str
        ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
    checkpoint : str, optional
        Official-layout weights file. Without it the official file is looked for in the
        cache (``$INSTASAM_CACHE``, else ``~/.cache/instasam/checkpoints``; fill it with
        ``instasam weights download vit_b``); a missing file raises
        :class:`~instasam.errors.InputError` saying where to put it.
    adapter : AdapterConfig, optional
        Adapter settings.
    pretrained : bool
        ``False``: random weights in the official layout (``Backbone.pretrained`` is False,
        so outputs are labelled); ``checkpoint`` must then be None.
    crop_size, input_size : int
        Tile side per encoder pass and the encoder input side it is resized to; 224 -> 1024
        is the paper's setting, see the module documentation for the others.
    """
    if not pretrained and checkpoint is not None:
        raise ValueError("pretrained=False builds random weights; do not pass a checkpoint")
    arch = SAM_VIT_ARCHS[arch_name]
    # Find the weights before building: a missing file should fail at once, not after
    # initialising hundreds of millions of parameters.
    source = (checkpoint or require_checkpoint(arch_name)) if pretrained else None
    name = backbone_name(arch_name, crop_size, input_size)
    backbone = _assemble(name, arch, adapter or AdapterConfig(), crop_size, input_size)
    if source is not None:
        load_sam_checkpoint(backbone, source)
    return backbone


def build_vit_tiny(
    checkpoint: str | None = None,
    adapter: AdapterConfig | None = None,
    pretrained: bool = False,
    crop_size: int = PAPER_CROP_SIZE,
    input_size: int = 256,
) -> Backbone:
    """A tiny random ViT in SAM's layout (64 wide, 2 blocks, 256 input), for tests.

    It has no published weights; ``checkpoint`` may name a file in its own layout.
    """
    if pretrained and checkpoint is None:
        raise ValueError("vit_tiny has no published weights; pass a checkpoint or pretrained=False")
    name = backbone_name("vit_tiny", crop_size, input_size)
    backbone = _assemble(name, TINY_VIT_ARCH, adapter or AdapterConfig(), crop_size, input_size)
    if checkpoint is not None:
        load_sam_checkpoint(backbone, checkpoint)
    return backbone


def _register() -> None:
    register_backbone("vit_tiny")(build_vit_tiny)
    for arch_name in SAM_VIT_ARCHS:
        register_backbone(arch_name)(functools.partial(build_sam_vit, arch_name))
        for crop, size in FAST_SETTINGS:
            name = backbone_name(arch_name, crop, size)
            factory = functools.partial(build_sam_vit, arch_name, crop_size=crop, input_size=size)
            register_backbone(name)(factory)


_register()
