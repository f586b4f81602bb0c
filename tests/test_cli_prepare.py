"""``instasam prepare``: outputs on synthetic and real data, and every refusal via the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from instasam.cli import main
from instasam.io.images import read_rgb
from instasam.io.labels import read_label_map, write_label_map
from instasam.io.monuseg import read_monuseg_xml
from instasam.io.points import read_points
from instasam.points import points_from_instances
from tests.test_io_monuseg import region, square, write_xml

SIZE = 40


def _rgb(seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _monuseg(tmp_path, n=2):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    for i in range(n):
        tifffile.imwrite(src / "images" / f"tile{i}.tif", _rgb(i))
        write_xml(
            src / "annotations" / f"tile{i}.xml",
            region(1, square(5, 5, 14, 14)),
            region(2, square(20, 20, 30, 32)),
        )
    return src


def _files(folder):
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _prepare(*argv) -> int:
    return main(["prepare", *map(str, argv)])


def test_monuseg_writes_images_labels_points(tmp_path, capsys):
    src = _monuseg(tmp_path)
    out = tmp_path / "out"
    assert _prepare("monuseg", src, out) == 0
    assert _files(out) == [
        "images/tile0.png",
        "images/tile1.png",
        "labels/tile0.tif",
        "labels/tile1.tif",
        "points/tile0.csv",
        "points/tile1.csv",
    ]
    assert np.array_equal(read_rgb(out / "images" / "tile1.png"), _rgb(1))
    labels = read_label_map(out / "labels" / "tile0.tif")
    assert np.array_equal(labels, read_monuseg_xml(src / "annotations" / "tile0.xml", labels.shape))
    points = read_points(out / "points" / "tile0.csv")
    assert np.allclose(points, points_from_instances(labels)[0], atol=5e-4)
    assert np.allclose(points, [[9.0, 9.0], [24.5, 25.5]])  # XML centres minus 0.5
    captured = capsys.readouterr()
    assert f"prepared 2 tile(s), 4 nuclei -> {out}" in captured.out
    assert captured.err == ""


def test_monuseg_label_sources_and_xml_origin(tmp_path):
    src = _monuseg(tmp_path)
    instance = np.zeros((SIZE, SIZE), np.int32)
    instance[1:4, 1:4] = 7
    write_label_map(src / "labels_instance" / "tile1.png", instance)
    assert _prepare("monuseg", src, tmp_path / "auto") == 0  # tile1: map; tile0: XML
    assert np.array_equal(read_label_map(tmp_path / "auto" / "labels" / "tile1.tif"), instance)
    xml0 = read_monuseg_xml(src / "annotations" / "tile0.xml", (SIZE, SIZE))
    assert np.array_equal(read_label_map(tmp_path / "auto" / "labels" / "tile0.tif"), xml0)
    assert _prepare("monuseg", src, tmp_path / "xml", "--labels", "xml") == 0
    xml1 = read_label_map(tmp_path / "xml" / "labels" / "tile1.tif")
    assert np.array_equal(xml1, read_monuseg_xml(src / "annotations" / "tile1.xml", (SIZE, SIZE)))
    assert (
        _prepare("monuseg", src, tmp_path / "ml", "--labels", "xml", "--xml-origin", "matlab") == 0
    )
    matlab = read_label_map(tmp_path / "ml" / "labels" / "tile1.tif")
    shift = points_from_instances(matlab)[0] - points_from_instances(xml1)[0]
    assert np.allclose(shift, -0.5)  # pixel centres at 1.0: the map moves half a pixel up-left


def test_challenge_folder_names(tmp_path):
    src = _monuseg(tmp_path, n=1)
    (src / "images").rename(src / "Tissue Images")
    (src / "annotations").rename(src / "Annotations")
    assert _prepare("monuseg", src, tmp_path / "out") == 0
    assert len(_files(tmp_path / "out")) == 3


def _shifted(tmp_path, src, name, *extra):
    out = tmp_path / name
    assert _prepare("monuseg", src, out, "--shift", "4-6", *extra) == 0
    return {p.stem: read_points(p) for p in sorted((out / "points").glob("*.csv"))}


def test_shifted_points_reproducible_per_tile_and_seed_dependent(tmp_path):
    src = _monuseg(tmp_path)
    a = _shifted(tmp_path, src, "a", "--seed", "3")
    b = _shifted(tmp_path, src, "b", "--seed", "3")
    c = _shifted(tmp_path, src, "c", "--seed", "4")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"one": ["tile1"]}))
    alone = _shifted(tmp_path, src, "alone", "--seed", "3", "--split", split, "--subset", "one")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["tile0"], c["tile0"])
    assert not np.allclose(a["tile0"], a["tile1"])  # tiles get their own draws
    assert np.array_equal(alone["tile1"], a["tile1"])  # whatever else is prepared with it
    centres = np.array([[9.0, 9.0], [24.5, 25.5]])
    for points in (*a.values(), *c.values()):
        d = np.hypot(*(points - centres).T)
        assert ((d >= 4 - 1e-3) & (d < 6 + 1e-3)).all()  # the CSV keeps 3 decimals


def test_geojson_points_and_split_order(tmp_path):
    src = _monuseg(tmp_path, n=3)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["tile2", "tile0"], "test": ["tile1"]}))
    out = tmp_path / "out"
    argv = ["monuseg", src, out, "--split", split, "--subset", "train"]
    assert _prepare(*argv, "--points-format", "geojson") == 0
    assert _files(out) == [
        "images/tile0.png",
        "images/tile2.png",
        "labels/tile0.tif",
        "labels/tile2.tif",
        "points/tile0.geojson",
        "points/tile2.geojson",
    ]
    assert np.allclose(read_points(out / "points" / "tile2.geojson"), [[9.0, 9.0], [24.5, 25.5]])


def _cpm17(tmp_path, n=2):
    src = tmp_path / "cpm17" / "train"
    (src / "Images").mkdir(parents=True)
    (src / "Labels").mkdir()
    for i in range(n):
        Image.fromarray(_rgb(i)).save(src / "Images" / f"image_{i:02d}.png")
        inst = np.zeros((SIZE, SIZE))
        inst[2:6, 3:9] = 2
        inst[20:30, 20:25] = 5
        scipy.io.savemat(src / "Labels" / f"image_{i:02d}.mat", {"inst_map": inst})
    return src


def test_cpm17(tmp_path, capsys):
    src = _cpm17(tmp_path)
    out = tmp_path / "out"
    assert _prepare("cpm17", src, out) == 0
    assert len(_files(out)) == 6
    labels = read_label_map(out / "labels" / "image_01.tif")
    assert set(np.unique(labels)) == {0, 2, 5}
    assert np.allclose(read_points(out / "points" / "image_01.csv"), [[5.5, 3.5], [22.0, 24.5]])
    assert "prepared 2 tile(s), 4 nuclei" in capsys.readouterr().out


def _tnbc(tmp_path):
    src = tmp_path / "tnbc"
    (src / "images").mkdir(parents=True)
    (src / "labels_instance").mkdir()
    labels = np.zeros((SIZE, SIZE), np.uint16)
    labels[10:20, 10:20] = 3
    # 16-bit RGB TIFF (scaled to 8 bit) and an RGBA PNG (composited over white)
    tifffile.imwrite(src / "images" / "01_1.tif", _rgb(1).astype(np.uint16) * 257)
    rgba = np.dstack([_rgb(2), np.full((SIZE, SIZE), 0, np.uint8)])
    Image.fromarray(rgba).save(src / "images" / "01_2.png")
    Image.fromarray(labels).save(src / "labels_instance" / "01_1.png")
    Image.fromarray(labels).save(src / "labels_instance" / "01_2_label.png")
    return src


def test_folder_with_conversions(tmp_path):
    src = _tnbc(tmp_path)
    out = tmp_path / "out"
    assert _prepare("folder", src, out, "--labels", "labels_instance") == 0
    assert len(_files(out)) == 6
    assert np.array_equal(read_rgb(out / "images" / "01_1.png"), _rgb(1))
    assert (read_rgb(out / "images" / "01_2.png") == 255).all()  # transparent -> white
    assert np.allclose(read_points(out / "points" / "01_2.csv"), [[14.5, 14.5]])


def test_tiles_beyond_the_memory_budget_are_read_again_for_writing(tmp_path, monkeypatch):
    import instasam.cli.prepare as prepare

    src = _monuseg(tmp_path)
    assert _prepare("monuseg", src, tmp_path / "kept", "--shift", "2-4") == 0
    monkeypatch.setattr(prepare, "KEEP_IN_MEMORY_BYTES", 0)
    assert _prepare("monuseg", src, tmp_path / "reread", "--shift", "2-4") == 0
    for name in _files(tmp_path / "kept"):
        kept, reread = tmp_path / "kept" / name, tmp_path / "reread" / name
        if name.startswith("points"):
            assert kept.read_bytes() == reread.read_bytes()
        elif name.startswith("images"):
            assert np.array_equal(read_rgb(kept), read_rgb(reread))
        else:
            assert np.array_equal(read_label_map(kept), read_label_map(reread))


def test_warnings_go_to_stderr_and_empty_maps_are_kept(tmp_path, capsys):
    src = _monuseg(tmp_path, n=1)
    write_xml(
        src / "annotations" / "tile0.xml",
        region(1, [(1, 1), (2, 2)]),
        region(2, square(5, 5, 9, 9)),
    )
    write_label_map(src / "labels_instance" / "tile1.png", np.zeros((SIZE, SIZE), np.int32))
    tifffile.imwrite(src / "images" / "tile1.tif", _rgb(1))
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "old.png").write_bytes(b"")
    assert _prepare("monuseg", src, out) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0]
        == f"instasam: warning: {out / 'images'}: 1 other image(s) already there are left as is"
    )
    assert "tile0.xml: skipped 1 Region(s) with fewer than 3 vertices" in err[1]
    assert err[2].endswith("tile1.png: no nuclei; written with an empty points file")
    assert read_points(out / "points" / "tile1.csv").shape == (0, 2)


# ------------------------------------------------------------------- refusals
# Each case builds a source, breaks one thing, and returns (argv, what stderr must say).


def _bad_monuseg(tmp_path, what):
    src = _monuseg(tmp_path, n=3)  # the broken tile is the last one: nothing may be written
    out = tmp_path / "out"
    argv = ["monuseg", src, out]
    xml, tif = src / "annotations" / "tile2.xml", src / "images" / "tile2.tif"
    split = tmp_path / "split.json"
    if what == "malformed-xml":
        xml.write_text("<Annotations><Regions>")
        return argv, f"{xml}: malformed XML (no element found"
    if what == "missing-xml":
        xml.unlink()
        return argv, f"{tif}: no annotation for this image in annotations/"
    if what == "empty-xml":
        write_xml(xml)
        return argv, f"{xml}: empty annotation"
    if what == "outside":
        write_xml(xml, region(5, square(100, 100, 120, 120)))
        return argv, f"{xml}: Region 5 lies entirely outside the 40x40 image"
    if what == "bad-vertex":
        write_xml(xml, region(3, [(1, 1), ("x", 2), (3, 3)]))
        return argv, f"{xml}: Region 3: a Vertex lacks numeric X/Y"
    if what == "greyscale":
        Image.fromarray(np.full((SIZE, SIZE), 100, np.uint8)).save(tif)
        return argv, f"{tif}: greyscale image"
    if what == "corrupt-image":
        tif.write_bytes(b"definitely not a tiff")
        return argv, f"{tif}: cannot read image"
    if what == "broken-tiff":
        tif.write_bytes(b"II*\x00 a TIFF header and nothing else")
        return argv, f"{tif}: cannot read image (no image data in the TIFF)"
    if what == "no-src":
        return ["monuseg", tmp_path / "nowhere", out], f"{tmp_path / 'nowhere'}: folder not found"
    if what == "no-images-dir":
        (src / "images").rename(src / "pictures")
        return argv, f"{src}: no images/"
    if what == "duplicate-stem":
        Image.fromarray(_rgb()).save(src / "images" / "tile0.png")
        return argv, f"{src / 'images'}: two images are named 'tile0'"
    if what == "instance-missing":
        return [*argv, "--labels", "instance"], f"{src}: no labels_instance/ folder"
    if what == "instance-size":
        write_label_map(src / "labels_instance" / "tile2.png", np.ones((30, SIZE), np.int32))
        png = src / "labels_instance" / "tile2.png"
        return argv, f"{png}: size 40x30 differs from its image {tif} (40x40)"
    if what == "split-missing":
        return [*argv, "--split", split, "--subset", "train"], f"{split}: file not found"
    if what == "split-json":
        split.write_text("{train: ")
        return [*argv, "--split", split, "--subset", "train"], f"{split}: cannot read split"
    if what == "split-subset":
        split.write_text(json.dumps({"train": ["tile0"], "test": ["tile1"]}))
        return [*argv, "--split", split, "--subset", "val"], f"{split}: no subset 'val' (found"
    if what == "split-stem":
        split.write_text(json.dumps({"train": ["tile0", "tile9"]}))
        argv = [*argv, "--split", split, "--subset", "train"]
        return argv, f"{split}: 1 listed image(s) not in the source, e.g. 'tile9'"
    if what == "split-alone":
        split.write_text(json.dumps({"train": ["tile0"]}))
        return [*argv, "--split", split], f"{split}: --split needs --subset"
    if what == "bad-shift":
        return [*argv, "--shift", "6-4"], "--shift: shift range '6-4' needs LOW < HIGH"
    raise AssertionError(what)


def _bad_folder(tmp_path, what):
    src = _tnbc(tmp_path)
    out = tmp_path / "out"
    argv = ["folder", src, out, "--labels", "labels_instance"]
    labels_dir = src / "labels_instance"
    label = labels_dir / "01_2_label.png"
    if what == "size":
        Image.fromarray(np.ones((12, SIZE), np.uint16)).save(label)
        return argv, f"{label}: size 40x12 differs from its image {src / 'images' / '01_2.png'}"
    if what == "missing-label":
        label.unlink()
        return argv, f"{labels_dir}: no label map for 01_2.png"
    if what == "no-label-dir":
        return ["folder", src, out], f"{src / 'labels'}: label folder not found"
    if what == "rgb-label":
        Image.fromarray(_rgb()).save(label)
        return argv, f"{label}: label map must have one channel of instance ids"
    if what == "binary-mask":
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[2:5, 2:5] = mask[10:15, 10:15] = mask[30:35, 2:5] = 255
        Image.fromarray(mask).save(label)
        return argv, f"{label}: looks like a binary mask (one id, 255, over 3 separate objects)"
    if what == "negative":
        label.unlink()
        np.save(labels_dir / "01_2.npy", -np.ones((SIZE, SIZE), np.int32))
        return argv, f"{labels_dir / '01_2.npy'}: label map holds negative ids"
    if what == "out-is-src":
        argv = ["folder", src, src, "--labels", "labels_instance"]
        return argv, f"{src / 'images'} is also an input folder; choose another output folder"
    raise AssertionError(what)


def _bad_cpm17(tmp_path, what):
    src = _cpm17(tmp_path)
    out = tmp_path / "out"
    mat = src / "Labels" / "image_01.mat"
    if what == "missing-mat":
        mat.unlink()
        return ["cpm17", src, out], f"{mat}: missing; needed for image_01.png"
    if what == "no-inst-map":
        scipy.io.savemat(mat, {"instances": np.ones((SIZE, SIZE))})
        return ["cpm17", src, out], f"{mat}: no 'inst_map' variable (found: instances)"
    if what == "junk-mat":
        mat.write_bytes(b"\x00" * 10)
        return ["cpm17", src, out], f"{mat}: not a MATLAB .mat file"
    if what == "v73":
        header = b"MATLAB 7.3 MAT-file".ljust(116, b" ") + bytes(8) + b"\x00\x02IM"
        mat.write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + bytes(64))
        try:
            import h5py  # noqa: F401
        except ImportError:
            return ["cpm17", src, out], f"{mat}: MATLAB v7.3 (HDF5) .mat file; install h5py"
        return ["cpm17", src, out], f"{mat}: cannot read v7.3 .mat file"
    raise AssertionError(what)


REFUSALS = [
    *[
        (_bad_monuseg, w)
        for w in (
            "malformed-xml",
            "missing-xml",
            "empty-xml",
            "outside",
            "bad-vertex",
            "greyscale",
            "corrupt-image",
            "broken-tiff",
            "no-src",
            "no-images-dir",
            "duplicate-stem",
            "instance-missing",
            "instance-size",
            "split-missing",
            "split-json",
            "split-subset",
            "split-stem",
            "split-alone",
            "bad-shift",
        )
    ],
    *[
        (_bad_folder, w)
        for w in (
            "size",
            "missing-label",
            "no-label-dir",
            "rgb-label",
            "binary-mask",
            "negative",
            "out-is-src",
        )
    ],
    *[(_bad_cpm17, w) for w in ("missing-mat", "no-inst-map", "junk-mat", "v73")],
]


@pytest.mark.parametrize(
    ("build", "what"), REFUSALS, ids=[f"{b.__name__[5:]}-{w}" for b, w in REFUSALS]
)
def test_bad_input_is_refused_with_one_line_and_no_output(tmp_path, capsys, build, what):
    argv, expected = build(tmp_path, what)
    before = _files(tmp_path)
    assert _prepare(*argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("instasam: error: ") and expected in lines[0], lines[0]
    assert _files(tmp_path) == before  # nothing written, anywhere
    assert captured.out == ""


# ------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_monuseg_two_tile_copy(monuseg_root, tmp_path):
    train = monuseg_root / "train"
    with_xml, without_xml = "TCGA-A7-A13E-01Z-00-DX1", "TCGA-18-5592-01Z-00-DX1"
    src = tmp_path / "monuseg"
    for stem in (with_xml, without_xml):
        for folder, suffix in (("images", ".tif"), ("labels_instance", ".png")):
            (src / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(train / folder / f"{stem}{suffix}", src / folder)
    (src / "annotations").mkdir()
    shutil.copy(train / "annotations" / f"{with_xml}.xml", src / "annotations")

    out = tmp_path / "out"
    assert _prepare("monuseg", src, out) == 0
    assert len(_files(out)) == 6
    for stem in (with_xml, without_xml):
        labels = read_label_map(out / "labels" / f"{stem}.tif")
        assert np.array_equal(labels, read_label_map(src / "labels_instance" / f"{stem}.png"))
        points = read_points(out / "points" / f"{stem}.csv")
        assert len(points) == len(np.unique(labels)) - 1 > 300
        rows, cols = np.round(points[:, 1]).astype(int), np.round(points[:, 0]).astype(int)
        assert (labels[rows, cols] > 0).all()  # every point lies inside a nucleus
    assert read_rgb(out / "images" / f"{with_xml}.png").shape == (1000, 1000, 3)

    split = tmp_path / "split.json"
    split.write_text(json.dumps({"xml": [with_xml]}))
    argv = ["monuseg", src, tmp_path / "xml", "--labels", "xml", "--split", split]
    assert _prepare(*argv, "--subset", "xml") == 0
    from_xml = read_label_map(tmp_path / "xml" / "labels" / f"{with_xml}.tif")
    reference = read_label_map(src / "labels_instance" / f"{with_xml}.png")
    iou = ((from_xml > 0) & (reference > 0)).sum() / ((from_xml > 0) | (reference > 0)).sum()
    assert iou > 0.85 and from_xml.max() == reference.max()


@pytest.mark.realdata
def test_real_tnbc_subset(tnbc_root, tmp_path):
    out = tmp_path / "out"
    split = tnbc_root / "splits" / "train_val_test.json"
    argv = ["folder", tnbc_root, out, "--labels", "labels_instance", "--split", split]
    assert _prepare(*argv, "--subset", "val", "--shift", "2-4") == 0
    names = json.loads(split.read_text())["val"]  # file names: "07_1.png"
    assert _files(out / "images") == sorted(names)
    stems = [name.removesuffix(".png") for name in names]
    assert sum(len(read_points(out / "points" / f"{s}.csv")) for s in stems) == 1002  # SOURCE.md
