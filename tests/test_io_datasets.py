"""MoNuSeg XML, CPM17 .mat and the dataset folder format."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from instasam.errors import InputError
from instasam.io.cpm17 import read_cpm17_label
from instasam.io.folder import list_samples, load_sample
from instasam.io.labels import read_label_map, write_label_map
from instasam.io.monuseg import read_monuseg_xml

XML_HEAD = '<?xml version="1.0"?>\n<Annotations><Annotation Id="1"><Regions>'
XML_TAIL = "</Regions></Annotation></Annotations>"


def region(rid: int, vertices: list[tuple[float, float]]) -> str:
    vs = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
    return f'<Region Id="{rid}"><Vertices>{vs}</Vertices></Region>'


def square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def write_xml(path, *regions: str) -> None:
    path.write_text(XML_HEAD + "".join(regions) + XML_TAIL)


def test_xml_rasterises_regions_in_order_later_wins(tmp_path):
    write_xml(tmp_path / "a.xml", region(7, square(1, 1, 5, 5)), region(9, square(4, 4, 8, 8)))
    labels = read_monuseg_xml(tmp_path / "a.xml", (10, 12))
    # Pixel centres inside [1,5]x[1,5]: rows/cols 1..5 (skimage includes the boundary).
    assert labels[1, 1] == 1 and labels[3, 3] == 1
    assert labels[4, 4] == 2 and labels[5, 5] == 2  # the overlap goes to the later Region
    assert labels[0, 0] == 0 and labels[9, 11] == 0
    assert set(np.unique(labels)) == {0, 1, 2}


def test_xml_clips_partly_outside_and_refuses_entirely_outside(tmp_path):
    write_xml(tmp_path / "clip.xml", region(1, square(-5, -5, 3, 3)))
    assert read_monuseg_xml(tmp_path / "clip.xml", (10, 10))[0:4, 0:4].all()
    write_xml(
        tmp_path / "out.xml", region(1, square(1, 1, 3, 3)), region(42, square(50, 50, 60, 60))
    )
    with pytest.raises(InputError, match="Region 42 lies outside"):
        read_monuseg_xml(tmp_path / "out.xml", (10, 10))


def test_xml_errors_name_the_file(tmp_path):
    (tmp_path / "broken.xml").write_text("<Annotations><Region>")
    with pytest.raises(InputError, match="malformed XML") as info:
        read_monuseg_xml(tmp_path / "broken.xml", (10, 10))
    assert "broken.xml" in str(info.value)
    write_xml(tmp_path / "empty.xml")
    with pytest.raises(InputError, match="empty annotation"):
        read_monuseg_xml(tmp_path / "empty.xml", (10, 10))
    (tmp_path / "nan.xml").write_text(
        XML_HEAD + '<Region Id="3"><Vertices><Vertex X="a" Y="1"/></Vertices></Region>' + XML_TAIL
    )
    with pytest.raises(InputError, match="Region 3"):
        read_monuseg_xml(tmp_path / "nan.xml", (10, 10))
    with pytest.raises(InputError, match="not found"):
        read_monuseg_xml(tmp_path / "missing.xml", (10, 10))


def test_xml_skips_degenerate_regions_with_a_warning(tmp_path):
    write_xml(tmp_path / "d.xml", region(1, [(1, 1), (2, 2)]), region(2, square(3, 3, 6, 6)))
    with pytest.warns(UserWarning, match="fewer than 3"):
        labels = read_monuseg_xml(tmp_path / "d.xml", (10, 10))
    assert set(np.unique(labels)) == {0, 2}


@pytest.mark.realdata
def test_real_monuseg_xml_agrees_with_its_instance_png(monuseg_root):
    stem = "TCGA-A7-A13E-01Z-00-DX1"
    reference = read_label_map(monuseg_root / "train" / "labels_instance" / f"{stem}.png")
    labels = read_monuseg_xml(
        monuseg_root / "train" / "annotations" / f"{stem}.xml", reference.shape
    )
    inter = np.logical_and(labels > 0, reference > 0).sum()
    union = np.logical_or(labels > 0, reference > 0).sum()
    assert inter / union > 0.85  # SOURCE.md: 0.88-0.94 against a Pillow fill
    assert labels.max() == reference.max()  # one id per Region, same count


def test_cpm17_mat(tmp_path):
    inst = np.zeros((6, 7), np.int32)
    inst[1:3, 1:3] = 4
    scipy.io.savemat(
        tmp_path / "image_00.mat", {"inst_map": inst.astype(np.float64), "type_map": inst}
    )
    assert np.array_equal(read_cpm17_label(tmp_path / "image_00.mat"), inst)
    scipy.io.savemat(tmp_path / "other.mat", {"labels": inst})
    with pytest.raises(InputError, match="no 'inst_map'.*labels"):
        read_cpm17_label(tmp_path / "other.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(InputError, match="junk.mat"):
        read_cpm17_label(tmp_path / "junk.mat")


def _dataset(tmp_path, label_shape=(8, 9)):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((8, 9, 3), 200, np.uint8)).save(tmp_path / "images" / "a.png")
    labels = np.zeros(label_shape, np.int32)
    labels[2:4, 2:4] = 1
    write_label_map(tmp_path / "labels" / "a.tif", labels)
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "a.csv").write_text("x,y\n2.5,2.5\n")


def test_dataset_folder_lists_and_loads(tmp_path):
    _dataset(tmp_path)
    (sample,) = list_samples(tmp_path, require_labels=True, require_points=True)
    loaded = load_sample(sample)
    assert loaded.image.shape == (8, 9, 3) and loaded.labels.shape == (8, 9)
    assert np.allclose(loaded.points, [[2.5, 2.5]])


def test_dataset_folder_refuses_mismatched_sizes_and_missing_parts(tmp_path):
    _dataset(tmp_path, label_shape=(8, 10))
    (sample,) = list_samples(tmp_path)
    with pytest.raises(InputError, match="differs from its image a.png"):
        load_sample(sample)
    (tmp_path / "points" / "a.csv").unlink()
    with pytest.raises(InputError, match="no points file for a.png"):
        list_samples(tmp_path, require_points=True)
    with pytest.raises(InputError, match="no images/"):
        list_samples(tmp_path / "labels")
