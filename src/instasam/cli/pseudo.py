"""``instasam pseudo``: the pseudo instance labels training would learn from, for inspection."""

from __future__ import annotations

import argparse
from pathlib import Path

SOURCES = ("sam", "cv")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pseudo",
        help="make pseudo instance labels from the points (to inspect or score them)",
        description="Make the fixed pseudo labels S that `instasam train --pseudo SOURCE` "
        "learns from: OUT/labels/<stem>.tif (nucleus k = the nucleus of point k, ignored "
        "pixels as 0), OUT/ignored/<stem>.png (255 where the entropy/overlap rule gives no "
        "label) and, with --overlay, outlines over the image. When DATA has labels/, each "
        "tile is scored against them and OUT/quality.json is written. Tiles already done "
        "are skipped (resume).",
    )
    p.add_argument("--data", required=True, type=Path, help="prepared folder (images/, points/)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="sam",
        help="sam: the backbone prompted with each point (Eq. 2-4); cv: cluster + Voronoi "
        "labels (Qu et al. 2019), no model needed (default: sam)",
    )
    p.add_argument("--backbone", default="litemedsam", help="backbone name (default: litemedsam)")
    p.add_argument("--sam-checkpoint", help="weights file for the backbone")
    p.add_argument(
        "--reject-overlapping",
        action="store_true",
        help="drop a whole instance that overlaps another mask (the authors' code) instead "
        "of the paper's per-pixel rule",
    )
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<stem>.png")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instasam.io.atomic import check_output_folder

    check_output_folder(args.out)
    import json
    from dataclasses import replace

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from instasam import IGNORE
    from instasam.config import InstaSAMConfig
    from instasam.io.atomic import write_text_atomic
    from instasam.io.folder import check_training_points, list_samples, load_sample
    from instasam.io.images import write_mask_png
    from instasam.io.labels import write_label_map
    from instasam.io.overlays import write_overlay_png
    from instasam.pseudo_labels.quality import pseudo_label_quality
    from instasam.training.labels import load_fixed_labels

    config = InstaSAMConfig()
    config = replace(
        config,
        train=replace(config.train, pseudo=args.source, backbone=args.backbone),
        pseudo_labels=replace(
            config.pseudo_labels, reject_overlapping_instances=args.reject_overlapping
        ),
    )
    samples = list_samples(args.data, require_points=True)
    loaded = [load_sample(s) for s in samples]  # every input is checked before any output
    check_training_points(samples, loaded)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = None
    if args.source == "sam":
        from instasam.model.instasam import build_model

        model = build_model(config, checkpoint=args.sam_checkpoint).eval()
    cache = args.out / "cache"
    scores: dict[str, dict[str, float]] = {}
    for s in tqdm(loaded, desc=f"pseudo labels ({args.source})", unit="tile", disable=None):
        fixed, _ = load_fixed_labels(model, s.stem, s.image, s.points, None, config, cache)
        write_label_map(args.out / "labels" / f"{s.stem}.tif", np.maximum(fixed, 0))
        write_mask_png(args.out / "ignored" / f"{s.stem}.png", fixed == IGNORE)
        if args.overlay:
            write_overlay_png(
                args.out / "overlays" / f"{s.stem}.png", s.image, np.maximum(fixed, 0)
            )
        if s.labels is not None:
            scores[s.stem] = pseudo_label_quality(fixed, s.labels)
    if scores:
        mean = {
            k: float(np.mean([v[k] for v in scores.values()])) for k in next(iter(scores.values()))
        }
        summary = {"source": args.source, "images": scores, "mean": mean}
        write_text_atomic(args.out / "quality.json", json.dumps(summary, indent=2))
        m = summary["mean"]
        print(
            f"pseudo labels vs ground truth, mean of {len(scores)} tile(s): AJI "
            f"{100 * m['aji']:.1f}, Dice_obj {100 * m['dice_obj']:.1f}, PQ {100 * m['pq']:.1f}, "
            f"ignored {100 * m['ignored']:.1f}% of pixels"
        )
    print(f"{len(loaded)} tile(s) labelled ({args.source}); output in {args.out}")
    return 0
