"""Time :func:`instasam.metrics.compute_metrics` on real MoNuSeg tiles and a synthetic tile.

Predictions are the ground truth perturbed the way a segmentation model errs (seeded):
nuclei grown or shrunk by a pixel or two, some merged with a neighbour, some split in two,
some dropped, and false positives added in the background.

Usage::

    .venv/bin/python benchmarks/bench_metrics.py [--labels DIR] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from instasam.io.atomic import write_text_atomic
from instasam.io.labels import read_label_map
from instasam.metrics import compute_metrics

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared/data/monuseg/train/labels_instance"


def _centroids(labels: np.ndarray, n: int) -> np.ndarray:
    """Centroid (row, col) of ids 1..n (labels must be consecutive); NaN for absent ids."""
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    area = np.bincount(flat, minlength=n + 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.bincount(flat, rows, minlength=n + 1) / area
        c = np.bincount(flat, cols, minlength=n + 1) / area
    return np.stack([r, c], axis=1)


def perturb(gt: np.ndarray, seed: int = 0) -> np.ndarray:
    """A realistic wrong prediction derived from the instance map ``gt``."""
    rng = np.random.default_rng(seed)
    _, labels = np.unique(gt, return_inverse=True)  # consecutive ids, 0 stays 0
    labels = labels.reshape(gt.shape).astype(np.int32)
    n = int(labels.max())
    if n == 0:
        return labels
    fate = rng.random(n + 1)
    fate[0] = 1.0

    # Shrink 25 % of nuclei by one pixel (their outline goes to background).
    shrink = np.zeros(n + 1, bool)
    shrink[1:] = fate[1:] < 0.25
    edge = (ndi.minimum_filter(labels, 3) != labels) | (ndi.maximum_filter(labels, 3) != labels)
    labels[edge & shrink[labels]] = 0

    # Grow 25 % of nuclei by up to two pixels into the background.
    grow = np.zeros(n + 1, np.int32)
    grow[1:] = np.where((fate[1:] >= 0.25) & (fate[1:] < 0.5), np.arange(1, n + 1), 0)
    grown = ndi.grey_dilation(grow[labels], size=5)
    labels = np.where((labels == 0) & (grown > 0), grown, labels)

    centre = _centroids(labels, n)
    present = np.flatnonzero(~np.isnan(centre[:, 0]))
    present = present[present > 0]

    # Split 6 %: pixels beyond a random line through the centroid get a new id.
    split = np.zeros(n + 1, bool)
    split[present] = rng.random(present.size) < 0.06
    angle = rng.uniform(0, np.pi, n + 1)
    rows, cols = np.indices(labels.shape)
    side = (rows - centre[labels, 0]) * np.cos(angle[labels]) + (cols - centre[labels, 1]) * np.sin(
        angle[labels]
    )
    labels = np.where(split[labels] & (side > 0), labels + n, labels)

    # Merge 6 % with their nearest neighbour (same id), drop 8 %.
    new_id = np.arange(2 * n + 1)
    tree = cKDTree(centre[present])
    _, nearest = tree.query(centre[present], k=2)
    merge = rng.random(present.size) < 0.06
    new_id[present[merge]] = present[nearest[merge, 1]]
    drop = rng.random(present.size) < 0.08
    new_id[present[drop]] = 0
    new_id[present[drop] + n] = 0
    labels = new_id[labels]

    # False positives: ~5 % as many small blobs in the background.
    n_fp = max(1, round(0.05 * present.size))
    seeds = np.zeros(labels.shape, np.int32)
    r = rng.integers(0, labels.shape[0], n_fp)
    c = rng.integers(0, labels.shape[1], n_fp)
    seeds[r, c] = 2 * n + 1 + np.arange(n_fp)
    blobs = ndi.grey_dilation(seeds, footprint=_disc(4))
    labels = np.where((labels == 0) & (blobs > 0), blobs, labels)
    return labels.astype(np.int32)


def _disc(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def synthetic_tile(size: int = 1000, n_nuclei: int = 700, seed: int = 0) -> np.ndarray:
    """``size`` x ``size`` map with ``n_nuclei`` touching round nuclei (Voronoi-cut discs)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    r = rng.integers(0, size, n_nuclei)
    c = rng.integers(0, size, n_nuclei)
    seeds[r, c] = np.arange(1, n_nuclei + 1)
    distance, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[ri, ci]
    radius = rng.uniform(6, 13, n_nuclei + 1)
    return np.where(distance <= radius[nearest], nearest, 0).astype(np.int32)


def time_tile(gt: np.ndarray, pred: np.ndarray, repeats: int) -> list[float]:
    """Wall time of each of ``repeats`` compute_metrics calls (seconds); all are reported."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compute_metrics(gt, pred)
        times.append(time.perf_counter() - start)
    return times


def _summary(seconds: list[float], nuclei: list[int]) -> dict[str, float | int]:
    return {
        "tiles": len(nuclei),
        "calls": len(seconds),
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "nuclei_median": int(statistics.median(nuclei)),
        "nuclei_max": max(nuclei),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--labels",
        type=Path,
        default=DEFAULT_LABELS,
        help="folder of ground-truth label PNGs (MoNuSeg train)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per tile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)

    results: dict[str, object] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "repeats": args.repeats,
    }
    files = sorted(args.labels.glob("*.png"))
    if files:
        seconds, nuclei, means = [], [], []
        for k, path in enumerate(files):
            gt = read_label_map(path)
            pred = perturb(gt, seed=args.seed + k)
            seconds += time_tile(gt, pred, args.repeats)
            nuclei.append(len(np.unique(gt)) - 1)
            means.append(compute_metrics(gt, pred))
        summary = _summary(seconds, nuclei)
        summary["shape"] = list(gt.shape)
        summary["mean_metrics"] = {k: float(np.mean([m[k] for m in means])) for k in means[0]}
        results["monuseg"] = summary
        print(
            f"MoNuSeg ({len(files)} tiles {gt.shape[0]}x{gt.shape[1]}, "
            f"{summary['nuclei_median']} nuclei median, {summary['nuclei_max']} max): "
            f"median {summary['median_s']:.4f} s, max {summary['max_s']:.4f} s per tile "
            f"({summary['calls']} calls)"
        )
        print(
            "  mean metrics of the perturbed predictions: "
            + ", ".join(f"{k} {v:.3f}" for k, v in summary["mean_metrics"].items())
        )
    else:
        print(f"no label PNGs in {args.labels}; skipping MoNuSeg", file=sys.stderr)

    gt = synthetic_tile(seed=args.seed)
    pred = perturb(gt, seed=args.seed + 1000)
    seconds = time_tile(gt, pred, max(args.repeats, 5))
    n = len(np.unique(gt)) - 1
    summary = _summary(seconds, [n])
    results["synthetic"] = summary
    print(
        f"synthetic (1000x1000, {n} nuclei, {len(np.unique(pred)) - 1} predicted): "
        f"median {summary['median_s']:.4f} s, max {summary['max_s']:.4f} s over "
        f"{len(seconds)} runs"
    )
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
