"""Throughput of `predict-cohort` on a Dask LocalCluster against a serial loop of slides.

The cohort is four 2000x2000 slides at 0.25 µm/px made from four Kumar test tiles (the
mosaic of ``bench_seams.py``, rotated by 0, 90, 180 and 270 degrees so each slide's tiles
differ); the shipped model segments them with 1024-px tiles. Three ways, each on fresh
output folders:

* ``serial``: ``predict_slide`` on each slide in turn, in this process (torch threads = cores);
* ``workers-1``: ``predict_cohort`` on 1 process worker with all the cores;
* ``workers-2``: 2 process workers with half the cores each.

Wall time includes starting the cluster and loading the model in each worker.

    python benchmarks/bench_cohort.py --json benchmarks/results/cohort.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_seams import mosaic, write_slide

from instasam.io.atomic import write_text_atomic
from instasam.io.slides import open_slide
from instasam.predict.cohort import CohortSlide, ModelSpec, predict_cohort
from instasam.predict.slides import SlidePredictConfig, predict_slide
from instasam.pretrained import resolve_model

CONFIG = SlidePredictConfig(tile=1024, overlap=64)


def serial(slides: list[Path], out: Path, model: str, threads: int) -> dict:
    import torch

    from instasam.predict.tiles import load_predictor

    torch.set_num_threads(threads)
    started = time.perf_counter()
    predictor = load_predictor(model)
    tiles = nuclei = 0
    mpx = 0.0
    for path in slides:
        with open_slide(path) as slide:
            run = predict_slide(slide, predictor, out / f"{path.stem}.geojson", CONFIG)
        tiles += run.tiles_on_tissue
        nuclei += run.nuclei
        mpx += run.tissue_megapixels
    return _record(time.perf_counter() - started, tiles, nuclei, mpx, len(slides))


def cohort(slides: list[Path], out: Path, model: str, workers: int, cores: int) -> dict:
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    threads = max(1, cores // workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
    with Client(cluster) as client:
        run = predict_cohort(
            [CohortSlide(p) for p in slides],
            out,
            ModelSpec(model, threads=threads),
            client,
            CONFIG,
            tiles_per_task=2,
        )
    cluster.close()
    assert not run.failed, [r.reason for r in run.failed]
    mpx = sum(r.tissue_mm2 for r in run.rows) / 0.25**2  # mm² -> Mpx at 0.25 µm/px
    seconds = time.perf_counter() - started
    record = _record(
        seconds, sum(r.tiles for r in run.rows), sum(r.nuclei for r in run.rows), mpx, len(slides)
    )
    record["threads_per_worker"] = threads
    return record


def _record(seconds: float, tiles: int, nuclei: int, mpx: float, slides: int) -> dict:
    return {
        "seconds": round(seconds, 1),
        "slides": slides,
        "tiles": tiles,
        "nuclei": nuclei,
        "tissue_mpx": round(mpx, 2),
        "mpx_per_s": round(mpx / seconds, 3),
        "tiles_per_s": round(tiles / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monuseg", type=Path, default=Path("../shared/data/monuseg"))
    parser.add_argument("--model", default="monuseg-points")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    model = str(resolve_model(args.model))
    rgb, _ = mosaic(args.monuseg)
    results: dict = {
        "machine": f"{platform.machine()}, {cores} cores",
        "cohort": "4 slides of 2000x2000 px at 0.25 µm/px (Kumar test mosaic, rotated)",
        "tile": CONFIG.tile,
        "overlap": CONFIG.overlap,
        "model": args.model,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        slides = []
        for k in range(4):
            path = folder / f"mosaic_rot{90 * k}.tif"
            write_slide(path, np.ascontiguousarray(np.rot90(rgb, k)))
            slides.append(path)
        runs = results["runs"]
        runs["serial"] = serial(slides, folder / "serial", model, cores)
        print("serial", runs["serial"], flush=True)
        for workers in (1, 2):
            name = f"workers-{workers}"
            runs[name] = cohort(slides, folder / name, model, workers, cores)
            print(name, runs[name], flush=True)
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
