"""Whole-slide prediction on synthetic pyramidal TIFFs with known dark-disk nuclei.

The predictor here is a stand-in model (dark pixels -> connected components), not a mock:
it segments the synthetic nuclei exactly, so any miss, duplicate or cut nucleus is the
slide machinery's fault.
"""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from instasam.cli import main
from instasam.errors import InputError
from instasam.io import slides as slides_module
from instasam.io.slides import (
    SlideWarning,
    open_slide,
    tile_grid,
    tissue_mask_from_rgb,
)
from instasam.predict import InstancePredictor
from instasam.predict.slides import (
    SlidePredictConfig,
    partial_dir,
    predict_slide,
)

BACKGROUND = (242, 241, 243)
TISSUE = (226, 150, 192)
NUCLEUS = (72, 40, 112)
TILE, OVERLAP = 256, 64  # level-0 grid: starts 0, 192, 384, ...; core seams at 224, 416, ...


class DarkNuclei:
    """Stand-in model: pixels darker than ``threshold`` grouped into 8-connected objects."""

    def __init__(self, threshold: float = 130.0, mpp: float | None = None) -> None:
        self.threshold = threshold
        self.mpp = mpp
        self.calls = 0

    def predict_instances(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        dark = image.astype(np.float32).mean(axis=2) < self.threshold
        labels, _ = ndimage.label(dark, structure=np.ones((3, 3)))
        return labels.astype(np.int32)


class FailsAfter(DarkNuclei):
    """The stand-in model, interrupted after ``n`` tiles (like Ctrl-C or a crash)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def predict_instances(self, image: np.ndarray) -> np.ndarray:
        if self.calls >= self.n:
            raise KeyboardInterrupt
        return super().predict_instances(image)


def nucleus_centres(width: int, height: int, tissue_right: int) -> list[tuple[float, float]]:
    """Disk centres: a regular field plus nuclei on tile seams, tile edges and corners."""
    seams = [224, 416, 608]  # core boundaries of the 256/64 grid
    edges = [192, 256, 384, 448, 576]  # tile edges
    special = [(s, 120.0) for s in seams] + [(e, 330.0) for e in edges]
    special += [(224.0, 224.0), (416.0, 416.0), (223.5, 416.5), (192.0, 192.0), (256.0, 256.0)]
    special += [(4.0, 300.0), (300.0, 3.0), (100.0, height - 5.0)]  # cut by the slide border
    field = [
        (x + 0.3, y + 0.6)
        for y in range(40, height - 30, 46)
        for x in range(40, tissue_right - 30, 46)
    ]
    centres: list[tuple[float, float]] = []
    for cx, cy in special + field:  # keep disks apart so each stays one object
        if cx < tissue_right - 12 and all(np.hypot(cx - a, cy - b) > 26 for a, b in centres):
            centres.append((cx, cy))
    return centres


def render(width: int, height: int, tissue_right: int, seed: int = 0):
    """RGB level 0 and the true instance map of a synthetic slide."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND
    rgb[:, :tissue_right] = TISSUE
    truth = np.zeros((height, width), dtype=np.int32)
    yy, xx = np.mgrid[0:height, 0:width]
    for k, (cx, cy) in enumerate(nucleus_centres(width, height, tissue_right), start=1):
        r = 8.0 + 3.0 * rng.random()
        box = (
            slice(max(0, int(cy - r - 1)), int(cy + r + 2)),
            slice(max(0, int(cx - r - 1)), int(cx + r + 2)),
        )
        inside = (xx[box] - cx) ** 2 + (yy[box] - cy) ** 2 <= r * r
        truth[box][inside] = k
    rgb[truth > 0] = NUCLEUS
    noise = rng.integers(-3, 4, size=rgb.shape)
    rgb = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return rgb, truth


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float | None = 0.25, levels: int = 3) -> None:
    """A tiled pyramidal TIFF (SubIFDs), mpp in the resolution tags, read by tiffslide."""
    resolution = {}
    if mpp is not None:
        resolution = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            rgb,
            tile=(128, 128),
            subifds=levels - 1,
            photometric="rgb",
            compression="zlib",
            **resolution,
        )
        image = rgb
        for _ in range(levels - 1):
            h, w = image.shape[0] // 2, image.shape[1] // 2
            image = image[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
            image = np.round(image).astype(np.uint8)
            tif.write(image, tile=(128, 128), subfiletype=1, photometric="rgb", compression="zlib")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """1024 x 768 slide, tissue on the left 600 px: the right tile column is glass."""
    folder = tmp_path_factory.mktemp("slide")
    rgb, truth = render(1024, 768, tissue_right=600)
    path = folder / "synthetic.tif"
    write_pyramid(path, rgb)
    return path, truth


def features_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def truth_table(truth: np.ndarray) -> dict[int, tuple[int, float, float]]:
    """id -> (pixel count, centroid x, centroid y) in QuPath's corner coordinates."""
    ids = np.unique(truth)[1:]
    counts = ndimage.sum(np.ones_like(truth), truth, ids)
    cy, cx = np.array(ndimage.center_of_mass(np.ones_like(truth), truth, ids)).T
    return {
        int(i): (int(n), x + 0.5, y + 0.5) for i, n, x, y in zip(ids, counts, cx, cy, strict=True)
    }


def match(features: list[dict], truth: np.ndarray, tol: float) -> dict[int, list[dict]]:
    """Features whose centroid lies within ``tol`` px of each true nucleus's centroid."""
    found: dict[int, list[dict]] = {k: [] for k in truth_table(truth)}
    table = truth_table(truth)
    for f in features:
        m = f["properties"]["measurements"]
        x, y = m["Centroid X px"], m["Centroid Y px"]
        for k, (_, tx, ty) in table.items():
            if abs(tx - x) <= tol and abs(ty - y) <= tol:
                found[k].append(f)
    return found


# --- slides -------------------------------------------------------------------------------


def test_slide_levels_mpp_and_working_level(synthetic):
    path, _ = synthetic
    with open_slide(path) as slide:
        assert slide.level_count == 3 and slide.pyramidal
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.downsample(2) == (4.0, 4.0)
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "metadata"
        assert slide.working_level(0.25).level == 0 and slide.working_level(0.25).scale == 1.0
        half = slide.working_level(0.5)
        assert (half.level, half.level_mpp, half.scale) == (1, 0.5, 1.0)
        # No level between: read the finer one and reduce (never blow up a coarser one).
        assert slide.working_level(0.8).level == 1
        assert slide.working_level(0.8).scale == pytest.approx(0.625)
        assert slide.working_level(0.26).scale == 1.0  # within the 5 % tolerance
        assert slide.working_level(0.125).scale == pytest.approx(2.0)  # slide coarser
        assert slide.working_level(0.25, level=2).scale == pytest.approx(4.0)
        with pytest.raises(InputError, match="--level 3"):
            slide.working_level(0.25, level=3)
        region = slide.read(1, 10, 20, 30, 40)
        assert region.shape == (40, 30, 3) and region.dtype == np.uint8
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "user"


def test_mpp_from_ome_xml(tmp_path):
    """OME-TIFF pyramids (QuPath's and bfconvert's export) keep the pixel size in OME-XML."""
    rgb = np.full((256, 320, 3), TISSUE, dtype=np.uint8)
    path = tmp_path / "slide.ome.tif"
    metadata = {
        "axes": "YXS",
        "PhysicalSizeX": 252.7,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 252.7,
        "PhysicalSizeYUnit": "nm",
    }
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(rgb, tile=(128, 128), subifds=1, photometric="rgb", metadata=metadata)
        tif.write(rgb[::2, ::2], tile=(128, 128), subfiletype=1, photometric="rgb")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.2527) and slide.level_count == 2


def test_reads_exact_pixels_when_level_downsamples_differ_by_axis(tmp_path):
    """517 x 389 -> 258 x 194: the downsample is 2.004 in x and 2.005 in y."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(389, 517, 3), dtype=np.uint8)
    path = tmp_path / "odd.tif"
    write_pyramid(path, rgb, levels=2)
    with tifffile.TiffFile(path) as tif:
        level1 = tif.series[0].levels[1].asarray()
    with open_slide(path) as slide:
        assert slide.level_dimensions[1] == (258, 194)
        for x, y in [(0, 0), (1, 1), (255, 100), (249, 191), (257, 193), (130, 97)]:
            w, h = min(13, 258 - x), min(11, 194 - y)
            assert np.array_equal(slide.read(1, x, y, w, h), level1[y : y + h, x : x + w])


def test_tile_cores_partition_the_level():
    for size in [(1000, 700), (256, 256), (100, 1300), (1025, 513)]:
        tiles = tile_grid(size, 256, 64)
        cover = np.zeros(size[::-1], dtype=int)
        for t in tiles:
            cover[t.core_y[0] : t.core_y[1], t.core_x[0] : t.core_x[1]] += 1
            assert t.x + t.width <= size[0] and t.y + t.height <= size[1]
            # A core stays overlap/2 away from every inner edge.
            assert t.at_left or t.core_x[0] - t.x >= 32
            assert t.at_right or t.x + t.width - t.core_x[1] >= 32
        assert (cover == 1).all()
    with pytest.raises(InputError, match="--overlap"):
        tile_grid((500, 500), 64, 64)


def test_tissue_mask_finds_tissue_not_glass():
    glass = np.full((40, 50, 3), 238, dtype=np.uint8)
    glass += np.random.default_rng(0).integers(0, 6, size=glass.shape, dtype=np.uint8)
    assert not tissue_mask_from_rgb(glass)[0].any()
    all_tissue = np.zeros((40, 50, 3), dtype=np.uint8)
    all_tissue[:] = TISSUE
    all_tissue[10:20, 10:20] = NUCLEUS
    assert tissue_mask_from_rgb(all_tissue)[0].all()
    half = glass.copy()
    half[:, :25] = TISSUE
    mask, _ = tissue_mask_from_rgb(half)
    assert mask[:, :25].all() and not mask[:, 28:].any()
    black_border = glass.copy()
    black_border[:, :5] = 0  # scanner padding is not tissue
    assert not tissue_mask_from_rgb(black_border)[0].any()


def test_tissue_mask_drops_specks_and_fills_small_holes():
    rgb = np.zeros((60, 80, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND
    rgb[10:50, 10:40] = TISSUE
    rgb[28:31, 20:23] = BACKGROUND  # a small hole (a lumen) in the tissue
    rgb[5, 70] = rgb[40:42, 65:67] = TISSUE  # specks of dust on the glass
    raw, _ = tissue_mask_from_rgb(rgb)
    assert raw[5, 70] and raw[41, 66] and not raw[29, 21]
    mask, _ = tissue_mask_from_rgb(rgb, min_pixels=20)
    assert mask[10:50, 10:40].all() and mask[29, 21]
    assert not mask[:, 55:].any()


# --- every nucleus once ---------------------------------------------------------------------


def test_every_nucleus_exactly_once_with_full_area(synthetic, tmp_path):
    path, truth = synthetic
    model = DarkNuclei()
    out = tmp_path / "nuclei.geojson"
    with open_slide(path) as slide:
        run = predict_slide(
            slide, model, out, SlidePredictConfig(tile=TILE, overlap=OVERLAP), progress=False
        )
    features = features_of(out)
    table = truth_table(truth)
    found = match(features, truth, tol=0.01)
    assert {k: len(v) for k, v in found.items()} == dict.fromkeys(table, 1)
    assert len(features) == len(table) == run.nuclei
    for k, (count, _, _) in table.items():
        assert found[k][0]["properties"]["measurements"]["Area px^2"] == count
    # The glass column of tiles is never read, and nothing was cut or dropped.
    assert run.tiles_total == 20 and run.tiles_on_tissue == 16 and model.calls == 16
    assert run.dropped_at_edge == 0 and run.largest_reach < OVERLAP / 2
    assert not partial_dir(out).exists()
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i) for i in ids)
    # Shape and stain measurements of the synthetic disks (radius 8-11 px).
    m = features[0]["properties"]["measurements"]
    assert m["Eccentricity"] < 0.3 and m["Solidity"] > 0.9 and "Haematoxylin OD mean" in m


def test_measurements_can_be_left_out(synthetic, tmp_path):
    path, _ = synthetic
    out = tmp_path / "nuclei.geojson"
    config = SlidePredictConfig(tile=TILE, overlap=OVERLAP, measure=False)
    with open_slide(path) as slide:
        predict_slide(slide, DarkNuclei(), out, config, progress=False)
    names = set(features_of(out)[0]["properties"]["measurements"])
    assert "Eccentricity" not in names and "Area px^2" in names


def test_nucleus_larger_than_the_overlap_is_dropped_not_cut_and_reported(tmp_path):
    """An elongated nucleus 91 px wide across a seam: each tile sees it cut.

    With overlap 64 both cut pieces are owned by their own tile (each piece's centroid
    falls in its core), so without the edge rule the nucleus would appear twice, cut
    both times. It is dropped instead and the run says to raise the overlap; with
    overlap 128 it is found once, whole.
    """
    rgb = np.empty((256, 512, 3), dtype=np.uint8)
    rgb[:] = TISSUE
    yy, xx = np.mgrid[0:256, 0:512]
    big = ((xx - 224) / 45.5) ** 2 + ((yy - 128) / 12.0) ** 2 <= 1.0
    rgb[big] = NUCLEUS
    path = tmp_path / "big.tif"
    write_pyramid(path, rgb, levels=2)
    with open_slide(path) as slide:
        small = predict_slide(
            slide,
            DarkNuclei(),
            tmp_path / "small.geojson",
            SlidePredictConfig(tile=TILE, overlap=64),
            progress=False,
        )
        large = predict_slide(
            slide,
            DarkNuclei(),
            tmp_path / "large.geojson",
            SlidePredictConfig(tile=TILE, overlap=128),
            progress=False,
        )
    assert small.nuclei == 0 and small.dropped_at_edge == 2
    assert small.notes and "--overlap" in small.notes[0]
    assert large.nuclei == 1 and large.dropped_at_edge == 0
    (feature,) = features_of(tmp_path / "large.geojson")
    assert feature["properties"]["measurements"]["Area px^2"] == int(big.sum())


def test_coordinates_scaled_back_from_a_coarser_level(synthetic, tmp_path):
    path, truth = synthetic
    out = tmp_path / "level1.geojson"
    with open_slide(path) as slide:
        run = predict_slide(
            slide,
            DarkNuclei(),
            out,
            SlidePredictConfig(tile=128, overlap=32, target_mpp=0.5),
            progress=False,
        )
    assert run.working.level == 1 and run.working.scale == 1.0
    features = features_of(out)
    found = match(features, truth, tol=1.0)
    assert all(len(v) == 1 for v in found.values()) and len(features) == len(found)
    table = truth_table(truth)
    for k, (count, _, _) in table.items():
        area = found[k][0]["properties"]["measurements"]["Area px^2"]
        assert area == pytest.approx(count, rel=0.2)  # level-0 px^2, from a 2x coarser map
        xs = [p[0] for p in found[k][0]["geometry"]["coordinates"][0]]
        assert max(xs) <= 1024 and min(xs) >= 0


def test_resized_tiles_still_find_each_nucleus(synthetic, tmp_path):
    path, truth = synthetic
    out = tmp_path / "resized.geojson"
    with open_slide(path) as slide:
        run = predict_slide(
            slide,
            DarkNuclei(),
            out,
            SlidePredictConfig(tile=320, overlap=80, target_mpp=0.2),
            progress=False,
        )
    assert run.working.level == 0 and run.working.scale == pytest.approx(1.25)
    features = features_of(out)
    found = match(features, truth, tol=1.0)
    assert all(len(v) == 1 for v in found.values()) and len(features) == len(found)


def test_single_level_tiff_is_read_as_a_one_level_slide(tmp_path, monkeypatch):
    rgb, truth = render(300, 260, tissue_right=300, seed=1)
    path = tmp_path / "tile.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")  # no pyramid, no resolution tags
    with open_slide(path, mpp=0.25) as slide:
        assert slide.level_count == 1 and not slide.pyramidal
        run = predict_slide(slide, DarkNuclei(), tmp_path / "tile.geojson", progress=False)
    assert run.tiles_total == 1 and run.nuclei == len(truth_table(truth))
    monkeypatch.setattr(slides_module, "SINGLE_LEVEL_WARN_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_slide(path, mpp=0.25).close()
    assert any(issubclass(w.category, SlideWarning) for w in caught)


# --- resume ---------------------------------------------------------------------------------


def test_resume_skips_finished_tiles_and_gives_the_same_file(synthetic, tmp_path, capsys):
    path, _ = synthetic
    config = SlidePredictConfig(tile=TILE, overlap=OVERLAP)
    reference = tmp_path / "ref" / "nuclei.geojson"
    with open_slide(path) as slide:
        predict_slide(slide, DarkNuclei(), reference, config, progress=False)
        out = tmp_path / "run" / "nuclei.geojson"
        with pytest.raises(KeyboardInterrupt):
            predict_slide(slide, FailsAfter(5), out, config, progress=False)
        assert not out.exists()
        assert len(list(partial_dir(out).glob("*.jsonl"))) == 5
        with pytest.raises(InputError, match="other settings"):
            predict_slide(
                slide,
                DarkNuclei(),
                out,
                SlidePredictConfig(tile=300, overlap=OVERLAP),
                progress=False,
            )
        # What a SIGKILL during the final assembly leaves: its hidden temporary file.
        (out.parent / ".nuclei.k1ll3d.tmp.geojson").write_bytes(b"")
        model = DarkNuclei()
        capsys.readouterr()
        run = predict_slide(slide, model, out, config, progress=True)
    assert model.calls == 16 - 5 and run.tiles_resumed == 5 and run.tiles_predicted == 11
    # The bar counts the slide's nuclei, resumed tiles included.
    assert f"nuclei={run.nuclei}" in capsys.readouterr().err
    assert out.read_bytes() == reference.read_bytes()
    assert not partial_dir(out).exists()
    assert [p.name for p in out.parent.iterdir()] == ["nuclei.geojson"]


def test_no_resume_starts_over(synthetic, tmp_path):
    path, _ = synthetic
    out = tmp_path / "nuclei.geojson"
    config = SlidePredictConfig(tile=TILE, overlap=OVERLAP)
    with open_slide(path) as slide:
        with pytest.raises(KeyboardInterrupt):
            predict_slide(slide, FailsAfter(3), out, config, progress=False)
        model = DarkNuclei()
        predict_slide(
            slide,
            model,
            out,
            SlidePredictConfig(tile=300, overlap=OVERLAP),
            resume=False,
            progress=False,
        )
    assert model.calls > 0 and out.is_file() and not partial_dir(out).exists()


def test_points_inside_nuclei_are_counted_and_outside_refused(synthetic, tmp_path):
    path, truth = synthetic
    table = truth_table(truth)
    centres = np.array([[x - 0.5, y - 0.5] for _, x, y in table.values()])  # pixel centres
    points = np.vstack([centres, [[700.0, 400.0]]])  # one on glass
    out = tmp_path / "nuclei.geojson"
    with open_slide(path) as slide:
        run = predict_slide(
            slide,
            DarkNuclei(),
            out,
            SlidePredictConfig(tile=TILE, overlap=OVERLAP),
            points=points,
            progress=False,
        )
        assert run.points == len(points) and run.points_in_nuclei == len(centres)
        with pytest.raises(InputError, match="outside"):
            predict_slide(
                slide, DarkNuclei(), tmp_path / "x.geojson", points=[[1100.0, 10.0]], progress=False
            )
    assert (
        not (tmp_path / "x.geojson").exists() and not partial_dir(tmp_path / "x.geojson").exists()
    )


def test_predictor_protocol_is_met_by_the_stand_in():
    assert isinstance(DarkNuclei(), InstancePredictor)


# --- command line errors: one line, exit 2, nothing written ---------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str]:
    status = main(["predict-wsi", *args])
    return status, capsys.readouterr().err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not loaded: every check below fails before the model is read")
    return path


def assert_clean_failure(status: int, err: str, folder: Path, *words: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("instasam: error: "), err
    for word in words:
        assert word in lines[0]
    assert not list(folder.glob("out*")), list(folder.iterdir())


def test_cli_corrupt_slide(synthetic, tmp_path, capsys, model_file):
    data = synthetic[0].read_bytes()
    cases = [
        ("truncated.tif", data[: len(data) // 2]),
        ("junk.svs", b"\0" * 999),
        ("empty.tif", b""),
    ]
    for name, content in cases:
        bad = tmp_path / name
        bad.write_bytes(content)
        status, err = run_cli(
            capsys, str(bad), "--model", str(model_file), "--out", str(tmp_path / "out.geojson")
        )
        assert_clean_failure(status, err, tmp_path, name)


def test_cli_missing_mpp_asks_for_it(tmp_path, capsys, model_file):
    rgb, _ = render(256, 256, tissue_right=256)
    slide = tmp_path / "nompp.tif"
    write_pyramid(slide, rgb, mpp=None, levels=2)
    status, err = run_cli(
        capsys, str(slide), "--model", str(model_file), "--out", str(tmp_path / "out.geojson")
    )
    assert_clean_failure(status, err, tmp_path, "--mpp")


def test_cli_empty_slide(tmp_path, capsys, model_file):
    glass = np.full((512, 512, 3), BACKGROUND, dtype=np.uint8)
    slide = tmp_path / "glass.tif"
    write_pyramid(slide, glass)
    status, err = run_cli(
        capsys, str(slide), "--model", str(model_file), "--out", str(tmp_path / "out.geojson")
    )
    assert_clean_failure(status, err, tmp_path, "no tissue")


def test_cli_points_outside_and_bad_settings(synthetic, tmp_path, capsys, model_file):
    points = tmp_path / "points.csv"
    points.write_text("x,y\n10,10\n5000,20\n")
    common = [str(synthetic[0]), "--model", str(model_file), "--out", str(tmp_path / "out.geojson")]
    status, err = run_cli(capsys, *common, "--points", str(points))
    assert_clean_failure(status, err, tmp_path, "outside")
    status, err = run_cli(capsys, *common, "--tile", "64", "--overlap", "64")
    assert_clean_failure(status, err, tmp_path, "--overlap")
    status, err = run_cli(capsys, *common, "--level", "7")
    assert_clean_failure(status, err, tmp_path, "--level 7")


def test_cli_runs_a_real_model_end_to_end(tmp_path, capsys):
    """A tiny random-weight InstaSAM (fast, meaningless output) through the whole command."""
    import torch

    from instasam.config import InstaSAMConfig, TrainConfig
    from instasam.model.instasam import build_model, save_checkpoint

    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    save_checkpoint(
        model, build_model(InstaSAMConfig(train=TrainConfig(backbone="litemedsam_tiny")))
    )
    rgb, _ = render(200, 180, tissue_right=200, seed=2)
    slide = tmp_path / "small.tif"
    write_pyramid(slide, rgb, levels=1)
    out = tmp_path / "out" / "nuclei.geojson"
    threads = torch.get_num_threads()
    try:
        status = main(
            ["predict-wsi", str(slide), "--model", str(model), "--out", str(out), "--threads", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection" and isinstance(data["features"], list)
    assert f"{out}: {len(data['features'])} nuclei from 1 of 1 tiles" in captured.out
    assert [p.name for p in out.parent.iterdir()] == ["nuclei.geojson"]  # sidecar removed


# --- a real network: seams ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("tile", [1024, 256])
def test_real_model_on_a_real_tile_keeps_each_nucleus_once(monuseg_root, tmp_path, tile):
    from instasam.io.images import read_rgb
    from instasam.io.qupath import labels_from_detections
    from instasam.io.slides import open_slide
    from instasam.metrics import compute_metrics
    from instasam.predict.slides import SlidePredictConfig, predict_slide
    from instasam.predict.tiles import load_predictor

    image = read_rgb(monuseg_root / "train" / "images" / "TCGA-21-5784-01Z-00-DX1.tif")
    # 1000 px mirrored to 1400: two columns and rows of default tiles, seams in tissue.
    rgb = np.pad(image, ((0, 400), (0, 400), (0, 0)), mode="reflect")
    path = tmp_path / "tile.tif"
    write_pyramid(path, rgb, levels=1)
    predictor = load_predictor("monuseg-points")
    whole = predictor.predict_instances(rgb)
    out = tmp_path / "nuclei.geojson"
    with open_slide(path) as slide:
        config = SlidePredictConfig(tile=tile, overlap=64, use_tissue_mask=False)
        predict_slide(slide, predictor, out, config, progress=False)
    features = json.loads(out.read_text())["features"]
    tiled, shared = labels_from_detections(features, rgb.shape[:2])
    assert shared == 0  # no pixel in two detections, so no nucleus twice
    n_whole = int(whole.max())
    agreement = compute_metrics(whole, tiled)
    if tile == 1024:  # seams only: nearly every nucleus as the whole image has it
        assert abs(len(features) - n_whole) <= 0.01 * n_whole
        assert agreement["f1"] > 0.97 and agreement["aji"] > 0.9
    else:  # 256 px tiles change the segmentation throughout (see the README)
        assert abs(len(features) - n_whole) <= 0.1 * n_whole
        assert agreement["f1"] > 0.85


# --- post-processing overrides and the device --------------------------------------------
def _sample_slide(tmp_path: Path) -> Path:
    """The bundled sample's test crop (real H&E, 40x) as a one-level slide."""
    from instasam.cli.demo import sample_dir
    from instasam.io.images import read_rgb

    rgb = read_rgb(sample_dir() / "images" / "TCGA-E2-A1B5-01Z-00-DX1_y400_x500.tif")
    slide = tmp_path / "sample.tif"
    write_pyramid(slide, rgb, levels=1)
    return slide


def _areas(table: Path) -> np.ndarray:
    import csv

    with open(table, newline="", encoding="utf-8") as fh:
        return np.array([float(row["Area px^2"]) for row in csv.DictReader(fh)])


def test_cli_applies_the_post_processing_overrides_to_a_slide(tmp_path, capsys):
    import torch

    slide = _sample_slide(tmp_path)
    areas = {}
    threads = torch.get_num_threads()
    try:
        for name, extra in (("model", []), ("shrunk", ["--shrink", "3", "--min-area", "5"])):
            out, table = tmp_path / f"{name}.geojson", tmp_path / f"{name}.csv"
            argv = ["predict-wsi", str(slide), "--out", str(out), "--table", str(table)]
            assert main([*argv, "--threads", "1", *extra]) == 0, capsys.readouterr().err
            areas[name] = _areas(table)
    finally:
        torch.set_num_threads(threads)
    assert len(areas["model"]) > 20  # the shipped model finds the sample's nuclei
    # Three pixels off every outline: each nucleus loses most of a 20-px disk's rim.
    assert np.median(areas["shrunk"]) < 0.75 * np.median(areas["model"])


def test_overrides_enter_the_fingerprint_that_a_resume_is_checked_against(tmp_path):
    from instasam.cli.predict_wsi import model_fingerprint

    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    plain = model_fingerprint(model)
    assert set(plain) == {"model", "bytes", "mtime"}  # as runs before the option wrote it
    assert model_fingerprint(model, {}) == plain
    shrunk = model_fingerprint(model, {"shrink": 1})
    assert shrunk != plain and shrunk != model_fingerprint(model, {"shrink": 2})


def test_cli_asking_for_a_gpu_where_there_is_none_fails_before_the_work(
    synthetic, tmp_path, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path, _ = synthetic
    status, err = run_cli(
        capsys, str(path), "--out", str(tmp_path / "out.geojson"), "--device", "cuda"
    )
    assert_clean_failure(status, err, tmp_path, "--device", "no CUDA GPU")
