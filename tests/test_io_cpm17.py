"""CPM17 ``.mat`` instance maps and the Images/ + Labels/ layout, on generated fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from instasam.errors import InputError
from instasam.io.cpm17 import cpm17_layout, list_cpm17, load_cpm17_tile, read_cpm17_label


def _inst(shape=(6, 7)) -> np.ndarray:
    inst = np.zeros(shape, np.int32)
    inst[1:3, 1:3] = 4
    inst[4:6, 2:7] = 1
    return inst


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint16, np.uint8])
def test_inst_map_is_read_as_int32(tmp_path, dtype):
    inst = _inst()
    scipy.io.savemat(
        tmp_path / "image_00.mat", {"inst_map": inst.astype(dtype), "type_map": inst * 0 + 2}
    )
    labels = read_cpm17_label(tmp_path / "image_00.mat")
    assert labels.dtype == np.int32 and np.array_equal(labels, inst)


def test_old_v4_mat_files_are_read(tmp_path):
    scipy.io.savemat(tmp_path / "v4.mat", {"inst_map": _inst().astype(np.float64)}, format="4")
    assert np.array_equal(read_cpm17_label(tmp_path / "v4.mat"), _inst())


def _v73_header() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def test_v73_hdf5_mat_needs_h5py(tmp_path):
    path = tmp_path / "v73.mat"
    try:
        import h5py
    except ImportError:
        path.write_bytes(_v73_header().ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + bytes(64))
        with pytest.raises(InputError, match=r"v73\.mat: MATLAB v7\.3 \(HDF5\).*install h5py"):
            read_cpm17_label(path)
        return
    # With h5py: a real v7.3 layout (512-byte MATLAB header as the HDF5 user block, the
    # array stored column-major, i.e. transposed) must read back as the original map.
    with h5py.File(path, "w", userblock_size=512) as mat:
        mat["inst_map"] = _inst().astype(np.float64).T
    with open(path, "r+b") as fh:
        fh.write(_v73_header())
    assert np.array_equal(read_cpm17_label(path), _inst())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"labels": _inst()}, "no 'inst_map' variable (found: labels)"),
        ({"inst_map": {"a": 1}}, "'inst_map' is not a numeric array"),
        ({"inst_map": _inst() - 2}, "negative ids"),
        ({"inst_map": _inst() + 0.5}, "non-integer values"),
        ({"inst_map": np.zeros((4, 4, 3))}, "one channel of instance ids"),
    ],
    ids=["no-key", "struct", "negative", "fractional", "colour"],
)
def test_bad_inst_map_is_refused_naming_the_file(tmp_path, content, message):
    scipy.io.savemat(tmp_path / "bad.mat", content)
    with pytest.raises(InputError) as info:
        read_cpm17_label(tmp_path / "bad.mat")
    assert str(info.value).startswith(f"{tmp_path / 'bad.mat'}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("junk.mat", b"not a mat file at all" * 10, "not a MATLAB .mat file"),
        ("empty.mat", b"", "not a MATLAB .mat file"),
    ],
)
def test_non_mat_files_are_refused(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=message) as info:
        read_cpm17_label(tmp_path / name)
    assert name in str(info.value)
    with pytest.raises(InputError, match="file not found"):
        read_cpm17_label(tmp_path / "missing.mat")


def _cpm17(root, names=("image_00", "image_01"), shape=(6, 7)):
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    for name in names:
        Image.fromarray(np.full((*shape, 3), 180, np.uint8)).save(root / "Images" / f"{name}.png")
        scipy.io.savemat(root / "Labels" / f"{name}.mat", {"inst_map": _inst(shape)})
    return root


def test_layout_lists_and_loads_tiles(tmp_path):
    root = _cpm17(tmp_path / "train")
    assert [p.name for p in cpm17_layout(root)] == ["Images", "Labels"]
    samples = list_cpm17(root)
    assert [(s.stem, s.label_path.name) for s in samples] == [
        ("image_00", "image_00.mat"),
        ("image_01", "image_01.mat"),
    ]
    assert [s.stem for s in list_cpm17(root, only={"image_01"})] == ["image_01"]
    image, labels = load_cpm17_tile(samples[0].image_path, samples[0].label_path)
    assert image.shape == (6, 7, 3) and np.array_equal(labels, _inst())


def test_layout_refusals(tmp_path):
    with pytest.raises(InputError, match="expected Images/ and Labels/"):
        cpm17_layout(tmp_path)
    root = _cpm17(tmp_path / "test")
    (root / "Labels" / "image_01.mat").unlink()
    with pytest.raises(InputError, match=r"Labels/image_01\.mat: missing; needed for image_01"):
        list_cpm17(root)
    scipy.io.savemat(root / "Labels" / "image_01.mat", {"inst_map": _inst((5, 7))})
    sample = list_cpm17(root)[1]
    with pytest.raises(InputError, match=r"image_01\.mat: size 7x5 differs from its image"):
        load_cpm17_tile(sample.image_path, sample.label_path)
