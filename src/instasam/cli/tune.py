"""``instasam tune``: a nuclei network's post-processing chosen on the user's annotated tiles."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from instasam.cli.predict import add_precision_option
from instasam.errors import InputError
from instasam.pretrained import DEFAULT_MODEL


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="choose a model's thresholds and outline shrink on annotated tiles",
        description="Choose a nuclei network's post-processing (foreground and marker "
        "thresholds, pixels taken off each outline) on tiles with ground-truth outlines, "
        "from the grid training uses, and write the model with that setting to OUT. No "
        "training: it fits the model's outlines to your annotators' convention (outlines "
        "are drawn tighter in MoNuSeg than in TNBC, for instance) in about a minute per ten "
        "1000x1000 tiles on two cores. `instasam predict --model OUT` then uses it.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a shipped model's name or RUN/model.pt of `instasam train` "
        f"(default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--val",
        required=True,
        type=Path,
        help="tiles with outlines: a folder with images/ and labels/ (`instasam prepare`)",
    )
    p.add_argument("--out", required=True, type=Path, help="the tuned model file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--flips",
        action="store_true",
        help="choose the setting for `instasam predict --flips` (on flip-averaged maps, 4x "
        "the network's time) and save it beside the model's own",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    add_precision_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instasam.io.atomic import check_output_file
    from instasam.io.folder import list_samples, load_sample
    from instasam.model.instasam import load_payload
    from instasam.model.unet import is_net_checkpoint, net_from_payload, save_net
    from instasam.postprocess import marker_setting
    from instasam.pretrained import resolve_model

    if args.out.exists() and not args.overwrite:
        raise InputError(args.out, "already exists; pass --overwrite to replace it")
    check_output_file(args.out)
    path = resolve_model(args.model)
    payload = load_payload(path)
    if not is_net_checkpoint(payload):
        raise InputError(path, "not a nuclei network made by instasam train; only those are tuned")
    net, config = net_from_payload(payload, path)
    samples = list_samples(args.val, require_labels=True)
    loaded = [load_sample(s) for s in samples]

    import torch

    from instasam.training.precision import resolve_precision
    from instasam.training.validation import (
        ValTile,
        choose_thresholds,
        score_maps,
        standardised_tiles,
        validation_maps,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision)
    embed = None
    if config.net.sam_backbone is not None:
        from instasam.model.sam_embedding import SamEmbedder

        embed = SamEmbedder(config.net.sam_backbone, precision)
    tiles = standardised_tiles([ValTile(s.stem, s.image, s.labels) for s in loaded], config.stain)
    maps = validation_maps(net, tiles, precision, embed, flips=args.flips)
    own = config.postprocess_for(args.flips)
    before = score_maps(maps, tiles, own)
    chosen, _ = choose_thresholds(maps, tiles, own)
    after = score_maps(maps, tiles, chosen)
    extra = {k: payload[k] for k in ("step", "val") if k in payload}
    if args.flips:
        tuned = replace(config, flips_postprocess=chosen)
    else:  # a setting for flips chosen on other tiles would no longer fit these annotators
        tuned = replace(config, postprocess=chosen, flips_postprocess=None)
    save_net(args.out, net, tuned, **extra, tuned_on=str(args.val), tuned_val=after)
    print(
        ("with flips, " if args.flips else "")
        + f"on {len(tiles)} tile(s): foreground {chosen.fg_threshold}, "
        f"{marker_setting(chosen)}, shrink {chosen.shrink} px: AJI {100 * after['aji']:.1f}, "
        f"Dice_obj {100 * after['dice_obj']:.1f} (the model's own setting: AJI "
        f"{100 * before['aji']:.1f}, Dice_obj {100 * before['dice_obj']:.1f}); "
        f"written to {args.out}"
    )
    return 0
