"""Stain standardisation at prediction time: scores against strength, per folder.

Each image's haematoxylin and eosin densities are moved toward those of the network's
training tiles by :func:`instasam.stain.standardise_stain` (what ``instasam predict`` does),
with each strength and factor limit given; the maps are predicted in bf16 and
post-processed with the model's saved setting. A model whose file holds no stain
reference (made before it was saved) takes it from ``--reference-from``, a prepared folder
of its training tiles.

Only validation folders may choose the strength; the test folders show what it does.

    python benchmarks/stain_standardise.py --model monuseg-points \
        --reference-from bench_out/k/data/train \
        --folder kumar_val=bench_out/k/data/val --folder kumar_test=bench_out/k/data/test \
        --folder tnbc_val=bench_out/k/data/tnbc_val --folder tnbc_test=bench_out/k/data/tnbc_test \
        --json benchmarks/results/net/stain_standardise.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from instasam.io.atomic import write_text_atomic
from instasam.io.images import list_images, read_rgb
from instasam.model.instasam import load_payload
from instasam.model.unet import net_from_payload
from instasam.predict.tiles import predict_net_maps
from instasam.pretrained import resolve_model
from instasam.stain import reference_densities, stain_densities, stain_factors
from instasam.training.validation import score_maps, standardised_tiles, val_tiles_in


def folder_scores(net, config, tiles, strength: float, max_factor: float) -> dict:
    """Mean scores (%) of ``tiles`` standardised at ``strength`` within ``max_factor``."""
    stain = replace(config.stain, strength=strength, max_factor=max_factor)
    maps = [predict_net_maps(net, t.image, "bf16") for t in standardised_tiles(tiles, stain)]
    return {k: round(100 * v, 2) for k, v in score_maps(maps, tiles, config.postprocess).items()}


def folder_factors(tiles, reference: tuple[float, float]) -> dict:
    """Median and range over ``tiles`` of the factors a strength of 1 would apply."""
    factors = np.array(
        [stain_factors(stain_densities(t.image), reference, 1.0, np.inf) for t in tiles]
    )
    return {
        stain: [round(float(f), 3) for f in (np.min(col), np.median(col), np.max(col))]
        for stain, col in zip(("haematoxylin", "eosin"), factors.T, strict=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="monuseg-points")
    parser.add_argument("--reference-from", type=Path, help="prepared folder of training tiles")
    parser.add_argument("--folder", action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    parser.add_argument("--max-factors", type=float, nargs="+", default=[4.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    net, config = net_from_payload(load_payload(path), path)
    net.eval()
    reference = config.stain.reference
    if reference is None:
        if args.reference_from is None:
            raise SystemExit(f"{path}: no stain reference saved; give --reference-from")
        images = (read_rgb(p) for p in list_images(args.reference_from / "images"))
        reference = reference_densities(images)
    config = replace(config, stain=replace(config.stain, reference=tuple(reference)))
    results: dict = {"model": args.model, "reference": list(reference), "folders": {}}
    for spec in args.folder:
        name, _, folder = spec.partition("=")
        tiles = val_tiles_in(Path(folder))
        entry = {"tiles": len(tiles), "factors_at_strength_1": folder_factors(tiles, reference)}
        for max_factor in args.max_factors:
            for strength in args.strengths:
                if strength == 0 and max_factor != args.max_factors[0]:
                    continue  # strength 0 ignores the limit
                start = time.perf_counter()
                scores = folder_scores(net, config, tiles, strength, max_factor)
                key = f"strength {strength:g}, max {max_factor:g}"
                entry[key] = {**scores, "seconds": round(time.perf_counter() - start, 1)}
                print(name, key, json.dumps(entry[key]), flush=True)
        results["folders"][name] = entry
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
