"""Cost of the SAM ViT-B backbone beside the default LiteMedSAM, on this machine's CPU.

ViT-B has RANDOM weights in the official layout (the official file cannot be fetched here;
speed and memory do not depend on the values). LiteMedSAM uses its packaged weights.

Per setting (crop side -> encoder input side) it reports

* ``pass_s``: one inference window, batch 1: adapted encoder + nuclei decoder + resize to
  the crop, as tile prediction runs it (first pass included: no warm-up);
* ``step_s``: one training step, batch 1: adapted encoder forward and backward (gradients
  reach the adapters only; the trunk is frozen), the trainable mask decoder on 16 point
  prompts (forward and backward), the same decoder on 40 prompts without gradients (the S'
  targets) and the nuclei decoder (forward and backward), prompts decoded on the pseudo-label
  code's default window (64 tile pixels); ``dec_s`` is the decoder part of
  it, measured on a detached embedding, so ``step_s - dec_s`` is the encoder's part;
* ``pseudo_s``: the unadapted pass and frozen-decoder masks for 40 prompts that make the
  fixed pseudo labels S (once per crop, cached, not per step);
* ``tile_min``: a 1000x1000 tile at 80 px overlap = ``passes x pass_s`` (an ESTIMATE from
  the measured passes; stitching and watershed post-processing excluded). With
  ``--measure-tile`` LiteMedSAM's tile is also run for real to check the estimate.
* peak resident memory (``ru_maxrss``) after inference and after training, each group in
  its own process so the figures do not mask each other.

Settings with the same encoder input cost the same per pass, so crop 512 and crop 1024 at
input 1024 reuse ViT-B's 224 -> 1024 measurement and differ only in their pass count.

Usage::

    .venv/bin/python benchmarks/bench_vit.py [--repeats 2] [--measure-tile] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from instasam.config import PseudoLabelConfig
from instasam.io.atomic import write_text_atomic
from instasam.model import build_backbone
from instasam.model.instasam import InstaSAM, Prompts
from instasam.tiling import windows

TILE = 1000
OVERLAP = 80
TRAIN_PROMPTS = 16  # TrainConfig.max_prompts_per_crop
ALL_PROMPTS = 40  # nuclei in a 224 crop of MoNuSeg: a few dozen
SHARED_TILE = Path(__file__).resolve().parents[2] / "shared/data/monuseg/test/images"

# Measured groups: (group, backbone name, build kwargs, label).
GROUPS = {
    "litemedsam": ("litemedsam", {}, "LiteMedSAM (packaged weights)"),
    "vit_b": ("vit_b", {"pretrained": False}, "ViT-B (RANDOM weights, official layout)"),
    "vit_b_in512": (
        "vit_b-crop224-in512",
        {"pretrained": False},
        "ViT-B (RANDOM weights, official layout)",
    ),
}
# Reported rows: (row name, measured group, crop side or None for the backbone's own).
ROWS = [
    ("litemedsam 256->256", "litemedsam", None),
    ("vit_b 224->1024 (paper)", "vit_b", None),
    ("vit_b 512->1024", "vit_b", 512),
    ("vit_b 1024->1024 (native)", "vit_b", 1024),
    ("vit_b 224->512", "vit_b_in512", None),
]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _prompts(n: int, size: int, gen: torch.Generator) -> Prompts:
    """n prompts: a positive point and 4 negatives each (the paper's prompt)."""
    points = torch.rand(n, 5, 2, generator=gen) * (size - 1)
    labels = torch.tensor([[1, 0, 0, 0, 0]] * n)
    return Prompts(points=points, labels=labels)


def _window(model: InstaSAM) -> int | None:
    """Decoding window in tokens, from the pseudo-label default (64 tile pixels), as the
    pseudo-label code converts it."""
    px = PseudoLabelConfig().decoder_window
    if px is None:
        return None
    return max(1, math.ceil(px * model.backbone.encoder.embedding_size / model.crop_size))


def _decoders(model: InstaSAM, encoded, gen: torch.Generator) -> torch.Tensor:
    """The decoder work of a training step; returns the loss to back-propagate."""
    size, window = model.input_size, _window(model)
    prompts = _prompts(TRAIN_PROMPTS, size, gen)
    logits, _ = model.prompted_masks(encoded.embedding, prompts, window=window)
    with torch.no_grad():  # S' targets from the adapted features
        model.prompted_masks(encoded.embedding, _prompts(ALL_PROMPTS, size, gen), window=window)
    maps = model.to_crop(model.nuclei_maps(encoded))
    return torch.sigmoid(model.to_crop(logits[:, None])).mean() + maps.square().mean()


def measure_group(group: str, repeats: int, train_repeats: int, measure_tile: bool) -> dict:
    name, kwargs, label = GROUPS[group]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model = InstaSAM(build_backbone(name, **kwargs))
    build_s = time.perf_counter() - start
    crop = model.crop_size
    crops = torch.rand(1, 3, crop, crop, generator=gen) * 255
    with torch.no_grad():
        for adapter in model.backbone.encoder.adapters:  # trained adapters are not zero
            torch.nn.init.normal_(adapter.up.weight, std=0.02)
    result = {
        "group": group,
        "backbone": name,
        "label": label,
        "pretrained": model.backbone.pretrained,
        "crop": crop,
        "input": model.input_size,
        "build_s": build_s,
    }

    model.eval()
    with torch.no_grad():
        pass_times = _timed(lambda: model(crops), repeats)
    result["pass_s"] = statistics.median(pass_times)
    result["pass_all_s"] = pass_times
    result["maxrss_infer_mib"] = _maxrss_mib()

    with torch.no_grad():

        def pseudo() -> None:
            plain = model.encode(crops, adapt=False)
            prompts = _prompts(ALL_PROMPTS, model.input_size, gen)
            model.prompted_masks(plain.embedding, prompts, frozen=True, window=_window(model))

        result["pseudo_s"] = statistics.median(_timed(pseudo, train_repeats))

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for p in trainable:
            p.grad = None
        _decoders(model, model.encode(crops, adapt=True), gen).backward()

    with torch.no_grad():
        encoded = model.encode(crops, adapt=True)
    encoded.embedding.requires_grad_(True)
    if encoded.early is not None:
        encoded.early.requires_grad_(True)

    def decoders_only() -> None:
        for p in trainable:
            p.grad = None
        _decoders(model, encoded, gen).backward()

    result["step_all_s"] = _timed(step, train_repeats)
    result["step_s"] = statistics.median(result["step_all_s"])
    result["dec_s"] = statistics.median(_timed(decoders_only, max(train_repeats, 2)))
    result["maxrss_train_mib"] = _maxrss_mib()

    if measure_tile:
        from instasam.predict.tiles import predict_maps

        image = _tile_image()
        model.eval()
        start = time.perf_counter()
        predict_maps(model, image)
        result["tile_measured_s"] = time.perf_counter() - start
        result["tile_measured_passes"] = _passes(crop, image.shape[:2])
    return result


def _tile_image() -> np.ndarray:
    """A real 1000x1000 MoNuSeg tile when the shared data is here, else a synthetic one."""
    files = sorted(SHARED_TILE.glob("*.tif")) if SHARED_TILE.is_dir() else []
    if files:
        from instasam.io.images import read_rgb

        image = read_rgb(files[0])
        if image.shape[:2] == (TILE, TILE):
            return image
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)


def _passes(crop: int, shape: tuple[int, int] = (TILE, TILE)) -> int:
    """Windows tile prediction runs over an image of ``shape`` (its overlap rule)."""
    return len(windows(shape, crop, min(OVERLAP, crop // 2)))


def rows_from(groups: dict[str, dict]) -> list[dict]:
    rows = []
    for row, group, crop_override in ROWS:
        if group not in groups:
            continue
        g = groups[group]
        crop = crop_override or g["crop"]
        passes = _passes(crop)
        rows.append(
            {
                "setting": row,
                "weights": "packaged" if g["pretrained"] else "RANDOM",
                "crop": crop,
                "input": g["input"],
                "pass_s": g["pass_s"],
                "step_s": g["step_s"],
                "dec_s": g["dec_s"],
                "pseudo_s": g["pseudo_s"],
                "tile_passes": passes,
                "tile_min_estimated": passes * g["pass_s"] / 60,
                "maxrss_infer_mib": g["maxrss_infer_mib"],
                "maxrss_train_mib": g["maxrss_train_mib"],
                "measured_in": group + ("" if crop_override is None else " (same input)"),
            }
        )
    return rows


def print_table(rows: list[dict], groups: dict[str, dict]) -> None:
    head = (
        f"{'setting':<26} {'weights':>8} {'pass s':>7} {'step s':>7} {'dec s':>6} "
        f"{'S s':>6} {'passes':>6} {'tile min':>9} {'RSS inf':>8} {'RSS train':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['setting']:<26} {r['weights']:>8} {r['pass_s']:7.2f} {r['step_s']:7.2f} "
            f"{r['dec_s']:6.2f} {r['pseudo_s']:6.2f} {r['tile_passes']:6d} "
            f"{r['tile_min_estimated']:8.1f}* {r['maxrss_infer_mib']:7.0f}M "
            f"{r['maxrss_train_mib']:8.0f}M"
        )
    print("* estimated: passes x measured pass (batch 1); stitching and post-processing excluded.")
    print("RSS: peak resident memory of the measuring process (model build included).")
    for g in groups.values():
        if "tile_measured_s" in g:
            est = g["tile_measured_passes"] * g["pass_s"]
            print(
                f"{g['backbone']}: a real {TILE}x{TILE} tile (predict_maps, batch 4, "
                f"{g['tile_measured_passes']} windows) took {g['tile_measured_s']:.1f} s; "
                f"estimate {est:.1f} s"
            )


def run_child(group: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--only",
            group,
            "--repeats",
            str(args.repeats),
            "--train-repeats",
            str(args.train_repeats),
            "--json",
            str(out),
        ]
        if args.measure_tile and group == "litemedsam":
            cmd.append("--measure-tile")
        print(f"measuring {group} ...", flush=True)
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="inference passes per group")
    parser.add_argument(
        "--train-repeats", type=int, default=1, help="training steps per group (ViT-B: ~1 min)"
    )
    parser.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=list(GROUPS))
    parser.add_argument(
        "--measure-tile", action="store_true", help="run LiteMedSAM's tile for real too"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:  # child: one group, its own process (own ru_maxrss)
        result = measure_group(args.only, args.repeats, args.train_repeats, args.measure_tile)
        args.json.write_text(json.dumps(result))
        return 0

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)"
    )
    started = time.perf_counter()
    groups = {g: run_child(g, args) for g in args.groups}
    rows = rows_from(groups)
    print()
    print_table(rows, groups)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {
            "machine": {
                "platform": platform.platform(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "load_average_start": load,
                "load_average_end": os.getloadavg(),
            },
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "rows": rows,
            "groups": groups,
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
