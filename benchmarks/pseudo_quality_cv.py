"""Quality of the cluster + Voronoi pseudo labels (Qu et al. 2019) on the Kumar training tiles.

The 16 training tiles of the Kumar split (``train`` + ``val`` of
``splits/kumar_16_14.json``) get their C+V labels from points at the centre of each
ground-truth nucleus (:func:`instasam.points.points_from_instances`); the labels are then
scored against the ground truth with :func:`instasam.pseudo_labels.quality.pseudo_label_quality`
(IGNORE counted as background for the instance metrics). Prints one row per tile and the
means; ``--json FILE`` writes them with the configuration and the timings.

Usage::

    .venv/bin/python benchmarks/pseudo_quality_cv.py [--monuseg DIR] [--limit N]
        [--set FIELD=VALUE ...] [--json FILE]

``--set`` overrides a :class:`instasam.config.VoronoiConfig` field, for ablations
(e.g. ``--set cluster_roles=distance``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from instasam.config import VoronoiConfig
from instasam.io.atomic import write_text_atomic
from instasam.io.images import read_rgb
from instasam.io.labels import read_label_map
from instasam.points import points_from_instances
from instasam.pseudo_labels.quality import pseudo_label_quality
from instasam.pseudo_labels.voronoi import cluster_voronoi_labels

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MONUSEG = Path(os.environ.get("INSTASAM_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_MONUSEG = DEFAULT_MONUSEG / "monuseg"
COLUMNS = (
    "aji",
    "dice_obj",
    "pq",
    "ignored",
    "nuclei_labelled",
    "fg_precision",
    "bg_precision",
    "fg_recall",
)


def parse_overrides(items: list[str]) -> VoronoiConfig:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monuseg", type=Path, default=DEFAULT_MONUSEG)
    parser.add_argument("--limit", type=int, help="only the first N tiles")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = parse_overrides(args.set)
    split = json.loads((args.monuseg / "splits" / "kumar_16_14.json").read_text())
    stems = (split["train"] + split["val"])[: args.limit]

    started_all = time.perf_counter()
    tiles: dict[str, dict[str, float]] = {}
    header = f"{'tile':25s} {'organ':9s} {'points':>6s} " + " ".join(f"{c:>15s}" for c in COLUMNS)
    print(header + f" {'seconds':>8s}")
    for stem in stems:
        image = read_rgb(args.monuseg / "train" / "images" / f"{stem}.tif")
        gt = read_label_map(args.monuseg / "train" / "labels_instance" / f"{stem}.png")
        points, _ = points_from_instances(gt)
        started = time.perf_counter()
        pseudo = cluster_voronoi_labels(image, points, config)
        seconds = time.perf_counter() - started
        row = pseudo_label_quality(pseudo, gt)
        row = {k: float(row[k]) for k in COLUMNS} | {"points": len(points), "seconds": seconds}
        tiles[stem] = row
        organ = split.get("organ", {}).get(stem, "")
        print(
            f"{stem:25s} {organ:9s} {len(points):6d} "
            + " ".join(f"{row[c]:15.3f}" for c in COLUMNS)
            + f" {seconds:8.2f}",
            flush=True,
        )
    mean = {k: float(np.mean([t[k] for t in tiles.values()])) for k in (*COLUMNS, "seconds")}
    wall = time.perf_counter() - started_all
    print(
        f"{'MEAN':25s} {'':9s} {'':6s} "
        + " ".join(f"{mean[c]:15.3f}" for c in COLUMNS)
        + f" {mean['seconds']:8.2f}"
    )
    per_tile = mean["seconds"]
    print(f"{len(tiles)} tiles, wall time {wall:.1f} s (C+V labelling {per_tile:.2f} s/tile)")
    if args.json:
        summary = {
            "config": asdict(config),
            "mean": mean,
            "tiles": tiles,
            "wall_seconds": wall,
            "machine": platform.platform(),
        }
        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
