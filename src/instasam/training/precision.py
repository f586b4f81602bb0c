"""Choosing the arithmetic: bf16 autocast where the CPU has native bf16, else fp32.

On a CPU with AVX-512 BF16 (or AMX) oneDNN runs bf16 convolutions about twice as fast as
fp32 (the nuclei network's training step, measured in the README); without it bf16 is
emulated and slower than fp32, so it is never chosen there automatically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]


def cpu_has_native_bf16() -> bool:
    """True where oneDNN reports native bf16 support (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def resolve_precision(choice: Precision, native_bf16: bool | None = None) -> str:
    """``"bf16"`` or ``"fp32"`` for a user's ``choice`` on this CPU."""
    if choice not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {choice!r} (auto, fp32 or bf16)")
    if choice != "auto":
        return choice
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return "bf16" if native else "fp32"


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """bf16 autocast on the CPU for ``"bf16"``; nothing for ``"fp32"``."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
