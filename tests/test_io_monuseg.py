"""MoNuSeg Aperio XML: rasterisation, its pixel convention, refusals, folder layouts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from instasam.errors import InputError
from instasam.io.labels import read_label_map, write_label_map
from instasam.io.monuseg import (
    list_monuseg,
    load_monuseg_tile,
    monuseg_layout,
    read_monuseg_regions,
    read_monuseg_xml,
)
from instasam.io.points import QUPATH_OFFSET
from instasam.points import points_from_instances

XML_HEAD = '<?xml version="1.0"?>\n<Annotations><Annotation Id="1"><Regions>'
XML_TAIL = "</Regions></Annotation></Annotations>"


def region(rid: int | str, vertices: list[tuple[float, float]]) -> str:
    vs = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
    return f'<Region Id="{rid}"><Vertices>{vs}</Vertices></Region>'


def square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def write_xml(path, *regions: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(XML_HEAD + "".join(regions) + XML_TAIL)


def test_regions_in_order_later_wins_and_pixel_centres_at_half(tmp_path):
    # XML measures from the image corner: pixel c spans [c, c+1], its centre is c + 0.5.
    write_xml(tmp_path / "a.xml", region(7, square(1, 1, 5, 5)), region(9, square(4, 4, 8, 8)))
    labels = read_monuseg_xml(tmp_path / "a.xml", (10, 12))
    expected = np.zeros((10, 12), np.int32)
    expected[1:5, 1:5] = 1  # exactly the 4x4 pixels inside the 4x4 square, no outline extra
    expected[4:8, 4:8] = 2  # the overlap goes to the later Region
    assert np.array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_xml_coordinates_agree_with_point_and_qupath_conventions(tmp_path):
    # A square centred at XML (6, 4) gives the point (5.5, 3.5) in our pixel-centre
    # convention, which QuPath (same corner origin as Aperio) shows at (6, 4) again.
    write_xml(tmp_path / "c.xml", region(1, square(3, 1, 9, 7)))
    points, _ = points_from_instances(read_monuseg_xml(tmp_path / "c.xml", (10, 12)))
    assert np.allclose(points, [[5.5, 3.5]])
    assert np.allclose(points + QUPATH_OFFSET, [[6.0, 4.0]])


def test_matlab_pixel_centres_shift_the_map_half_a_pixel(tmp_path):
    write_xml(tmp_path / "m.xml", region(1, square(1.7, 1.7, 5.7, 5.7)))
    corner = read_monuseg_xml(tmp_path / "m.xml", (10, 10))
    matlab = read_monuseg_xml(tmp_path / "m.xml", (10, 10), pixel_centre=1.0)
    assert np.array_equal(np.nonzero(corner.any(0))[0], [2, 3, 4, 5])  # c + 0.5 in [1.7, 5.7]
    assert np.array_equal(np.nonzero(matlab.any(0))[0], [1, 2, 3, 4])  # c + 1.0 in [1.7, 5.7]


def test_partly_outside_is_clipped(tmp_path):
    write_xml(
        tmp_path / "clip.xml", region(1, square(-5, -5, 3, 3)), region(2, square(8, 8, 14, 9))
    )
    labels = read_monuseg_xml(tmp_path / "clip.xml", (10, 10))
    assert (labels[0:3, 0:3] == 1).all() and (labels == 1).sum() == 9
    assert (labels[8, 8:10] == 2).all() and (labels == 2).sum() == 2


@pytest.mark.parametrize(
    "vertices",
    [square(50, 50, 60, 60), square(10.2, 2, 12, 4), square(-4, -4, -0.1, 3)],
    ids=["far", "just-right", "just-left"],
)
def test_entirely_outside_is_refused_naming_the_region(tmp_path, vertices):
    write_xml(tmp_path / "out.xml", region(1, square(1, 1, 3, 3)), region(42, vertices))
    with pytest.raises(InputError, match="Region 42 lies entirely outside the 10x10 image") as e:
        read_monuseg_xml(tmp_path / "out.xml", (10, 10))
    assert "out.xml" in str(e.value)


def test_degenerate_regions_are_skipped_with_a_warning_keeping_ids(tmp_path):
    write_xml(
        tmp_path / "d.xml",
        region(1, [(1, 1), (2, 2)]),
        region(2, square(3, 3, 6, 6)),
        region(3, []),
    )
    with pytest.warns(UserWarning, match=r"d\.xml: skipped 2 Region\(s\) with fewer than 3"):
        labels = read_monuseg_xml(tmp_path / "d.xml", (10, 10))
    assert set(np.unique(labels)) == {0, 2}  # id 2 stays the 2nd Region


def test_sliver_thinner_than_a_pixel_keeps_its_vertex_pixel(tmp_path):
    write_xml(tmp_path / "s.xml", region(1, [(2.1, 2.1), (2.2, 2.1), (2.15, 2.2)]))
    labels = read_monuseg_xml(tmp_path / "s.xml", (6, 6))
    assert labels[2, 2] == 1 and labels.sum() == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Annotations><Regions><Region>", "malformed XML (no element found: line 1"),
        ("not xml at all", "malformed XML (syntax error: line 1, column 0)"),
        (XML_HEAD + XML_TAIL, "empty annotation (no Region elements)"),
        (XML_HEAD + region(3, [(1, 1), ("a", 2), (3, 3)]) + XML_TAIL, "Region 3: a Vertex lacks"),
        (XML_HEAD + '<Region Id="4"><Vertex X="1"/></Region>' + XML_TAIL, "Region 4: a Vertex"),
        (XML_HEAD + region(5, [(1, 1), ("nan", 2), (3, 3)]) + XML_TAIL, "Region 5: a Vertex has"),
        (XML_HEAD + region(6, [(1, 1), (2, 2)]) + XML_TAIL, "no nucleus covers any pixel"),
    ],
    ids=["truncated", "not-xml", "empty", "non-numeric", "no-y", "nan", "only-degenerate"],
)
def test_bad_xml_is_refused_naming_the_file(tmp_path, text, message):
    (tmp_path / "bad.xml").write_text(text)
    with pytest.raises(InputError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the only-degenerate case also warns
        read_monuseg_xml(tmp_path / "bad.xml", (10, 10))
    assert str(info.value).startswith(f"{tmp_path / 'bad.xml'}: ")
    assert message in str(info.value)


def test_missing_xml_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"missing\.xml: file not found"):
        read_monuseg_regions(tmp_path / "missing.xml")


def _tile(folder, stem, size=(20, 24), suffix=".tif"):
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), 200, np.uint8)
    path = folder / f"{stem}{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image)
    else:
        Image.fromarray(image).save(path)
    return path


def test_load_tile_from_xml_or_instance_map_with_size_check(tmp_path):
    image = _tile(tmp_path / "images", "t")
    write_xml(tmp_path / "t.xml", region(1, square(2, 2, 6, 6)))
    img, labels = load_monuseg_tile(image, tmp_path / "t.xml")
    assert img.shape == (20, 24, 3) and labels.shape == (20, 24) and labels.max() == 1
    write_label_map(tmp_path / "ok.png", labels)
    assert np.array_equal(load_monuseg_tile(image, tmp_path / "ok.png")[1], labels)
    write_label_map(tmp_path / "small.png", labels[:10])
    with pytest.raises(InputError, match=r"size 24x10 differs from its image .*t\.tif \(24x20\)"):
        load_monuseg_tile(image, tmp_path / "small.png")


def test_layouts_and_label_sources(tmp_path):
    src = tmp_path / "MoNuSeg"
    _tile(src / "Tissue Images", "a")
    _tile(src / "Tissue Images", "b")
    _tile(src / "Tissue Images", "c")
    write_xml(src / "Annotations" / "a.xml", region(1, square(1, 1, 4, 4)))
    write_xml(src / "Annotations" / "b.xml", region(1, square(1, 1, 4, 4)))
    write_label_map(src / "labels_instance" / "b.png", np.ones((20, 24), np.int32))
    write_label_map(src / "labels_instance" / "c_label.png", np.ones((20, 24), np.int32))
    images, xml, instance = monuseg_layout(src)
    assert (images.name, xml.name, instance.name) == (
        "Tissue Images",
        "Annotations",
        "labels_instance",
    )

    auto = {s.stem: s.label_path.name for s in list_monuseg(src)}
    assert auto == {"a": "a.xml", "b": "b.png", "c": "c_label.png"}
    assert [s.label_path.name for s in list_monuseg(src, only={"b"})] == ["b.png"]
    only_xml = list_monuseg(src, "xml", only={"a", "b"})
    assert [s.label_path.name for s in only_xml] == ["a.xml", "b.xml"]
    with pytest.raises(InputError, match=r"c\.tif: no annotation for this image in annotations/"):
        list_monuseg(src, "xml")
    with pytest.raises(InputError, match=r"a\.tif: no annotation .* in labels_instance/"):
        list_monuseg(src, "instance")


def test_layout_refusals(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        monuseg_layout(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no images/"):
        monuseg_layout(tmp_path)
    _tile(tmp_path / "images", "a")
    with pytest.raises(InputError, match=r"no annotations/ .* or labels_instance/"):
        monuseg_layout(tmp_path)
    write_xml(tmp_path / "annotations" / "a.xml", region(1, square(1, 1, 4, 4)))
    with pytest.raises(InputError, match="no labels_instance/ folder"):
        list_monuseg(tmp_path, "instance")
    _tile(tmp_path / "images", "a", suffix=".png")
    with pytest.raises(InputError, match="two images are named 'a'"):
        list_monuseg(tmp_path)


@pytest.mark.realdata
def test_real_xml_agrees_with_its_instance_map(monuseg_root):
    stem = "TCGA-A7-A13E-01Z-00-DX1"
    reference = read_label_map(monuseg_root / "train" / "labels_instance" / f"{stem}.png")
    xml = monuseg_root / "train" / "annotations" / f"{stem}.xml"
    n_regions = len(read_monuseg_regions(xml))
    for pixel_centre, min_iou in ((0.5, 0.85), (1.0, 0.97)):
        labels = read_monuseg_xml(xml, reference.shape, pixel_centre=pixel_centre)
        inter = np.logical_and(labels > 0, reference > 0).sum()
        union = np.logical_or(labels > 0, reference > 0).sum()
        assert inter / union > min_iou, (pixel_centre, inter / union)
        assert labels.max() == reference.max() == n_regions  # one id per Region, same order
        shared = (labels > 0) & (reference > 0)
        assert (labels[shared] == reference[shared]).mean() > 0.97
    image, labels = load_monuseg_tile(
        monuseg_root / "train" / "images" / f"{stem}.tif",
        monuseg_root / "train" / "labels_instance" / f"{stem}.png",
    )
    assert image.shape == (1000, 1000, 3) and image.dtype == np.uint8
    assert np.array_equal(labels, reference)
