"""Are the predicted nuclei too large? Size of the outlines against ground truth.

The S pseudo labels come from LiteMedSAM's masks, which may draw a nucleus larger than the
MoNuSeg annotators did; a network trained on them would learn that. For each model this
predicts the Kumar val and test tiles (the model's saved thresholds) and reports

* ``fg_ratio``: predicted foreground pixels over ground-truth foreground pixels;
* ``matched_area_ratio``: median over nuclei matched at IoU > 0.5 of predicted area over
  ground-truth area;
* the scores after every nucleus is shrunk (``-1``: its pixels that touch another label or
  the background removed) or grown (``+1``: ``skimage.segmentation.expand_labels``) by one
  pixel, and as it is (``0``).

and then the setting the training's grid (foreground and marker thresholds, shrink 0 or 1)
chooses on the val tiles, with its val and test scores.

With ``--pseudo`` the same is computed for pseudo labels against the training tiles'
ground truth (no prediction; ignored pixels count as background).

Only the validation tiles may choose a correction; the test columns show what it would do.

    python benchmarks/size_bias.py --model monuseg-points \
        --model bench_out/paper/runs/gt_seed0/model.pt --pseudo bench_out/k/pseudo_sam/labels \
        --json benchmarks/results/net/size_bias.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import expand_labels

from instasam.io.atomic import write_text_atomic
from instasam.io.labels import find_label_file, read_label_map
from instasam.metrics import compute_metrics, mean_metrics
from instasam.model.instasam import load_payload
from instasam.model.unet import net_from_payload
from instasam.postprocess import instances_from_maps, shrunk_instances
from instasam.predict.tiles import predict_net_maps
from instasam.pretrained import resolve_model
from instasam.training.validation import choose_thresholds, score_maps, val_tiles_in

OFFSETS = (-1, 0, 1)
SCORES = ("dice_obj", "aji", "aji_plus", "pq")


def offset_instances(labels: np.ndarray, offset: int) -> np.ndarray:
    """Every instance grown (``offset > 0``) or shrunk (``< 0``) by ``|offset|`` pixels."""
    if offset > 0:
        return expand_labels(labels, offset)
    return shrunk_instances(labels, -offset)


def matched_area_ratios(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Predicted over ground-truth area of each pair of nuclei with IoU > 0.5."""
    both = (gt > 0) & (pred > 0)
    pairs, inter = np.unique(np.stack([gt[both], pred[both]]), axis=1, return_counts=True)
    gt_area, pred_area = np.bincount(gt.ravel()), np.bincount(pred.ravel())
    g, p = pairs
    iou = inter / (gt_area[g] + pred_area[p] - inter)
    keep = iou > 0.5
    return pred_area[p[keep]] / gt_area[g[keep]]


def size_report(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Size figures and offset scores (%) over (ground truth, prediction) pairs."""
    ratios = np.concatenate([matched_area_ratios(gt, pred) for gt, pred in pairs])
    fg = sum(int((pred > 0).sum()) for _, pred in pairs)
    fg_gt = sum(int((gt > 0).sum()) for gt, _ in pairs)
    report = {
        "fg_ratio": round(fg / fg_gt, 4),
        "matched_area_ratio": round(float(np.median(ratios)), 4),
        "matched_nuclei": int(ratios.size),
    }
    for offset in OFFSETS:
        scores = mean_metrics(
            [compute_metrics(gt, offset_instances(pred, offset)) for gt, pred in pairs]
        )
        report[f"offset{offset:+d}"] = {k: round(100 * scores[k], 2) for k in SCORES}
    return report


def model_report(model: str, data: Path, subsets: list[str]) -> dict:
    """Size figures of the saved post-processing, then the setting the val tiles choose from
    the training's grid (thresholds and shrink) and its test scores."""
    path = resolve_model(model)
    net, config = net_from_payload(load_payload(path), path)
    net.eval()
    report, maps, tiles = {}, {}, {}
    for subset in subsets:
        tiles[subset] = val_tiles_in(data / subset)
        maps[subset] = [predict_net_maps(net, t.image, "bf16") for t in tiles[subset]]
        pairs = [
            (t.labels, instances_from_maps(fg, hv, config.postprocess))
            for t, (fg, hv) in zip(tiles[subset], maps[subset], strict=True)
        ]
        report[subset] = size_report(pairs)
        print(model, subset, json.dumps(report[subset]), flush=True)
    if "val" not in subsets:
        return report
    chosen, _ = choose_thresholds(maps["val"], tiles["val"], config.postprocess)
    report["chosen"] = {
        "setting": {k: getattr(chosen, k) for k in ("fg_threshold", "edge_threshold", "shrink")},
        **{
            subset: {
                k: round(100 * v, 2)
                for k, v in score_maps(maps[subset], tiles[subset], chosen).items()
            }
            for subset in subsets
        },
    }
    print(model, "chosen", json.dumps(report["chosen"]), flush=True)
    return report


def pseudo_report(folder: Path, data: Path) -> dict:
    pairs = [
        (read_label_map(find_label_file(data / "train" / "labels", p.stem)), read_label_map(p))
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]
    report = size_report(pairs)
    print(folder, json.dumps(report), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="repeatable")
    parser.add_argument("--pseudo", type=Path, help="a folder of pseudo label maps")
    parser.add_argument("--data", type=Path, default=Path("bench_out/k/data"))
    parser.add_argument("--subsets", nargs="+", default=["val", "test"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"models": {m: model_report(m, args.data, args.subsets) for m in args.model}}
    if args.pseudo:
        results["pseudo"] = {str(args.pseudo): pseudo_report(args.pseudo, args.data)}
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
