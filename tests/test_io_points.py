"""Point files: our CSV, QuPath GeoJSON and QuPath measurement tables."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from instasam.errors import InputError
from instasam.io.points import (
    check_points_inside,
    read_points,
    write_points,
    write_points_csv,
    write_points_geojson,
)

POINTS = np.array([[10.0, 20.0], [3.25, 4.5], [1 / 3, 999.0]])


def test_csv_round_trip_keeps_three_decimals(tmp_path):
    write_points_csv(tmp_path / "p.csv", POINTS)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == ["x,y", "10,20", "3.25,4.5", "0.333,999"]
    assert np.allclose(read_points(tmp_path / "p.csv"), POINTS, atol=5e-4)
    write_points_csv(tmp_path / "none.csv", np.zeros((0, 2)))
    assert read_points(tmp_path / "none.csv").shape == (0, 2)


def test_csv_tolerates_extra_columns_upper_case_bom_quotes_and_blank_lines(tmp_path):
    (tmp_path / "p.csv").write_text('\ufeffid,"Y",X,class\n1,20,10,tumour\n\n2, 4.5 ,3.25,x\n')
    assert np.allclose(read_points(tmp_path / "p.csv"), POINTS[:2])


def test_geojson_round_trip_in_qupath_conventions(tmp_path):
    write_points_geojson(tmp_path / "p.geojson", POINTS[:2])
    data = json.loads((tmp_path / "p.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    # QuPath measures from the image corner: the centre of pixel column 10 is x = 10.5.
    assert data["features"][0] == {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [10.5, 20.5]},
        "properties": {"objectType": "annotation"},
    }
    assert np.allclose(read_points(tmp_path / "p.geojson"), POINTS[:2])
    write_points_geojson(tmp_path / "c.geojson", POINTS[:1], classification="Nucleus")
    properties = json.loads((tmp_path / "c.geojson").read_text())["features"][0]["properties"]
    assert properties == {
        "objectType": "annotation",
        "classification": {"name": "Nucleus", "color": [255, 200, 0]},
    }


def test_write_points_picks_the_format_from_the_suffix(tmp_path):
    write_points(tmp_path / "a.csv", POINTS)
    write_points(tmp_path / "a.geojson", POINTS)
    assert (tmp_path / "a.csv").read_text().startswith("x,y\n")
    assert json.loads((tmp_path / "a.geojson").read_text())["type"] == "FeatureCollection"
    with pytest.raises(ValueError, match=r"not '\.txt'"):
        write_points(tmp_path / "a.txt", POINTS)


MULTI = {
    "type": "Feature",
    "geometry": {"type": "MultiPoint", "coordinates": [[1.5, 2.5], [3.5, 4.5]]},
    "properties": {"objectType": "annotation"},
}
POLYGON = {
    "type": "Feature",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
    "properties": {"objectType": "detection"},
}
POINT = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5.5, 6.5, 0.0]}}


@pytest.mark.parametrize(
    "data",
    [
        {"type": "FeatureCollection", "features": [MULTI, POINT]},
        [MULTI, POINT],  # QuPath's plain JSON array export
    ],
    ids=["collection", "list"],
)
def test_geojson_collections_lists_multipoints(tmp_path, data):
    (tmp_path / "p.geojson").write_text(json.dumps(data))
    assert np.allclose(read_points(tmp_path / "p.geojson"), [[1, 2], [3, 4], [5, 6]])


def test_geojson_single_feature_with_json_suffix(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(MULTI))
    assert np.allclose(read_points(tmp_path / "one.json"), [[1, 2], [3, 4]])


def test_geojson_non_point_features_are_ignored_with_one_counting_warning(tmp_path):
    data = {"type": "FeatureCollection", "features": [POLYGON, MULTI, POLYGON, {"type": "x"}]}
    (tmp_path / "mixed.geojson").write_text(json.dumps(data))
    with pytest.warns(UserWarning) as caught:
        points = read_points(tmp_path / "mixed.geojson")
    assert len(caught) == 1
    assert "mixed.geojson: ignored 3 feature(s) that are not points (Polygon: 2" in str(
        caught[0].message
    )
    assert np.allclose(points, [[1, 2], [3, 4]])


def test_qupath_tables_in_pixels_and_microns(tmp_path):
    (tmp_path / "px.tsv").write_text(
        "Image\tName\tCentroid X px\tCentroid Y px\na.tif\tn\t10.5\t20.5\n"
    )
    assert np.allclose(read_points(tmp_path / "px.tsv"), [[10.0, 20.0]])
    (tmp_path / "um.txt").write_text("Image\tCentroid X µm\tCentroid Y µm\na.tif\t2.625\t5.125\n")
    with pytest.raises(InputError, match=r"um\.txt: centroids are in µm; pass --mpp"):
        read_points(tmp_path / "um.txt")
    with pytest.raises(InputError, match="microns per pixel must be positive"):
        read_points(tmp_path / "um.txt", mpp=0)
    assert np.allclose(read_points(tmp_path / "um.txt", mpp=0.25), [[10.0, 20.0]])
    # Greek mu instead of the micro sign, comma-separated, and px preferred over µm
    (tmp_path / "both.csv").write_text(
        "Centroid X μm,Centroid Y μm,Centroid X px,Centroid Y px\n99,99,3.5,4.5\n"
    )
    assert np.allclose(read_points(tmp_path / "both.csv"), [[3.0, 4.0]])
    (tmp_path / "mu.csv").write_text("Centroid X μm,Centroid Y μm\n1,2\n")
    assert np.allclose(read_points(tmp_path / "mu.csv", mpp=0.5), [[1.5, 3.5]])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.csv", "x,y\n1,2\n3,oops\n", "line 3: x/y are not numbers ('3', 'oops')"),
        ("short.csv", "x,y\n1,2\n3\n", "line 3: missing x/y value"),
        ("nan.csv", "x,y\n1,nan\n", "line 2: x/y are not finite"),
        ("qp.tsv", "Centroid X px\tCentroid Y px\nNaN\t3\n", "line 2: x/y are not finite"),
        ("cols.csv", "a,b\n1,2\n", "no point columns: expected 'x,y' or QuPath's"),
        ("onlyx.csv", "x,z\n1,2\n", "no point columns"),
        ("empty.csv", "", "empty points file"),
        ("broken.geojson", "{not json", "malformed GeoJSON"),
        ("nopoints.geojson", '{"type": "FeatureCollection", "features": []}', "no Point or"),
        ("polys.geojson", json.dumps([POLYGON]), "no Point or MultiPoint features (found: 1 Pol"),
        ("nofeat.geojson", '{"type": "FeatureCollection"}', "without a 'features' list"),
        ("other.json", '{"type": "Topology"}', "expected a GeoJSON FeatureCollection"),
        (
            "coords.geojson",
            json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1]}}),
            "feature 1: bad Point coordinates",
        ),
        ("p.xyz", "x,y\n", "unknown points format '.xyz'"),
    ],
)
def test_bad_point_files_name_the_file_and_problem(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as info, warnings.catch_warnings():
        warnings.simplefilter("error")  # refusals come without warnings
        read_points(tmp_path / name)
    assert str(info.value).startswith(f"{tmp_path / name}: ")
    assert message in str(info.value)


def test_missing_points_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_points(tmp_path / "p.csv")


def test_points_outside_the_image_are_refused(tmp_path):
    path = tmp_path / "p.csv"
    # The image covers [-0.5, W - 0.5] x [-0.5, H - 0.5]: the outer edges count as inside.
    check_points_inside(np.array([[-0.5, -0.5], [99.5, 49.5], [0, 0]]), (50, 100), path)
    check_points_inside(np.zeros((0, 2)), (50, 100), path)
    with pytest.raises(InputError, match=r"p\.csv: 1 point\(s\) outside the 100x50 image, e"):
        check_points_inside(np.array([[5.0, 5.0], [99.6, 5.0]]), (50, 100), path)
    with pytest.raises(InputError, match=r"2 point\(s\) outside .* point 1 at \(nan, 1.0\)"):
        check_points_inside(np.array([[np.nan, 1.0], [1.0, -0.6]]), (50, 100), path)
