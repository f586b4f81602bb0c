"""Saved network outputs: foreground probability and distance maps of one image (``.npz``).

A network with a centre head saves its centre probability as a third ``hv`` channel.

``instasam predict --save-maps`` writes them so that post-processing can be re-run with
other thresholds (``instasam postprocess``) without the model. They are kept as float32,
as predicted: float16 moved pixels across the foreground threshold, so that post-processing
the saved maps with the same settings did not give back the same instances.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from instasam.errors import InputError
from instasam.io.atomic import atomic_path

MAP_KEYS = ("foreground", "hv")


def maps_fit(foreground_shape: tuple[int, ...], hv_shape: tuple[int, ...]) -> bool:
    """Whether distance maps of ``hv_shape`` belong with a foreground map of
    ``foreground_shape``: ``(2, H, W)`` for ``(H, W)``, or ``(3, H, W)`` with a centre map."""
    return len(foreground_shape) == 2 and hv_shape in (
        (2, *foreground_shape),
        (3, *foreground_shape),
    )


def write_maps(path: str | os.PathLike, foreground: np.ndarray, hv: np.ndarray) -> None:
    """Write ``foreground`` ``(H, W)`` and ``hv`` ``(2, H, W)`` (``(3, H, W)`` with a centre
    map) as float32, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, foreground=foreground.astype(np.float32), hv=hv.astype(np.float32))


def read_maps(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read maps written by :func:`write_maps` as float32, or raise :class:`InputError`."""
    path = Path(path)
    try:
        with np.load(path) as data:
            missing = [k for k in MAP_KEYS if k not in data]
            if missing:
                raise InputError(path, f"not a saved-maps file (no {', '.join(missing)})")
            foreground = data["foreground"].astype(np.float32)
            hv = data["hv"].astype(np.float32)
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot read saved maps: {reason}") from None
    if not maps_fit(foreground.shape, hv.shape):
        raise InputError(
            path, f"map shapes do not fit: foreground {foreground.shape}, hv {hv.shape}"
        )
    return foreground, hv
