"""``instasam demo``: the whole workflow on the bundled sample, as the commands a user runs.

prepare (MoNuSeg XML -> images, labels, points) -> pseudo labels from the points (scored
against the crop's ground truth) -> train briefly -> predict -> evaluate.
Each step is printed as the equivalent command line and run through the same code.
"""

from __future__ import annotations

import argparse
import shlex
import time
from importlib import resources
from pathlib import Path


def sample_dir() -> Path:
    """The bundled sample (two MoNuSeg crops; CC BY-NC-SA 4.0, see its README)."""
    return Path(str(resources.files("instasam") / "data" / "sample"))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run prepare -> pseudo -> train -> predict -> evaluate on the bundled sample",
        description="Runs the full workflow on two bundled 256x256 MoNuSeg crops: makes "
        "pseudo labels from the points of one and scores them against its outlines, trains "
        "briefly on it and evaluates on the other (a few minutes on a 2-core CPU).",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps (default 8)")
    p.set_defaults(func=run)


def commands(out: Path, steps: int) -> list[list[str]]:
    sample = sample_dir()
    split = sample / "split.json"
    return [
        [
            "prepare",
            "monuseg",
            str(sample),
            str(out / "train"),
            "--split",
            str(split),
            "--subset",
            "train",
        ],
        [
            "prepare",
            "monuseg",
            str(sample),
            str(out / "test"),
            "--split",
            str(split),
            "--subset",
            "test",
        ],
        ["pseudo", "--data", str(out / "train"), "--out", str(out / "pseudo"), "--overlay"],
        [
            "train",
            "--data",
            str(out / "train"),
            "--out",
            str(out / "run"),
            "--epochs",
            "1",
            "--steps-per-epoch",
            str(steps),
            "--batch-size",
            "2",
        ],
        [
            "predict",
            str(out / "test" / "images"),
            "--model",
            str(out / "run" / "model.pt"),
            "--out",
            str(out / "pred"),
            "--overlay",
        ],
        [
            "evaluate",
            "--gt",
            str(out / "test" / "labels"),
            "--pred",
            str(out / "pred"),
            "--json",
            str(out / "metrics.json"),
            "--report",
            str(out / "report"),
            "--images",
            str(out / "test" / "images"),
        ],
    ]


def run(args: argparse.Namespace) -> int:
    from instasam.cli import main

    started = time.perf_counter()
    for argv in commands(args.out, args.steps):
        print(f"\n$ instasam {shlex.join(argv)}", flush=True)
        status = main(argv)
        if status:
            return status
    minutes = (time.perf_counter() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min; report: {args.out / 'report' / 'report.html'}")
    print(
        "(the pseudo labels come from the pretrained backbone and are real; the model was "
        "trained for a few steps on one crop, so its scores are those of a smoke run, not a "
        "benchmark: see the README's results)"
    )
    return 0
