"""A bad input is refused before torch loads (importing it takes seconds on a CPU box)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from instasam.cli import main
status = main(sys.argv[1:])
print("status", status, "torch", "torch" in sys.modules)
"""

CASES = {
    "predict": ["predict", "{missing}", "--out", "{out}"],
    "train net": ["train", "--data", "{missing}", "--out", "{out}"],
    "train instasam": ["train", "--arch", "instasam", "--data", "{missing}", "--out", "{out}"],
    "pseudo": ["pseudo", "--data", "{missing}", "--out", "{out}"],
    "pseudo model": ["pseudo", "--data", "{missing}", "--out", "{out}", "--source", "model"],
    "predict-wsi": ["predict-wsi", "{missing}.tif", "--out", "{out}.geojson"],
    "postprocess": ["postprocess", "{missing}", "--out", "{out}"],
    "evaluate": ["evaluate", "--gt", "{missing}", "--pred", "{missing}"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_without_importing_torch(case, tmp_path):
    argv = [a.format(missing=tmp_path / "no-such-input", out=tmp_path / "out") for a in CASES[case]]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    assert "status 2 torch False" in done.stdout, done.stdout + done.stderr
    assert done.stderr.startswith("instasam: error: ")
