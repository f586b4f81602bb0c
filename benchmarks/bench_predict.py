"""Seconds per 1000x1000 tile by stage for `instasam predict` with the shipped model.

Stages: read (the image file), network (foreground + distance maps), post-process
(watershed), write (instance TIFF). Also: peak RSS, the CPU's measured matmul peak in fp32
and bf16 in the same run, the network's FLOPs per tile and the ratio of its time to the
FLOP floor at that peak. Each precision available here is measured, and the end-to-end
`instasam predict` command is timed as a user runs it (one process, all tiles).

    python benchmarks/bench_predict.py --images bench_out/k/data/test/images \
        --json benchmarks/results/predict_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from instasam.io.atomic import write_text_atomic
from instasam.io.images import list_images, read_rgb
from instasam.io.labels import write_label_map
from instasam.postprocess import instances_from_maps
from instasam.predict.tiles import load_predictor
from instasam.training.precision import cpu_has_native_bf16


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matrix product (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def conv_flops(net: torch.nn.Module, shape: tuple[int, int]) -> float:
    """Multiply-adds x 2 of the network's convolutions on one ``shape`` image."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2.0 * k * output.numel()

    handles = [
        m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        net.forward_any(torch.zeros(1, 3, *shape))
    for h in handles:
        h.remove()
    return total


def stage_times(images: list[Path], precision: str, model: str) -> dict:
    predictor = load_predictor(model, precision=precision)
    times: dict[str, list[float]] = {"read": [], "network": [], "postprocess": [], "write": []}
    predictor.predict_maps(read_rgb(images[0]))  # warm-up (oneDNN primitive creation)
    with tempfile.TemporaryDirectory() as tmp:
        for path in images:
            started = time.perf_counter()
            image = read_rgb(path)
            times["read"].append(time.perf_counter() - started)
            started = time.perf_counter()
            fg, hv = predictor.predict_maps(image)
            times["network"].append(time.perf_counter() - started)
            started = time.perf_counter()
            labels = instances_from_maps(fg, hv, predictor.postprocess)
            times["postprocess"].append(time.perf_counter() - started)
            started = time.perf_counter()
            write_label_map(Path(tmp) / f"{path.stem}.tif", labels)
            times["write"].append(time.perf_counter() - started)
    median = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    median["total"] = round(sum(median.values()), 3)
    return {"median_seconds": median, "per_tile": times, "shape": list(image.shape[:2])}


def end_to_end(images: Path, precision: str, threads: int) -> dict:
    """Wall time of the whole `instasam predict` command (start-up and model load included)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "instasam", "predict", str(images), "--out", tmp]
        argv += ["--precision", precision, "--threads", str(threads)]
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        seconds = time.perf_counter() - started
    n = len(list_images(images))
    return {"tiles": n, "seconds": round(seconds, 1), "seconds_per_tile": round(seconds / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of 1000x1000 tiles")
    parser.add_argument("--model", default="monuseg-points")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = list_images(args.images)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    predictor = load_predictor(args.model, precision="fp32")
    h, w = read_rgb(images[0]).shape[:2]
    flops = conv_flops(predictor.net, (h, w))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"native bf16: {cpu_has_native_bf16()}",
        "matmul_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "network_gflop_per_tile": round(flops / 1e9, 1),
        "precisions": {},
    }
    for precision in ("fp32", "bf16"):
        stages = stage_times(images, precision, args.model)
        floor = flops / 1e9 / peaks[precision]
        stages["flop_floor_seconds"] = round(floor, 3)
        stages["network_over_floor"] = round(stages["median_seconds"]["network"] / floor, 1)
        stages["end_to_end"] = end_to_end(args.images, precision, args.threads)
        result["precisions"][precision] = stages
        print(precision, json.dumps(stages["median_seconds"]), stages["end_to_end"], flush=True)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps({k: v for k, v in result.items() if k != "precisions"}, indent=1))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
