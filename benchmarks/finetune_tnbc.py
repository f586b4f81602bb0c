"""Fine-tuning the shipped model on another tissue from a few tiles' points: MoNuSeg -> TNBC.

TNBC (Naylor et al.; breast, 512x512 at 40x like MoNuSeg) is split by patient. The user's
situation: ``--tiles`` training tiles with one point per nucleus, no outlines. Rows, all
scored on the 13 TNBC test tiles (patients 09-11):

* ``shipped``: the MoNuSeg model as it is (cross-domain, no TNBC training);
* ``finetuned``: ``instasam train --init monuseg-points`` on S from the TNBC points;
* ``finetuned-self``: the same on the shipped model's own flip-averaged outlines of the
  TNBC training tiles, each kept where a point falls in it and S's nucleus for every point
  it missed (``instasam pseudo --source model --model monuseg-points --previous S
  --flips``, the shipped recipe's second round);
* ``scratch``: the same training as ``finetuned`` from random weights, same steps.

Validation picks checkpoints and thresholds on the 7 TNBC val tiles (patients 07-08).

    python benchmarks/finetune_tnbc.py --tnbc ../shared/data/tnbc --out bench_out/tnbc
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from stages import run, tuned_if_older

from instasam.io.atomic import write_text_atomic

RESULT = Path(__file__).parent / "results" / "finetune_tnbc.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tnbc", type=Path, default=Path("../shared/data/tnbc"))
    parser.add_argument("--out", type=Path, default=Path("bench_out/tnbc"))
    parser.add_argument("--tiles", type=int, default=8, help="training tiles with points")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result", type=Path, default=RESULT, help="the summary JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log: list[dict] = []
    split = json.loads((args.tnbc / "splits" / "train_val_test.json").read_text())
    # One tile per patient first, then the next of each, ... : few tiles, many patients.
    by_patient: dict[str, list[str]] = {}
    for name in split["train"]:
        by_patient.setdefault(name.split("_")[0], []).append(name)
    order = [t for i in range(20) for p in sorted(by_patient) for t in by_patient[p][i : i + 1]]
    subsets = {"train": order[: args.tiles], "val": split["val"], "test": split["test"]}
    subset_file = args.out / "split.json"
    subset_file.parent.mkdir(parents=True, exist_ok=True)
    subset_file.write_text(json.dumps(subsets, indent=1))
    data = args.out / "data"
    for subset in subsets:
        if not (data / subset / "points").is_dir():
            argv = ["prepare", "folder", str(args.tnbc), str(data / subset)]
            argv += ["--labels", "labels_instance", "--split", str(subset_file)]
            run([*argv, "--subset", subset], log)
    pseudo = args.out / "pseudo_sam"
    run(["pseudo", "--data", str(data / "train"), "--out", str(pseudo)], log)
    self_labels = args.out / "pseudo_model"
    own = ["--source", "model", "--model", "monuseg-points", "--previous", str(pseudo), "--flips"]
    run(["pseudo", "--data", str(data / "train"), "--out", str(self_labels), *own], log)
    rows = {}
    earlier = json.loads(args.result.read_text())["rows"] if args.result.is_file() else {}
    models = {"shipped": "monuseg-points"}
    shipped = ["--init", "monuseg-points"]
    trainings = (("finetuned", shipped, pseudo), ("finetuned-self", shipped, self_labels))
    for name, init, labels in (*trainings, ("scratch", [], pseudo)):
        run_dir = args.out / "runs" / name
        train = ["train", "--data", str(data / "train"), "--val", str(data / "val")]
        train += ["--labels-from", str(labels), "--steps", str(args.steps), "--out", str(run_dir)]
        if not (run_dir / "thresholds.json").is_file():
            started = time.perf_counter()
            run([*train, *init, "--resume", "--quiet"], log)
            rows[name] = {"train_seconds": round(time.perf_counter() - started, 1)}
        else:  # trained by an earlier invocation: keep its recorded time
            rows[name] = {"train_seconds": earlier.get(name, {}).get("train_seconds")}
        tuned_if_older(run_dir / "model.pt", data / "val", log, args.threads)
        models[name] = str(run_dir / "model.pt")
    for name, model in models.items():
        pred = args.out / "pred" / name
        test = str(data / "test" / "images")
        run(["predict", test, "--model", model, "--out", str(pred), "--overwrite"], log)
        result = args.out / "results" / f"{name}.json"
        gt = str(data / "test" / "labels")
        run(["evaluate", "--gt", gt, "--pred", str(pred), "--json", str(result)], log)
        rows.setdefault(name, {})["test_mean"] = json.loads(result.read_text())["mean"]
    summary = {"tiles": subsets["train"], "steps": args.steps, "rows": rows, "stages": log}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.result, json.dumps(summary, indent=1))
    for name, row in rows.items():
        m = row["test_mean"]
        print(f"{name:>10}: AJI {100 * m['aji']:.1f} Dice_obj {100 * m['dice_obj']:.1f}")


if __name__ == "__main__":
    main()
