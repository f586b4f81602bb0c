"""`instasam evaluate`: happy path, JSON schema and values, report, and every input error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instasam.cli import main
from instasam.io.labels import write_label_map
from instasam.metrics import METRIC_KEYS, compute_metrics

STEMS = ("tile_a", "tile_b", "tile_c")
SUFFIXES = (".png", ".tif", ".npy")


def _labels(seed: int, shape=(40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for k in range(1, 9):
        r, c = rng.integers(3, shape[0] - 8), rng.integers(3, shape[1] - 8)
        labels[r : r + rng.integers(3, 7), c : c + rng.integers(3, 7)] = 10 * k
    return labels


def _prediction(gt: np.ndarray) -> np.ndarray:
    pred = np.roll(gt, 1, axis=1)
    pred[pred == 30] = 0  # one nucleus missed
    pred[0:3, 0:3] = 999  # one false positive
    return pred


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    gt_dir, pred_dir, img_dir = tmp_path / "gt", tmp_path / "pred", tmp_path / "images"
    img_dir.mkdir()
    for k, (stem, suffix) in enumerate(zip(STEMS, SUFFIXES, strict=True)):
        gt = _labels(k)
        write_label_map(gt_dir / f"{stem}{suffix}", gt)
        write_label_map(pred_dir / f"{stem}{SUFFIXES[-1 - k]}", _prediction(gt))
        rgb = np.full((*gt.shape, 3), 200, np.uint8)
        rgb[gt > 0] = (120, 60, 160)
        Image.fromarray(rgb).save(img_dir / f"{stem}.png")
    return {"gt": gt_dir, "pred": pred_dir, "images": img_dir, "out": tmp_path / "out"}


def _evaluate(dirs: dict[str, Path], *extra: str) -> int:
    return main(["evaluate", "--gt", str(dirs["gt"]), "--pred", str(dirs["pred"]), *extra])


def test_happy_path_json_and_table(dirs, capsys):
    json_path = dirs["out"] / "metrics.json"
    assert _evaluate(dirs, "--json", str(json_path)) == 0
    data = json.loads(json_path.read_text())
    assert set(data) == {"images", "mean"}
    assert list(data["images"]) == list(STEMS)
    for k, stem in enumerate(STEMS):
        assert tuple(data["images"][stem]) == METRIC_KEYS
        gt = _labels(k)
        expected = compute_metrics(gt, _prediction(gt))
        assert data["images"][stem] == pytest.approx(expected)
        assert data["images"][stem]["recall"] < 1.0  # the missed nucleus is seen
    assert tuple(data["mean"]) == METRIC_KEYS
    for key in METRIC_KEYS:
        assert data["mean"][key] == pytest.approx(np.mean([data["images"][s][key] for s in STEMS]))

    out = capsys.readouterr().out.splitlines()
    assert "%" in out[0]
    header = out[1].split()
    assert header[0] == "image" and "AJI" in header and "Dice_obj" in header
    rows = {line.split()[0]: line for line in out if line and line.split()[0] in (*STEMS, "mean")}
    assert set(rows) == {*STEMS, "mean"}
    mean_aji = float(rows["mean"].split()[header.index("AJI")])
    assert mean_aji == pytest.approx(100 * data["mean"]["aji"], abs=0.006)
    # Aligned: every table row has the same width as the header.
    widths = {len(rows[s]) for s in rows} | {len(out[1])}
    assert len(widths) == 1


def test_report_is_one_self_contained_html(dirs, capsys):
    report = dirs["out"] / "report"
    json_path = dirs["out"] / "m.json"
    assert (
        _evaluate(
            dirs,
            "--json",
            str(json_path),
            "--report",
            str(report),
            "--images",
            str(dirs["images"]),
            "--progress",
        )
        == 0
    )
    files = list(report.iterdir())
    assert [f.name for f in files] == ["report.html"]
    text = files[0].read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("data:image/png;base64,") == len(STEMS)
    assert '<table id="metrics">' in text and "<svg" in text
    for stem in STEMS:
        assert stem in text
    # No external assets: no http(s) links, no src other than data URIs.
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    mean_aji = json.loads(json_path.read_text())["mean"]["aji"]
    assert f"{100 * mean_aji:.2f}" in text


def test_report_without_images_uses_grey_background(dirs):
    report = dirs["out"] / "report"
    assert _evaluate(dirs, "--report", str(report)) == 0
    text = (report / "report.html").read_text()
    assert "grey background" in text
    assert text.count("data:image/png;base64,") == len(STEMS)


def test_report_counts_nuclei_and_says_what_made_the_prediction(dirs):
    report = dirs["out"] / "report"
    assert _evaluate(dirs, "--report", str(report)) == 0
    text = (report / "report.html").read_text()
    assert "<th>GT nuclei</th><th>predicted</th>" in text
    for k, stem in enumerate(STEMS):
        gt = _labels(k)
        n_gt, n_pred = len(np.unique(gt)) - 1, len(np.unique(_prediction(gt))) - 1
        row = re.search(rf"<tr><td>{stem}</td>(.*?)</tr>", text).group(1)
        assert row.endswith(f"<td>{n_gt}</td><td>{n_pred}</td>")
    assert "Model and thresholds: unknown" in text
    record = {
        "model": "monuseg-points",
        "sha256": "feb85d180fdde2bb" + "0" * 48,
        "postprocess": {"fg_threshold": 0.7, "edge_threshold": 0.5},
        "precision": "bf16",
        "flips": True,
        "instasam": "9.9",
    }
    (dirs["pred"] / "prediction.json").write_text(json.dumps(record))
    assert _evaluate(dirs, "--report", str(report)) == 0
    text = (report / "report.html").read_text()
    assert "<code>monuseg-points</code> (sha256 feb85d180fdd" in text
    assert "foreground 0.7, marker 0.5; precision bf16; four flips averaged" in text


def test_report_chart_title_and_mean_label_do_not_collide(dirs):
    report = dirs["out"] / "report"
    assert _evaluate(dirs, "--report", str(report)) == 0
    svg = (report / "report.html").read_text().split("<svg", 1)[1].split("</svg>", 1)[0]
    title_y = float(re.search(r'<text x="[\d.]+" y="([\d.]+)" font-weight="bold"', svg).group(1))
    mean_y = float(re.search(r'y="([\d.]+)" fill="#c0392b"[^>]*>mean', svg).group(1))
    first_bar_y = min(float(y) for y in re.findall(r'<rect x="[\d.]+" y="([\d.]+)"', svg))
    # 11 px text: the baselines must be a line apart, and the label above the bars.
    assert mean_y - title_y >= 12 and mean_y <= first_bar_y


def _assert_one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("instasam: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _assert_nothing_written(dirs) -> None:
    assert not dirs["out"].exists() or not any(dirs["out"].rglob("*"))


def _run_failing(dirs, capsys, *needles: str, with_report: bool = True) -> str:
    extra = ["--json", str(dirs["out"] / "m.json")]
    if with_report:
        extra += ["--report", str(dirs["out"] / "rep"), "--images", str(dirs["images"])]
    assert _evaluate(dirs, *extra) == 2
    line = _assert_one_line_error(capsys, *needles)
    _assert_nothing_written(dirs)
    return line


def test_missing_gt_folder(dirs, capsys):
    dirs["gt"] = dirs["gt"].parent / "nope"
    _run_failing(dirs, capsys, "nope", "folder not found")


def test_missing_pred_folder(dirs, capsys):
    dirs["pred"] = dirs["pred"].parent / "absent_pred"
    _run_failing(dirs, capsys, "absent_pred", "folder not found")


def test_empty_gt_folder(dirs, capsys, tmp_path):
    empty = tmp_path / "empty_gt"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a label map")
    dirs["gt"] = empty
    _run_failing(dirs, capsys, "empty_gt", "no label files")


def test_empty_pred_folder(dirs, capsys, tmp_path):
    empty = tmp_path / "empty_pred"
    empty.mkdir()
    dirs["pred"] = empty
    _run_failing(dirs, capsys, "empty_pred", "no label files")


def test_missing_prediction_stems_are_listed(dirs, capsys):
    for path in dirs["pred"].iterdir():
        if path.stem in ("tile_a", "tile_b"):
            path.unlink()
    line = _run_failing(dirs, capsys, str(dirs["pred"]), "tile_a", "tile_b")
    assert "tile_c" not in line


def test_extra_prediction_stems_are_listed(dirs, capsys):
    write_label_map(dirs["pred"] / "stray.png", _labels(9))
    _run_failing(dirs, capsys, "stray", "no ground truth")


def test_many_missing_stems_are_cut_short(dirs, capsys):
    for k in range(6):
        write_label_map(dirs["gt"] / f"extra_{k}.png", _labels(k))
    line = _run_failing(dirs, capsys, "extra_0", "extra_2", "(and 3 more)")
    assert "extra_5" not in line


def test_size_mismatch_names_both_files(dirs, capsys):
    write_label_map(dirs["pred"] / "tile_b.tif", _labels(1, shape=(40, 50)))
    _run_failing(dirs, capsys, "tile_b.tif", str(dirs["gt"] / "tile_b.tif"), "50x40", "48x40")


def test_unreadable_label_file(dirs, capsys):
    (dirs["gt"] / "tile_a.png").write_bytes(b"this is not a PNG")
    _run_failing(dirs, capsys, "tile_a.png", "cannot read")


def test_colour_label_file_is_refused(dirs, capsys):
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(dirs["gt"] / "tile_a.png")
    _run_failing(dirs, capsys, "tile_a.png", "one channel")


def test_two_label_files_with_one_stem(dirs, capsys):
    write_label_map(dirs["gt"] / "tile_a.tif", _labels(0))
    _run_failing(dirs, capsys, "tile_a.png", "tile_a.tif", "share the stem")


def test_missing_image_for_report(dirs, capsys):
    (dirs["images"] / "tile_c.png").unlink()
    _run_failing(dirs, capsys, str(dirs["images"]), "tile_c")


def test_image_size_mismatch_for_report(dirs, capsys):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(dirs["images"] / "tile_b.png")
    _run_failing(dirs, capsys, "tile_b.png", "20x20", "48x40")


def test_report_path_that_is_a_file(dirs, capsys):
    dirs["out"].mkdir()
    blocker = dirs["out"] / "rep"
    blocker.write_text("x")
    assert _evaluate(dirs, "--json", str(dirs["out"] / "m.json"), "--report", str(blocker)) == 2
    _assert_one_line_error(capsys, "rep")
    assert not (dirs["out"] / "m.json").exists()


def test_json_below_a_file(dirs, capsys):
    dirs["out"].mkdir()
    blocker = dirs["out"] / "blocker"
    blocker.write_text("x")
    assert _evaluate(dirs, "--json", str(blocker / "m.json")) == 2
    _assert_one_line_error(capsys, "blocker", "is a file")
