"""CPM17: ``Images/<name>.png`` with ``Labels/<name>.mat`` holding ``inst_map``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from instasam.errors import InputError
from instasam.io.labels import as_label_map


def read_cpm17_label(path: str | os.PathLike) -> np.ndarray:
    """The ``inst_map`` of a CPM17 ``.mat`` file as an int32 instance map.

    MATLAB v7.3 files are HDF5 and need ``h5py``; they are refused with that reason.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:
        raise InputError(
            path, "MATLAB v7.3 (HDF5) .mat file; re-save it as v7 or earlier"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, f"cannot read .mat file ({exc.__class__.__name__}: {exc})") from None
    if "inst_map" not in data:
        keys = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise InputError(path, f"no 'inst_map' variable (found: {keys})")
    return as_label_map(np.asarray(data["inst_map"]), path)


def cpm17_layout(src: str | os.PathLike) -> tuple[Path, Path]:
    """The ``Images`` and ``Labels`` folders of a CPM17 split folder."""
    src = Path(src)
    images = next((src / n for n in ("Images", "images") if (src / n).is_dir()), None)
    labels = next((src / n for n in ("Labels", "labels") if (src / n).is_dir()), None)
    if images is None or labels is None:
        raise InputError(src, "expected Images/ and Labels/ folders (a CPM17 train or test folder)")
    return images, labels
