"""``instasam models``: the models that ship with the package."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the shipped pretrained models",
        description="List the models that ship inside the package: name, training data, "
        "measured scores, licence and model card. `instasam predict` uses the default one "
        "when no --model is given; `instasam train --init NAME` fine-tunes from one.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instasam.pretrained import DEFAULT_MODEL, REGISTRY

    if not REGISTRY:
        print("no shipped models in this installation")
        return 0
    for entry in REGISTRY.values():
        default = " (default)" if entry.name == DEFAULT_MODEL else ""
        print(f"{entry.name}{default}")
        print(f"  trained on: {entry.trained_on}")
        print(f"  scores:     {entry.scores}")
        print(f"  licence:    {entry.licence}")
        config = _config(entry.path)
        print(f"  thresholds: {_thresholds(config)}")
        if config.flips_postprocess is not None:
            print(f"  --flips:    {_setting(config.flips_postprocess)} (chosen on the same tiles)")
        print(f"  stain:      {_stain(config)}")
        print(f"  file:       {entry.path} (SHA-256 {entry.sha256[:16]}...)")
        print(f"  model card: {entry.card}")
    return 0


def _config(path):
    from instasam.model.instasam import load_payload
    from instasam.model.unet import net_from_payload

    return net_from_payload(load_payload(path), path)[1]


def _stain(config) -> str:
    """The stain standardisation a model's inputs get unless the user overrides it."""
    stain = config.stain
    if not stain.active:
        return "none"
    h, e = stain.reference
    return (
        f"haematoxylin and eosin densities moved {stain.strength:g} of the way toward "
        f"{h:.4f} / {e:.4f} (its training tiles'; --stain-strength overrides)"
    )


def _thresholds(config) -> str:
    """The post-processing a model's predictions get unless the user overrides it."""
    return (
        f"{_setting(config.postprocess)} (chosen on the validation tiles; --fg-threshold, "
        "--edge-threshold, --markers, --centre-threshold, --min-area and --shrink override them)"
    )


def _setting(post) -> str:
    from instasam.postprocess import marker_setting

    return (
        f"foreground {post.fg_threshold}, {marker_setting(post)}, min area {post.min_area} px, "
        f"shrink {post.shrink} px"
    )
