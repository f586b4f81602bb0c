"""Throughput and peak memory of whole-slide prediction (``predict_slide``) on synthetic slides.

The model is a classical stand-in (dark pixels -> connected components, a few ms per
tile), so the numbers measure the slide machinery: reading and decoding tiles, ownership
and stitching, tracing contours, writing per-tile files and assembling
the GeoJSON. ``--model monuseg-points`` runs a real model instead (the synthetic scene is
not H&E, so its nuclei mean nothing, but the model's time per tile is real).

Slides are square pyramidal TIFFs (level 0 at 0.25 µm/px, levels /2 and /4, zlib,
512-px tiles) drawn tile by tile from an analytic scene: two ellipses of tissue covering
about half the slide, nuclei (radius 6-10 px) on a jittered 28-px grid inside it.

Each slide is predicted in a fresh subprocess; peak memory is that process's maximum
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), shown next to the same
figure right after the imports, so the growth with slide size is visible.

Usage::

    .venv/bin/python benchmarks/bench_wsi.py [--sizes 2048 4096 8192] [--tile 1024]
        [--overlap 64] [--json FILE] [--keep DIR] [--model monuseg-points]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MPP = 0.25
PITCH = 28  # px between nuclei
BLOCK = 512  # TIFF tile


def _hash(i: np.ndarray, j: np.ndarray, salt: float) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) per grid cell."""
    v = np.sin(i * 12.9898 + j * 78.233 + salt * 37.719) * 43758.5453
    return v - np.floor(v)


def _tissue(x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    u, v = x / size, y / size
    a = ((u - 0.38) / 0.30) ** 2 + ((v - 0.45) / 0.38) ** 2 <= 1
    b = ((u - 0.72) / 0.18) ** 2 + ((v - 0.62) / 0.26) ** 2 <= 1
    return a | b


def render(size: int, x0: int, y0: int, width: int, height: int, ds: int) -> np.ndarray:
    """RGB of the scene sampled at the centres of a ``ds``-times coarser pixel grid."""
    ys = (y0 + np.arange(height)) * ds + ds / 2
    xs = (x0 + np.arange(width)) * ds + ds / 2
    x, y = np.meshgrid(xs, ys)
    tissue = _tissue(x, y, size)
    ci, cj = np.floor(y / PITCH), np.floor(x / PITCH)
    cy = (ci + 0.5) * PITCH + 4 * (_hash(ci, cj, 1) - 0.5)
    cx = (cj + 0.5) * PITCH + 4 * (_hash(ci, cj, 2) - 0.5)
    radius = 6 + 4 * _hash(ci, cj, 3)
    present = _tissue(cx, cy, size) & (_hash(ci, cj, 4) < 0.85)
    nucleus = present & ((x - cx) ** 2 + (y - cy) ** 2 <= radius**2)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = (242, 241, 243)
    rgb[tissue] = (226, 150, 192)
    rgb[nucleus] = (72, 40, 112)
    return rgb


def write_slide(path: Path, size: int, levels: int = 3) -> None:
    """A pyramidal TIFF of the scene, written one block at a time (memory stays small)."""
    import tifffile

    def blocks(ds: int):
        n = size // ds
        for by in range(0, n, BLOCK):
            for bx in range(0, n, BLOCK):
                h, w = min(BLOCK, n - by), min(BLOCK, n - bx)
                block = np.zeros((BLOCK, BLOCK, 3), dtype=np.uint8)
                block[:h, :w] = render(size, bx, by, w, h, ds)
                yield block

    common = {"tile": (BLOCK, BLOCK), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            blocks(1),
            shape=(size, size, 3),
            dtype=np.uint8,
            subifds=levels - 1,
            resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER",
            **common,
        )
        for k in range(1, levels):
            n = size // 2**k
            tif.write(blocks(2**k), shape=(n, n, 3), dtype=np.uint8, subfiletype=1, **common)


CHILD = r"""
import json, resource, sys, time
import numpy as np
from scipy import ndimage
from instasam.io.slides import open_slide
from instasam.predict.slides import SlidePredictConfig, predict_slide

class DarkNuclei:
    mpp = None
    seconds = 0.0
    def predict_instances(self, image):
        t = time.perf_counter()
        labels, _ = ndimage.label(image.mean(axis=2) < 130, structure=np.ones((3, 3)))
        DarkNuclei.seconds += time.perf_counter() - t
        return labels.astype(np.int32)

class Timed:
    # a real model's predictor, its seconds counted like the stand-in's
    seconds = 0.0
    def __init__(self, inner):
        self.inner, self.mpp = inner, inner.mpp
    def predict_instances(self, image):
        t = time.perf_counter()
        labels = self.inner.predict_instances(image)
        Timed.seconds += time.perf_counter() - t
        return labels

slide_path, out, tile, overlap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if sys.argv[5]:
    from instasam.predict.tiles import load_predictor
    predictor = Timed(load_predictor(sys.argv[5]))
else:
    predictor = DarkNuclei()
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with open_slide(slide_path) as slide:
    run = predict_slide(slide, predictor, out, SlidePredictConfig(tile=tile, overlap=overlap),
                        progress=False)
seconds = time.perf_counter() - start
print(json.dumps({
    "seconds": seconds,
    "predictor_seconds": type(predictor).seconds,
    "tiles_total": run.tiles_total,
    "tiles_on_tissue": run.tiles_on_tissue,
    "tissue_megapixels": run.tissue_megapixels,
    "nuclei": run.nuclei,
    "dropped_at_edge": run.dropped_at_edge,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_imports_mb": rss_imports / 1024,
}))
"""


def measure(slide: Path, out: Path, tile: int, overlap: int, model: str = "") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(slide), str(out), str(tile), str(overlap), model],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="keep slides and GeoJSONs in this folder")
    parser.add_argument(
        "--model",
        default="",
        help="a real model (e.g. monuseg-points) instead of the classical stand-in",
    )
    args = parser.parse_args(argv)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_wsi_"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    header = (
        f"{'slide':>11} {'tiles':>9} {'tissue Mpx':>10} {'nuclei':>8} {'s':>7} "
        f"{'model s':>7} {'Mpx/s':>6} {'peak MB':>8} {'import MB':>9} {'GeoJSON MB':>10}"
    )
    print(header)
    for size in args.sizes:
        slide = folder / f"synthetic_{size}.tif"
        t = time.perf_counter()
        if not slide.exists():
            write_slide(slide, size)
        made = time.perf_counter() - t
        out = folder / f"synthetic_{size}.geojson"
        result = measure(slide, out, args.tile, args.overlap, args.model)
        result.update(
            size=size,
            write_slide_seconds=made,
            geojson_mb=out.stat().st_size / 2**20,
            megapixels_per_second=result["tissue_megapixels"] / result["seconds"],
        )
        rows.append(result)
        print(
            f"{size:>5}x{size:<5} {result['tiles_on_tissue']:>4}/{result['tiles_total']:<4} "
            f"{result['tissue_megapixels']:>10.1f} {result['nuclei']:>8} "
            f"{result['seconds']:>7.1f} {result['predictor_seconds']:>7.1f} "
            f"{result['megapixels_per_second']:>6.2f} {result['peak_rss_mb']:>8.0f} "
            f"{result['rss_after_imports_mb']:>9.0f} {result['geojson_mb']:>10.1f}",
            flush=True,
        )
        if not args.keep:
            slide.unlink()
            out.unlink()
    if not args.keep:
        os.rmdir(folder)
    if args.json:
        from instasam.io.atomic import write_text_atomic

        meta = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "tile": args.tile,
            "overlap": args.overlap,
            "memory": "peak RSS of the prediction subprocess (getrusage ru_maxrss)",
            "model": "classical stand-in (threshold + connected components)",
        }
        write_text_atomic(args.json, json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
