"""Test-time flips and a two-seed ensemble of the S-trained networks, on the Kumar split.

For each variant (one seed or both, with or without the four flips) the maps of the 4
validation tiles choose the watershed thresholds (the training's grid), and the 14 test
tiles are scored with them. Needs the ``sam_seed0`` and ``sam_seed1`` runs of
``kumar_net.py``.

    python benchmarks/tta_ensemble.py --json benchmarks/results/net/tta_ensemble.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from instasam.io.atomic import write_text_atomic
from instasam.model.instasam import load_payload
from instasam.model.unet import net_from_payload
from instasam.predict.tiles import predict_net_maps
from instasam.training.validation import choose_thresholds, score_maps, val_tiles_in

VARIANTS = {
    "seed1": ((1,), False),
    "seed1_flips": ((1,), True),
    "seed0": ((0,), False),
    "seed0_flips": ((0,), True),
    "ens01": ((0, 1), False),
    "ens01_flips": ((0, 1), True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/k"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    nets = {}
    for seed in (0, 1):
        path = args.out / "runs" / f"sam_seed{seed}" / "model.pt"
        net, config = net_from_payload(load_payload(path), path)
        nets[seed] = net.eval()
    base = config.postprocess
    subsets = {name: val_tiles_in(args.out / "data" / name) for name in ("val", "test")}
    maps = {  # (subset, seed, flips) -> [(foreground, distance maps) per tile]
        (name, seed, flips): [predict_net_maps(nets[seed], t.image, "bf16", flips) for t in ts]
        for name, ts in subsets.items()
        for seed in nets
        for flips in (False, True)
    }
    results = {}
    for variant, (seeds, flips) in VARIANTS.items():
        averaged = {
            name: [
                tuple(
                    np.mean([maps[(name, s, flips)][i][j] for s in seeds], axis=0) for j in (0, 1)
                )
                for i in range(len(ts))
            ]
            for name, ts in subsets.items()
        }
        chosen, grid = choose_thresholds(averaged["val"], subsets["val"], base)
        test = score_maps(averaged["test"], subsets["test"], chosen)
        authors = replace(base, fg_threshold=0.7, edge_threshold=0.5)
        results[variant] = {
            "val_aji": max(row["aji"] for row in grid),
            "fg": chosen.fg_threshold,
            "edge": chosen.edge_threshold,
            "test": test,
            "test_0.7_0.5": score_maps(averaged["test"], subsets["test"], authors),
        }
        print(
            f"{variant}: val AJI {results[variant]['val_aji']:.4f} at {chosen.fg_threshold}/"
            f"{chosen.edge_threshold}; test Dice_obj {100 * test['dice_obj']:.1f} "
            f"AJI {100 * test['aji']:.1f}",
            flush=True,
        )
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
