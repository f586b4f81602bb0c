"""Choosing the hardware and the arithmetic: a CUDA GPU where there is one, and bf16
autocast where the processor has native bf16, else fp32.

On a CPU with AVX-512 BF16 (or AMX) oneDNN runs bf16 convolutions about twice as fast as
fp32 (the nuclei network's training step, measured in the README); without it bf16 is
emulated and slower than fp32, so it is never chosen there automatically. Every CUDA GPU
since Ampere has native bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from instasam.errors import InputError

Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: str, cuda_available: bool | None = None) -> str:
    """``"cuda"`` or ``"cpu"`` for a user's ``choice``; auto takes a GPU where there is one.

    A choice this machine cannot honour is an :class:`InputError` naming ``--device``, so
    every command reports it in the same one line.
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise InputError("--device", f"unknown device {choice!r} (auto, cpu or cuda)")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if choice == "cuda" and not available:
        raise InputError("--device", "no CUDA GPU is available here (use --device cpu)")
    if choice != "auto":
        return choice
    return "cuda" if available else "cpu"


def cpu_has_native_bf16() -> bool:
    """True where oneDNN reports native bf16 support (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def gpu_has_native_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(
    choice: Precision, native_bf16: bool | None = None, device: str = "cpu"
) -> str:
    """``"bf16"`` or ``"fp32"`` for a user's ``choice`` on this ``device``."""
    if choice not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {choice!r} (auto, fp32 or bf16)")
    if choice != "auto":
        return choice
    if native_bf16 is None:
        native_bf16 = gpu_has_native_bf16() if device == "cuda" else cpu_has_native_bf16()
    return "bf16" if native_bf16 else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """bf16 autocast on ``device`` (``"cpu"`` or ``"cuda"``) for ``"bf16"``; nothing for
    ``"fp32"``."""
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
