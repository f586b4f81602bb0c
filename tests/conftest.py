"""Shared fixtures. Real data lives outside the repository in ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("INSTASAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set INSTASAM_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def monuseg_root() -> Path:
    """``../shared/data/monuseg``: 30 labelled training tiles, the Kumar split, 2018 test set."""
    return _need(SHARED_DATA / "monuseg")


@pytest.fixture(scope="session")
def tnbc_root() -> Path:
    return _need(SHARED_DATA / "tnbc")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    try:
        import torch
    except ImportError:
        return
    # INSTASAM_TEST_THREADS=1 keeps the suite from fighting a benchmark for the same cores.
    torch.set_num_threads(int(os.environ.get("INSTASAM_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The bundled sample prepared as ``train/`` and ``test/`` (one folder per test module,
    so modules that write runs and predictions beside it never meet)."""
    from instasam.cli import main
    from instasam.cli.demo import sample_dir

    out = tmp_path_factory.mktemp("prepared")
    split = sample_dir() / "split.json"
    for subset in ("train", "test"):
        argv = ["prepare", "monuseg", str(sample_dir()), str(out / subset)]
        assert main([*argv, "--split", str(split), "--subset", subset]) == 0
    return out
