"""``instasam train --arch net``: the full-resolution nuclei network on fixed labels."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from instasam.config import InstaSAMConfig, NetConfig
from instasam.errors import InputError

if TYPE_CHECKING:
    from instasam.model.sam_embedding import CachedEmbedder


def net_config_from_args(args: argparse.Namespace) -> NetConfig:
    config = NetConfig()
    if args.config:
        try:
            config = NetConfig.from_dict(json.loads(args.config.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(args.config, f"bad configuration ({exc})") from None
    overrides = {
        "labels": labels_source(args),
        "steps": args.steps,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "precision": args.precision,
        "downscale_p": args.downscale,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise InputError("--max-minutes", f"must be above 0, not {args.max_minutes}")
    if args.downscale is not None and not 0 <= args.downscale <= 1:
        raise InputError("--downscale", f"must be within 0-1, not {args.downscale}")
    config = replace(config, train=replace(config.train, **overrides))
    if args.dist_loss:
        config = replace(config, loss=replace(config.loss, dist_loss=args.dist_loss))
    if args.sam_fusion:
        from instasam.model.sam_embedding import EMBEDDING_BACKBONES

        if args.backbone not in EMBEDDING_BACKBONES:
            choices = ", ".join(EMBEDDING_BACKBONES)
            raise InputError("--backbone", f"--sam-fusion takes {choices}, not {args.backbone!r}")
        config = replace(config, net=replace(config.net, sam_backbone=args.backbone))
    return config


def labels_source(args: argparse.Namespace) -> str:
    """What the training labels are: --pseudo, or what made the --labels-from folder."""
    if not args.labels_from:
        return args.pseudo
    from instasam.cli.pseudo import SOURCE_FILE, SOURCES

    record = args.labels_from / SOURCE_FILE
    if not record.is_file():  # written by earlier versions without it: S or C+V
        return args.pseudo
    try:
        source = json.loads(record.read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(record, f"unreadable ({exc})") from None
    if source not in SOURCES:
        raise InputError(record, f"unknown label source {source!r}")
    return source


def init_network(spec: str) -> tuple[dict, NetConfig]:
    """The weights and configuration of a shipped model or a checkpoint to fine-tune from."""
    from instasam.model.instasam import load_payload
    from instasam.model.unet import is_net_checkpoint, net_from_payload
    from instasam.pretrained import resolve_model

    path = resolve_model(spec)
    payload = load_payload(path)
    if not isinstance(payload, dict) or not is_net_checkpoint(payload):
        raise InputError(path, "not a nuclei-network checkpoint (--init needs one from --arch net)")
    net, config = net_from_payload(payload, path)
    return net.state_dict(), config


def fixed_labels(args: argparse.Namespace, loaded: list, source: str) -> list[np.ndarray]:
    """Each tile's fixed labels: read from --labels-from, or computed (S cached in RUN)."""
    from tqdm.auto import tqdm

    from instasam.training.labels import labels_from_pseudo_folder

    if args.labels_from:
        return [
            labels_from_pseudo_folder(args.labels_from, s.stem, s.image.shape[:2]) for s in loaded
        ]
    from instasam.model.instasam import build_model
    from instasam.training.labels import load_fixed_labels

    sam_config = InstaSAMConfig()
    sam_config = replace(
        sam_config, train=replace(sam_config.train, pseudo=source, backbone=args.backbone)
    )
    model = build_model(sam_config, checkpoint=args.sam_checkpoint) if source == "sam" else None
    cache = args.out / "cache" / f"fixed_{source}"
    out = []
    for s in tqdm(loaded, desc=f"labels ({source})", disable=args.quiet):
        labels, _ = load_fixed_labels(model, s.stem, s.image, s.points, s.labels, sam_config, cache)
        out.append(labels)
    return out


def tile_embedder(config: NetConfig, precision: str, run: Path) -> CachedEmbedder:
    """The fused network's SAM embeddings, cached in ``RUN/cache/embeddings``."""
    from instasam.model.sam_embedding import CachedEmbedder, SamEmbedder

    embedder = SamEmbedder(config.net.sam_backbone, precision)
    return CachedEmbedder(embedder, run / "cache" / "embeddings")


def run_net(args: argparse.Namespace) -> int:
    from instasam.io.folder import list_samples, load_sample, training_samples

    config = net_config_from_args(args)
    source = config.train.labels
    val_samples = list_samples(args.val, require_labels=True) if args.val else []
    loaded = training_samples(args.data, require_labels=source == "gt")
    val_loaded = [load_sample(s) for s in val_samples]
    import torch  # after the inputs are checked: a bad one is refused in a second

    from instasam.model.unet import NucleiUNet, parameter_count
    from instasam.pseudo_labels.refine import (
        background_beside_nuclei,
        ignore_around_unlabelled_points,
    )
    from instasam.stain import reference_densities
    from instasam.training.crops import LabelledTile
    from instasam.training.loop import train_net
    from instasam.training.precision import resolve_device, resolve_precision
    from instasam.training.validation import ValTile, standardised_tiles

    start = None
    if args.init:  # shape and thresholds are those of the network it starts from
        start, init_config = init_network(args.init)
        config = replace(config, net=init_config.net, postprocess=init_config.postprocess)
        if args.lr is None:
            config = replace(config, train=replace(config.train, lr=config.train.finetune_lr))
    if config.stain.reference is None:  # the staining this network learns; kept with it
        reference = reference_densities(s.image for s in loaded)
        config = replace(config, stain=replace(config.stain, reference=reference))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device or "auto")
    if args.workers is not None and args.workers < 0:
        raise InputError("--workers", f"must be 0 or more, not {args.workers}")
    precision = resolve_precision(config.train.precision, device=device)
    print(
        f"nuclei network: {parameter_count(NucleiUNet(config.net)):,} parameters; labels: "
        f"{source}; {config.train.steps} steps"
        + (f" (fewer if over {config.train.max_minutes:g} min)" if config.train.max_minutes else "")
        + f" x {config.train.batch_size} crops of "
        f"{config.train.crop_size} px; {device}, {precision}; "
        + (f"validation every {config.train.val_every} steps" if val_loaded else "no validation")
    )
    radius, fill = config.train.unlabelled_point_radius, config.train.unlabelled_point_fill
    rim = config.train.ignored_rim_background
    tiles = [
        LabelledTile(
            s.stem,
            s.image,
            ignore_around_unlabelled_points(
                background_beside_nuclei(labels, rim), s.points, radius, fill
            ),
            points=s.points if config.net.centre_head else None,
        )
        for s, labels in zip(loaded, fixed_labels(args, loaded, source), strict=True)
    ]
    embed = None
    if config.net.sam_backbone is not None:
        from tqdm.auto import tqdm

        embed = tile_embedder(config, precision, args.out)
        for tile in tqdm(tiles, desc="SAM embeddings", disable=args.quiet):
            tile.embedding = embed(tile.image)[0].numpy()
    val_tiles = standardised_tiles(
        [ValTile(s.stem, s.image, s.labels) for s in val_loaded], config.stain
    )
    state = train_net(
        tiles,
        val_tiles,
        args.out,
        config,
        resume=args.resume,
        progress=not args.quiet,
        init_state=start,
        embed=embed,
        device=device,
        workers=args.workers or 0,
    )
    best = (
        f"kept step {state.best_step}: val AJI {state.best_aji:.4f} at its chosen thresholds"
        if val_tiles
        else "no validation"
    )
    fitted = (
        f" (of {config.train.steps}: fitted to {config.train.max_minutes:g} min)"
        if state.steps is not None and state.steps < config.train.steps
        else ""
    )
    print(
        f"done: {state.step} steps{fitted}, {state.seconds / 60:.1f} min; {best}; "
        f"model: {args.out / 'model.pt'}"
    )
    return 0
