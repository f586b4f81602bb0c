"""The official SAM checkpoints: where they are looked for and how they are fetched.

A checkpoint is looked for in the cache directory: ``$INSTASAM_CACHE`` when set (the files
sit directly in it), else ``~/.cache/instasam/checkpoints``. ``instasam weights download``
fills it over HTTPS, streaming to a temporary file beside the destination, checking the
size and SHA-256 against the published file and renaming it into place only when both
match, so the cache never holds a partial or corrupt file under the official name.

Provenance of the digests and sizes: the SHA-256 values are those pinned for the same
``dl.fbaipublicfiles.com`` URLs by independent projects (micro-sam's ``micro_sam/util.py``
verifies its downloads against them, and several download scripts and model lists carry
the same three values with these byte sizes). Meta publishes no digests; the suffix of each
file name (``01ec64`` ...) is the start of the file's MD5, not of its SHA-256.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from instasam.errors import InputError
from instasam.io.atomic import atomic_path

CACHE_ENV = "INSTASAM_CACHE"
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One published SAM checkpoint."""

    backbone: str
    filename: str
    size: int  # bytes
    sha256: str

    @property
    def url(self) -> str:
        return OFFICIAL_BASE_URL + self.filename


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "vit_b": OfficialCheckpoint(
        "vit_b",
        "sam_vit_b_01ec64.pth",
        375_042_383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": OfficialCheckpoint(
        "vit_l",
        "sam_vit_l_0b3195.pth",
        1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": OfficialCheckpoint(
        "vit_h",
        "sam_vit_h_4b8939.pth",
        2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


def official_checkpoint(backbone: str) -> OfficialCheckpoint:
    """The published file for ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``."""
    try:
        return OFFICIAL_CHECKPOINTS[backbone]
    except KeyError:
        raise ValueError(
            f"no official checkpoint for {backbone!r}; choose from {sorted(OFFICIAL_CHECKPOINTS)}"
        ) from None


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Directory holding the checkpoints: ``cache``, else ``$INSTASAM_CACHE``, else
    ``~/.cache/instasam/checkpoints``."""
    if cache:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "instasam" / "checkpoints"


def checkpoint_path(backbone: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the official checkpoint of ``backbone`` is looked for."""
    return cache_dir(cache) / official_checkpoint(backbone).filename


def require_checkpoint(backbone: str, cache: str | os.PathLike | None = None) -> Path:
    """The cached checkpoint of ``backbone``, or :class:`InputError` saying how to get it."""
    path = checkpoint_path(backbone, cache)
    if path.is_file():
        return path
    entry = official_checkpoint(backbone)
    raise InputError(
        path,
        f"SAM {backbone} weights not found; run `instasam weights download {backbone}` "
        f"or download {entry.url} by hand and save it at this path "
        f"(or pass the file as the backbone checkpoint, e.g. --sam-checkpoint)",
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: str | os.PathLike, entry: OfficialCheckpoint) -> str | None:
    """None when ``path`` is the published file, else the reason it is not."""
    size = Path(path).stat().st_size
    if size != entry.size:
        return f"size {size} bytes, expected {entry.size}"
    digest = file_sha256(path)
    if digest != entry.sha256:
        return f"SHA-256 {digest}, expected {entry.sha256}"
    return None


# Failures of the connection or of the HTTP exchange (not of writing the local file).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def download_checkpoint(
    backbone: str,
    cache: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch the official checkpoint of ``backbone`` into the cache and verify it.

    Parameters
    ----------
    backbone : str
        ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
    cache : path, optional
        Destination directory (default :func:`cache_dir`).
    url : str, optional
        A mirror of the official file (default: Meta's URL). The file must still have the
        official size and SHA-256.
    progress : bool
        Show a tqdm progress bar.
    timeout : float
        Seconds without data before the connection is given up.

    Returns
    -------
    Path
        The verified file. An already present file that verifies is kept as it is.

    Raises
    ------
    InputError
        Naming the URL, when the download fails or its content fails the check (nothing is
        left at the destination then), with where to put a manually downloaded file.
    """
    entry = official_checkpoint(backbone)
    url = url or entry.url
    dest = checkpoint_path(backbone, cache)
    if dest.is_file():
        problem = verify_checkpoint(dest, entry)
        if problem is None:
            return dest
        print(f"{dest}: existing file fails its check ({problem}); downloading again")
    manual = f"download it by other means and save it as {dest}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create the cache directory ({exc.strerror})"
        raise InputError(dest.parent, reason) from None
    with atomic_path(dest) as tmp:
        size, digest = _stream_to_file(url, tmp, entry, progress, timeout, manual)
        if size != entry.size or digest != entry.sha256:
            raise InputError(
                url,
                f"downloaded file fails its check (size {size} bytes, SHA-256 {digest}; "
                f"expected {entry.size} bytes, {entry.sha256}); nothing was saved; {manual}",
            )
    return dest


def _stream_to_file(
    url: str,
    tmp: Path,
    entry: OfficialCheckpoint,
    progress: bool,
    timeout: float,
    manual: str,
) -> tuple[int, str]:
    """Copy ``url`` to ``tmp``; return the byte count and SHA-256 of what was received."""
    digest = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": "instasam"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total != entry.size:
                raise InputError(
                    url,
                    f"server offers {total} bytes but {entry.filename} has {entry.size}; "
                    f"wrong file? {manual}",
                )
            with (
                tmp.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=entry.filename,
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise InputError(url, f"download failed (HTTP {exc.code} {exc.reason}); {manual}") from None
    except _NETWORK_ERRORS as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(url, f"download failed ({reason}); {manual}") from None
    return size, digest.hexdigest()
