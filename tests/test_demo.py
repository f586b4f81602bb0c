"""The README's first command, ``instasam demo``, end to end on the bundled sample."""

from __future__ import annotations

import json

from instasam.cli import main


def test_demo_segments_the_sample_then_fine_tunes_on_the_points_of_the_other_crop(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out

    # The shipped model segments the unseen test crop (an untrained network scores ~0).
    shipped = json.loads((out / "metrics_shipped.json").read_text())["mean"]
    assert shipped["aji"] > 0.5

    # S from the training crop's points, scored against that crop's outlines, with the
    # pixels its entropy and overlap rules leave out; fine-tuning read those labels.
    quality = json.loads((out / "pseudo" / "quality.json").read_text())["mean"]
    assert quality["aji"] > 0.5 and 0 < quality["ignored"] < 0.5
    run_config = json.loads((out / "finetuned" / "config.json").read_text())
    assert run_config["train"]["labels"] == "sam" and run_config["train"]["steps"] == 2

    finetuned = json.loads((out / "metrics_finetuned.json").read_text())["mean"]
    assert finetuned["aji"] > 0.5  # two small steps from the shipped weights
    assert (out / "report" / "report.html").is_file()
    assert "shipped model on the test crop: AJI" in printed
    assert "trains 2 steps" in printed
