"""``instasam demo``: the shipped model on the bundled sample, then fine-tuning from points.

prepare (MoNuSeg XML -> images, labels, points) -> predict the test crop with the shipped
model and evaluate it -> pseudo labels from the training crop's points (scored against its
outlines) -> fine-tune the shipped model on them briefly -> predict and evaluate again.
Each step is printed as the equivalent command line and run through the same code.
"""

from __future__ import annotations

import argparse
import json
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
        help="segment the bundled sample with the shipped model, then fine-tune from points",
        description="On two bundled 256x256 MoNuSeg crops: segments the test crop with the "
        "shipped model and scores it, makes pseudo labels from the points of the other crop, "
        "fine-tunes the shipped model on them for a few steps and scores it again (about "
        "two minutes on a 2-core CPU).",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps (default 30)")
    p.set_defaults(func=run)


def commands(out: Path, steps: int) -> list[list[str]]:
    sample = sample_dir()
    split = sample / "split.json"
    prepare = ["prepare", "monuseg", str(sample)]
    test_images, test_labels = str(out / "test" / "images"), str(out / "test" / "labels")
    tuned = out / "finetuned"
    return [
        [*prepare, str(out / "train"), "--split", str(split), "--subset", "train"],
        [*prepare, str(out / "test"), "--split", str(split), "--subset", "test"],
        ["predict", test_images, "--out", str(out / "pred_shipped"), "--overlay"],
        [
            "evaluate",
            "--gt",
            test_labels,
            "--pred",
            str(out / "pred_shipped"),
            "--json",
            str(out / "metrics_shipped.json"),
        ],
        ["pseudo", "--data", str(out / "train"), "--out", str(out / "pseudo"), "--overlay"],
        [
            "train",
            "--data",
            str(out / "train"),
            "--labels-from",
            str(out / "pseudo"),
            "--init",
            "monuseg-points",
            "--steps",
            str(steps),
            "--batch-size",
            "4",
            "--out",
            str(tuned),
            "--quiet",
        ],
        [
            "predict",
            test_images,
            "--model",
            str(tuned / "model.pt"),
            "--out",
            str(out / "pred_finetuned"),
            "--overlay",
        ],
        [
            "evaluate",
            "--gt",
            test_labels,
            "--pred",
            str(out / "pred_finetuned"),
            "--json",
            str(out / "metrics_finetuned.json"),
            "--report",
            str(out / "report"),
            "--images",
            test_images,
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
    for name in ("shipped", "finetuned"):
        m = json.loads((args.out / f"metrics_{name}.json").read_text())["mean"]
        print(
            f"{name:>9} model on the test crop: AJI {100 * m['aji']:.1f}, "
            f"Dice_obj {100 * m['dice_obj']:.1f}, PQ {100 * m['pq']:.1f}"
        )
    print(
        f"(the fine-tuning step trains {args.steps} steps on the points of one 256-px crop "
        "of the tissue the shipped model already knows, so it need not help here: it shows "
        "the workflow for your own tissue, not what fine-tuning reaches; see the README)"
    )
    return 0
