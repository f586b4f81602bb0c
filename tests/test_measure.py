"""Per-nucleus measurements against values computed by hand on synthetic shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import hed2rgb
from skimage.draw import ellipse

from instasam.io.qupath import instance_features
from instasam.measure import nucleus_measurements


def _ellipse_map(a: float, b: float, degrees: float, size: int = 121) -> np.ndarray:
    labels = np.zeros((size, size), dtype=np.int32)
    rr, cc = ellipse(size // 2, size // 2, b, a, rotation=math.radians(degrees))
    labels[rr, cc] = 7
    return labels


def test_a_disk_has_its_diameter_perimeter_and_no_eccentricity():
    r = 20
    yy, xx = np.mgrid[:61, :61]
    labels = (((yy - 30) ** 2 + (xx - 30) ** 2) <= r * r).astype(np.int32)
    m = nucleus_measurements(labels)[1]
    assert m["Equivalent diameter px"] == pytest.approx(2 * r, rel=0.02)
    assert m["Perimeter px"] == pytest.approx(2 * math.pi * r, rel=0.05)
    assert m["Major axis px"] == pytest.approx(2 * r, rel=0.03)
    assert m["Eccentricity"] < 0.05 and m["Solidity"] > 0.95  # a pixel disk is not convex


def test_an_ellipse_has_its_axes_eccentricity_and_orientation():
    a, b = 30, 12
    for degrees in (0, 30, 90, -45):
        m = nucleus_measurements(_ellipse_map(a, b, degrees))[7]
        assert m["Major axis px"] == pytest.approx(2 * a, rel=0.03)
        assert m["Minor axis px"] == pytest.approx(2 * b, rel=0.05)
        assert m["Eccentricity"] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.01)
        # skimage's rotation turns the row axis towards the column axis: on screen (y up)
        # that is counter-clockwise, so the angle from the x axis is the same number.
        assert m["Orientation deg"] == pytest.approx(degrees, abs=1.0)


def test_scale_and_mpp_convert_lengths():
    m = nucleus_measurements(_ellipse_map(30, 12, 0), scale=2.0, mpp=0.25)[7]
    plain = nucleus_measurements(_ellipse_map(30, 12, 0))[7]
    assert m["Major axis px"] == pytest.approx(2 * plain["Major axis px"])
    assert m["Major axis µm"] == pytest.approx(0.25 * m["Major axis px"])
    assert m["Eccentricity"] == plain["Eccentricity"]


def test_stain_densities_come_back_from_a_known_haematoxylin_and_eosin_mix():
    # Optical densities of a dark purple nucleus and a pink one, mixed into RGB through the
    # H&E matrix's inverse and rounded to uint8 (RGB ~(121, 78, 177) and ~(205, 122, 222)).
    h, e = 0.08, 0.03
    hed = np.zeros((40, 40, 3))
    hed[:20] = (h, e, 0.0)  # nucleus 1
    hed[20:] = (0.02, 0.04, 0.0)  # nucleus 2
    rgb = np.round(hed2rgb(hed) * 255).astype(np.uint8)
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[:20] = 1
    labels[20:] = 2
    m = nucleus_measurements(labels, rgb)
    assert m[1]["Haematoxylin OD mean"] == pytest.approx(h, abs=0.002)
    assert m[1]["Eosin OD mean"] == pytest.approx(e, abs=0.002)
    assert m[2]["Haematoxylin OD mean"] == pytest.approx(0.02, abs=0.002)
    assert m[2]["Eosin OD mean"] == pytest.approx(0.04, abs=0.002)
    assert m[1]["Red mean"] == pytest.approx(rgb[0, 0, 0])
    assert m[1]["Haematoxylin OD mean"] > m[2]["Haematoxylin OD mean"]


def test_geojson_features_carry_the_measurements():
    labels = _ellipse_map(20, 10, 0)
    rgb = np.full((*labels.shape, 3), 200, dtype=np.uint8)
    (feature,) = instance_features(labels, image=rgb, mpp=0.5)
    values = feature["properties"]["measurements"]
    for name in ("Area px^2", "Perimeter px", "Eccentricity", "Solidity", "Orientation deg"):
        assert name in values
    assert values["Red mean"] == 200.0 and "Haematoxylin OD mean" in values
    assert values["Major axis µm"] == pytest.approx(0.5 * values["Major axis px"], rel=1e-4)
    (bare,) = instance_features(labels, measure=False)
    assert set(bare["properties"]["measurements"]) == {
        "Area px^2",
        "Centroid X px",
        "Centroid Y px",
    }
