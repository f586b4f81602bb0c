"""The MoNuSeg (Kumar split) measurement in one command.

Prepares the 16 training tiles (train 12 + val 4) with centred points and the 14 test
tiles, then for each label source trains, predicts the test tiles and evaluates them:

* ``sam`` - InstaSAM: SAM pseudo labels from the points (the paper's method);
* ``gt``  - the same model trained on ground-truth masks (upper bound);
* ``cv``  - the same model trained on cluster + Voronoi labels (Qu et al. 2019).

Every stage is a plain ``instasam`` command, printed before it runs; finished stages are
skipped on a rerun (training resumes from its last checkpoint), so an interrupted
experiment continues where it stopped. Results: ``OUT/summary.json`` and a Markdown table;
sources run in separate invocations with the same settings are merged into one summary.

    python benchmarks/kumar_experiment.py --monuseg ../shared/data/monuseg --out bench_out/kumar
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from instasam.cli import main as instasam
from instasam.io.atomic import write_text_atomic

PAPER = {  # Dice_obj / AJI (%) on MoNuSeg, Nam et al. 2024, Table 1-3
    "sam": (77.2, 57.4),
    "gt": (78.6, 59.6),
    "cv": (73.2, 52.0),
}
NAMES = {
    "sam": "InstaSAM, centred points",
    "gt": "ground-truth masks (upper bound)",
    "cv": "cluster + Voronoi labels",
}


def run(argv: list[str], log: list[dict]) -> None:
    print(f"\n$ instasam {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    status = instasam(argv)
    seconds = time.perf_counter() - started
    log.append({"command": argv, "seconds": round(seconds, 1), "status": status})
    if status:
        sys.exit(f"stage failed with status {status}: instasam {shlex.join(argv)}")


def prepare(src: Path, out: Path, log: list[dict]) -> None:
    split = src / "splits" / "kumar_16_14.json"
    for subset in ("train", "val", "test"):
        dest = out / "data" / subset
        if (dest / "points").is_dir():
            continue
        run(
            [
                "prepare",
                "monuseg",
                str(src / "train"),
                str(dest),
                "--split",
                str(split),
                "--subset",
                subset,
            ],
            log,
        )


def experiment(args: argparse.Namespace, source: str, log: list[dict]) -> dict:
    data, run_dir = args.out / "data", args.out / "runs" / source
    pred, result = args.out / "pred" / source, args.out / "results" / f"{source}.json"
    train_argv = [
        "train",
        "--arch",
        "instasam",
        "--data",
        str(data / "train"),
        "--val",
        str(data / "val"),
        "--out",
        str(run_dir),
        "--pseudo",
        source,
        "--epochs",
        str(args.epochs),
        "--steps-per-epoch",
        str(args.steps_per_epoch),
        "--batch-size",
        str(args.batch_size),
        "--val-from-epoch",
        str(args.val_from_epoch),
        "--resume",
        "--quiet",
    ]
    if args.patience is not None:
        train_argv += ["--patience", str(args.patience)]
    train_argv += ["--dist-loss", args.dist_loss]
    done_marker = run_dir / "done.json"
    if not done_marker.is_file():
        run(train_argv, log)
        done_marker.write_text(json.dumps({"finished": time.time()}))
    test_labels = str(data / "test" / "labels")
    if not result.is_file():
        predict = ["predict", str(data / "test" / "images"), "--model", str(run_dir / "model.pt")]
        run([*predict, "--out", str(pred), "--save-maps"], log)
        run(["evaluate", "--gt", test_labels, "--pred", str(pred), "--json", str(result)], log)
    alt = args.out / "results" / f"{source}_hovernet_thresholds.json"
    if not alt.is_file():
        alt_pred = args.out / "pred" / f"{source}_hovernet_thresholds"
        run(
            ["postprocess", str(pred / "maps"), "--out", str(alt_pred), "--preset", "hovernet"], log
        )
        run(["evaluate", "--gt", test_labels, "--pred", str(alt_pred), "--json", str(alt)], log)
    metrics = json.loads(result.read_text())["mean"]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "mean": metrics,
        "mean_hovernet_thresholds": json.loads(alt.read_text())["mean"],
        "train_seconds": history[-1].get("seconds"),
        "epochs": len(history),
        "val": [h.get("val", {}).get("aji") for h in history],
    }


def markdown(summary: dict) -> str:
    rows = [
        "| labels | post-processing | Dice_obj | AJI | AJI+ | PQ | paper Dice_obj / AJI |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for source, res in summary["runs"].items():
        d, a = PAPER[source]
        for name, key in (("authors'", "mean"), ("HoVer-Net's", "mean_hovernet_thresholds")):
            m = res[key]
            rows.append(
                f"| {NAMES[source]} | {name} | {100 * m['dice_obj']:.1f} | {100 * m['aji']:.1f} "
                f"| {100 * m['aji_plus']:.1f} | {100 * m['pq']:.1f} | {d} / {a} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monuseg", type=Path, default=Path("../shared/data/monuseg"))
    parser.add_argument("--out", type=Path, default=Path("bench_out/kumar"))
    parser.add_argument("--sources", nargs="+", default=["sam", "gt", "cv"], choices=list(PAPER))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val-from-epoch", type=int, default=4)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--dist-loss", choices=("smooth_l1", "l1"), default="smooth_l1")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    log: list[dict] = []
    prepare(args.monuseg, args.out, log)
    settings = vars(args) | {"monuseg": str(args.monuseg), "out": str(args.out)}
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "settings": settings,
        "runs": earlier_runs(args.out / "summary.json", settings),
        "prepare_stages": log,
    }
    for source in args.sources:
        source_started, stages = time.perf_counter(), []
        summary["runs"][source] = experiment(args, source, stages)
        summary["runs"][source]["stages"] = stages
        summary["runs"][source]["wall_seconds"] = round(time.perf_counter() - source_started, 1)
    summary["settings"]["sources"] = list(summary["runs"])
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=2, default=str))
    print("\n" + markdown(summary))


def earlier_runs(path: Path, settings: dict) -> dict:
    """Runs of an earlier invocation into the same OUT, kept when only the sources differ."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    ignore = {"sources"}
    old = {k: v for k, v in earlier.get("settings", {}).items() if k not in ignore}
    new = {k: v for k, v in settings.items() if k not in ignore}
    if old != new:
        print(f"note: {path} was made with other settings; its runs are not merged")
        return {}
    return earlier.get("runs", {})


if __name__ == "__main__":
    main()
