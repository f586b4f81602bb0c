"""Time the end-of-training threshold choice: a network's grid on whole val tiles, in 1..N threads.

The network predicts the tiles once; the grid (192 settings for a network with a centre
head) is then scored with each thread count, and the tables are checked to be equal.

Usage::

    .venv/bin/python benchmarks/bench_threshold_grid.py \\
        benchmarks/results/paper/end_to_end_2/networks/self-trained_seed0.pt \\
        --val bench_out/paper/data/monuseg_val --workers 1 2 \\
        --json benchmarks/results/threshold_grid_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from instasam.io.atomic import write_text_atomic
from instasam.model.unet import net_from_payload
from instasam.training.precision import resolve_precision
from instasam.training.validation import (
    grid_scores,
    grid_settings,
    standardised_tiles,
    val_tiles_in,
    validation_maps,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a nuclei network's model.pt")
    parser.add_argument("--val", type=Path, required=True, help="prepared validation folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the maps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    payload = torch.load(args.model, map_location="cpu", weights_only=False)
    net, config = net_from_payload(payload, args.model)
    tiles = standardised_tiles(val_tiles_in(args.val), config.stain)
    precision = resolve_precision(config.train.precision)
    maps = validation_maps(net, tiles, precision)
    configs = [replace(config.postprocess, **s) for s in grid_settings(maps)]
    seconds, tables = {}, {}
    for workers in args.workers:
        started = time.perf_counter()
        tables[workers] = grid_scores(maps, tiles, configs, workers)
        seconds[workers] = round(time.perf_counter() - started, 1)
        print(f"{workers} thread(s): {seconds[workers]} s for {len(configs)} settings")
    first = tables[args.workers[0]]
    same = all(table == first for table in tables.values())
    print("tables equal" if same else "TABLES DIFFER")
    if args.json:
        record = {
            "model": str(args.model),
            "val": str(args.val),
            "tiles": len(tiles),
            "settings": len(configs),
            "seconds_by_workers": seconds,
            "tables_equal": same,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        }
        write_text_atomic(args.json, json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
