"""Running `instasam` commands as benchmark stages: printed, timed, fatal on failure."""

from __future__ import annotations

import shlex
import sys
import time

from instasam.cli import main as instasam


def run(argv: list[str], log: list[dict]) -> None:
    """Run ``instasam ARGV`` in-process; append its command and seconds to ``log``."""
    print(f"\n$ instasam {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    status = instasam(argv)
    log.append({"command": argv, "seconds": round(time.perf_counter() - started, 1)})
    if status:
        sys.exit(f"stage failed with status {status}: instasam {shlex.join(argv)}")
