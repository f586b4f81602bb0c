"""Writes that leave either the complete new file or nothing at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from instasam.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the destination folder so the final ``os.replace`` is
    atomic on POSIX. If the body raises, the temporary file is removed and ``path`` is
    left untouched. The temporary name keeps the destination's suffix so that writers
    which pick a format from the suffix (Pillow, tifffile) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_output_folder(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that cannot be created or written in.

    Nothing is created: the nearest existing ancestor is probed with a temporary file,
    which also catches a read-only file system (where permission bits say nothing to root).
    """
    _check_folder(Path(path), Path(path))


def _check_folder(path: Path, named: Path) -> None:
    """:func:`check_output_folder` for ``path``, errors naming ``named``."""
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file, not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(ancestor, "is a file, not a folder; cannot write below it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".instasam-probe.", dir=ancestor)
    except OSError as exc:
        raise InputError(named, f"cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file that could not be written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "names a folder; give a file name")
    _check_folder(path.parent, path)
