"""Models that ship inside the package, by name, each checked by SHA-256 when loaded.

Each entry names its file (beside this module), the file's digest, what it was trained on
and what it scored; its model card (``<name>.md``) says how to reproduce it and its licence.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from instasam.errors import InputError


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    filename: str
    sha256: str
    trained_on: str
    scores: str  # one line, as measured (see the model card)
    licence: str

    @property
    def path(self) -> Path:
        return Path(str(resources.files("instasam.pretrained") / self.filename))

    @property
    def card(self) -> Path:
        return self.path.with_suffix(".md")


REGISTRY: dict[str, PretrainedModel] = {}

DEFAULT_MODEL = "monuseg-points"


def _register(model: PretrainedModel) -> None:
    REGISTRY[model.name] = model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_path(name: str) -> Path:
    """The checked file of a shipped model, or :class:`InputError`."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise InputError(name, f"no shipped model of that name (shipped: {known})")
    entry = REGISTRY[name]
    if not entry.path.is_file():
        raise InputError(entry.path, "shipped model file missing from the installation")
    if file_sha256(entry.path) != entry.sha256:
        raise InputError(entry.path, "SHA-256 mismatch: the shipped model file is damaged")
    return entry.path


def resolve_model(spec: str | os.PathLike) -> Path:
    """A model argument: a shipped model's name, or a checkpoint path."""
    text = str(spec)
    if text in REGISTRY:
        return pretrained_path(text)
    path = Path(spec)
    if not path.exists() and os.sep not in text and not text.endswith(".pt"):
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise InputError(text, f"neither a file nor a shipped model (shipped: {known})")
    return path


_register(
    PretrainedModel(
        name="monuseg-points",
        filename="monuseg-points.pt",
        sha256="861c80a3d1e490286e29f0174fd42465ae39c221aff5ad5837f809e083b6b085",
        trained_on="the 16 Kumar training tiles of MoNuSeg (12 train + 4 val), one centred "
        "point per nucleus: SAM (LiteMedSAM) pseudo labels S, then one round of "
        "self-training with downscaled crops; never the test tiles",
        scores="14 Kumar test tiles: Dice_obj 77.28, AJI 58.79, AJI+ 61.46, PQ 55.35 (%) in "
        "one pass (paper, InstaSAM ViT-H: 77.2 / 57.4); 13 TNBC test tiles (never trained "
        "on): Dice_obj 74.92, AJI 58.99; Kumar test at half size (20x) with --mpp 0.5: "
        "75.89 / 55.91",
        licence="CC BY-NC-SA 4.0 (inherited from MoNuSeg); the code is Apache-2.0",
    )
)
