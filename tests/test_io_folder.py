"""The dataset folder format: images/, labels/, points/ matched by stem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instasam.errors import InputError
from instasam.io.folder import LoadedSample, Sample, list_samples, load_sample
from instasam.io.labels import write_label_map


def _image(folder, name, shape=(8, 9)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*shape, 3), 200, np.uint8)).save(folder / name)


def _labels(shape=(8, 9)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[2:4, 2:4] = 1
    labels[5:7, 5:8] = 3
    return labels


def _dataset(root, label_shape=(8, 9), points="x,y\n2.5,2.5\n"):
    _image(root / "images", "a.png")
    write_label_map(root / "labels" / "a.tif", _labels(label_shape))
    (root / "points").mkdir(exist_ok=True)
    (root / "points" / "a.csv").write_text(points)
    return root


def test_lists_and_loads_a_complete_sample(tmp_path):
    _dataset(tmp_path)
    (sample,) = list_samples(tmp_path, require_labels=True, require_points=True)
    assert sample == Sample(
        "a",
        tmp_path / "images" / "a.png",
        tmp_path / "labels" / "a.tif",
        tmp_path / "points" / "a.csv",
    )
    loaded = load_sample(sample)
    assert isinstance(loaded, LoadedSample) and loaded.stem == "a"
    assert loaded.image.shape == (8, 9, 3) and loaded.image.dtype == np.uint8
    assert loaded.labels.dtype == np.int32 and np.array_equal(loaded.labels, _labels())
    assert loaded.points.dtype == np.float64 and np.allclose(loaded.points, [[2.5, 2.5]])


def test_labels_and_points_are_optional_and_any_supported_suffix(tmp_path):
    _image(tmp_path / "images", "a.png")
    _image(tmp_path / "images", "b.TIF")
    _image(tmp_path / "images", "c.jpg")
    (tmp_path / "labels").mkdir()
    np.save(tmp_path / "labels" / "b.npy", _labels())
    write_label_map(tmp_path / "labels" / "c.png", _labels())  # 16-bit PNG
    (tmp_path / "points").mkdir()
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3.5, 2.5]}}
    (tmp_path / "points" / "c.geojson").write_text(json.dumps(feature))
    (tmp_path / "labels" / "orphan.tif").write_bytes(b"")  # no image: ignored
    samples = list_samples(tmp_path)
    assert [(s.stem, s.label_path is not None, s.points_path is not None) for s in samples] == [
        ("a", False, False),
        ("b", True, False),
        ("c", True, True),
    ]
    loaded = [load_sample(s) for s in samples]
    assert loaded[0].labels is None and loaded[0].points is None
    assert np.array_equal(loaded[1].labels, _labels())
    assert np.allclose(loaded[2].points, [[3.0, 2.0]])  # QuPath coordinates, corner origin


def test_size_mismatch_names_both_files(tmp_path):
    _dataset(tmp_path, label_shape=(8, 10))
    (sample,) = list_samples(tmp_path)
    with pytest.raises(InputError) as info:
        load_sample(sample)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'labels' / 'a.tif'}: size 10x8 differs from its")
    assert f"image {tmp_path / 'images' / 'a.png'} (9x8)" in message


def test_points_outside_the_image_are_refused(tmp_path):
    _dataset(tmp_path, points="x,y\n2,2\n9.2,3\n")
    with pytest.raises(InputError, match=r"a\.csv: 1 point\(s\) outside the 9x8 image"):
        load_sample(list_samples(tmp_path)[0])


def test_required_parts_missing_name_the_image(tmp_path):
    _dataset(tmp_path)
    _image(tmp_path / "images", "b.png")
    with pytest.raises(InputError, match=r"labels: no label map for b\.png"):
        list_samples(tmp_path, require_labels=True)
    with pytest.raises(InputError, match=r"points: no points file for b\.png"):
        list_samples(tmp_path, require_points=True)


def test_folder_refusals(tmp_path):
    with pytest.raises(InputError, match=r"not a dataset folder \(no images/ inside\)"):
        list_samples(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="no images"):
        list_samples(tmp_path)
    _dataset(tmp_path)
    write_label_map(tmp_path / "labels" / "a.png", _labels())
    with pytest.raises(InputError, match=r"more than one file for 'a' \(a\.png, a\.tif\)"):
        list_samples(tmp_path)
    (tmp_path / "labels" / "a.png").unlink()
    _image(tmp_path / "images", "a.tif")
    with pytest.raises(InputError, match="two images are named 'a'"):
        list_samples(tmp_path)
