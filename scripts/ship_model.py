"""Copy a trained nuclei network into the package as a shipped model.

Keeps only what inference needs (weights in fp16, the configuration, the validation
scores), writes ``src/instasam/pretrained/<name>.pt`` and prints its SHA-256 for the
registry entry in ``src/instasam/pretrained/__init__.py``. With ``--retune VAL...`` the
post-processing (thresholds and shrink) is chosen again, with the training's grid, on the
tiles of one or more prepared validation folders (pooled: a setting for more than one
dataset's annotators, or for a checkpoint made before the grid grew); with
``--retune-flips VAL...`` the setting for ``--flips`` predictions is chosen on their
flip-averaged maps and saved beside it. With
``--stain-reference-from TRAIN`` a checkpoint made before training saved its stain
reference gets it from its prepared training folder TRAIN (what training now computes).

    python scripts/ship_model.py bench_out/paper/runs/self-trained_seed0/model.pt \
        --name monuseg-points --retune bench_out/paper/data/{monuseg,tnbc}_val \
        --retune-flips bench_out/paper/data/{monuseg,tnbc}_val
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from instasam.io.images import list_images, read_rgb
from instasam.model.unet import NET_FORMAT, net_from_payload
from instasam.postprocess import marker_setting
from instasam.pretrained import file_sha256
from instasam.stain import reference_densities
from instasam.training.precision import resolve_precision
from instasam.training.validation import standardised_tiles, tuned_config, val_tiles_in

DEST = Path(__file__).resolve().parents[1] / "src" / "instasam" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument(
        "--retune", type=Path, nargs="+", help="prepared validation folder(s), tiles pooled"
    )
    parser.add_argument("--stain-reference-from", type=Path, help="prepared training folder")
    parser.add_argument(
        "--retune-flips",
        type=Path,
        nargs="+",
        help="prepared validation folder(s): choose the setting for --flips predictions",
    )
    args = parser.parse_args()
    payload = torch.load(args.model, map_location="cpu", weights_only=False)
    if payload.get("format") != NET_FORMAT:
        raise SystemExit(f"{args.model}: not a nuclei-network checkpoint")
    if args.stain_reference_from:
        payload = with_stain_reference(payload, args.model, args.stain_reference_from)
    if args.retune:
        payload = retuned(payload, args.model, args.retune)
    if args.retune_flips:
        payload = retuned(payload, args.model, args.retune_flips, flips=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["state"].items()}
    shipped = {
        "format": NET_FORMAT,
        "config": payload["config"],
        "state": state,
        "step": payload.get("step"),
        "val": payload.get("val"),
        **({"val_flips": payload["val_flips"]} if "val_flips" in payload else {}),
    }
    dest = DEST / f"{args.name}.pt"
    torch.save(shipped, dest)
    print(f"{dest}: {dest.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(dest)}")


def with_stain_reference(payload: dict, path: Path, train_folder: Path) -> dict:
    """``payload`` with the stain densities of the training tiles in ``train_folder``."""
    _, config = net_from_payload(payload, path)
    if config.stain.reference is not None:
        raise SystemExit(f"{path}: already holds a stain reference {config.stain.reference}")
    images = (read_rgb(p) for p in list_images(train_folder / "images"))
    stain = replace(config.stain, reference=reference_densities(images))
    print(f"stain reference (haematoxylin, eosin): {stain.reference}")
    return {**payload, "config": replace(config, stain=stain).to_dict()}


def retuned(payload: dict, path: Path, val_folders: list[Path], flips: bool = False) -> dict:
    """``payload`` with its post-processing (with ``flips``: the one for flips) chosen
    again on the tiles of ``val_folders``, pooled (each tile weighs the same)."""
    net, config = net_from_payload(payload, path)
    precision = resolve_precision(config.train.precision)
    pooled = [tile for folder in val_folders for tile in val_tiles_in(folder)]
    tiles = standardised_tiles(pooled, config.stain)
    tuned, scores, _ = tuned_config(net, config, tiles, precision, flips=flips)
    if flips:
        post = tuned.flips_postprocess
        print(
            f"for --flips: foreground {post.fg_threshold}, {marker_setting(post)}, shrink "
            f"{post.shrink}; val AJI {scores['aji']:.4f} with flips"
        )
        return {**payload, "config": tuned.to_dict(), "val_flips": scores}
    post = tuned.postprocess
    print(
        f"chosen on the val tiles: foreground {post.fg_threshold}, "
        f"{marker_setting(post)}, shrink {post.shrink}; val AJI {scores['aji']:.4f} "
        "(the checkpoint's on its own val tiles: "
        f"{payload.get('val', {}).get('aji', float('nan')):.4f})"
    )
    return {**payload, "config": tuned.to_dict(), "val": scores}


if __name__ == "__main__":
    main()
