"""Where a network's Dice_obj and AJI are lost: its post-processing inputs swapped for truth.

Reads the maps that ``instasam predict --save-maps`` wrote (foreground probability and
distance maps per tile) and the tiles' ground truth, and scores the network's instances with
one part of the post-processing replaced by the ground truth at a time: the markers (one
per true nucleus), the foreground mask, both, or the errors of one kind removed (predicted
objects that touch no true nucleus; true nuclei that no predicted object touches). The gap
between a row and the network's own row is what perfect work on that part alone could
gain, so it says which output to improve.

    instasam predict bench_out/k/data/test/images --out bench_out/oracle/pred --save-maps
    python benchmarks/oracle.py --maps bench_out/oracle/pred/maps \\
        --gt bench_out/k/data/test/labels --json benchmarks/results/net/oracle.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from instasam.config import NetConfig, PostprocessConfig
from instasam.io.labels import read_label_map
from instasam.io.maps import read_maps
from instasam.metrics import compute_metrics, mean_metrics
from instasam.postprocess import (
    edge_map,
    foreground_mask,
    nuclei_from_markers,
    watershed_markers,
)
from instasam.pretrained import resolve_model

ROWS = (
    "network",
    "true_markers",
    "true_foreground",
    "true_both",
    "no_false_objects",
    "plus_missed_nuclei",
)


def watershed_instances(
    foreground: np.ndarray, markers: np.ndarray, hv: np.ndarray, config: PostprocessConfig
) -> np.ndarray:
    """The post-processing's watershed on a given foreground mask and markers, along the
    edges of the network's distance maps within that mask."""
    edges = edge_map(hv, foreground, config.sobel_ksize)
    return nuclei_from_markers(foreground, markers, edges, config)


def true_markers(gt: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """One marker per true nucleus: its pixels eroded by 2 px (the whole nucleus when
    erosion would empty it), kept inside ``foreground``."""
    eroded = np.where(ndimage.binary_erosion(gt > 0, iterations=2), gt, 0)
    lost = np.setdiff1d(np.unique(gt), np.unique(eroded))
    markers = np.where(np.isin(gt, lost[lost > 0]), gt, eroded)
    return np.where(foreground, markers, 0)


def without_false_objects(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` without the objects that share no pixel with a true nucleus."""
    touching = np.unique(pred[gt > 0])
    return np.where(np.isin(pred, touching[touching > 0]), pred, 0)


def with_missed_nuclei(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` with every true nucleus that no predicted object touches added as is."""
    touched = np.unique(gt[pred > 0])
    missed = np.isin(gt, touched, invert=True) & (gt > 0)
    return np.where(missed, gt + int(pred.max()), pred)


def oracle_rows(
    fg_prob: np.ndarray, hv: np.ndarray, gt: np.ndarray, config: PostprocessConfig
) -> dict[str, np.ndarray]:
    """Each row's instances for one tile (whose predicted foreground is not empty). Rows on
    the true foreground take no shrink: it corrects outlines that the network draws too
    large, which the truth does not."""
    predicted_fg = foreground_mask(fg_prob, config)
    edges = edge_map(hv, predicted_fg, config.sobel_ksize)
    markers = watershed_markers(predicted_fg, edges, hv, config)
    network = nuclei_from_markers(predicted_fg, markers, edges, config)
    true_fg = gt > 0
    unshrunk = replace(config, shrink=0)
    return {
        "network": network,
        "true_markers": nuclei_from_markers(
            predicted_fg, true_markers(gt, predicted_fg), edges, config
        ),
        "true_foreground": watershed_instances(true_fg, markers * true_fg, hv, unshrunk),
        "true_both": watershed_instances(true_fg, true_markers(gt, true_fg), hv, unshrunk),
        "no_false_objects": without_false_objects(network, gt),
        "plus_missed_nuclei": with_missed_nuclei(network, gt),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, required=True, help="predict --save-maps output")
    parser.add_argument("--gt", type=Path, required=True, help="the tiles' label maps")
    parser.add_argument("--model", default="monuseg-points", help="whose post-processing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    payload = torch.load(resolve_model(args.model), map_location="cpu", weights_only=False)
    config = NetConfig.from_dict(payload["config"]).postprocess
    per_row: dict[str, list[dict]] = {row: [] for row in ROWS}
    for maps in sorted(args.maps.glob("*.npz")):
        gt_path = next(args.gt.glob(f"{maps.stem}.*"))
        fg_prob, hv = read_maps(maps)
        gt = read_label_map(gt_path)
        for row, instances in oracle_rows(fg_prob, hv, gt, config).items():
            per_row[row].append(compute_metrics(gt, instances))
    result = {
        "model": args.model,
        "postprocess": asdict(config),
        "tiles": len(per_row["network"]),
        "mean": {row: mean_metrics(scores) for row, scores in per_row.items()},
    }
    for row, m in result["mean"].items():
        print(
            f"{row:20s} Dice_obj {100 * m['dice_obj']:.2f} AJI {100 * m['aji']:.2f} "
            f"PQ {100 * m['pq']:.2f} pixel Dice {100 * m['dice_pixel']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
