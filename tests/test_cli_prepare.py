"""``instasam prepare`` on synthetic and real MoNuSeg, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from instasam.cli import main
from instasam.io.labels import read_label_map
from instasam.io.points import read_points
from tests.test_io_datasets import region, square, write_xml


def _monuseg(tmp_path, n=2, size=40):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    for i in range(n):
        image = np.full((size, size, 3), 220, np.uint8)
        image[5:15, 5:15] = (80, 40, 120)
        tifffile.imwrite(src / "images" / f"tile{i}.tif", image)
        write_xml(
            src / "annotations" / f"tile{i}.xml",
            region(1, square(5, 5, 14, 14)),
            region(2, square(20, 20, 30, 32)),
        )
    return src


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_prepare_monuseg_writes_images_labels_points(tmp_path, capsys):
    src = _monuseg(tmp_path)
    out = tmp_path / "out"
    assert main(["prepare", "monuseg", str(src), str(out)]) == 0
    assert _files(out) == [
        "images/tile0.png",
        "images/tile1.png",
        "labels/tile0.tif",
        "labels/tile1.tif",
        "points/tile0.csv",
        "points/tile1.csv",
    ]
    labels = read_label_map(out / "labels" / "tile0.tif")
    assert labels.max() == 2
    points = read_points(out / "points" / "tile0.csv")
    assert np.allclose(points, [[9.5, 9.5], [25.0, 26.0]])
    assert "2 image(s), 4 nuclei" in capsys.readouterr().out


def test_prepare_shifted_points_are_reproducible(tmp_path):
    src = _monuseg(tmp_path, n=1)
    for run in ("a", "b"):
        assert (
            main(
                [
                    "prepare",
                    "monuseg",
                    str(src),
                    str(tmp_path / run),
                    "--shift",
                    "4-6",
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
    a = read_points(tmp_path / "a" / "points" / "tile0.csv")
    b = read_points(tmp_path / "b" / "points" / "tile0.csv")
    assert np.allclose(a, b)
    d = np.hypot(*(a - [[9.5, 9.5], [25.0, 26.0]]).T)
    assert ((d >= 4 - 0.01) & (d < 6 + 0.01)).all()  # CSV keeps two decimals


def test_prepare_geojson_points_and_split(tmp_path):
    src = _monuseg(tmp_path)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["tile1"], "test": ["tile0"]}))
    out = tmp_path / "out"
    argv = [
        "prepare",
        "monuseg",
        str(src),
        str(out),
        "--split",
        str(split),
        "--subset",
        "train",
        "--points-format",
        "geojson",
    ]
    assert main(argv) == 0
    assert _files(out) == ["images/tile1.png", "labels/tile1.tif", "points/tile1.geojson"]


def _expect_refusal(capsys, argv, out, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not out.exists() or not _files(out)


def test_prepare_refuses_bad_input_without_partial_output(tmp_path, capsys):
    src = _monuseg(tmp_path, n=3)
    out = tmp_path / "out"
    (src / "annotations" / "tile2.xml").write_text("<Annotations><Regions>")  # last one broken
    _expect_refusal(
        capsys, ["prepare", "monuseg", str(src), str(out)], out, "tile2.xml: malformed XML"
    )
    (src / "annotations" / "tile2.xml").unlink()
    _expect_refusal(
        capsys, ["prepare", "monuseg", str(src), str(out)], out, "tile2.tif: no annotation"
    )
    write_xml(src / "annotations" / "tile2.xml", region(5, square(100, 100, 120, 120)))
    _expect_refusal(
        capsys, ["prepare", "monuseg", str(src), str(out)], out, "Region 5 lies outside"
    )
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(src / "images" / "tile2.tif")
    write_xml(src / "annotations" / "tile2.xml", region(1, square(1, 1, 5, 5)))
    _expect_refusal(capsys, ["prepare", "monuseg", str(src), str(out)], out, "greyscale")
    _expect_refusal(
        capsys, ["prepare", "monuseg", str(tmp_path / "nowhere"), str(out)], out, "nowhere"
    )


def test_prepare_folder_refuses_size_mismatch(tmp_path, capsys):
    src = tmp_path / "tnbc"
    (src / "images").mkdir(parents=True)
    (src / "labels_instance").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(src / "images" / "01_1.png")
    Image.fromarray(np.ones((12, 10), np.uint16)).save(src / "labels_instance" / "01_1.png")
    out = tmp_path / "out"
    argv = ["prepare", "folder", str(src), str(out), "--labels", "labels_instance"]
    _expect_refusal(capsys, argv, out, "differs from its image 01_1.png")


@pytest.mark.realdata
def test_prepare_real_monuseg_tile(monuseg_root, tmp_path):
    split = tmp_path / "one.json"
    split.write_text(json.dumps({"train": ["TCGA-A7-A13E-01Z-00-DX1"]}))
    out = tmp_path / "out"
    argv = [
        "prepare",
        "monuseg",
        str(monuseg_root / "train"),
        str(out),
        "--split",
        str(split),
        "--subset",
        "train",
        "--labels",
        "xml",
    ]
    assert main(argv) == 0
    labels = read_label_map(out / "labels" / "TCGA-A7-A13E-01Z-00-DX1.tif")
    points = read_points(out / "points" / "TCGA-A7-A13E-01Z-00-DX1.csv")
    assert labels.shape == (1000, 1000)
    assert len(points) == len(np.unique(labels)) - 1 > 200
    rows, cols = np.round(points[:, 1]).astype(int), np.round(points[:, 0]).astype(int)
    assert (labels[rows, cols] > 0).all()  # every point lies inside a nucleus
