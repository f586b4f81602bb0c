"""Running `instasam` commands as benchmark stages: printed, timed, fatal on failure."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from instasam.cli import main as instasam


def run(argv: list[str], log: list[dict]) -> None:
    """Run ``instasam ARGV`` in-process; append its command and seconds to ``log``."""
    print(f"\n$ instasam {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    status = instasam(argv)
    log.append({"command": argv, "seconds": round(time.perf_counter() - started, 1)})
    if status:
        sys.exit(f"stage failed with status {status}: instasam {shlex.join(argv)}")


TNBC_SPLIT = "splits/train_val_test.json"  # beside the TNBC data: patients per subset


def tnbc_prepare_argv(tnbc: Path, folder: Path, subset: str) -> list[str]:
    """``instasam prepare`` of the TNBC tiles of ``subset`` (train, val or test) into
    ``folder``, with their instance labels."""
    argv = ["prepare", "folder", str(tnbc), str(folder), "--labels", "labels_instance"]
    return [*argv, "--split", str(tnbc / TNBC_SPLIT), "--subset", subset]


def checkpoint_config(model: Path) -> dict:
    """The configuration saved in a nuclei network's checkpoint."""
    import torch

    return torch.load(model, map_location="cpu", weights_only=False)["config"]


def tuned_if_older(model: Path, val: Path, log: list[dict], threads: int) -> None:
    """Choose the post-processing of a network trained before the outline shrink existed
    (its checkpoint has no ``shrink``) on ``val`` with today's grid, in place."""
    if "shrink" in checkpoint_config(model)["postprocess"]:
        return
    argv = ["tune", "--model", str(model), "--val", str(val), "--out", str(model), "--overwrite"]
    run([*argv, "--threads", str(threads)], log)
