"""Copy a trained nuclei network into the package as a shipped model.

Keeps only what inference needs (weights in fp16, the configuration, the validation
scores), writes ``src/instasam/pretrained/<name>.pt`` and prints its SHA-256 for the
registry entry in ``src/instasam/pretrained/__init__.py``.

    python scripts/ship_model.py bench_out/k/runs/sam_seed0/model.pt --name monuseg-points
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from instasam.model.unet import NET_FORMAT
from instasam.pretrained import file_sha256

DEST = Path(__file__).resolve().parents[1] / "src" / "instasam" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    payload = torch.load(args.model, map_location="cpu", weights_only=False)
    if payload.get("format") != NET_FORMAT:
        raise SystemExit(f"{args.model}: not a nuclei-network checkpoint")
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["state"].items()}
    shipped = {
        "format": NET_FORMAT,
        "config": payload["config"],
        "state": state,
        "step": payload.get("step"),
        "val": payload.get("val"),
    }
    dest = DEST / f"{args.name}.pt"
    torch.save(shipped, dest)
    print(f"{dest}: {dest.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(dest)}")


if __name__ == "__main__":
    main()
