"""The backbone interface: a frozen image encoder (with adapters), SAM's prompt encoder and
SAM's mask decoder, plus a registry of the backbones we can build.

Every backbone takes RGB images with values in 0..255, resized to its ``input_size``, and
returns a 256-channel embedding on an ``embedding_size`` grid, the layout SAM's prompt
encoder and mask decoder expect.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from instasam.config import AdapterConfig


@dataclass
class EncoderOutput:
    """What an encoder pass yields.

    Attributes
    ----------
    embedding : Tensor
        ``(B, 256, E, E)`` image embedding for the decoders.
    early : Tensor or None
        ``(B, C, h, w)`` features of an early transformer stage (channels first), which
        the nuclei decoder fuses for finer detail (HQ-SAM style); None when not requested.
    """

    embedding: torch.Tensor
    early: torch.Tensor | None = None


class ImageEncoder(nn.Module, ABC):
    """A frozen SAM-family image encoder with optional adapters.

    Subclasses set ``input_size``, ``embedding_size``, ``early_channels``, ``pixel_mean``
    and ``pixel_std`` and implement :meth:`encode`. The trunk's own weights never train:
    :meth:`freeze_trunk` turns their gradients off and :meth:`train` keeps the trunk in
    evaluation mode so batch-norm statistics and dropout stay as pretrained.
    """

    input_size: int
    embedding_size: int
    early_channels: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    trunk: nn.Module
    adapters: nn.ModuleList | None

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Map 0..255 RGB to the encoder's input statistics."""
        mean = images.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return (images - mean) / std

    def freeze_trunk(self) -> None:
        for p in self.trunk.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        self.trunk.eval()
        return self

    @property
    def has_adapters(self) -> bool:
        return self.adapters is not None

    def forward(
        self, images: torch.Tensor, adapt: bool = True, early: bool = False
    ) -> EncoderOutput:
        """Encode ``(B, 3, S, S)`` RGB in 0..255, ``S = input_size``.

        ``adapt=False`` runs the original encoder (the branch that yields the vanilla
        pseudo labels S); ``early=True`` also returns early-stage features.
        """
        if images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"encoder expects {self.input_size}x{self.input_size} input, "
                f"got {tuple(images.shape[-2:])}"
            )
        return self.encode(self.normalise(images), adapt=adapt and self.has_adapters, early=early)

    @abstractmethod
    def encode(self, x: torch.Tensor, adapt: bool, early: bool) -> EncoderOutput:
        """Encode normalised images."""


class Backbone(nn.Module):
    """Image encoder + SAM prompt encoder + SAM mask decoder.

    Attributes
    ----------
    name : str
        Registry name (``"litemedsam"``, ``"vit_b"``, ...).
    crop_size : int
        Tile side (pixels of the H&E image) that one encoder pass covers; tiles are resized
        from ``crop_size`` to ``encoder.input_size`` (LiteMedSAM: 256 -> 256; SAM ViT as in
        the paper: 224 -> 1024).
    pretrained : bool
        Whether real pretrained weights were loaded (outputs of random weights are labelled).
    prompt_style : str
        How the backbone was trained to be prompted: ``"points"`` (SAM) or ``"box"``
        (LiteMedSAM, trained with boxes only); the pseudo-label ``prompt="auto"`` follows it.
    """

    def __init__(
        self,
        name: str,
        encoder: ImageEncoder,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        crop_size: int,
        pretrained: bool,
        prompt_style: str = "points",
    ) -> None:
        super().__init__()
        self.name = name
        self.encoder = encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.crop_size = crop_size
        self.pretrained = pretrained
        self.prompt_style = prompt_style

    @property
    def input_size(self) -> int:
        return self.encoder.input_size

    @property
    def mask_size(self) -> int:
        """Side of the mask decoder's low-resolution output (4x the embedding grid)."""
        return 4 * self.encoder.embedding_size


def sam_prompt_encoder(input_size: int, embedding_size: int) -> PromptEncoder:
    """SAM's prompt encoder for a square input (256-channel embeddings)."""
    return PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(input_size, input_size),
        mask_in_chans=16,
    )


def sam_mask_decoder() -> MaskDecoder:
    """SAM's mask decoder (two-way transformer, 3 multimask outputs + 1)."""
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Initialise modules from a fixed seed without disturbing the caller's random state.

    Backbones built with random weights are then identical on every build, so a trained
    model that stores only its trainable tensors can be rebuilt exactly.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


BackboneFactory = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory ``f(checkpoint=None, adapter=AdapterConfig(), **kw)``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_backbones() -> list[str]:
    _import_builtin_backbones()
    return sorted(_REGISTRY)


def build_backbone(
    name: str,
    checkpoint: str | None = None,
    adapter: AdapterConfig | None = None,
    **kwargs,
) -> Backbone:
    """Build a registered backbone with frozen encoder weights and fresh adapters.

    Parameters
    ----------
    name : str
        One of :func:`available_backbones`.
    checkpoint : str, optional
        Weights file; each backbone documents its default source.
    adapter : AdapterConfig, optional
        Adapter settings (``enabled=False`` builds the encoder without adapters).
    """
    _import_builtin_backbones()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(_REGISTRY)}")
    return _REGISTRY[name](checkpoint=checkpoint, adapter=adapter or AdapterConfig(), **kwargs)


def _import_builtin_backbones() -> None:
    # Importing the modules runs their @register_backbone decorators.
    import importlib

    for module in ("instasam.model.lite_medsam", "instasam.model.sam_vit"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def load_sam_layout_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict in SAM's layout (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``) strictly: any missing or unexpected key raises ``KeyError``.

    Adapters are not part of SAM's layout and are left as initialised.
    """
    parts = {
        "image_encoder.": backbone.encoder.trunk,
        "prompt_encoder.": backbone.prompt_encoder,
        "mask_decoder.": backbone.mask_decoder,
    }
    unexpected = [k for k in state if not k.startswith(tuple(parts))]
    missing: list[str] = []
    for prefix, module in parts.items():
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        result = module.load_state_dict(sub, strict=False)
        missing += [prefix + k for k in result.missing_keys]
        unexpected += [prefix + k for k in result.unexpected_keys]
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match the {backbone.name} architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
