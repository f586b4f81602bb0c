"""Does HoVer-Net's gradient loss (MSGE) on the distance maps split merged nuclei? An A/B
from the shipped model.

Most of the shipped model's Dice_obj shortfall on the Kumar test tiles is under-segmentation:
ground-truth nuclei whose best-matching predicted nucleus is about twice their size
(``--analyse``). The value loss on the distance maps (SmoothL1) barely notices a prediction
that blurs the fall from +1 to -1 between two touching nuclei, which is what the watershed's
markers need; HoVer-Net adds the squared error of the maps' derivatives for that
(``LossConfig.w_grad``, ``losses.masked_gradient_loss``).

A full 1,500-step run takes 47 min on an AVX-512-BF16 CPU but ~130 min on an AVX2-only one
(5.3 s a step in fp32), so this measures the loss by continuing the shipped network: the
arms start from ``monuseg-points`` with the same seed (the same crops), the same S labels
and the fine-tuning rate (1e-4, BatchNorm statistics kept), and differ only in ``w_grad``:
1 (HoVer-Net's weighting), 0.25, and 0, the control, which measures what more steps alone
do. Each arm's checkpoint and post-processing are chosen on the 4 val tiles, and every
arm, and the starting model, is scored on the val and the 14 test tiles.

    python benchmarks/gradient_loss.py --data bench_out/k/data --labels bench_out/k/pseudo_sam \\
        --out bench_out/gradient_loss --steps 300

Arms that finished are skipped, and training resumes. Writes
``benchmarks/results/net/gradient_loss.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULT = Path(__file__).parent / "results" / "net" / "gradient_loss.json"
ARMS = {"grad1": 1.0, "control": 0.0, "grad025": 0.25}  # the order they train in


def arm_config(w_grad: float, val_every: int, path: Path) -> Path:
    from instasam.config import NetConfig

    config = NetConfig()
    config = replace(config, train=replace(config.train, val_every=val_every))
    config = replace(config, loss=replace(config.loss, w_grad=w_grad))
    path.write_text(json.dumps(config.to_dict(), indent=1))
    return path


def train_arm(name: str, args: argparse.Namespace) -> tuple[Path, float]:
    run_dir = args.out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = arm_config(ARMS[name], args.val_every, args.out / f"{name}.config.json")
    argv = [sys.executable, "-m", "instasam", "train", "--data", str(args.data / "train")]
    argv += ["--val", str(args.data / "val"), "--out", str(run_dir), "--resume", "--quiet"]
    argv += ["--init", args.init, "--labels-from", str(args.labels), "--config", str(config)]
    argv += ["--steps", str(args.steps), "--seed", str(args.seed)]
    argv += ["--threads", str(args.threads)]
    started = time.perf_counter()
    if not (run_dir / "thresholds.json").is_file():
        with open(args.out / f"{name}.log", "a") as log:
            subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run_dir, time.perf_counter() - started


def size_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Area shares of the ground truth by how its best-overlapping prediction fails it.

    ``merged``: Dice below 0.7 with a prediction at least 1.5x its size (under-segmented);
    ``missed``: no overlapping prediction; also the share of predicted area that overlaps
    no nucleus at all (``false_area``).
    """
    from instasam.metrics import _first_per_group, overlap_table

    table = overlap_table(gt, pred)
    # Each nucleus's partner as Dice_obj takes it: the largest intersection.
    best = _first_per_group(table.pair_gt, -table.intersection)
    g, p = table.pair_gt[best], table.pair_pred[best]
    gt_area, pred_area = table.gt_area, table.pred_area
    dice = 2 * table.intersection[best] / (gt_area[g] + pred_area[p])
    under = (dice < 0.7) & (pred_area[p] >= 1.5 * gt_area[g])
    unpaired = np.ones(table.n_pred, dtype=bool)
    unpaired[table.pair_pred] = False
    return {
        "merged": float(gt_area[g][under].sum() / gt_area.sum()),
        "missed": float(1 - gt_area[g].sum() / gt_area.sum()),
        "false_area": float(pred_area[unpaired].sum() / max(pred_area.sum(), 1)),
    }


def scores(model: Path | str, folder: Path) -> dict:
    """Mean metrics and error shares of ``model`` on a prepared folder, as ``instasam
    predict`` makes them (the model's own post-processing and stain standardisation)."""
    from instasam.metrics import compute_metrics, mean_metrics
    from instasam.predict.tiles import load_predictor
    from instasam.training.validation import val_tiles_in

    predictor = load_predictor(model, precision="auto")
    metrics, errors = [], []
    for tile in val_tiles_in(folder):
        pred = predictor.predict_instances(tile.image)
        metrics.append(compute_metrics(tile.labels, pred))
        errors.append(size_errors(tile.labels, pred))
    return {
        "mean": mean_metrics(metrics),
        "errors": {k: float(np.mean([e[k] for e in errors])) for k in errors[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared train/val/test")
    parser.add_argument("--labels", type=Path, required=True, help="S from `instasam pseudo`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", default="monuseg-points")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="the shipped network's seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--result", type=Path, default=RESULT)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = json.loads(args.result.read_text()) if args.result.is_file() else {}
    if "start" not in result:
        result["start"] = {
            "model": args.init,
            "val": scores(args.init, args.data / "val"),
            "test": scores(args.init, args.data / "test"),
        }
    for name in args.arms:
        if name in result.get("arms", {}):
            continue
        run_dir, wall = train_arm(name, args)
        history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
        result.setdefault("arms", {})[name] = {
            "w_grad": ARMS[name],
            "steps": args.steps,
            "seed": args.seed,
            "best_step": payload.get("step"),
            "postprocess": payload["config"]["postprocess"],
            "val_history": [(h["step"], h["val"]["aji"]) for h in history if "val" in h],
            "train_seconds": history[-1]["seconds"],
            "wall_seconds": round(wall, 1),
            "val": scores(run_dir / "model.pt", args.data / "val"),
            "test": scores(run_dir / "model.pt", args.data / "test"),
        }
        result["machine"] = f"{platform.processor() or platform.machine()}, {args.threads} threads"
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(json.dumps(result, indent=1))
    for name, row in [("start", result["start"]), *result.get("arms", {}).items()]:
        for split in ("val", "test"):
            m, e = row[split]["mean"], row[split]["errors"]
            print(
                f"{name:8s} {split:4s} Dice_obj {100 * m['dice_obj']:.2f} AJI {100 * m['aji']:.2f}"
                f" PQ {100 * m['pq']:.2f}; merged {100 * e['merged']:.1f} % of nucleus area,"
                f" false {100 * e['false_area']:.1f} % of predicted area"
            )


if __name__ == "__main__":
    main()
