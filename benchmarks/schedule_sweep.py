"""Variants of the shipped recipe (budget, shape, labels), trained side by side and scored.

Trains the shipped recipe (``instasam train --arch net``) on fixed labels with a few
changes of budget and shape, each a named variant, several at once, then scores every
finished network on the test tiles with the setting chosen on the val tiles. One JSON per
variant is written to ``--results`` (default ``benchmarks/results/schedule``); a variant
whose JSON exists is skipped, and training resumes, so an interrupted sweep continues.

On a CPU one 1,500-step variant takes ~50 min on 2 cores; on a CUDA GPU the variants run
side by side (``--jobs``), each with ``--workers`` processes drawing its crops.

    python benchmarks/schedule_sweep.py --data bench_out/k/data \\
        --labels bench_out/paper/pseudo/monuseg_train_sam --out bench_out/sweep \\
        --variants steps1500_seed0 steps3000_seed0 --jobs 2

``--other-labels DIR`` gives the ``other_`` variants their labels (e.g. those of
``hybrid_labels.py``); ``--other-test DIR ...`` also scores each network on more prepared
folders, e.g. TNBC's test tiles, and adds them to a finished variant's JSON when its
network is still in ``--out`` (a network trained on a GPU machine, scored here on data that
did not travel).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "schedule"


@dataclass(frozen=True)
class Variant:
    steps: int = 1500
    widths: tuple[int, ...] | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    crop_size: int | None = None  # NetTrainConfig.crop_size; None: the recipe's
    labels: str = "s"  # "s" (--labels), "gt", or "other" (--other-labels)
    fill: float = 0.0  # NetTrainConfig.unlabelled_point_fill
    hed_scale: float | None = None  # NetTrainConfig.hed_scale; None: the recipe's
    rim: float = 0.0  # NetTrainConfig.ignored_rim_background
    # LossConfig.w_grad (HoVer-Net's gradient loss on the distance maps). 0: the recipe as
    # it was when most variants were measured; the recipe has had 1 since grad1 was adopted.
    w_grad: float = 0.0
    centre_head: bool = False  # NucleiNetConfig.centre_head: a centre map taught by the points


VARIANTS: dict[str, Variant] = {}
for _seed in (0, 1):
    VARIANTS[f"steps1500_seed{_seed}"] = Variant()
    VARIANTS[f"steps3000_seed{_seed}"] = Variant(steps=3000)
    VARIANTS[f"steps6000_seed{_seed}"] = Variant(steps=6000)
    VARIANTS[f"wide_steps1500_seed{_seed}"] = Variant(widths=(32, 64, 128, 256))
    VARIANTS[f"batch16_steps1500_seed{_seed}"] = Variant(batch_size=16)
    VARIANTS[f"gt_steps1500_seed{_seed}"] = Variant(labels="gt")
    VARIANTS[f"gt_steps3000_seed{_seed}"] = Variant(steps=3000, labels="gt")
    VARIANTS[f"fill5_steps1500_seed{_seed}"] = Variant(fill=5.0)
    VARIANTS[f"stain45_steps1500_seed{_seed}"] = Variant(hed_scale=0.45)
    VARIANTS[f"rim3_steps1500_seed{_seed}"] = Variant(rim=3.0)
    VARIANTS[f"grad1_steps1500_seed{_seed}"] = Variant(w_grad=1.0)
    VARIANTS[f"grad1_steps1000_seed{_seed}"] = Variant(steps=1000, w_grad=1.0)
    VARIANTS[f"centre_steps1500_seed{_seed}"] = Variant(w_grad=1.0, centre_head=True)
    # The same pixels per step as the recipe (8 x 256^2) in crops 4x larger: more of each
    # crop sees the context it has in a whole tile at prediction time.
    VARIANTS[f"crop512_steps1500_seed{_seed}"] = Variant(
        w_grad=1.0, centre_head=True, crop_size=512, batch_size=2
    )
    # --other-labels: e.g. S with the nuclei it left unlabelled taken from cluster + Voronoi
    VARIANTS[f"other_steps1500_seed{_seed}"] = Variant(labels="other")
    VARIANTS[f"other_stain45_steps1500_seed{_seed}"] = Variant(labels="other", hed_scale=0.45)


def seed_of(name: str) -> int:
    return int(name.rsplit("seed", 1)[1])


def variant_config(name: str, path: Path) -> Path:
    """The variant's configuration file (the recipe with its widths, fill, rim, stain
    jitter and gradient loss changed)."""
    from instasam.config import NetConfig

    variant = VARIANTS[name]
    config = NetConfig()
    if variant.widths is not None:
        config = replace(config, net=replace(config.net, widths=variant.widths))
    config = replace(
        config,
        train=replace(
            config.train, unlabelled_point_fill=variant.fill, ignored_rim_background=variant.rim
        ),
    )
    if variant.hed_scale is not None:
        config = replace(config, train=replace(config.train, hed_scale=variant.hed_scale))
    if variant.crop_size is not None:
        config = replace(config, train=replace(config.train, crop_size=variant.crop_size))
    config = replace(config, loss=replace(config.loss, w_grad=variant.w_grad))
    config = replace(config, net=replace(config.net, centre_head=variant.centre_head))
    path.write_text(json.dumps(config.to_dict(), indent=1))
    return path


def train(name: str, args: argparse.Namespace) -> tuple[Path, float]:
    variant = VARIANTS[name]
    steps = min(variant.steps, args.max_steps or variant.steps)
    run_dir = args.out / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = variant_config(name, args.out / "runs" / f"{name}.config.json")
    argv = [sys.executable, "-m", "instasam", "train", "--data", str(args.data / "train")]
    argv += ["--val", str(args.data / "val"), "--out", str(run_dir), "--resume", "--quiet"]
    argv += ["--steps", str(steps), "--seed", str(seed_of(name)), "--config", str(config)]
    argv += ["--threads", str(args.threads), "--workers", str(args.workers)]
    if variant.labels == "gt":
        argv += ["--pseudo", "gt"]
    else:
        folder = args.other_labels if variant.labels == "other" else args.labels
        if folder is None:
            raise SystemExit(f"{name} needs --other-labels")
        argv += ["--labels-from", str(folder)]
    if variant.batch_size:
        argv += ["--batch-size", str(variant.batch_size)]
    started = time.perf_counter()
    if not (run_dir / "thresholds.json").is_file():
        with open(args.out / "runs" / f"{name}.log", "a") as log:
            subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run_dir, time.perf_counter() - started


def test_scores(model: Path, test: Path, device: str) -> dict:
    """Mean and per-tile metrics of the network's instances on the test tiles: the same
    predictor and metrics as ``instasam predict`` + ``instasam evaluate``, without the
    files in between."""
    from instasam.metrics import compute_metrics, mean_metrics
    from instasam.predict.tiles import load_predictor
    from instasam.training.precision import resolve_precision
    from instasam.training.validation import val_tiles_in

    chosen = resolve_precision("auto", device=device)
    predictor = load_predictor(model, precision=chosen, device=device)
    per_tile = {
        t.stem: compute_metrics(t.labels, predictor.predict_instances(t.image))
        for t in val_tiles_in(test)
    }
    return {"mean": mean_metrics(list(per_tile.values())), "per_tile": per_tile}


def with_other_tests(result: dict, model: Path, args: argparse.Namespace) -> dict:
    """``result`` with the scores of the ``--other-test`` folders it lacks, from ``model``
    (a network trained on one machine can be scored on data that stayed on another)."""
    missing = [f for f in args.other_test if f.name not in result.get("other_test", {})]
    if not missing:
        return result
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = {f.name: test_scores(model, f, device) for f in missing}
    return {**result, "other_test": {**result.get("other_test", {}), **scores}}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    result_path = args.results / f"{name}.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        updated = with_other_tests(result, args.out / "runs" / name / "model.pt", args)
        if updated is not result:
            result_path.write_text(json.dumps(updated, indent=1))
        return updated
    import torch

    torch.set_num_threads(args.threads)
    run_dir, wall = train(name, args)
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variant = VARIANTS[name]
    result = {
        "variant": name,
        **asdict(variant),
        "steps": min(variant.steps, args.max_steps or variant.steps),
        "seed": seed_of(name),
        "best_step": payload.get("step"),
        "val": payload.get("val"),
        "postprocess": payload["config"]["postprocess"],
        "val_history": [(h["step"], h["val"]["aji"]) for h in history if "val" in h],
        "train_seconds": history[-1]["seconds"],
        "wall_seconds": round(wall, 1),
        "test": test_scores(run_dir / "model.pt", args.data / "test", device),
        "machine": f"{platform.machine()}, {device}"
        + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
        + f", {args.jobs} variant(s) at once, {args.threads} threads and {args.workers} "
        "crop workers each",
    }
    result = with_other_tests(result, run_dir / "model.pt", args)
    args.results.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    m = result["test"]["mean"]
    print(
        f"{name}: test Dice_obj {100 * m['dice_obj']:.1f} AJI {100 * m['aji']:.1f} "
        f"PQ {100 * m['pq']:.1f}; val AJI {result['val']['aji']:.4f}; {wall / 60:.1f} min",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared train/val/test")
    parser.add_argument("--labels", type=Path, required=True, help="S from `instasam pseudo`")
    parser.add_argument("--other-labels", type=Path, help="the labels of the `other_` variants")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per variant")
    parser.add_argument("--workers", type=int, default=0, help="crop workers per variant")
    parser.add_argument("--max-steps", type=int, help="cap every variant (a check of the sweep)")
    parser.add_argument(
        "--other-test",
        type=Path,
        nargs="*",
        default=[],
        help="more prepared folders (images/ + labels/) to score, e.g. TNBC's test tiles",
    )
    args = parser.parse_args(argv)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(run_variant, name, args) for name in args.variants}
    failed = []
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # one variant's failure must not hide the others
            failed.append(name)
            print(f"{name}: failed ({exc})", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
