"""``instasam train``: train on a prepared folder (images, points, optional labels).

Two architectures share the labels and the losses: ``--arch net`` (default), the
full-resolution nuclei network trained on fixed pseudo labels (what ships as
``monuseg-points``), and ``--arch instasam``, the paper's adapters + decoders on SAM's
embedding.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from instasam.cli.predict import add_device_option, add_precision_option
from instasam.config import InstaSAMConfig
from instasam.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train on images + one point per nucleus",
        description="Train a nuclei model. DATA holds images/, points/ (one CSV or GeoJSON per "
        "image) and, for --pseudo gt or validation, labels/. The best-validation model is "
        "RUN/model.pt.",
    )
    p.add_argument(
        "--arch",
        choices=("net", "instasam"),
        default="net",
        help="net: the full-resolution nuclei network on the pseudo labels (default; what "
        "ships); instasam: the paper's adapters and decoders on SAM's embedding",
    )
    p.add_argument("--data", required=True, type=Path, help="prepared training folder")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs)")
    p.add_argument("--val", type=Path, help="prepared validation folder with labels/")
    p.add_argument(
        "--pseudo",
        choices=("sam", "cv", "gt"),
        default="sam",
        help="where the training labels come from (default: sam)",
    )
    p.add_argument("--backbone", default="litemedsam", help="backbone name (default: litemedsam)")
    p.add_argument("--sam-checkpoint", help="weights file for the backbone")
    p.add_argument("--epochs", type=int, help="epochs (default: the paper's 100)")
    p.add_argument("--steps-per-epoch", type=int, help="optimiser steps per epoch")
    p.add_argument("--batch-size", type=int, help="crops per optimiser step (default 4)")
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: net 2e-3, or 1e-4 with --init; instasam 1e-4)",
    )
    p.add_argument("--val-from-epoch", type=int, help="first epoch to validate (default 30)")
    p.add_argument(
        "--patience", type=int, help="stop after this many epochs without a better val AJI"
    )
    p.add_argument(
        "--dist-loss",
        choices=("smooth_l1", "l1"),
        help="loss on the distance maps: smooth_l1 (the authors' code, default) or l1 (the "
        "paper's text)",
    )
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    net = p.add_argument_group("--arch net")
    net.add_argument("--steps", type=int, help="optimiser steps (default 1500)")
    net.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget: after 20 timed steps, fewer steps where the full count would "
        "not fit (e.g. 110 on a CPU without native bf16); default none",
    )
    net.add_argument(
        "--init",
        help="start from a trained network: a shipped model's name (see `instasam models`) "
        "or a model.pt (fine-tuning)",
    )
    net.add_argument(
        "--labels-from",
        type=Path,
        help="read the fixed labels from a folder written by `instasam pseudo` on DATA "
        "instead of computing them",
    )
    net.add_argument(
        "--sam-fusion",
        action="store_const",
        const=True,
        help="the fused design: add the frozen --backbone's whole-tile embedding to the "
        "network's features at 1/4 resolution (slower to predict; not what ships)",
    )
    net.add_argument(
        "--downscale",
        type=float,
        metavar="P",
        help="the share of training crops shrunk (x0.45-0.9) and enlarged back, so the network "
        "learns the detail a lower magnification keeps after --mpp resampling; default 0",
    )
    add_precision_option(net)
    add_device_option(net, None, "auto (default): a CUDA GPU where there is one, else the CPU")
    net.add_argument(
        "--workers",
        type=int,
        help="processes drawing the training crops (default 0: the main one; a GPU needs "
        "several to be kept busy)",
    )
    p.add_argument("--config", type=Path, help="JSON configuration (as written to RUN/config.json)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> InstaSAMConfig:
    config = InstaSAMConfig()
    if args.config:
        try:
            config = InstaSAMConfig.from_dict(json.loads(args.config.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(args.config, f"bad configuration ({exc})") from None
    overrides = {
        "backbone": args.backbone,
        "pseudo": args.pseudo,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "val_from_epoch": args.val_from_epoch,
        "patience": args.patience,
        "seed": args.seed,
        "num_threads": args.threads,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    config = replace(config, train=replace(config.train, **overrides))
    if args.dist_loss:
        config = replace(config, loss=replace(config.loss, dist_loss=args.dist_loss))
    return config


# Options that mean something for one architecture only; given to the other, they would be
# silently ignored (a user asking for 2 epochs would train 1,500 steps).
ONLY_FOR = {
    "net": ("steps", "max_minutes", "init", "labels_from", "sam_fusion", "device", "workers"),
    "instasam": ("epochs", "steps_per_epoch", "val_from_epoch", "patience"),
}


def check_arch_options(args: argparse.Namespace) -> None:
    for arch, names in ONLY_FOR.items():
        if arch == args.arch:
            continue
        for name in names:
            value = getattr(args, name)
            if value is not None:
                option = "--" + name.replace("_", "-")
                raise InputError(
                    option, f"applies to --arch {arch} only (this is --arch {args.arch})"
                )


def run(args: argparse.Namespace) -> int:
    from instasam.io.atomic import check_output_folder

    check_output_folder(args.out)
    check_arch_options(args)
    if args.arch == "net":
        from instasam.cli.train_net import run_net

        return run_net(args)
    from instasam.io.folder import list_samples, load_sample, training_samples

    config = config_from_args(args)
    val_samples = list_samples(args.val, require_labels=True) if args.val else []
    loaded = training_samples(args.data, require_labels=config.train.pseudo == "gt")
    val_loaded = [load_sample(s) for s in val_samples]
    import torch  # after the inputs are checked: a bad one is refused in a second
    from tqdm.auto import tqdm

    from instasam.model.instasam import build_model
    from instasam.training.instasam import TrainingTile, ValTile, train
    from instasam.training.labels import load_fixed_labels

    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    model = build_model(config, checkpoint=args.sam_checkpoint)
    counts = model.trainable_parameter_count()
    weights = "pretrained" if model.backbone.pretrained else "RANDOM weights"
    print(
        f"backbone {model.backbone.name} ({weights}); "
        f"trainable parameters: adapters {counts['adapters']:,}, mask decoder "
        f"{counts['mask_decoder']:,}, nuclei decoder {counts['nuclei_decoder']:,}; "
        f"frozen {counts['frozen']:,}"
    )
    cache = args.out / "cache" / f"fixed_{config.train.pseudo}"
    tiles = []
    model.eval()
    for s in tqdm(loaded, desc=f"labels ({config.train.pseudo})", disable=args.quiet):
        fixed, sides = load_fixed_labels(model, s.stem, s.image, s.points, s.labels, config, cache)
        tiles.append(TrainingTile(s.stem, s.image, s.points, fixed, sides))
    val_tiles = [ValTile(s.stem, s.image, s.labels) for s in val_loaded]
    if val_tiles and config.train.val_from_epoch > config.train.epochs:
        print(
            f"note: validation starts at epoch {config.train.val_from_epoch}, after the last "
            f"({config.train.epochs}); the last epoch is validated instead"
        )
    state = train(
        tiles, val_tiles, args.out, config, model=model, resume=args.resume, progress=not args.quiet
    )
    best = (
        f"best val AJI {state.best_aji:.4f} at epoch {state.best_epoch}"
        if val_tiles
        else "no validation"
    )
    print(
        f"done: {state.epoch} epochs, {state.global_step} steps, {state.seconds / 60:.1f} min; "
        f"{best}; model: {args.out / 'model.pt'}"
    )
    return 0
