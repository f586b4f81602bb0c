"""Outline overlays and the HTML report."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instasam.errors import InputError
from instasam.io.labels import write_label_map
from instasam.io.overlays import (
    GT_COLOUR,
    PRED_COLOUR,
    downscale_for_display,
    outline_mask,
    overlay_outlines,
    overlay_png_bytes,
    write_overlay_png,
)
from instasam.metrics import METRIC_KEYS
from instasam.report import REPORT_NAME, aji_bar_svg, build_report_html, write_report


def two_touching_squares() -> np.ndarray:
    labels = np.zeros((9, 12), np.int32)
    labels[2:7, 1:6] = 4
    labels[2:7, 6:11] = 9  # touches nucleus 4
    return labels


def test_outline_mask_is_the_inner_border_and_separates_touching_nuclei():
    labels = two_touching_squares()
    mask = outline_mask(labels)
    assert not mask[labels == 0].any()  # outlines stay inside the nuclei
    assert mask[2, 1:6].all() and mask[6, 1:6].all()  # top and bottom rows of nucleus 4
    assert not mask[4, 3]  # interior
    assert mask[4, 5] and mask[4, 6]  # both sides of the shared border
    assert mask[labels == 4].sum() == 16  # 5x5 square minus its 3x3 interior
    assert outline_mask(labels, thickness=2)[labels == 4].sum() == 24  # minus 1x1


def test_overlay_outlines_colours_order_and_input_untouched():
    labels = two_touching_squares()
    other = np.zeros_like(labels)
    other[2:7, 1:6] = 1  # same outline as nucleus 4
    image = np.full((*labels.shape, 3), 50, np.uint8)
    before = image.copy()
    out = overlay_outlines(image, [labels, other], [GT_COLOUR, "#ff0000"])
    assert out.dtype == np.uint8 and out.shape == (*labels.shape, 3)
    np.testing.assert_array_equal(image, before)
    assert tuple(out[2, 8]) == GT_COLOUR  # nucleus 9 outline
    assert tuple(out[2, 2]) == (255, 0, 0)  # later map drawn on top
    assert tuple(out[4, 3]) == (50, 50, 50)  # interior keeps the image
    grey = overlay_outlines(None, [labels], [PRED_COLOUR])
    assert tuple(grey[0, 0]) == (128, 128, 128)
    assert tuple(grey[2, 2]) == PRED_COLOUR


def test_overlay_outlines_refuses_mismatches():
    labels = two_touching_squares()
    with pytest.raises(ValueError, match="does not match"):
        overlay_outlines(np.zeros((5, 5, 3), np.uint8), [labels], [GT_COLOUR])
    with pytest.raises(ValueError, match="colours"):
        overlay_outlines(None, [labels, labels], [GT_COLOUR])
    with pytest.raises(ValueError, match="rrggbb"):
        overlay_outlines(None, [labels], ["red"])


def test_write_overlay_png_round_trip(tmp_path: Path):
    labels = two_touching_squares()
    image = np.zeros((*labels.shape, 3), np.uint8)
    path = tmp_path / "sub" / "overlay.png"
    write_overlay_png(path, image, labels, (10, 200, 30))
    back = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(back, overlay_outlines(image, [labels], [(10, 200, 30)]))
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]  # no temp file left


def test_downscale_keeps_ids_and_shrinks_image():
    labels = np.kron(two_touching_squares(), np.ones((100, 100), np.int32))  # 900 x 1200
    image = np.zeros((*labels.shape, 3), np.uint8)
    small_image, (small,) = downscale_for_display(image, [labels], 300)
    assert small.shape == (225, 300) and small_image.shape == (225, 300, 3)
    assert set(np.unique(small)) == {0, 4, 9}
    same_image, (same,) = downscale_for_display(image, [labels], 2000)
    assert same.shape == labels.shape and same_image is image


def test_palette_png_keeps_exact_outline_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)  # > 256 colours
    labels = np.kron(two_touching_squares(), np.ones((10, 10), np.int32))
    png = overlay_png_bytes(image, [labels], [GT_COLOUR])
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    mask = outline_mask(labels)
    assert (decoded[mask] == GT_COLOUR).all()
    assert not (decoded[~mask] == GT_COLOUR).all(axis=-1).any()


def _results(stems: list[str]) -> dict:
    images = {s: dict.fromkeys(METRIC_KEYS, 0.25 + 0.1 * k) for k, s in enumerate(stems)}
    mean = {key: float(np.mean([images[s][key] for s in stems])) for key in METRIC_KEYS}
    return {"images": images, "mean": mean}


def test_aji_svg_is_well_formed_and_has_one_bar_per_image():
    results = _results(["a<b", "c&d", "e"])
    svg = aji_bar_svg(results)
    root = ET.fromstring(svg)  # escaping of odd stems keeps it valid XML
    bars = root.findall("{http://www.w3.org/2000/svg}rect")
    assert len(bars) == 3
    widths = [float(b.get("width")) for b in bars]
    assert widths == sorted(widths) and widths[0] > 0


def test_write_report_embeds_downscaled_overlays(tmp_path: Path):
    gt = np.kron(two_touching_squares(), np.ones((80, 80), np.int32))  # 720 x 960
    for folder in ("gt", "pred"):
        write_label_map(tmp_path / folder / "big.png", gt)
    path = write_report(tmp_path / "out", _results(["big"]), tmp_path / "gt", tmp_path / "pred")
    assert path == tmp_path / "out" / REPORT_NAME
    text = path.read_text()
    (data,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        assert max(im.size) == 480
    assert "Dice_obj" in text and "mean" in text


def test_report_refuses_a_missing_label_file(tmp_path: Path):
    write_label_map(tmp_path / "gt" / "x.png", two_touching_squares())
    (tmp_path / "pred").mkdir()
    with pytest.raises(InputError, match="no label file"):
        build_report_html(_results(["x"]), tmp_path / "gt", tmp_path / "pred")
