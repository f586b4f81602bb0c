"""The shipped recipe on MoNuSeg (Kumar split), one command per row.

Prepares the Kumar tiles (train 12 + val 4, test 14) with centred points, makes the fixed
labels (``sam``: S from LiteMedSAM prompted with the points; ``cv``: cluster + Voronoi;
``gt``: the ground-truth masks; ``model``: one round of self-training, the labels of
``instasam pseudo --source model`` made by the ``--teacher`` row's network with flips and
checked against the points, falling back on S), trains the full-resolution nuclei network on them
(``instasam train --arch net``), predicts the 14 test tiles and evaluates them. Every stage
is a plain ``instasam`` command, printed before it runs and skipped when its output exists
(training resumes), so an interrupted row continues where it stopped. Each finished row is
written to ``benchmarks/results/net/<labels>_seed<seed>.json`` (``fused_...`` with
``--sam-fusion``, the network that also reads LiteMedSAM's whole-tile embedding).

    python benchmarks/kumar_net.py --labels sam --seed 0 --out bench_out/k
    python benchmarks/kumar_net.py --labels sam --seed 0 --sam-fusion --out bench_out/k
    python benchmarks/kumar_net.py --labels sam --seed 1 --refit monuseg-points --out bench_out/k

``--refit MODEL`` trains the same recipe on all 16 training tiles (train 12 + val 4) for the
recipe's steps, with no validation, keeping the post-processing that validation chose for
MODEL (a shipped model's name or a model.pt); the row is ``<labels>_seed<seed>_refit``.
Measured for both seeds and worse than the shipped network on Kumar and TNBC (README).
``--tnbc DIR`` also scores the row's network on the 13 TNBC test tiles.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from stages import run, tnbc_prepare_argv

from instasam.io.atomic import write_text_atomic
from instasam.training.precision import cpu_has_native_bf16

RESULTS = Path(__file__).parent / "results" / "net"


def prepare(src: Path, data: Path, log: list[dict]) -> None:
    split = src / "splits" / "kumar_16_14.json"
    for subset in ("train", "val", "test"):
        if not (data / subset / "points").is_dir():
            argv = ["prepare", "monuseg", str(src / "train"), str(data / subset)]
            run([*argv, "--split", str(split), "--subset", subset], log)


def prepare_trainval(src: Path, data: Path, log: list[dict]) -> Path:
    """The 12 training and 4 validation tiles prepared as one folder, ``data/trainval``."""
    folder = data / "trainval"
    if not (folder / "points").is_dir():
        split = json.loads((src / "splits" / "kumar_16_14.json").read_text())
        merged = data / "split_trainval.json"
        write_text_atomic(merged, json.dumps({"trainval": split["train"] + split["val"]}))
        argv = ["prepare", "monuseg", str(src / "train"), str(folder), "--split", str(merged)]
        run([*argv, "--subset", "trainval"], log)
    return folder


def refit_config(model: str, seed: int, out: Path) -> Path:
    """A training configuration whose post-processing (one pass, and for ``--flips``) is
    the one chosen for ``model``."""
    from instasam.config import NetConfig
    from instasam.pretrained import resolve_model

    payload = torch.load(resolve_model(model), map_location="cpu", weights_only=False)
    chosen = NetConfig.from_dict(payload["config"])
    config = replace(
        NetConfig(), postprocess=chosen.postprocess, flips_postprocess=chosen.flips_postprocess
    )
    config = replace(config, train=replace(config.train, seed=seed))
    write_text_atomic(out, json.dumps(config.to_dict(), indent=1))
    return out


def scale_config(scale_range: list[float], seed: int, out: Path) -> Path:
    """The recipe's configuration with the crops resized within ``scale_range``."""
    from instasam.config import NetConfig

    config = NetConfig()
    config = replace(config, augment=replace(config.augment, scale_range=tuple(scale_range)))
    config = replace(config, train=replace(config.train, seed=seed))
    write_text_atomic(out, json.dumps(config.to_dict(), indent=1))
    return out


def tnbc_scores(src: Path, data: Path, model: Path, name: str, out: Path, log: list[dict]) -> dict:
    """Mean scores of ``model`` on the TNBC test patients' tiles."""
    folder = data / "tnbc_test"
    if not (folder / "labels").is_dir():
        run(tnbc_prepare_argv(src, folder, "test"), log)
    pred, result = out / "pred" / f"{name}_tnbc", out / "results" / f"{name}_tnbc.json"
    run(["predict", str(folder / "images"), "--model", str(model), "--out", str(pred)], log)
    evaluate = ["evaluate", "--gt", str(folder / "labels"), "--pred", str(pred)]
    run([*evaluate, "--json", str(result)], log)
    return json.loads(result.read_text())["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monuseg", type=Path, default=Path("../shared/data/monuseg"))
    parser.add_argument(
        "--tnbc", type=Path, help="also score the 13 TNBC test tiles (another lab and tissue)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/k"))
    parser.add_argument("--labels", choices=("sam", "cv", "gt", "model"), default="sam")
    parser.add_argument(
        "--teacher", default="sam_seed1", help="for --labels model: the row whose network labels"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flips", action="store_true", help="test-time flips")
    parser.add_argument(
        "--sam-fusion", action="store_true", help="the fused design (train --sam-fusion)"
    )
    parser.add_argument(
        "--refit",
        metavar="MODEL",
        help="train on train + val with MODEL's chosen post-processing, no validation",
    )
    parser.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="the crops' resize range (default the paper's 0.8 1.25)",
    )
    args = parser.parse_args()
    if args.refit and (args.labels == "model" or args.sam_fusion):
        parser.error("--refit takes --labels sam, cv or gt without --sam-fusion")
    torch.set_num_threads(args.threads)
    log: list[dict] = []
    data = args.out / "data"
    prepare(args.monuseg, data, log)
    name = f"{args.labels}_seed{args.seed}" + (f"_steps{args.steps}" if args.steps else "")
    if args.labels == "model":
        name = f"model_{args.teacher}_seed{args.seed}"
    if args.sam_fusion:
        name = f"fused_{name}"
    if args.scale_range:
        name = f"{name}_scale{args.scale_range[0]:g}-{args.scale_range[1]:g}"
    train_data = data / "train"
    if args.refit:
        name, train_data = f"{name}_refit", prepare_trainval(args.monuseg, data, log)
    run_dir, pred = args.out / "runs" / name, args.out / "pred" / name
    train = ["train", "--data", str(train_data), "--out", str(run_dir)]
    train += ["--seed", str(args.seed), "--resume", "--quiet"]
    if args.refit:
        run_dir.mkdir(parents=True, exist_ok=True)
        train += ["--config", str(refit_config(args.refit, args.seed, run_dir / "refit.json"))]
    else:
        train += ["--val", str(data / "val")]
    if args.scale_range:
        run_dir.mkdir(parents=True, exist_ok=True)
        train += [
            "--config",
            str(scale_config(args.scale_range, args.seed, run_dir / "scale.json")),
        ]
    if args.steps:
        train += ["--steps", str(args.steps)]
    if args.sam_fusion:
        train += ["--sam-fusion"]
    if args.labels == "gt":
        train += ["--pseudo", "gt"]
    elif args.labels == "model":
        labels = args.out / f"pseudo_model_{args.teacher}"
        teacher = args.out / "runs" / args.teacher / "model.pt"
        if not teacher.is_file():
            parser.error(f"{teacher} missing: run the {args.teacher} row first")
        pseudo = ["pseudo", "--data", str(data / "train"), "--out", str(labels), "--source"]
        pseudo += ["model", "--model", str(teacher), "--previous", str(args.out / "pseudo_sam")]
        if not (labels / "source.json").is_file():
            run([*pseudo, "--flips", "--threads", str(args.threads)], log)
        train += ["--labels-from", str(labels)]
    else:
        labels = args.out / (f"pseudo_{args.labels}" + ("_trainval" if args.refit else ""))
        pseudo = ["pseudo", "--data", str(train_data), "--out", str(labels)]
        run([*pseudo, "--source", args.labels, "--threads", str(args.threads)], log)
        train += ["--pseudo", args.labels, "--labels-from", str(labels)]
    if not (run_dir / ("model.pt" if args.refit else "thresholds.json")).is_file():
        run(train, log)
    predict = ["predict", str(data / "test" / "images"), "--model", str(run_dir / "model.pt")]
    predict += ["--out", str(pred), "--save-maps"] + (["--flips"] if args.flips else [])
    started = time.perf_counter()
    run(predict, log)
    predict_seconds = time.perf_counter() - started
    result = args.out / "results" / f"{name}.json"
    run(
        [
            "evaluate",
            "--gt",
            str(data / "test" / "labels"),
            "--pred",
            str(pred),
            "--json",
            str(result),
        ],
        log,
    )
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    checkpoint = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    summary = {
        "row": name,
        "labels": args.labels,
        "teacher": args.teacher if args.labels == "model" else None,
        "seed": args.seed,
        "sam_fusion": args.sam_fusion,
        "refit_postprocess_from": args.refit,
        "training_tiles": len(list((train_data / "points").glob("*.csv"))),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"native bf16: {cpu_has_native_bf16()}",
        "test_mean": json.loads(result.read_text())["mean"],
        "test_per_image": json.loads(result.read_text()).get("images"),
        "train_seconds": history[-1]["seconds"],
        "steps": history[-1]["step"],
        "best_step": checkpoint.get("step"),
        "val_default_thresholds": checkpoint.get("val_default"),
        "val_chosen_thresholds": checkpoint.get("val"),
        "postprocess": checkpoint["config"]["postprocess"],
        "val_history": [(h["step"], h["val"]["aji"]) for h in history if "val" in h],
        "predict_seconds_14_tiles": round(predict_seconds, 1),
        "tnbc_test_mean": tnbc_scores(args.tnbc, data, run_dir / "model.pt", name, args.out, log)
        if args.tnbc
        else None,
        "stages": log,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / f"{name}.json", json.dumps(summary, indent=1))
    m = summary["test_mean"]
    print(
        f"\n{name}: Dice_obj {100 * m['dice_obj']:.1f} AJI {100 * m['aji']:.1f} "
        f"AJI+ {100 * m['aji_plus']:.1f} PQ {100 * m['pq']:.1f} "
        f"(train {summary['train_seconds'] / 60:.1f} min)"
    )


if __name__ == "__main__":
    main()
