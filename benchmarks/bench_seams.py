"""Nuclei at tile seams: `predict-wsi`'s tiles against the same model on the whole image.

Four Kumar test tiles (1000x1000) are joined into a 2000x2000 slide; the shipped model
segments it whole (one 2048-px tile) and with tiles of each ``--tiles`` size. For each run:
nuclei written, pixels claimed by two outlines, and the pooled AJI / Dice_obj / PQ of the
mosaic against its ground truth.

    python benchmarks/bench_seams.py --json benchmarks/results/seams.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from instasam.io.atomic import write_text_atomic
from instasam.io.images import read_rgb
from instasam.io.labels import find_label_file, read_label_map
from instasam.io.qupath import labels_from_detections
from instasam.io.slides import open_slide
from instasam.metrics import compute_metrics
from instasam.predict.slides import SlidePredictConfig, predict_slide
from instasam.predict.tiles import load_predictor


def write_slide(path: Path, rgb: np.ndarray, mpp: float = 0.25) -> None:
    """A tiled one-level TIFF with its pixel size, as tiffslide reads slides."""
    import tifffile

    tifffile.imwrite(
        path,
        rgb,
        tile=(256, 256),
        photometric="rgb",
        compression="zlib",
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )


def mosaic(monuseg: Path) -> tuple[np.ndarray, np.ndarray]:
    split = json.loads((monuseg / "splits" / "kumar_16_14.json").read_text())
    stems = sorted(split["test"])[:4]
    images = [read_rgb(monuseg / "train" / "images" / f"{s}.tif") for s in stems]
    labels, offset = [], 0
    for s in stems:
        gt = read_label_map(find_label_file(monuseg / "train" / "labels_instance", s))
        gt = gt.astype(np.int64)
        gt[gt > 0] += offset
        offset = int(gt.max())
        labels.append(gt)
    rgb = np.concatenate([np.concatenate(images[:2], 1), np.concatenate(images[2:], 1)], 0)
    gt = np.concatenate([np.concatenate(labels[:2], 1), np.concatenate(labels[2:], 1)], 0)
    return rgb, gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monuseg", type=Path, default=Path("../shared/data/monuseg"))
    parser.add_argument("--tiles", type=int, nargs="+", default=[2048, 1024, 256])
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rgb, gt = mosaic(args.monuseg)
    predictor = load_predictor("monuseg-points")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mosaic.tif"
        write_slide(path, rgb)
        for tile in args.tiles:
            out = Path(tmp) / f"tile{tile}.geojson"
            config = SlidePredictConfig(tile=tile, overlap=args.overlap, use_tissue_mask=False)
            started = time.perf_counter()
            with open_slide(path) as slide:
                predict_slide(slide, predictor, out, config, progress=False)
            seconds = time.perf_counter() - started
            features = json.loads(out.read_text())["features"]
            labels, shared = labels_from_detections(features, gt.shape)
            m = compute_metrics(gt, labels)
            row = {"tile": tile, "overlap": args.overlap, "nuclei": len(features)}
            row |= {"shared_pixels": shared, "seconds": round(seconds, 1)}
            row |= {k: round(m[k], 4) for k in ("aji", "dice_obj", "pq")}
            rows.append(row)
            print(row, flush=True)
    if args.json:
        write_text_atomic(args.json, json.dumps({"rows": rows, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
