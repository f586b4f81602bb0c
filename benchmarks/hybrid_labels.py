"""S with the nuclei it left unlabelled taken from the cluster + Voronoi labels.

S labels about 91 % of the Kumar training nuclei; cluster + Voronoi (C+V) labels a nucleus
at every point, worse outlined. This writes, for each tile, S with each point that S left
without a nucleus given C+V's nucleus at that point (on pixels S left as background or
ignored), in the folder layout of ``instasam pseudo`` so that ``instasam train
--labels-from`` reads it, and the quality of both against the ground truth. The labels of
the ``other_`` variants of ``schedule_sweep.py``.

    instasam pseudo --data bench_out/k/data/train --out bench_out/k/pseudo_cv --source cv
    python benchmarks/hybrid_labels.py --data bench_out/k/data/train \\
        --sam bench_out/k/pseudo_sam --cv bench_out/k/pseudo_cv --out bench_out/k/pseudo_hybrid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from instasam import IGNORE
from instasam.io.labels import read_label_map, write_label_map
from instasam.pseudo_labels.quality import pseudo_label_quality
from instasam.training.labels import labels_from_pseudo_folder

RESULT = Path(__file__).parent / "results" / "schedule" / "hybrid_labels_quality.json"
KEYS = ("aji", "dice_obj", "pq", "ignored", "nuclei_labelled", "fg_precision", "fg_recall")


def s_with_cv_fallback(s: np.ndarray, cv: np.ndarray) -> np.ndarray:
    """``s`` with C+V's nucleus of each point that ``s`` has no nucleus for (both maps are
    numbered by point: nucleus k is point k - 1's)."""
    taken = (cv > 0) & ~np.isin(cv, np.unique(s[s > 0])) & (s <= 0)
    return np.where(taken, cv, s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared tiles with labels/")
    parser.add_argument("--sam", type=Path, required=True, help="`instasam pseudo --source sam`")
    parser.add_argument("--cv", type=Path, required=True, help="`instasam pseudo --source cv`")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    (args.out / "ignored").mkdir(exist_ok=True)
    quality: dict[str, dict[str, dict[str, float]]] = {"S": {}, "S + C+V fallback": {}}
    for path in sorted((args.data / "labels").glob("*.tif")):
        gt = read_label_map(path)
        s = labels_from_pseudo_folder(args.sam, path.stem, gt.shape)
        hybrid = s_with_cv_fallback(s, labels_from_pseudo_folder(args.cv, path.stem, gt.shape))
        write_label_map(args.out / "labels" / path.name, np.maximum(hybrid, 0).astype(np.int32))
        ignored = ((hybrid == IGNORE) * 255).astype(np.uint8)
        Image.fromarray(ignored).save(args.out / "ignored" / f"{path.stem}.png")
        quality["S"][path.stem] = pseudo_label_quality(s, gt)
        quality["S + C+V fallback"][path.stem] = pseudo_label_quality(hybrid, gt)
    # S's record: its nuclei and rules are S's; what was added is named beside them.
    record = json.loads((args.sam / "source.json").read_text())
    record["fallback"] = "cv: the C+V nucleus of each point S left unlabelled"
    (args.out / "source.json").write_text(json.dumps(record, indent=1))
    summary = {
        name: {k: float(np.mean([t[k] for t in tiles.values()])) for k in KEYS}
        for name, tiles in quality.items()
    }
    for name, mean in summary.items():
        print(name, {k: round(100 * v, 1) for k, v in mean.items()})
    RESULT.write_text(json.dumps({"mean": summary, "per_tile": quality}, indent=1))


if __name__ == "__main__":
    main()
