"""Other magnifications: scores of tiles resized as if scanned at another resolution.

Each prepared folder's tiles and ground truth are resized by each factor (0.5: a 40x tile
as a 20x scan would show it; images bilinear, labels nearest), then segmented by the
model as they are and as ``instasam predict --mpp`` does (resampled to the model's
resolution and the nuclei back; :func:`instasam.cli.predict.maps_and_instances`), and
scored against the resized ground truth. Resizing a scan stands in for scanning at
another magnification: the optics of a real 20x scan differ.

    python benchmarks/resolution.py --folder kumar_test=bench_out/k/data/test \
        --folder tnbc_test=bench_out/k/data/tnbc_test --json benchmarks/results/net/resolution.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from instasam.cli.predict import maps_and_instances
from instasam.io.atomic import write_text_atomic
from instasam.metrics import compute_metrics, mean_metrics
from instasam.predict.resolution import labels_resized_to, resized_image
from instasam.predict.tiles import load_predictor
from instasam.training.validation import val_tiles_in


def factor_scores(predictor, tiles, factor: float) -> dict:
    """Mean scores (%) of ``tiles`` resized by ``factor``, as they are and resampled back."""
    as_they_are, resampled = [], []
    for tile in tiles:
        image = resized_image(tile.image, factor)
        truth = labels_resized_to(tile.labels, image.shape[:2])
        as_they_are.append(compute_metrics(truth, maps_and_instances(predictor, image, 1.0)[2]))
        back = maps_and_instances(predictor, image, 1.0 / factor)[2]
        resampled.append(compute_metrics(truth, back))
    return {
        name: {k: round(100 * v, 2) for k, v in mean_metrics(scores).items()}
        for name, scores in (("as they are", as_they_are), ("--mpp", resampled))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="monuseg-points")
    parser.add_argument("--folder", action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.75, 1.5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model, precision="bf16")
    results: dict = {"model": args.model, "folders": {}}
    for spec in args.folder:
        name, _, folder = spec.partition("=")
        tiles = val_tiles_in(Path(folder))
        entry: dict = {"tiles": len(tiles)}
        for factor in args.factors:
            start = time.perf_counter()
            entry[f"x{factor:g}"] = factor_scores(predictor, tiles, factor)
            entry[f"x{factor:g}"]["seconds"] = round(time.perf_counter() - start, 1)
            print(name, f"x{factor:g}", json.dumps(entry[f"x{factor:g}"]), flush=True)
        results["folders"][name] = entry
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
