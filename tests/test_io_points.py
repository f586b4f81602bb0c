"""Point files: CSV, QuPath GeoJSON and QuPath measurement tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instasam.errors import InputError
from instasam.io.points import (
    check_points_inside,
    read_points,
    write_points_csv,
    write_points_geojson,
)

POINTS = np.array([[10.0, 20.0], [3.25, 4.5]])


def test_csv_round_trip(tmp_path):
    write_points_csv(tmp_path / "p.csv", POINTS)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "x,y"
    assert np.allclose(read_points(tmp_path / "p.csv"), POINTS)


def test_geojson_round_trip_and_qupath_pixel_convention(tmp_path):
    write_points_geojson(tmp_path / "p.geojson", POINTS)
    data = json.loads((tmp_path / "p.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    feature = data["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    # QuPath measures from the image corner: the centre of pixel column 10 is x = 10.5.
    assert feature["geometry"] == {"type": "Point", "coordinates": [10.5, 20.5]}
    assert np.allclose(read_points(tmp_path / "p.geojson"), POINTS)


def test_geojson_multipoint_list_and_single_feature(tmp_path):
    multi = {
        "type": "Feature",
        "geometry": {"type": "MultiPoint", "coordinates": [[1.5, 2.5], [3.5, 4.5]]},
        "properties": {},
    }
    polygon = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
    }
    (tmp_path / "list.geojson").write_text(json.dumps([multi, polygon]))
    (tmp_path / "one.json").write_text(json.dumps(multi))
    expected = [[1.0, 2.0], [3.0, 4.0]]
    assert np.allclose(read_points(tmp_path / "list.geojson"), expected)
    assert np.allclose(read_points(tmp_path / "one.json"), expected)


def test_qupath_tables_in_pixels_and_microns(tmp_path):
    (tmp_path / "px.tsv").write_text(
        "Image\tName\tCentroid X px\tCentroid Y px\na.tif\tn\t10.5\t20.5\n"
    )
    assert np.allclose(read_points(tmp_path / "px.tsv"), [[10.0, 20.0]])
    (tmp_path / "um.tsv").write_text("Image\tCentroid X µm\tCentroid Y µm\na.tif\t2.625\t5.125\n")
    with pytest.raises(InputError, match="--mpp"):
        read_points(tmp_path / "um.tsv")
    assert np.allclose(read_points(tmp_path / "um.tsv", mpp=0.25), [[10.0, 20.0]])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.csv", "x,y\n1,2\n3,oops\n", "line 3"),
        ("cols.csv", "a,b\n1,2\n", "no point columns"),
        ("empty.csv", "", "empty"),
        ("broken.geojson", "{not json", "malformed GeoJSON"),
        ("nopoints.geojson", '{"type": "FeatureCollection", "features": []}', "no Point"),
        ("p.xyz", "x,y\n", "unknown points format"),
    ],
)
def test_bad_point_files_name_the_problem(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_points(tmp_path / name)
    assert name in str(info.value)


def test_points_outside_the_image_are_refused(tmp_path):
    check_points_inside(np.array([[0.0, 0.0], [99.4, 49.4]]), (50, 100), tmp_path / "p.csv")
    with pytest.raises(InputError, match="1 point"):
        check_points_inside(np.array([[5.0, 5.0], [120.0, 5.0]]), (50, 100), tmp_path / "p.csv")
