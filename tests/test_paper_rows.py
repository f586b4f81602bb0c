"""`benchmarks/paper.py`: one row end to end on the bundled sample with tiny settings, the
settings guard, few-shot and shifted points, and the table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from instasam.cli.demo import sample_dir
from instasam.config import NetConfig, NucleiNetConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import paper  # noqa: E402

TRAIN, TEST = "TCGA-A7-A13E-01Z-00-DX1_y300_x300", "TCGA-E2-A1B5-01Z-00-DX1_y400_x500"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A MoNuSeg-shaped root holding the two sample crops, with a Kumar-style split."""
    root = tmp_path_factory.mktemp("monuseg")
    shutil.copytree(sample_dir(), root / "train")
    split = {"train": [TRAIN], "val": [TRAIN], "test": [TEST]}
    split["organ"] = {TRAIN: "Breast", TEST: "Breast"}
    (root / "splits").mkdir()
    (root / "splits" / "kumar_16_14.json").write_text(json.dumps(split))
    config = root / "tiny.json"
    config.write_text(json.dumps(NetConfig(net=NucleiNetConfig(widths=(4, 8))).to_dict()))
    return root


def _run(root: Path, out: Path, results: Path, row: str, *extra: str):
    argv = [sys.executable, str(REPO / "benchmarks" / "paper.py"), "run", row]
    argv += ["--monuseg", str(root), "--out", str(out), "--results", str(results)]
    argv += ["--steps", "2", "--config", str(root / "tiny.json"), "--threads", "1", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_a_row_runs_end_to_end_resumes_and_refuses_other_settings(root, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    done = _run(root, out, results, "cv")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = json.loads((results / "cv.json").read_text())
    assert row["settings"]["labels"] == "cv" and row["settings"]["steps"] == 2
    assert set(row["test_per_image"]) == {TEST}
    assert 0.0 <= row["test_mean"]["aji"] <= 1.0 and row["paper_dice_obj_aji"] == [73.2, 52.0]
    assert (out / "runs" / "cv_seed0" / "model.pt").is_file()
    again = _run(root, out, results, "cv")  # finished: nothing is redone
    assert again.returncode == 0 and "finished earlier" in again.stdout
    assert "$ instasam" not in again.stdout
    other = _run(root, out, results, "cv", "--seed", "1")
    assert other.returncode != 0 and "other settings (seed)" in other.stderr
    assert json.loads((results / "cv.json").read_text()) == row  # not merged
    table = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "paper.py"), "table", "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    aji = 100 * row["test_mean"]["aji"]
    assert "| cluster + Voronoi labels (`cv`) | " in table and f"{aji:.1f}" in table
    assert "73.2 / 52.0" in table and "not run yet" in table
    # A row finished before the shrink grid: refused by `run`, brought up to date by `retune`.
    import torch

    model = out / "runs" / "cv_seed0" / "model.pt"
    payload = torch.load(model, weights_only=False)
    del payload["config"]["postprocess"]["shrink"]
    torch.save(payload, model)
    old = {**row, "settings": {k: v for k, v in row["settings"].items() if k != "postprocess_grid"}}
    (results / "cv.json").write_text(json.dumps(old))
    refused = _run(root, out, results, "cv")
    assert refused.returncode != 0 and "paper.py retune" in refused.stderr
    argv = [sys.executable, str(REPO / "benchmarks" / "paper.py"), "retune", "cv", "--steps", "2"]
    argv += ["--monuseg", str(root), "--out", str(out), "--results", str(results)]
    retuned = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert retuned.returncode == 0, retuned.stdout[-2000:] + retuned.stderr[-2000:]
    new = json.loads((results / "cv.json").read_text())
    assert new["settings"] == row["settings"] and "$ instasam tune" in retuned.stdout
    assert new["before_retune"]["test_mean"] == row["test_mean"]
    assert new["postprocess"]["shrink"] in (0, 1)
    assert torch.load(model, weights_only=False)["config"]["postprocess"] == new["postprocess"]


def test_classical_row_needs_no_training(root, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    done = _run(root, out, results, "classical")
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads((results / "classical.json").read_text())
    assert row["train_seconds"] is None and not (out / "runs").exists()
    # Otsu + watershed finds the dark nuclei of an H&E crop: far from nothing.
    assert row["test_mean"]["aji"] > 0.25


def test_fewshot_split_keeps_one_training_tile_per_organ(tmp_path):
    split = {
        "train": ["b2", "a1", "c1", "a2", "b1"],
        "val": ["v"],
        "test": ["t"],
        "organ": {"a1": "Liver", "a2": "Liver", "b1": "Kidney", "b2": "Kidney", "c1": "Breast"},
    }
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "kumar_16_14.json").write_text(json.dumps(split))
    few = json.loads(paper.fewshot_split(tmp_path, tmp_path / "out").read_text())
    assert few["train"] == ["a1", "b1", "c1"]
    assert few["val"] == ["v"] and few["test"] == ["t"]


def test_shifted_row_points_lie_at_the_requested_distance(root, tmp_path):
    import argparse

    from instasam.io.labels import read_label_map
    from instasam.io.points import read_points
    from instasam.points import points_from_instances

    args = argparse.Namespace(monuseg=root, tnbc=None, out=tmp_path, seed=3)
    folders = paper.prepared(paper.ROWS["shift-4-6"], args, [])
    assert folders["train"].name == "monuseg_train_shift4-6_seed3"
    assert folders["test"].name == "monuseg_test"  # only the training points move
    labels = read_label_map(folders["train"] / "labels" / f"{TRAIN}.tif")
    centres, _ = points_from_instances(labels)
    shifted = read_points(folders["train"] / "points" / f"{TRAIN}.csv")
    assert shifted.shape == centres.shape
    distance = np.hypot(*(shifted - centres).T)
    h, w = labels.shape
    inside = (centres.min(1) >= 8) & (centres[:, 0] < w - 8) & (centres[:, 1] < h - 8)
    assert inside.sum() > 20  # clipping at the border may shorten the others' shift
    assert distance[inside].min() >= 4.0 - 1e-6 and distance[inside].max() < 6.0


def _finished_row(aji: float) -> dict:
    return {"test_mean": {"dice_obj": 0.7, "aji": aji, "aji_plus": 0.6, "pq": 0.5}}


def test_table_marks_rows_known_only_from_the_earlier_recipe(tmp_path):
    results = tmp_path / "results"
    (results / paper.EARLIER).mkdir(parents=True)
    (results / "gt.json").write_text(json.dumps(_finished_row(0.591)))
    (results / paper.EARLIER / "gt.json").write_text(json.dumps(_finished_row(0.111)))
    (results / paper.EARLIER / "cv.json").write_text(json.dumps(_finished_row(0.482)))
    lines = paper.table_markdown(results).splitlines()
    gt = next(x for x in lines if "(`gt`)" in x)
    cv = next(x for x in lines if "(`cv`)" in x)
    assert "(`gt`) |" in gt and "59.1" in gt and "11.1" not in gt  # today's result wins
    assert "(`cv`)* |" in cv and "48.2" in cv
    assert any(x.startswith("\\* trained with the recipe before") for x in lines)
    shift = next(x for x in lines if "(`shift-2-4`)" in x)
    assert "not run yet" in shift
    (results / paper.EARLIER / "cv.json").unlink()
    assert "recipe before" not in paper.table_markdown(results)  # no footnote without a mark


def test_fine_tuning_row_starts_from_the_centred_network(tmp_path):
    import argparse

    from instasam.cli import build_parser

    args = argparse.Namespace(out=tmp_path, seed=0, threads=1, steps=None, config=None)
    folders = {"train": tmp_path / "train", "val": tmp_path / "val"}
    labels, run_dir = tmp_path / "labels", tmp_path / "runs" / "self-tuned_seed0"
    row = paper.ROWS["self-tuned"]
    with pytest.raises(SystemExit, match="run the 'centred' row first"):
        paper.train_argv(row, folders, labels, run_dir, args)
    teacher = tmp_path / "runs" / "centred_seed0" / "model.pt"
    teacher.parent.mkdir(parents=True)
    teacher.touch()
    tuned = build_parser().parse_args(paper.train_argv(row, folders, labels, run_dir, args))
    assert tuned.init == str(teacher) and tuned.steps == 500 and tuned.lr == 5e-4
    assert tuned.labels_from == labels
    scratch = paper.train_argv(paper.ROWS["self-trained"], folders, labels, run_dir, args)
    scratch = build_parser().parse_args(scratch)
    assert scratch.init is None and scratch.steps is None and scratch.lr is None
    args.steps = 2  # the tests' tiny runs override the row's own count
    tiny = build_parser().parse_args(paper.train_argv(row, folders, labels, run_dir, args))
    assert tiny.steps == 2 and tiny.init == str(teacher)
    # Its own training run, and its settings record how it trains.
    assert paper.training_run("self-tuned") != paper.training_run("self-trained")
    plain = argparse.Namespace(seed=0, steps=None, backbone="litemedsam")
    wanted = paper.settings("self-tuned", row, plain)
    assert wanted["fine_tune"] == (500, 5e-4) and "--init" in wanted["recipe"]
    assert "fine_tune" not in paper.settings("centred", paper.ROWS["centred"], plain)


def test_the_self_trained_round_downscales_crops_and_the_s_network_does_not(tmp_path):
    import argparse

    from instasam.cli import build_parser
    from instasam.cli.train_net import net_config_from_args

    args = argparse.Namespace(out=tmp_path, seed=0, threads=1, steps=None, config=None)
    folders = {"train": tmp_path / "train", "val": tmp_path / "val"}
    argv = {
        name: paper.train_argv(paper.ROWS[name], folders, tmp_path / "l", tmp_path / "r", args)
        for name in ("self-trained", "centred")
    }
    configs = {k: net_config_from_args(build_parser().parse_args(v)) for k, v in argv.items()}
    assert configs["self-trained"].train.downscale_p == paper.DOWNSCALE > 0
    assert configs["centred"].train.downscale_p == 0
    assert paper.training_run("self-trained") == "self-trained"  # not the centred run's
    plain = argparse.Namespace(seed=0, steps=None, backbone="litemedsam")
    wanted = paper.settings("self-trained", paper.ROWS["self-trained"], plain)
    assert wanted["downscale"] == paper.DOWNSCALE and "--downscale" in wanted["recipe"]
    assert "downscale" not in paper.settings("centred", paper.ROWS["centred"], plain)


def test_a_run_trained_otherwise_is_not_taken_as_the_rows_own(tmp_path):
    import argparse
    import json

    from instasam.config import NetConfig

    args = argparse.Namespace(out=tmp_path, seed=0, threads=1, steps=None, config=None)
    folders = {"train": tmp_path / "train", "val": tmp_path / "val"}
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def argv(name: str) -> list[str]:
        return paper.train_argv(paper.ROWS[name], folders, tmp_path / "l", run_dir, args)

    def trained(**train) -> None:
        config = NetConfig().to_dict()
        config["train"] = {**config["train"], **train}
        (run_dir / "config.json").write_text(json.dumps(config))

    assert paper.run_mismatch(run_dir, argv("self-trained")) is None  # nothing trained yet
    trained(downscale_p=0.0)
    assert "downscale_p" in paper.run_mismatch(run_dir, argv("self-trained"))
    assert paper.run_mismatch(run_dir, argv("centred")) is None
    trained(downscale_p=paper.DOWNSCALE)
    assert paper.run_mismatch(run_dir, argv("self-trained")) is None
    config = NetConfig().to_dict()
    del config["train"]["downscale_p"]  # saved before the field existed: its default, 0
    (run_dir / "config.json").write_text(json.dumps(config))
    assert paper.run_mismatch(run_dir, argv("self-trained")) is not None
    assert paper.run_mismatch(run_dir, argv("centred")) is None
    args.steps = 2  # a tiny run's --steps is not in the folder name either
    assert "steps" in paper.run_mismatch(run_dir, argv("centred"))
