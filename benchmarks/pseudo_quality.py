"""Pseudo-label quality against ground truth on the Kumar training tiles (train + val).

Sources:

* ``cv``   - cluster + Voronoi labels (Qu et al. 2019), from the points alone;
* ``sam``  - S: LiteMedSAM prompted with the points, original encoder and decoder;
* ``sam_whole`` - S with the authors' whole-instance rejection instead of the per-pixel rule;
* ``adapted`` - S': the adapters and trained decoder of a trained model (``--model``).

Points are the centres of the ground-truth nuclei. SAM labels reuse the cache a training
run writes (``--cache``) when the settings match; otherwise they are computed (~1 min per
1000x1000 tile on 2 CPU cores).

    python benchmarks/pseudo_quality.py --sources cv sam --json bench_out/pseudo_quality.json

``--set FIELD=VALUE`` overrides a :class:`instasam.config.VoronoiConfig` field of the
``cv`` labels, for ablations (e.g. ``--set cluster_roles=points``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from instasam.config import InstaSAMConfig, VoronoiConfig
from instasam.io.images import read_rgb
from instasam.io.labels import read_label_map
from instasam.model.instasam import build_model, load_model
from instasam.points import points_from_instances
from instasam.pseudo_labels.quality import pseudo_label_quality
from instasam.pseudo_labels.sam import tile_pseudo_labels
from instasam.pseudo_labels.voronoi import cluster_voronoi_labels
from instasam.training.labels import load_fixed_labels

KEYS = (
    "aji",
    "dice_obj",
    "pq",
    "ignored",
    "nuclei_labelled",
    "fg_precision",
    "bg_precision",
    "fg_recall",
)


def voronoi_overrides(items: list[str]) -> VoronoiConfig:
    """A VoronoiConfig with ``FIELD=VALUE`` overrides, each value cast to the default's type."""
    config = VoronoiConfig()
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise SystemExit(f"--set: expected FIELD=VALUE with FIELD in {sorted(types)}")
        changes[name] = types[name](value)
    return replace(config, **changes)


def mean_scores(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """The mean of each of KEYS over the tiles (NaN for no tiles)."""
    rows = list(rows)
    return {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monuseg", type=Path, default=Path("../shared/data/monuseg"))
    parser.add_argument(
        "--sources", nargs="+", default=["cv", "sam"], choices=["cv", "sam", "sam_whole", "adapted"]
    )
    parser.add_argument("--model", type=Path, help="trained RUN/model.pt (for 'adapted')")
    parser.add_argument("--cache", type=Path, help="a training run's cache/fixed_sam folder")
    parser.add_argument("--limit", type=int, help="only the first N tiles")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    split = json.loads((args.monuseg / "splits" / "kumar_16_14.json").read_text())
    stems = (split["train"] + split["val"])[: args.limit]
    config = replace(InstaSAMConfig(), voronoi=voronoi_overrides(args.set))
    models = {}
    results: dict[str, dict[str, dict[str, float]]] = {s: {} for s in args.sources}
    seconds: dict[str, float] = dict.fromkeys(args.sources, 0.0)
    for stem in stems:
        image = read_rgb(args.monuseg / "train" / "images" / f"{stem}.tif")
        gt = read_label_map(args.monuseg / "train" / "labels_instance" / f"{stem}.png")
        points, _ = points_from_instances(gt)
        for source in args.sources:
            started = time.perf_counter()
            if source == "cv":
                pseudo = cluster_voronoi_labels(image, points, config.voronoi)
            elif source in ("sam", "sam_whole"):
                cfg = config
                if source == "sam_whole":
                    rule = replace(config.pseudo_labels, reject_overlapping_instances=True)
                    cfg = replace(config, pseudo_labels=rule)
                model = models.setdefault("sam", build_model(config).eval())
                cache = args.cache if source == "sam" else None
                pseudo, _ = load_fixed_labels(model, stem, image, points, gt, cfg, cache)
            else:
                model = models.setdefault("adapted", load_model(args.model))
                pseudo, _ = tile_pseudo_labels(
                    model, image, points, model.config.pseudo_labels, adapt=True
                )
            seconds[source] += time.perf_counter() - started
            results[source][stem] = pseudo_label_quality(pseudo, gt)
            row = " ".join(f"{k} {results[source][stem][k]:.3f}" for k in KEYS)
            print(f"{stem} {source:9s} {row}", flush=True)
    summary = {}
    for source, per_tile in results.items():
        mean = mean_scores(per_tile.values())
        summary[source] = {
            "mean": mean,
            # S' on the val tiles is the fair figure: the adapters were never trained on them.
            "mean_by_subset": {
                subset: mean_scores(per_tile[s] for s in split[subset] if s in per_tile)
                for subset in ("train", "val")
            },
            "tiles": per_tile,
            "seconds": round(seconds[source], 1),
        }
        print(
            f"MEAN {source:9s} "
            + " ".join(f"{k} {mean[k]:.3f}" for k in KEYS)
            + f"  ({seconds[source]:.0f} s for {len(per_tile)} tiles)"
        )
    wall = time.perf_counter() - started_all
    print(f"wall time {wall:.0f} s")
    if args.json:
        meta = {
            "command": "python " + " ".join(sys.argv),
            "machine": platform.platform(),
            "voronoi": asdict(config.voronoi),
            "pseudo_labels": asdict(config.pseudo_labels),
            "wall_seconds": round(wall, 1),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, **summary}, indent=2))


if __name__ == "__main__":
    main()
