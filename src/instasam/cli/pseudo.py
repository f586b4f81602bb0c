"""``instasam pseudo``: the pseudo instance labels training would learn from, for inspection."""

from __future__ import annotations

import argparse
from pathlib import Path

SOURCES = ("sam", "cv", "model")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pseudo",
        help="make pseudo instance labels from the points (to inspect or score them)",
        description="Make the fixed pseudo labels S that `instasam train --pseudo SOURCE` "
        "learns from: OUT/labels/<stem>.tif (nucleus k = the nucleus of point k, ignored "
        "pixels as 0), OUT/ignored/<stem>.png (255 where the entropy/overlap rule gives no "
        "label) and, with --overlay, outlines over the image. When DATA has labels/, each "
        "tile is scored against them and OUT/quality.json is written. With --source sam or "
        "cv, tiles already done are skipped (resume). --source model makes the labels of a "
        "second round of training (self-training): a trained network segments the tiles "
        "and the points decide what becomes a label.",
    )
    p.add_argument("--data", required=True, type=Path, help="prepared folder (images/, points/)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="sam",
        help="sam: the backbone prompted with each point (Eq. 2-4); cv: cluster + Voronoi "
        "labels (Qu et al. 2019), no model needed; model: a trained nuclei network's "
        "prediction checked against the points (self-training; needs --model) (default: sam)",
    )
    own = p.add_argument_group("--source model")
    own.add_argument(
        "--model",
        help="the trained network whose predictions become labels: a shipped model's name or "
        "a model.pt",
    )
    own.add_argument(
        "--previous",
        type=Path,
        help="the labels that network was trained on (a folder `instasam pseudo` wrote): a "
        "nucleus the prediction misses keeps its label from there",
    )
    own.add_argument("--flips", action="store_true", help="average the four flips (4x time)")
    own.add_argument(
        "--sam-boxes",
        action="store_true",
        help="prompt the backbone with a box around each point's predicted nucleus and apply "
        "the entropy/overlap rules (SAM outlines what the network found), instead of taking "
        "the network's outlines",
    )
    own.add_argument(
        "--box-margin",
        type=float,
        default=2.0,
        help="pixels added on each side of a --sam-boxes box (default: %(default)s)",
    )
    own.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--backbone", default="litemedsam", help="backbone name (default: litemedsam)")
    p.add_argument("--sam-checkpoint", help="weights file for the backbone")
    p.add_argument(
        "--reject-overlapping",
        action="store_true",
        help="drop a whole instance that overlaps another mask (the authors' code) instead "
        "of the paper's per-pixel rule",
    )
    p.add_argument(
        "--no-entropy-rule",
        action="store_true",
        help="ablation: keep pixels the masks are unsure about (no H >= epsilon rule)",
    )
    p.add_argument(
        "--no-overlap-rule",
        action="store_true",
        help="ablation: give a pixel two masks claim to the more probable one (no F rule)",
    )
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<stem>.png")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=run)


def check_source_options(args: argparse.Namespace) -> None:
    """Each option belongs to one source; --source model needs --model."""
    from instasam.errors import InputError

    if args.source == "model" and not args.model:
        raise InputError(None, "--source model needs --model (a shipped name or a model.pt)")
    given = []
    if args.source != "model":
        given += [f"--{n}" for n in ("model", "previous", "flips") if getattr(args, n)]
        given += ["--sam-boxes"] if args.sam_boxes else []
    if args.source != "sam":
        given += [f"--no-{n}-rule" for n in ("entropy", "overlap") if getattr(args, f"no_{n}_rule")]
    if given:
        raise InputError(None, f"{', '.join(given)}: not for --source {args.source}")
    if args.sam_boxes and args.previous is not None:
        # Points the network missed are prompted as for S, so no earlier labels are used.
        raise InputError(None, "--previous: not used with --sam-boxes")
    if args.previous is not None and not args.previous.is_dir():
        raise InputError(args.previous, "not a folder written by `instasam pseudo`")


def run(args: argparse.Namespace) -> int:
    from instasam.io.atomic import check_output_folder

    check_source_options(args)
    check_output_folder(args.out)
    import json

    import numpy as np
    from tqdm.auto import tqdm

    from instasam import IGNORE
    from instasam.io.atomic import write_text_atomic
    from instasam.io.folder import training_samples
    from instasam.io.images import write_mask_png
    from instasam.io.labels import write_label_map
    from instasam.io.overlays import write_overlay_png

    loaded = training_samples(args.data)  # every input is checked before any output
    import torch  # after the inputs are checked: a bad one is refused in a second

    from instasam.pseudo_labels.quality import pseudo_label_quality

    if args.threads:
        torch.set_num_threads(args.threads)
    labeller = model_labeller(args, loaded) if args.source == "model" else point_labeller(args)
    scores: dict[str, dict[str, float]] = {}
    for s in tqdm(loaded, desc=f"pseudo labels ({args.source})", unit="tile", disable=None):
        fixed = labeller(s)
        write_label_map(args.out / "labels" / f"{s.stem}.tif", np.maximum(fixed, 0))
        write_mask_png(args.out / "ignored" / f"{s.stem}.png", fixed == IGNORE)
        if args.overlay:
            write_overlay_png(
                args.out / "overlays" / f"{s.stem}.png", s.image, np.maximum(fixed, 0)
            )
        if s.labels is not None:
            scores[s.stem] = pseudo_label_quality(fixed, s.labels)
    write_text_atomic(args.out / SOURCE_FILE, json.dumps(source_record(args), indent=2))
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


SOURCE_FILE = "source.json"  # what made the labels; `train --labels-from` records it


def source_record(args: argparse.Namespace) -> dict:
    record = {"source": args.source}
    if args.source == "sam":
        record["rules"] = {"entropy": not args.no_entropy_rule, "overlap": not args.no_overlap_rule}
    if args.source == "model":
        record.update(model=str(args.model), previous=args.previous and str(args.previous))
        record["flips"] = args.flips
        if args.sam_boxes:
            record["sam_boxes"] = {"backbone": args.backbone, "margin": args.box_margin}
    return record


def point_labeller(args: argparse.Namespace):
    """S (the backbone prompted with the points) or C+V of a tile, cached in OUT/cache."""
    import math
    from dataclasses import replace

    from instasam.config import InstaSAMConfig
    from instasam.training.labels import load_fixed_labels

    config = InstaSAMConfig()
    config = replace(
        config,
        train=replace(config.train, pseudo=args.source, backbone=args.backbone),
        pseudo_labels=replace(
            config.pseudo_labels,
            reject_overlapping_instances=args.reject_overlapping,
            overlap_rule=not args.no_overlap_rule,
            epsilon=math.inf if args.no_entropy_rule else config.pseudo_labels.epsilon,
        ),
    )
    model = None
    if args.source == "sam":
        from instasam.model.instasam import build_model

        model = build_model(config, checkpoint=args.sam_checkpoint).eval()
    cache = args.out / "cache"

    def label(s):
        return load_fixed_labels(model, s.stem, s.image, s.points, None, config, cache)[0]

    return label


def model_labeller(args: argparse.Namespace, loaded: list):
    """A trained network's prediction of a tile, checked against its points."""
    import numpy as np

    from instasam.predict.tiles import NetPredictor, load_predictor
    from instasam.pseudo_labels.refine import refined_labels
    from instasam.training.labels import labels_from_pseudo_folder

    # Every tile's previous labels are read (and so checked) before any output; --sam-boxes
    # uses none (check_source_options refuses --previous with it).
    previous = {
        s.stem: labels_from_pseudo_folder(args.previous, s.stem, s.image.shape[:2])
        if args.previous
        else np.zeros(s.image.shape[:2], dtype=np.int32)
        for s in ([] if args.sam_boxes else loaded)
    }
    predictor = load_predictor(args.model, precision=args.precision, flips=args.flips)
    if not isinstance(predictor, NetPredictor):
        from instasam.errors import InputError

        raise InputError(args.model, "not a nuclei-network model (--source model needs one)")
    if args.sam_boxes:
        return boxed_labeller(args, predictor)

    def label(s):
        return refined_labels(predictor.predict_instances(s.image), s.points, previous[s.stem])

    return label


def boxed_labeller(args: argparse.Namespace, predictor):
    """The backbone prompted with a box around each point's predicted nucleus."""
    from dataclasses import replace

    from instasam.config import InstaSAMConfig
    from instasam.model.instasam import build_model
    from instasam.pseudo_labels.refine import labels_from_boxed_prompts

    config = InstaSAMConfig()
    config = replace(config, train=replace(config.train, backbone=args.backbone))
    model = build_model(config, checkpoint=args.sam_checkpoint).eval()
    if "box" not in model.backbone.prompt_style:
        from instasam.errors import InputError

        raise InputError(None, f"--sam-boxes needs a box-prompted backbone, not {args.backbone}")

    def label(s):
        prediction = predictor.predict_instances(s.image)
        return labels_from_boxed_prompts(
            model, s.image, s.points, prediction, config.pseudo_labels, margin=args.box_margin
        )

    return label
