"""Issue 16's defects: bad output locations, truncated TIFFs, empty points, no validation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from instasam.cli import main
from instasam.cli.demo import sample_dir
from instasam.io.labels import write_label_map


def _one_error_line(capsys, path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"instasam: error: {path}"), err[0]
    assert "Traceback" not in err[0]
    return err[0]


def _commands(prepared, out):
    images = str(prepared / "test" / "images")
    labels = str(prepared / "test" / "labels")
    return {
        "prepare": ["prepare", "monuseg", str(sample_dir()), str(out)],
        "pseudo": ["pseudo", "--data", str(prepared / "train"), "--out", str(out)],
        "train": ["train", "--data", str(prepared / "train"), "--out", str(out), "--quiet"],
        "predict": ["predict", images, "--out", str(out)],
        "evaluate-json": ["evaluate", "--gt", labels, "--pred", labels, "--json", str(out)],
        "evaluate-report": ["evaluate", "--gt", labels, "--pred", labels, "--report", str(out)],
    }


@pytest.mark.parametrize(
    "command", ["prepare", "pseudo", "train", "predict", "evaluate-json", "evaluate-report"]
)
@pytest.mark.parametrize("where", ["existing_file", "below_a_file", "unwritable"])
def test_a_bad_output_location_is_refused_before_any_work(
    prepared, tmp_path, capsys, command, where
):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    if where == "existing_file":
        out, named = blocker, blocker
        if command == "evaluate-json":  # a file is a fine --json; a folder is not
            out = named = tmp_path
    elif where == "below_a_file":
        out, named = blocker / "out", blocker
    else:
        # /proc refuses new entries even to root, as a read-only file system would.
        out = named = "/proc/instasam-test/out" if os.path.isdir("/proc") else None
        if out is None:
            pytest.skip("no /proc to stand for an unwritable place")
    before = sorted(tmp_path.rglob("*"))
    assert main(_commands(prepared, out)[command]) == 2
    _one_error_line(capsys, named)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_truncated_label_tiff_is_one_line(prepared, tmp_path, capsys):
    gt = prepared / "test" / "labels"
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in gt.glob("*.tif"):
        rng = np.random.default_rng(0)
        write_label_map(pred / path.name, rng.integers(0, 40, (256, 256)).astype(np.int32))
        data = (pred / path.name).read_bytes()
        (pred / path.name).write_bytes(data[: len(data) // 2])
        bad = pred / path.name
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred)]) == 2
    assert "cannot read label map" in _one_error_line(capsys, bad)


def test_a_points_table_without_rows_is_refused_like_an_empty_geojson(prepared, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "points").mkdir()
    (image,) = (prepared / "train" / "images").glob("*.png")
    (data / "images" / image.name).write_bytes(image.read_bytes())
    points = data / "points" / f"{image.stem}.csv"
    points.write_text("x,y\n")
    argv = ["pseudo", "--data", str(data), "--out", str(tmp_path / "out"), "--source", "cv"]
    assert main(argv) == 2
    assert "no points" in _one_error_line(capsys, points)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_short_instasam_run_still_validates(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--arch", "instasam", "--data", str(prepared / "train")]
    argv += ["--val", str(prepared / "test"), "--out", str(run), "--quiet"]
    assert main([*argv, "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "best val AJI -1" not in out and "the last epoch is validated" in out
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val" in record
