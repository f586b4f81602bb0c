"""QuPath detections: GeoJSON schema, contours, coordinates and the streaming writer."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon2mask

from instasam.io.points import read_points, write_points_geojson
from instasam.io.qupath import (
    NUCLEUS_CLASS,
    GeoJSONDetectionWriter,
    id_namespace,
    instance_features,
    outline,
    write_detections,
)


def disk_labels(shape=(80, 90), disks=((20.3, 25.6, 9.0), (55.0, 60.0, 14.0), (10, 80, 4))):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for k, (cy, cx, r) in enumerate(disks, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return labels


def shoelace(ring) -> float:
    ring = np.asarray(ring, dtype=float)
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def test_feature_schema_is_what_qupath_imports_as_detections():
    (feature,) = instance_features(disk_labels()[:40, :45], mpp=0.5, namespace=id_namespace("s"))
    assert feature["type"] == "Feature"
    uuid.UUID(feature["id"])  # QuPath 0.4+ keeps UUID ids, ignores anything else
    geometry = feature["geometry"]
    assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 1
    ring = geometry["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) >= 4  # closed
    assert all(len(p) == 2 for p in ring)
    # Exterior ring counter-clockwise by the sign of the written numbers (RFC 7946).
    assert shoelace(ring) > 0
    props = feature["properties"]
    assert props["objectType"] == "detection"
    # From v0.4 QuPath rejects a classification object with a name but no colour.
    assert props["classification"]["name"] == NUCLEUS_CLASS
    assert len(props["classification"]["color"]) == 3
    m = props["measurements"]  # the {name: value} form QuPath 0.4/0.5 write and read
    assert {
        "Area px^2",
        "Area µm^2",
        "Centroid X px",
        "Centroid Y px",
        "Centroid X µm",
        "Centroid Y µm",
        "Perimeter px",
        "Perimeter µm",
        "Eccentricity",
    } <= set(m)
    assert m["Area µm^2"] == pytest.approx(m["Area px^2"] * 0.25)
    assert m["Centroid X µm"] == pytest.approx(m["Centroid X px"] * 0.5, abs=0.01)
    json.dumps(feature, allow_nan=False)  # plain JSON


def test_no_mpp_no_micron_measurements_and_no_ids():
    (feature,) = instance_features(disk_labels()[:40, :45])
    assert "id" not in feature
    names = set(feature["properties"]["measurements"])
    assert {"Area px^2", "Centroid X px", "Centroid Y px", "Perimeter px"} <= names
    assert not any("µm" in name for name in names)


@pytest.mark.parametrize("radius", [2.5, 4, 7, 12, 25])
def test_polygon_area_equals_the_pixel_count_and_is_close_to_the_disk(radius):
    labels = disk_labels((70, 70), ((34.2, 35.7, radius),))
    count = int((labels == 1).sum())
    (feature,) = instance_features(labels)
    ring = feature["geometry"]["coordinates"][0]
    # Traced through pixel corners: the polygon is the union of the nucleus's pixels.
    assert shoelace(ring) == count
    assert feature["properties"]["measurements"]["Area px^2"] == count
    assert shoelace(ring) == pytest.approx(np.pi * radius**2, rel=0.25 if radius < 4 else 0.05)


def test_no_collinear_vertices():
    (feature,) = instance_features(disk_labels((70, 70), ((34.2, 35.7, 20),)))
    ring = np.array(feature["geometry"]["coordinates"][0][:-1])
    a, b, c = ring, np.roll(ring, -1, axis=0), np.roll(ring, -2, axis=0)
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - b[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - b[:, 0])
    assert (cross != 0).all()
    assert len({tuple(p) for p in ring}) == len(ring)  # and no vertex twice


def test_rectangle_is_its_four_pixel_corners():
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[2:5, 3:8] = 7  # a 5 x 3 rectangle: columns 3-7, rows 2-4
    (feature,) = instance_features(labels)
    ring = feature["geometry"]["coordinates"][0]
    # QuPath's corner origin: pixel (r, c) spans [c, c+1] x [r, r+1].
    assert len(ring) == 5 and ring[0] == ring[-1]
    assert sorted(map(tuple, ring[:-1])) == [(3, 2), (3, 5), (8, 2), (8, 5)]
    m = feature["properties"]["measurements"]
    assert (m["Centroid X px"], m["Centroid Y px"]) == (5.5, 3.5)
    assert m["Area px^2"] == 15 == shoelace(ring)


def test_pixel_centres_follow_the_points_convention(tmp_path):
    """One pixel at row 4, column 9: our point (9, 4), QuPath's (9.5, 4.5), as in io/points."""
    labels = np.zeros((8, 12), dtype=np.int32)
    labels[4, 9] = 1
    (feature,) = instance_features(labels)
    ring = feature["geometry"]["coordinates"][0]
    assert sorted(map(tuple, ring[:-1])) == [(9, 4), (9, 5), (10, 4), (10, 5)]
    m = feature["properties"]["measurements"]
    write_points_geojson(tmp_path / "p.geojson", np.array([[9.0, 4.0]]))
    (point,) = json.loads((tmp_path / "p.geojson").read_text())["features"]
    assert point["geometry"]["coordinates"] == [m["Centroid X px"], m["Centroid Y px"]]
    # And QuPath's centroid read back as a point lands on the pixel centre again.
    point["geometry"]["coordinates"] = [m["Centroid X px"], m["Centroid Y px"]]
    (tmp_path / "c.geojson").write_text(json.dumps({"type": "Feature", **point}))
    assert read_points(tmp_path / "c.geojson").tolist() == [[9.0, 4.0]]


def test_outline_covers_exactly_the_region_on_random_masks():
    """Pixel centres inside the polygon are exactly the pixels of the (filled, largest) piece."""
    rng = np.random.default_rng(7)
    for trial in range(150):
        mask = rng.random((9, 11)) < (0.45 if trial % 2 else 0.7)
        if not mask.any():
            continue
        ring, count, (cx, cy) = outline(mask)
        assert len(set(ring)) == len(ring) and shoelace([*ring, ring[0]]) == count
        pieces, _ = ndimage.label(mask)
        sizes = np.bincount(pieces.ravel())[1:]
        # (row, col) polygon with pixel centres at integers, as polygon2mask expects.
        inside = polygon2mask(mask.shape, [(y - 0.5, x - 0.5) for x, y in ring])
        assert inside.sum() == count and (inside <= ndimage.binary_fill_holes(mask)).all()
        assert count >= sizes.max()  # the largest piece, holes filled
        rows, cols = np.nonzero(inside)
        assert (cx, cy) == pytest.approx((cols.mean() + 0.5, rows.mean() + 0.5))


def test_offset_and_scale_map_to_level_zero():
    labels = disk_labels()
    plain = instance_features(labels)
    moved = instance_features(labels, offset=(1000.0, 500.0), scale=(4.0, 4.0))
    for a, b in zip(plain, moved, strict=True):
        ra = np.array(a["geometry"]["coordinates"][0])
        rb = np.array(b["geometry"]["coordinates"][0])
        assert np.array_equal(rb, ra * 4 + [1000.0, 500.0])
        ma, mb = a["properties"]["measurements"], b["properties"]["measurements"]
        assert mb["Area px^2"] == pytest.approx(16 * ma["Area px^2"])
        assert mb["Centroid X px"] == pytest.approx(1000 + 4 * ma["Centroid X px"], abs=0.02)
        assert mb["Centroid Y px"] == pytest.approx(500 + 4 * ma["Centroid Y px"], abs=0.02)


def test_ids_select_and_are_stable_per_namespace():
    labels = disk_labels()
    some = instance_features(labels, ids=[3, 1, 99], namespace=id_namespace("a"))
    assert len(some) == 2
    again = instance_features(labels, ids=[1, 3], namespace=id_namespace("a"))
    other = instance_features(labels, ids=[1, 3], namespace=id_namespace("b"))
    assert [f["id"] for f in some] == [f["id"] for f in again]
    assert {f["id"] for f in some}.isdisjoint(f["id"] for f in other)


def test_sparse_large_ids():
    labels = disk_labels().astype(np.int64)
    labels[labels > 0] += 2_000_000_000 - 1  # ids 2e9, 2e9+1, 2e9+2
    every = instance_features(labels)
    assert len(every) == 3
    (second,) = instance_features(labels, ids=[2_000_000_001, 5])
    assert second == every[1]


def test_holes_filled_and_largest_piece_kept():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:25, 5:25] = 1
    labels[12:16, 12:16] = 0  # a hole
    labels[30:33, 40:43] = 1  # a stray piece with the same id
    labels[20, 50] = 2  # a single pixel
    labels[30, 5] = labels[31, 6] = labels[32, 7] = labels[32, 8] = 3  # corner-touching pieces
    first, single, diagonal = instance_features(labels)
    assert len(first["geometry"]["coordinates"]) == 1  # exterior ring only
    assert first["properties"]["measurements"]["Area px^2"] == 400  # hole filled
    assert shoelace(first["geometry"]["coordinates"][0]) == 400
    assert first["properties"]["measurements"]["Centroid X px"] == 15.0
    ring = single["geometry"]["coordinates"][0]
    assert len(ring) == 5 and shoelace(ring) == 1
    # Pixels touching only at a corner are separate pieces; the largest (two pixels) is kept.
    ring = diagonal["geometry"]["coordinates"][0]
    assert sorted(map(tuple, ring[:-1])) == [(7, 32), (7, 33), (9, 32), (9, 33)]
    assert diagonal["properties"]["measurements"]["Area px^2"] == 2


def test_a_tile_of_many_nuclei_gives_one_feature_each_with_its_area():
    # Speed on such a tile is measured by benchmarks/bench_wsi.py, not here.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1000, 0:1000]
    labels = np.zeros((1000, 1000), dtype=np.int32)
    k = 0
    for cy in range(18, 1000 - 12, 37):
        for cx in range(18, 1000 - 12, 37):
            k += 1
            r = rng.uniform(5, 14)
            box = (slice(cy - 15, cy + 16), slice(cx - 15, cx + 16))
            labels[box][(yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 <= r * r] = k
    features = instance_features(labels, mpp=0.25, namespace=id_namespace("t"))
    assert len(features) == k >= 700
    areas = sorted(f["properties"]["measurements"]["Area px^2"] for f in features)
    assert areas == sorted(np.bincount(labels.ravel())[1:].tolist())


# --- streaming writer ------------------------------------------------------------------------


def test_writer_streams_tiles_into_one_collection(tmp_path):
    path = tmp_path / "nuclei.geojson"
    labels = disk_labels()
    with GeoJSONDetectionWriter(path) as writer:
        writer.write_instances(labels, offset=(0.0, 0.0))
        assert not path.exists()  # nothing visible until complete
        writer.write_instances(labels, offset=(90.0, 0.0))
        writer.write_features([])
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 6
    assert writer.count == 6
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.geojson"]


def test_empty_collection_is_valid(tmp_path):
    assert write_detections(tmp_path / "none.geojson", np.zeros((5, 5), np.int32)) == 0
    assert json.loads((tmp_path / "none.geojson").read_text()) == {
        "type": "FeatureCollection",
        "features": [],
    }


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_writer_leaves_nothing_on_error(tmp_path, error):
    path = tmp_path / "nuclei.geojson"
    with pytest.raises(error), GeoJSONDetectionWriter(path) as writer:
        writer.write_instances(disk_labels())
        raise error()
    assert list(tmp_path.iterdir()) == []


def test_writer_error_keeps_the_previous_file(tmp_path):
    path = tmp_path / "nuclei.geojson"
    write_detections(path, disk_labels())
    before = path.read_bytes()
    with pytest.raises(ValueError), GeoJSONDetectionWriter(path) as writer:
        writer.write_instances(disk_labels()[:30])
        raise ValueError("tile 7 failed")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.geojson"]


def test_writer_abort_and_closed_state(tmp_path):
    writer = GeoJSONDetectionWriter(tmp_path / "a.geojson")
    writer.write_instances(disk_labels())
    writer.abort()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        writer.write_instances(disk_labels())


def test_detections_filled_back_give_the_instance_map_and_count_shared_pixels():
    from instasam.io.qupath import instance_features, labels_from_detections

    labels = np.zeros((40, 50), dtype=np.int32)
    yy, xx = np.mgrid[:40, :50]
    labels[(yy - 12) ** 2 + (xx - 14) ** 2 <= 36] = 1
    labels[8:20, 30:45] = 2
    labels[25:38, 5:12] = 3
    labels[25:30, 12:30] = 3  # an L shape
    features = instance_features(labels, offset=(0.0, 0.0), scale=1.0)
    back, shared = labels_from_detections(features, labels.shape)
    assert shared == 0 and np.array_equal(back, labels)
    _, shared = labels_from_detections(features + features[:1], labels.shape)
    assert shared == int((labels == 1).sum())
