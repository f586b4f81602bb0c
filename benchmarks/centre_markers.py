"""The watershed's seeds compared on one network with a centre head: the edges' cores
(HoVer-Net), the centre map's peaks, and the cores split at the peaks.

The maps of the 4 Kumar validation tiles choose, for each kind of seed, the best setting
from the training grid (``instasam.training.validation``); the 14 test tiles are scored
with it. The overall choice (best val AJI over all kinds) is what ``instasam tune`` and
``scripts/ship_model.py --retune`` would save.

    python benchmarks/centre_markers.py bench_out/sweep/runs/centre_steps1500_seed0/model.pt \\
        --data bench_out/k/data --json benchmarks/results/net/centre_markers_seed0.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from instasam.io.atomic import write_text_atomic
from instasam.predict.tiles import load_predictor
from instasam.training.validation import choose_thresholds, score_maps, val_tiles_in

KINDS = ("edges", "centres", "edges+centres")
SETTING_KEYS = ("fg_threshold", "markers", "edge_threshold", "centre_threshold", "shrink")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=Path("bench_out/k/data"))
    parser.add_argument("--flips", action="store_true", help="average the four flips' maps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    predictor = load_predictor(args.model, flips=args.flips)
    # predict_maps standardises each tile's stain itself, as prediction does.
    val, test = val_tiles_in(args.data / "val"), val_tiles_in(args.data / "test")

    def maps_of(tiles):
        return [predictor.predict_maps(t.image) for t in tiles]

    val_maps, test_maps = maps_of(val), maps_of(test)
    chosen, table = choose_thresholds(val_maps, val, predictor.postprocess)
    result = {"model": str(args.model), "flips": args.flips, "precision": predictor.precision}
    for kind in KINDS:
        rows = [r for r in table if r["markers"] == kind]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["aji"])  # first of equals, as the training's choice
        setting = {k: best[k] for k in SETTING_KEYS if k in best}
        config = replace(predictor.postprocess, **setting)
        result[kind] = {
            "setting": setting,
            "val": {k: best[k] for k in ("dice_obj", "aji", "pq")},
            "test": score_maps(test_maps, test, config),
        }
        _print(kind, result[kind])
    result["chosen"] = {k: getattr(chosen, k) for k in SETTING_KEYS}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"chosen on val: {result['chosen']}; {result['seconds']:.0f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1))


def _print(kind: str, row: dict) -> None:
    v, t = row["val"], row["test"]
    print(
        f"{kind:>14}: {row['setting']} val AJI {100 * v['aji']:.2f} | test Dice_obj "
        f"{100 * t['dice_obj']:.2f} AJI {100 * t['aji']:.2f} PQ {100 * t['pq']:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
