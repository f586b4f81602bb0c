"""``instasam postprocess``: instance maps from saved network outputs, with other thresholds."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from instasam.errors import InputError

if TYPE_CHECKING:
    from instasam.config import PostprocessConfig

PRESETS = ("authors", "hovernet")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "postprocess",
        help="re-run the watershed on maps saved by predict --save-maps",
        description="Turn the maps that `instasam predict --save-maps` wrote (MAPS/<stem>.npz: "
        "foreground probability and distance maps) into instance maps OUT/<stem>.tif, with "
        "the thresholds given here. No model is needed, so trying thresholds takes seconds "
        "per tile.",
    )
    p.add_argument("maps", type=Path, help="folder of .npz maps (PRED/maps)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="authors",
        help="starting thresholds: the InstaSAM authors' (foreground 0.7, marker 0.5) or "
        "HoVer-Net's (0.5, 0.4); the options below override single values",
    )
    add_threshold_options(p)
    p.add_argument("--overwrite", action="store_true", help="redo maps that have an output")
    p.set_defaults(func=run)


def add_threshold_options(p: argparse.ArgumentParser) -> None:
    """The single post-processing thresholds a user may override (predict, postprocess)."""
    p.add_argument(
        "--fg-threshold",
        type=unit_interval,
        help="foreground probability threshold in (0, 1) (default: the model's)",
    )
    p.add_argument(
        "--edge-threshold",
        type=unit_interval,
        help="watershed edge (marker) threshold in (0, 1) (default: the model's)",
    )
    p.add_argument(
        "--markers",
        choices=("edges", "centres", "edges+centres"),
        help="watershed seeds: the cores the distance maps' edges leave, the peaks of the "
        "centre map of a network with a centre head, or the cores with each that holds "
        "several peaks split into them (default: the model's)",
    )
    p.add_argument(
        "--centre-threshold",
        type=unit_interval,
        help="lowest centre-map peak taken as a nucleus, with --markers centres "
        "(default: the model's)",
    )
    p.add_argument(
        "--min-area",
        type=int,
        help="smallest nucleus kept, in pixels (default: the model's)",
    )
    p.add_argument(
        "--shrink",
        type=non_negative_int,
        help="pixels taken off every nucleus's outline (default: the model's)",
    )


def unit_interval(text: str) -> float:
    """A threshold strictly between 0 and 1 (argparse type)."""
    value = _parsed(text, float, "number")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    value = _parsed(text, int, "whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (argparse type)."""
    value = _parsed(text, float, "number")
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse type)."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _parsed(text: str, cast: type, noun: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {noun}: {text!r}") from None


def threshold_overrides(args: argparse.Namespace) -> dict[str, float]:
    """The post-processing settings given on the command line (none: the model's)."""
    given = {
        "fg_threshold": args.fg_threshold,
        "edge_threshold": args.edge_threshold,
        "markers": args.markers,
        "centre_threshold": args.centre_threshold,
        "min_area": args.min_area,
        "shrink": args.shrink,
    }
    return {k: v for k, v in given.items() if v is not None}


def with_thresholds(config: PostprocessConfig, args: argparse.Namespace) -> PostprocessConfig:
    """``config`` with the thresholds given on the command line applied."""
    return replace(config, **threshold_overrides(args))


def postprocess_config(args: argparse.Namespace) -> PostprocessConfig:
    """The preset with the single thresholds given on the command line applied."""
    from instasam.config import PostprocessConfig

    preset = PostprocessConfig.hovernet() if args.preset == "hovernet" else PostprocessConfig()
    return with_thresholds(preset, args)


def run(args: argparse.Namespace) -> int:
    from instasam.io.atomic import check_output_folder

    check_output_folder(args.out)
    from tqdm.auto import tqdm

    from instasam.io.labels import write_label_map
    from instasam.io.maps import read_maps
    from instasam.postprocess import instances_from_maps, marker_setting

    if not args.maps.is_dir():
        raise InputError(args.maps, "maps folder not found")
    files = sorted(args.maps.glob("*.npz"))
    if not files:
        raise InputError(args.maps, "no .npz maps (write them with `instasam predict --save-maps`)")
    config = postprocess_config(args)
    todo = [p for p in files if args.overwrite or not (args.out / f"{p.stem}.tif").exists()]
    for path in todo:  # a damaged file fails the run before any output is written
        _, hv = read_maps(path)
        if config.markers != "edges" and hv.shape[0] != 3:
            raise InputError(
                path, f"holds no centre map (a centre head's) for --markers {config.markers}"
            )
    done = 0
    for path in tqdm(todo, desc="maps", unit="image", disable=None):
        out = args.out / f"{path.stem}.tif"
        foreground, hv = read_maps(path)
        write_label_map(out, instances_from_maps(foreground, hv, config))
        done += 1
    print(
        f"{done} map(s) post-processed (foreground >= {config.fg_threshold}, "
        f"{marker_setting(config)}, min area {config.min_area}, shrink {config.shrink}), "
        f"{len(files) - done} already done; output in {args.out}"
    )
    return 0
