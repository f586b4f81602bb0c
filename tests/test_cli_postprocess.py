"""`instasam postprocess`: saved maps -> instances, thresholds that take effect, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from instasam.cli import main
from instasam.io.labels import read_label_map
from instasam.io.maps import read_maps, write_maps
from instasam.metrics import compute_metrics
from instasam.targets import hv_maps


def touching_disks(size: int = 96) -> np.ndarray:
    """Six disks of radius 8, pairs of them touching: watershed has to split them."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    centres = [(20, 20), (20, 35), (60, 25), (60, 40), (30, 75), (75, 75)]
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = k
    return labels


@pytest.fixture
def maps_dir(tmp_path):
    gt = touching_disks()
    foreground = np.where(gt > 0, 0.6, 0.05).astype(np.float32)  # between the two presets
    write_maps(tmp_path / "maps" / "tile.npz", foreground, hv_maps(gt))
    return tmp_path / "maps", gt


def test_saved_maps_round_trip_exactly(tmp_path):
    gt = touching_disks()
    hv = hv_maps(gt)
    write_maps(tmp_path / "a.npz", (gt > 0).astype(np.float32), hv)
    fg, hv_back = read_maps(tmp_path / "a.npz")
    assert fg.dtype == np.float32 and np.array_equal(fg, gt > 0)
    assert np.array_equal(hv_back, hv)


def test_presets_and_thresholds_take_effect(maps_dir, tmp_path):
    maps, gt = maps_dir
    # Foreground probability 0.6: below the authors' 0.7, above HoVer-Net's 0.5.
    assert main(["postprocess", str(maps), "--out", str(tmp_path / "authors")]) == 0
    assert read_label_map(tmp_path / "authors" / "tile.tif").max() == 0
    out = tmp_path / "hovernet"
    assert main(["postprocess", str(maps), "--out", str(out), "--preset", "hovernet"]) == 0
    pred = read_label_map(out / "tile.tif")
    assert compute_metrics(gt, pred)["aji"] > 0.9 and pred.max() == gt.max()
    lowered = tmp_path / "lowered"
    assert main(["postprocess", str(maps), "--out", str(lowered), "--fg-threshold", "0.55"]) == 0
    assert read_label_map(lowered / "tile.tif").max() == gt.max()


def test_shrink_option_takes_a_pixel_off_each_nucleus(maps_dir, tmp_path, capsys):
    maps, gt = maps_dir
    runs = {}
    for shrink in ("0", "1"):
        out = tmp_path / f"shrink{shrink}"
        argv = ["postprocess", str(maps), "--out", str(out), "--preset", "hovernet"]
        assert main([*argv, "--shrink", shrink]) == 0
        runs[shrink] = read_label_map(out / "tile.tif")
    assert runs["1"].max() == runs["0"].max() == gt.max()
    assert 0.7 * (runs["0"] > 0).sum() < (runs["1"] > 0).sum() < (runs["0"] > 0).sum()
    assert "shrink 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["postprocess", str(maps), "--out", str(tmp_path / "bad"), "--shrink", "-1"])
    assert stop.value.code == 2 and not (tmp_path / "bad").exists()


def test_existing_outputs_are_kept_unless_overwrite(maps_dir, tmp_path, capsys):
    maps, _ = maps_dir
    out = tmp_path / "out"
    assert main(["postprocess", str(maps), "--out", str(out)]) == 0
    assert main(["postprocess", str(maps), "--out", str(out), "--preset", "hovernet"]) == 0
    assert "0 map(s) post-processed" in capsys.readouterr().out
    assert read_label_map(out / "tile.tif").max() == 0  # the first run's output stays
    assert (
        main(["postprocess", str(maps), "--out", str(out), "--preset", "hovernet", "--overwrite"])
        == 0
    )
    assert read_label_map(out / "tile.tif").max() > 0


def test_a_damaged_file_fails_before_any_output(maps_dir, tmp_path, capsys):
    maps, _ = maps_dir
    (maps / "broken.npz").write_bytes(b"not a zip file")
    out = tmp_path / "out"
    assert main(["postprocess", str(maps), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("instasam: error:") and "broken.npz" in err and "\n" not in err
    assert not out.exists()


def test_missing_or_empty_maps_folder(tmp_path, capsys):
    assert main(["postprocess", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["postprocess", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "--save-maps" in capsys.readouterr().err
