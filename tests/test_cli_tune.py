"""`instasam tune`: the shipped model's post-processing chosen on the user's annotated tiles."""

from __future__ import annotations

import pytest
import torch
from skimage.segmentation import expand_labels

from instasam.cli import main
from instasam.cli.demo import sample_dir
from instasam.config import NetConfig
from instasam.io.images import write_rgb
from instasam.io.labels import write_label_map
from instasam.io.monuseg import load_monuseg_tile
from instasam.metrics import compute_metrics
from instasam.predict.tiles import load_predictor
from instasam.pretrained import DEFAULT_MODEL
from instasam.training.validation import EDGE_THRESHOLDS, FG_THRESHOLDS, SHRINKS

CROP = "TCGA-E2-A1B5-01Z-00-DX1_y400_x500"


@pytest.fixture(scope="module")
def crop():
    sample = sample_dir()
    return load_monuseg_tile(
        sample / "images" / f"{CROP}.tif", sample / "annotations" / f"{CROP}.xml"
    )


def _tiles(folder, image, labels):
    write_rgb(folder / "images" / f"{CROP}.png", image)
    write_label_map(folder / "labels" / f"{CROP}.tif", labels)
    return folder


def _tuned_setting(path):
    post = NetConfig.from_dict(torch.load(path, weights_only=False)["config"]).postprocess
    return post.fg_threshold, post.edge_threshold, post.shrink


def test_tuning_follows_the_annotators_outlines(crop, tmp_path, capsys):
    image, labels = crop
    as_drawn = _tiles(tmp_path / "tight", image, labels)
    out = tmp_path / "tight.pt"
    assert main(["tune", "--val", str(as_drawn), "--out", str(out), "--precision", "fp32"]) == 0
    assert "written to" in capsys.readouterr().out
    fg, edge, shrink = _tuned_setting(out)
    assert fg in FG_THRESHOLDS and edge in EDGE_THRESHOLDS and shrink in SHRINKS
    tuned = load_predictor(str(out), precision="fp32")
    plain = load_predictor(DEFAULT_MODEL, precision="fp32")
    # The shipped setting is in the grid, so the chosen one cannot score lower here.
    assert (
        compute_metrics(labels, tuned.predict_instances(image))["aji"]
        >= compute_metrics(labels, plain.predict_instances(image))["aji"]
    )
    # The shipped setting takes nothing off the outlines; for MoNuSeg's tight outlines on
    # this crop a pixel comes off, and for annotators who draw every nucleus two pixels
    # wider none does.
    assert load_predictor(DEFAULT_MODEL).postprocess.shrink == 0 and shrink == 1
    generous = _tiles(tmp_path / "wide", image, expand_labels(labels, 2))
    out_wide = tmp_path / "wide.pt"
    assert main(["tune", "--val", str(generous), "--out", str(out_wide)]) == 0
    assert _tuned_setting(out_wide)[2] == 0


def test_bad_tune_inputs_are_one_line_errors(crop, tmp_path, capsys):
    image, labels = crop
    folder = _tiles(tmp_path / "tiles", image, labels)
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"x")
    unlabelled = tmp_path / "unlabelled"
    write_rgb(unlabelled / "images" / "a.png", image)
    cases = [
        (["--val", str(folder), "--out", str(taken)], "already exists"),
        (["--val", str(unlabelled), "--out", str(tmp_path / "a.pt")], "no label map"),
        (
            ["--val", str(folder), "--out", str(tmp_path / "b.pt"), "--model", str(taken)],
            "cannot read",
        ),
    ]
    for argv, reason in cases:
        assert main(["tune", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("instasam: error:") and reason in err and "\n" not in err
    assert taken.read_bytes() == b"x"
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_tuning_for_flips_saves_a_second_setting_that_flips_predictions_use(crop, tmp_path):
    image, labels = crop
    folder = _tiles(tmp_path / "tiles", image, expand_labels(labels, 2))
    out = tmp_path / "flips.pt"
    argv = ["tune", "--val", str(folder), "--out", str(out), "--precision", "fp32", "--flips"]
    assert main(argv) == 0
    saved = NetConfig.from_dict(torch.load(out, weights_only=False)["config"])
    shipped = load_predictor(DEFAULT_MODEL, precision="fp32").postprocess
    assert saved.postprocess == shipped  # the one-pass setting is left as it was
    assert saved.flips_postprocess.shrink == 0  # wide outlines: nothing taken off
    assert load_predictor(str(out), flips=True).postprocess == saved.flips_postprocess
    assert load_predictor(str(out)).postprocess == shipped
    # Tuning the one-pass setting again drops the flips setting made for other tiles.
    again = tmp_path / "again.pt"
    assert main(["tune", "--model", str(out), "--val", str(folder), "--out", str(again)]) == 0
    retuned = NetConfig.from_dict(torch.load(again, weights_only=False)["config"])
    assert retuned.flips_postprocess is None
    assert load_predictor(str(again), flips=True).postprocess == retuned.postprocess
