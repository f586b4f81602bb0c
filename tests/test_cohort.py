"""Cohorts on a real Dask LocalCluster (2 process workers) over small synthetic slides.

The predictor is the dark-pixel stand-in of ``test_predict_slides`` (it segments the
synthetic nuclei exactly), so every difference from ``predict-wsi`` is the cohort
machinery's: its scheduling, resume and recovery from a killed worker.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from instasam.errors import InputError
from instasam.io.slides import open_slide
from instasam.io.tables import NUCLEUS_COLUMNS
from instasam.predict.cohort import (
    CohortSlide,
    cohort_slides,
    predict_cohort,
    read_cohort_csv,
)
from instasam.predict.slides import SlidePredictConfig, partial_dir, predict_slide
from tests.test_predict_slides import DarkNuclei, render, write_pyramid

CONFIG = SlidePredictConfig(tile=256, overlap=64)
LOADS = 0  # predictors this process built (read on the workers)


@dataclass(frozen=True)
class DarkFactory:
    """Picklable, hashable recipe for the stand-in, optionally slowed down per tile."""

    delay: float = 0.0

    def __call__(self) -> DarkNuclei:
        global LOADS
        LOADS += 1
        return SlowDark(self.delay)


def loads_here() -> int:
    """Predictors built in the calling process (run on a worker by reference)."""
    return LOADS


class SlowDark(DarkNuclei):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def predict_instances(self, image: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().predict_instances(image)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two good slides of different sizes and a corrupt one."""
    folder = tmp_path_factory.mktemp("cohort")
    a = folder / "alpha.tif"
    write_pyramid(a, render(1024, 768, tissue_right=600, seed=0)[0])
    b = folder / "beta.tif"
    write_pyramid(b, render(600, 520, tissue_right=600, seed=1)[0], levels=2)
    bad = folder / "broken.svs"
    bad.write_bytes(a.read_bytes()[:5000])
    return [CohortSlide(a), CohortSlide(bad), CohortSlide(b)]


def serial(path: Path, out: Path) -> list[dict]:
    """What predict-wsi writes for the slide, with the same settings and stand-in."""
    with open_slide(path) as slide:
        predict_slide(slide, DarkNuclei(), out, CONFIG, progress=False)
    return json.loads(out.read_text())["features"]


def features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def test_cohort_equals_predict_wsi_reports_the_corrupt_slide_and_resumes(client, slides, tmp_path):
    out = tmp_path / "out"
    run = predict_cohort(
        slides, out, DarkFactory(), client, CONFIG, tiles_per_task=3, progress=False
    )
    assert [r.status for r in run.rows] == ["done", "failed", "done"]
    assert "broken.svs" not in run.rows[1].reason and run.rows[1].reason  # one clean reason
    assert not (out / "broken.geojson").exists() and not (out / "broken.nuclei.csv").exists()
    for item, row in zip(slides, run.rows, strict=True):
        if row.status != "done":
            continue
        mine = features(out / f"{item.name}.geojson")
        assert mine == serial(item.path, tmp_path / "serial" / f"{item.name}.geojson")
        assert row.nuclei == len(mine) > 10
        with open(out / f"{item.name}.nuclei.csv", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        assert [t["id"] for t in table] == [f["id"] for f in mine]
        assert list(table[0]) == ["id", *NUCLEUS_COLUMNS]
        areas = [f["properties"]["measurements"]["Area µm^2"] for f in mine]
        q1, q2, q3 = np.percentile(areas, [25, 50, 75])
        assert row.area_um2_median == pytest.approx(q2) and row.area_um2_iqr == pytest.approx(
            q3 - q1
        )
        assert row.nuclei_per_mm2 == pytest.approx(row.nuclei / row.tissue_mm2, rel=1e-3)
        assert not partial_dir(out / f"{item.name}.geojson").exists()
    # Each worker built the predictor at most once, however many tasks it ran.
    loads = list(client.run(loads_here).values())
    assert sorted(loads) == [1, 1], loads

    recorded = read_cohort_csv(out / "cohort.csv")
    assert [(r.slide, r.status, r.nuclei) for r in recorded] == [
        (r.slide, r.status, r.nuclei) for r in run.rows
    ]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.geojson")}
    again = predict_cohort(slides, out, DarkFactory(), client, CONFIG, progress=False)
    assert again.skipped == 2 and again.tiles_predicted == 0
    assert [r.status for r in again.rows] == ["done", "failed", "done"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.geojson")} == stamps


def test_a_killed_worker_loses_and_duplicates_nothing(client, slides, tmp_path):
    out = tmp_path / "out"
    good = [slides[0]]
    sidecar = partial_dir(out / "alpha.geojson")
    killed: list[int] = []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(list(sidecar.glob("*.jsonl"))) >= 3:
                pid = next(iter(client.run(os.getpid).values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    run = predict_cohort(
        good, out, DarkFactory(delay=0.3), client, CONFIG, tiles_per_task=1, progress=False
    )
    killer.join()
    assert killed, "no worker was killed: the run finished before the third tile"
    assert run.rows[0].status == "done", run.rows[0].reason
    assert features(out / "alpha.geojson") == serial(slides[0].path, tmp_path / "s.geojson")
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the worker for later tests


def test_no_resume_starts_each_slide_over(client, slides, tmp_path):
    out = tmp_path / "out"
    first = predict_cohort(slides[2:], out, DarkFactory(), client, CONFIG, progress=False)
    again = predict_cohort(
        slides[2:], out, DarkFactory(), client, CONFIG, resume=False, progress=False
    )
    assert again.skipped == 0 and again.tiles_predicted == first.rows[0].tiles > 0
    assert again.rows[0].nuclei == first.rows[0].nuclei


# -- naming the cohort (no cluster) --------------------------------------------------------
def test_slides_from_files_folders_and_a_manifest(tmp_path):
    (tmp_path / "scans").mkdir()
    for name in ("b.svs", "a.tif", "notes.txt"):
        (tmp_path / "scans" / name).write_bytes(b"x")
    manifest = tmp_path / "list.csv"
    manifest.write_text("slide,mpp\nscans/a.tif,0.5\n/elsewhere/c.svs,\n", encoding="utf-8")
    found = cohort_slides([tmp_path / "scans"])
    assert [s.path.name for s in found] == ["a.tif", "b.svs"]
    listed = cohort_slides([manifest, tmp_path / "d.tif"])
    assert [(s.path, s.mpp) for s in listed] == [
        (tmp_path / "scans" / "a.tif", 0.5),
        (Path("/elsewhere/c.svs"), None),
        (tmp_path / "d.tif", None),  # missing: it fails later, on its own
    ]


@pytest.mark.parametrize(
    "text, words",
    [
        ("path\nx.tif\n", "'slide' column"),
        ("slide,mpp\nx.tif,fast\n", "line 2: mpp 'fast'"),
        ("slide,mpp\nx.tif,-1\n", "positive"),
        ("slide\n\n,\n", "empty 'slide'"),
    ],
)
def test_bad_manifests_are_refused(tmp_path, text, words):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=words):
        cohort_slides([manifest])


def test_two_slides_with_one_name_are_refused(tmp_path):
    with pytest.raises(InputError, match="same name"):
        cohort_slides([tmp_path / "a" / "s1.svs", tmp_path / "b" / "s1.tif"])
    with pytest.raises(InputError, match="no slide"):
        (tmp_path / "empty").mkdir()
        cohort_slides([tmp_path / "empty"])


# -- the command ---------------------------------------------------------------------------
def test_cli_runs_the_shipped_model_on_a_local_cluster(slides, tmp_path, capsys):
    from instasam.cli import main

    out = tmp_path / "out"
    small = tmp_path / "small.tif"
    write_pyramid(small, render(320, 300, tissue_right=320, seed=3)[0], levels=1)
    args = [str(small), str(slides[1].path), "--out", str(out), "--workers", "1"]
    status = main(["predict-cohort", *args, "--threads-per-worker", "1"])
    captured = capsys.readouterr()
    assert status == 2  # the corrupt slide failed; the other is done
    assert "dashboard: http" in captured.out
    assert "Traceback" not in captured.err and "Compute Failed" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("instasam:")]
    assert len(errors) == 1 and errors[0].startswith(f"instasam: error: {slides[1].path}: ")
    rows = {r.slide: r for r in read_cohort_csv(out / "cohort.csv")}
    assert rows["small"].status == "done" and rows["broken"].status == "failed"
    assert rows["small"].nuclei == len(features(out / "small.geojson")) > 0
    assert "1 of 2 slides done" in captured.out


def test_cli_bad_input_fails_before_any_cluster_starts(tmp_path, capsys):
    from instasam.cli import main

    started = time.perf_counter()
    status = main(["predict-cohort", str(tmp_path / "nowhere.csv"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "nowhere.csv" in err[0]
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "cores, gib, workers", [(2, 24, 2), (16, 8, 4), (1, 64, 1), (8, 1, 1), (64, 512, 64)]
)
def test_default_workers_one_per_core_within_memory(cores, gib, workers):
    from instasam.cli.predict_cohort import default_workers

    assert default_workers(cores, gib * 1024**3) == workers


def test_cli_asking_for_a_gpu_where_there_is_none_fails_before_any_cluster_starts(
    slides, tmp_path, capsys, monkeypatch
):
    import torch

    from instasam.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [str(slides[0].path), "--out", str(tmp_path / "out"), "--device", "cuda"]
    assert main(["predict-cohort", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instasam: error: --device: no CUDA GPU")
    assert not (tmp_path / "out").exists()


def test_a_worker_applies_the_overrides_to_the_model_it_loads():
    from instasam.predict.cohort import ModelSpec
    from instasam.pretrained import resolve_model

    spec = ModelSpec(str(resolve_model("monuseg-points")), postprocess=(("shrink", 2),))
    plain = ModelSpec(str(resolve_model("monuseg-points")))()
    assert spec().postprocess.shrink == 2 and plain.postprocess.shrink != 2
