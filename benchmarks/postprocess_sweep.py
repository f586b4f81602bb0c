"""The watershed's other settings, chosen on the validation tiles: do they close the gap?

Training chooses only the foreground and marker thresholds (on the 4 Kumar validation
tiles). This sweeps the rest of :class:`~instasam.config.PostprocessConfig` (Sobel kernel,
smoothing, minimum object and marker sizes, marker opening, unmarked components) by
coordinate ascent on validation AJI from the model's saved settings, two rounds, and
scores the 14 test tiles with what validation chose. The maps are computed once.

    python benchmarks/postprocess_sweep.py --model monuseg-points \
        --json benchmarks/results/net/postprocess_sweep.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from instasam.io.atomic import write_text_atomic
from instasam.model.instasam import load_payload
from instasam.model.unet import net_from_payload
from instasam.predict.tiles import predict_net_maps
from instasam.pretrained import resolve_model
from instasam.training.validation import score_maps, val_tiles_in

GRID = {
    "fg_threshold": (0.3, 0.4, 0.5, 0.6),
    "edge_threshold": (0.3, 0.4, 0.5, 0.6),
    "sobel_ksize": (11, 15, 21, 31),
    "smoothing_sigma": (0.0, 1.0, 2.0),
    "min_area": (10, 20, 30, 50),
    "min_marker_area": (5, 10, 20),
    "marker_opening": (0, 1, 2, 3),
    "keep_unmarked": (True, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="monuseg-points")
    parser.add_argument("--data", type=Path, default=Path("bench_out/k/data"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = resolve_model(args.model)
    net, config = net_from_payload(load_payload(path), path)
    subsets = {name: val_tiles_in(args.data / name) for name in ("val", "test")}
    maps = {
        name: [predict_net_maps(net, t.image, "bf16") for t in ts] for name, ts in subsets.items()
    }

    def val_aji(c):
        return score_maps(maps["val"], subsets["val"], c)["aji"]

    start = config.postprocess
    best, best_aji = start, val_aji(start)
    steps = [{"setting": "saved", "val_aji": best_aji}]
    for _ in range(args.rounds):
        for name, values in GRID.items():
            for value in values:
                candidate = replace(best, **{name: value})
                if candidate == best:
                    continue
                score = val_aji(candidate)
                if score > best_aji + 1e-4:
                    best, best_aji = candidate, score
                    steps.append({"setting": f"{name}={value}", "val_aji": score})
                    print(f"{name}={value}: val AJI {score:.4f}", flush=True)
    results = {
        "model": args.model,
        "saved": asdict(start),
        "chosen": asdict(best),
        "steps": steps,
        "test_saved": score_maps(maps["test"], subsets["test"], start),
        "test_chosen": score_maps(maps["test"], subsets["test"], best),
    }
    for key in ("test_saved", "test_chosen"):
        r = results[key]
        scores = " ".join(f"{m} {100 * r[m]:.1f}" for m in ("dice_obj", "aji", "pq"))
        print(f"{key}: {scores}")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
