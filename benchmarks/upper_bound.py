"""Upper bound of the post-processing: perfect targets in, instances out, metrics.

For every ground-truth (GT) tile: GT -> targets (foreground as probability 1/0, distance maps
with each scaling) -> :func:`instasam.postprocess.instances_from_maps` with each preset
(the authors' thresholds and HoVer-Net's) -> :func:`instasam.metrics.compute_metrics`
against the same GT. A perfect network could not do better than this with these targets
and this post-processing.

Sets: the 14 Kumar test tiles (``splits/kumar_16_14.json`` "test", GT label maps from
``train/labels_instance``) and, when the MoNuSeg XML reader ``instasam.io.monuseg`` is
available, the official 14-tile 2018 test set (``test/annotations/*.xml``).

Usage::

    .venv/bin/python benchmarks/upper_bound.py [--data-root DIR] [--sets kumar official]
                                               [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from instasam.config import PostprocessConfig
from instasam.io.atomic import write_text_atomic
from instasam.io.labels import read_label_map
from instasam.metrics import compute_metrics
from instasam.postprocess import instances_from_maps
from instasam.targets import foreground_map, hv_maps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path(os.environ.get("INSTASAM_SHARED_DATA", REPO.parent / "shared" / "data"))
PRESETS: dict[str, PostprocessConfig] = {
    "authors": PostprocessConfig(),
    "hovernet": PostprocessConfig.hovernet(),
}
SCALINGS = ("hovernet", "positive_max")
SHOWN = ("dice_obj", "aji", "aji_plus", "pq", "dq", "sq", "f1")

Tiles = Iterator[tuple[str, np.ndarray]]


def kumar_test_tiles(monuseg: Path) -> Tiles:
    """The 14 Kumar test tiles' GT label maps, in split order."""
    split = json.loads((monuseg / "splits" / "kumar_16_14.json").read_text())
    for tile in split["test"]:
        yield tile, read_label_map(monuseg / "train" / "labels_instance" / f"{tile}.png")


def official_test_tiles(monuseg: Path) -> Tiles | None:
    """The 2018 test set rasterised by ``instasam.io.monuseg``; None if the reader is absent."""
    rasterise = _xml_reader()
    if rasterise is None:
        return None
    images = monuseg / "test" / "images"
    xmls = sorted((monuseg / "test" / "annotations").glob("*.xml"))

    def tiles() -> Tiles:
        for xml in xmls:
            yield xml.stem, rasterise(xml, _image_shape(images, xml.stem))

    return tiles()


def _xml_reader() -> Callable[[Path, tuple[int, int]], np.ndarray] | None:
    """``(xml_path, (H, W)) -> int32 label map`` from ``instasam.io.monuseg``, if it exists."""
    try:
        from instasam.io import monuseg as reader  # written alongside this benchmark
    except ImportError:
        return None
    for name in ("read_monuseg_xml", "read_xml_label_map", "xml_to_label_map", "read_xml"):
        function = getattr(reader, name, None)
        if callable(function):
            return lambda path, shape, f=function: np.asarray(f(path, shape), dtype=np.int32)
    print(f"instasam.io.monuseg has no known XML reader; found {dir(reader)}", file=sys.stderr)
    return None


def _image_shape(images: Path, stem: str) -> tuple[int, int]:
    from PIL import Image

    for suffix in (".tif", ".tiff", ".png"):
        path = images / f"{stem}{suffix}"
        if path.is_file():
            with Image.open(path) as image:
                return image.height, image.width
    return 1000, 1000  # every MoNuSeg tile


def evaluate_set(tiles: Tiles) -> tuple[dict, dict]:
    """Metrics per (preset, scaling, tile) and the mean over tiles; seconds spent per stage."""
    results: dict = {p: {s: {"tiles": {}} for s in SCALINGS} for p in PRESETS}
    seconds = {"targets": [], "postprocess": [], "metrics": []}
    for tile, gt in tiles:
        fg = foreground_map(gt)
        for scaling in SCALINGS:
            start = time.perf_counter()
            hv = hv_maps(gt, scaling)
            seconds["targets"].append(time.perf_counter() - start)
            for preset, config in PRESETS.items():
                start = time.perf_counter()
                pred = instances_from_maps(fg, hv, config)
                seconds["postprocess"].append(time.perf_counter() - start)
                start = time.perf_counter()
                metrics = compute_metrics(gt, pred)
                seconds["metrics"].append(time.perf_counter() - start)
                metrics["n_gt"] = int(np.unique(gt[gt > 0]).size)
                metrics["n_pred"] = int(pred.max())
                results[preset][scaling]["tiles"][tile] = metrics
    for by_scaling in results.values():
        for entry in by_scaling.values():
            rows = list(entry["tiles"].values())
            entry["mean"] = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    timing = {stage: float(np.mean(values)) for stage, values in seconds.items()}
    return results, timing


def print_set(name: str, results: dict, timing: dict) -> None:
    header = f"{'tile':<26}{'n_gt':>6}{'n_pred':>7}" + "".join(f"{k:>9}" for k in SHOWN)
    for preset, by_scaling in results.items():
        for scaling, entry in by_scaling.items():
            print(f"\n== {name}: preset {preset}, hv scaling {scaling}")
            print(header)
            for tile, row in entry["tiles"].items():
                print(_row(tile, row))
            print(_row("mean", entry["mean"]))
    stages = ", ".join(f"{stage} {value:.3f}" for stage, value in timing.items())
    print(f"\n{name}: mean seconds per tile and call: {stages}")


def _row(label: str, row: dict) -> str:
    counts = f"{row['n_gt']:>6.0f}{row['n_pred']:>7.0f}"
    return f"{label:<26}{counts}" + "".join(f"{row[k]:>9.4f}" for k in SHOWN)


def print_summary(all_results: dict) -> None:
    print("\n== summary (mean over tiles)")
    print(f"{'set':<10}{'preset':<10}{'scaling':<14}" + "".join(f"{k:>9}" for k in SHOWN))
    for name, results in all_results.items():
        for preset, by_scaling in results.items():
            for scaling, entry in by_scaling.items():
                values = "".join(f"{entry['mean'][k]:>9.4f}" for k in SHOWN)
                print(f"{name:<10}{preset:<10}{scaling:<14}{values}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="shared/data")
    parser.add_argument("--sets", nargs="+", choices=("kumar", "official"), default=None)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    monuseg = args.data_root / "monuseg"
    wanted = args.sets or ["kumar", "official"]

    sources: dict[str, Tiles] = {}
    if "kumar" in wanted:
        sources["kumar"] = kumar_test_tiles(monuseg)
    if "official" in wanted:
        official = official_test_tiles(monuseg)
        if official is not None:
            sources["official"] = official
        else:
            message = "official 2018 test set skipped: instasam.io.monuseg is not available"
            print(message, file=sys.stderr)
            if args.sets:
                return 2

    start = time.perf_counter()
    all_results, all_timing = {}, {}
    for name, tiles in sources.items():
        all_results[name], all_timing[name] = evaluate_set(tiles)
        print_set(name, all_results[name], all_timing[name])
    print_summary(all_results)
    wall = time.perf_counter() - start
    print(f"\nwall time {wall:.1f} s")

    if args.json:
        report = {
            "sets": all_results,
            "seconds_per_tile": all_timing,
            "presets": {name: asdict(config) for name, config in PRESETS.items()},
            "wall_seconds": wall,
        }
        write_text_atomic(args.json, json.dumps(report, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
