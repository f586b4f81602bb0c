"""The assembled InstaSAM model and its checkpoints.

Trainable parts: the encoder's adapters, SAM's mask decoder (as in the authors' code; a
frozen copy of the original decoder makes the vanilla pseudo labels S) and the nuclei
decoder. Everything else stays as pretrained, so a checkpoint stores only the trainable
tensors plus the name of the backbone to rebuild the rest from.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from instasam.config import InstaSAMConfig
from instasam.errors import InputError
from instasam.io.atomic import atomic_path
from instasam.model.backbone import Backbone, EncoderOutput, build_backbone
from instasam.model.nuclei_decoder import NucleiDecoder

CHECKPOINT_FORMAT = "instasam-checkpoint-1"
PROMPT_CHUNK = 48  # prompts decoded at once; bounds memory at ~K x 256 x 256 floats
OUTSIDE_LOGIT = -30.0  # logit given to pixels outside a prompt's decoding window


@dataclass
class Prompts:
    """Prompts for K nuclei in encoder-input coordinates (x, y).

    Attributes
    ----------
    boxes : Tensor or None
        ``(K, 4)`` as ``x0, y0, x1, y1``.
    points : Tensor or None
        ``(K, P, 2)`` point coordinates.
    labels : Tensor or None
        ``(K, P)``: 1 positive, 0 negative, -1 padding.
    """

    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        ref = self.boxes if self.boxes is not None else self.points
        return 0 if ref is None else ref.shape[0]

    def select(self, index: slice | torch.Tensor) -> Prompts:
        return Prompts(
            boxes=None if self.boxes is None else self.boxes[index],
            points=None if self.points is None else self.points[index],
            labels=None if self.labels is None else self.labels[index],
        )


class InstaSAM(nn.Module):
    """Backbone with adapters + trainable mask decoder + nuclei decoder."""

    def __init__(self, backbone: Backbone, config: InstaSAMConfig | None = None) -> None:
        super().__init__()
        self.config = config or InstaSAMConfig()
        self.backbone = backbone
        self.frozen_mask_decoder = copy.deepcopy(backbone.mask_decoder)
        early = backbone.encoder.early_channels if self.config.decoder.use_early_features else None
        self.nuclei_decoder = NucleiDecoder(
            backbone.mask_decoder,
            early_channels=early,
            init_from_mask_decoder=self.config.decoder.init_from_mask_decoder,
            distance_head=self.config.decoder.distance_head,
        )
        for module in (self.frozen_mask_decoder, backbone.prompt_encoder):
            for p in module.parameters():
                p.requires_grad_(False)
        if not self.config.train.train_mask_decoder:
            for p in backbone.mask_decoder.parameters():
                p.requires_grad_(False)

    # -- geometry -----------------------------------------------------------------------
    @property
    def crop_size(self) -> int:
        return self.config.augment.crop_size or self.backbone.crop_size

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    def to_input(self, crops: torch.Tensor) -> torch.Tensor:
        """``(B, 3, c, c)`` float 0..255 crops -> ``(B, 3, S, S)`` encoder input."""
        if crops.shape[-1] == self.input_size:
            return crops
        return F.interpolate(
            crops, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
        )

    def to_crop(self, maps: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Resize decoder maps ``(B, C, M, M)`` to the crop side (default ``crop_size``)."""
        size = size or self.crop_size
        if maps.shape[-1] == size:
            return maps
        return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)

    # -- forward pieces -----------------------------------------------------------------
    def encode(self, crops: torch.Tensor, adapt: bool = True) -> EncoderOutput:
        """Encode crops (0..255 floats at crop size); early features only when used."""
        early = adapt and self.nuclei_decoder.early_fusion is not None
        return self.backbone.encoder(self.to_input(crops), adapt=adapt, early=early)

    def nuclei_maps(self, encoded: EncoderOutput) -> torch.Tensor:
        """``(B, 3, M, M)``: foreground logit, horizontal and vertical distance."""
        return self.nuclei_decoder(encoded.embedding, self.backbone.prompt_encoder, encoded.early)

    def prompted_masks(
        self,
        embedding: torch.Tensor,
        prompts: Prompts,
        frozen: bool = False,
        window: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits ``(K, M, M)`` and predicted IoU ``(K,)`` for one image's prompts.

        Parameters
        ----------
        embedding : Tensor
            ``(1, 256, E, E)`` image embedding.
        prompts : Prompts
            K prompts in encoder-input coordinates.
        frozen : bool
            Use the original SAM decoder (vanilla pseudo labels S) instead of the trained
            copy (S' and its loss).
        window : int, optional
            Decode each prompt on a ``window x window`` patch of the embedding centred on
            it instead of the whole grid. A nucleus spans a few tokens, and the decoder's
            cost grows with the tokens it attends to, so a 32-token window is about four
            times cheaper on a 64-token grid. Logits outside the window are set to
            :data:`OUTSIDE_LOGIT`. ``None`` (or a window as large as the grid) decodes on
            the whole grid as SAM does.
        """
        decoder = self.frozen_mask_decoder if frozen else self.backbone.mask_decoder
        grid = embedding.shape[-1]
        logits, ious = [], []
        for start in range(0, len(prompts), PROMPT_CHUNK):
            chunk = prompts.select(slice(start, start + PROMPT_CHUNK))
            if window is None or window >= grid:
                mask, iou = self._decode_whole(decoder, embedding, chunk)
            else:
                mask, iou = self._decode_windows(decoder, embedding, chunk, window)
            logits.append(mask)
            ious.append(iou)
        if not logits:
            m = self.backbone.mask_size
            return embedding.new_zeros((0, m, m)), embedding.new_zeros((0,))
        return torch.cat(logits), torch.cat(ious)

    def _sparse_dense(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        points = None if prompts.points is None else (prompts.points, prompts.labels)
        return self.backbone.prompt_encoder(points=points, boxes=prompts.boxes, masks=None)

    def _decode_whole(
        self, decoder: nn.Module, embedding: torch.Tensor, prompts: Prompts
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self._sparse_dense(prompts)
        mask, iou = decoder(
            image_embeddings=embedding,
            image_pe=self.backbone.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return mask[:, 0], iou[:, 0]

    def _decode_windows(
        self, decoder: nn.Module, embedding: torch.Tensor, prompts: Prompts, window: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(prompts)
        grid = embedding.shape[-1]
        scale = self.input_size / grid  # input pixels per token
        origin = (prompt_centres(prompts) / scale - window / 2).round().long()
        origin = origin.clamp(0, grid - window)  # (K, 2) as (x, y) in tokens
        offsets = torch.arange(window, device=embedding.device)
        rows = (origin[:, 1, None] + offsets)[:, :, None].expand(k, window, window)
        cols = (origin[:, 0, None] + offsets)[:, None, :].expand(k, window, window)
        src = embedding[0][:, rows, cols].permute(1, 0, 2, 3)  # (K, C, w, w)
        pos = self.backbone.prompt_encoder.get_dense_pe()[0][:, rows, cols].permute(1, 0, 2, 3)
        sparse, dense = self._sparse_dense(prompts)
        src = src + dense[..., :window, :window]  # the no-mask embedding is constant
        out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(k, -1, -1), sparse], dim=1)
        hs, src = decoder.transformer(src, pos, tokens)
        c = src.shape[-1]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(k, c, window, window))
        weights = decoder.output_hypernetworks_mlps[0](hs[:, 1])  # single-mask token
        side = upscaled.shape[-1]
        local = (weights[:, None] @ upscaled.flatten(2)).view(k, side, side)
        iou = decoder.iou_prediction_head(hs[:, 0])[:, 0]
        up = side // window
        canvas = local.new_full((k, grid * up, grid * up), OUTSIDE_LOGIT)
        index = torch.arange(k, device=local.device)[:, None, None]
        r = (origin[:, 1, None] * up + torch.arange(side, device=local.device))[:, :, None]
        cc = (origin[:, 0, None] * up + torch.arange(side, device=local.device))[:, None, :]
        canvas = canvas.index_put((index, r, cc), local)
        return canvas, iou

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Inference: ``(B, 3, c, c)`` crops -> ``(B, 3, c, c)`` maps (fg probability, h, v)."""
        maps = self.to_crop(self.nuclei_maps(self.encode(crops, adapt=True)), crops.shape[-1])
        return torch.cat([torch.sigmoid(maps[:, :1]), maps[:, 1:].clamp(-1, 1)], dim=1)

    # -- parameters ---------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the tensors that training changes (adapters, mask decoder, nuclei decoder)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def trainable_parameter_count(self) -> dict[str, int]:
        """Trainable parameters per part, and in total."""
        parts = {
            "adapters": self.backbone.encoder.adapters,
            "mask_decoder": self.backbone.mask_decoder,
            "nuclei_decoder": self.nuclei_decoder,
        }
        counts = {
            name: sum(
                p.numel() for p in (m.parameters() if m is not None else []) if p.requires_grad
            )
            for name, m in parts.items()
        }
        counts["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        counts["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return counts


def build_model(
    config: InstaSAMConfig, checkpoint: str | None = None, pretrained: bool = True
) -> InstaSAM:
    """Build the model for ``config.train.backbone`` with fresh adapters and decoders.

    ``pretrained=False`` builds the backbone with its reproducible random weights (tests,
    smoke runs); the default loads the backbone's weights (``checkpoint`` or its default
    source).
    """
    kwargs = {} if pretrained else {"pretrained": False}
    backbone = build_backbone(
        config.train.backbone, checkpoint=checkpoint, adapter=config.adapter, **kwargs
    )
    return InstaSAM(backbone, config)


def save_checkpoint(path: str | os.PathLike, model: InstaSAM, **extra: Any) -> None:
    """Write the trainable weights, the configuration and ``extra`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "backbone": model.backbone.name,
        "backbone_pretrained": model.backbone.pretrained,
        "state": model.trainable_state_dict(),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_payload(path: str | os.PathLike) -> dict[str, Any]:
    """The dict saved in a checkpoint file of any kind, or :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot read model checkpoint: {reason}") from None
    if not isinstance(payload, dict):
        raise InputError(path, "not an instasam checkpoint (train one with `instasam train`)")
    return payload


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`InputError`."""
    payload = load_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not an instasam checkpoint (train one with `instasam train`)")
    return payload


def load_model(
    path: str | os.PathLike,
    backbone_checkpoint: str | None = None,
    payload: dict[str, Any] | None = None,
) -> InstaSAM:
    """Rebuild a trained model: the backbone from its source, the rest from ``path``
    (or from ``payload``, the file's contents already read with :func:`load_payload`)."""
    if payload is None:
        payload = read_checkpoint(path)
    elif payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not an instasam checkpoint (train one with `instasam train`)")
    config = InstaSAMConfig.from_dict(_with_old_defaults(payload["config"]))
    # A model trained on random backbone weights is rebuilt on the same random weights.
    pretrained = bool(payload.get("backbone_pretrained", True)) or backbone_checkpoint is not None
    model = build_model(config, checkpoint=backbone_checkpoint, pretrained=pretrained)
    missing, unexpected = model.load_state_dict(payload["state"], strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lost = sorted(trainable & set(missing))
    if lost or unexpected:
        raise InputError(
            path,
            f"checkpoint does not fit its model ({len(lost)} missing, "
            f"{len(unexpected)} unexpected tensors)",
        )
    model.eval()
    return model


def _with_old_defaults(config: dict) -> dict:
    """Checkpoints saved before ``decoder.distance_head`` existed used hypernetwork heads."""
    decoder = config.setdefault("decoder", {})
    decoder.setdefault("distance_head", "hypernetwork")
    return config


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float 0..255."""
    # Writable: torch warns on read-only arrays (e.g. images read by memory mapping).
    array = np.require(image, requirements=["C", "W"])
    return torch.from_numpy(array).permute(2, 0, 1)[None].float()


def prompt_centres(prompts: Prompts) -> torch.Tensor:
    """``(K, 2)`` centre of each prompt: its box centre, else its first (positive) point."""
    if prompts.boxes is not None:
        return (prompts.boxes[:, :2] + prompts.boxes[:, 2:]) / 2
    return prompts.points[:, 0]
