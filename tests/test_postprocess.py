"""Marker-controlled watershed on (foreground, distance maps): synthetic shapes and one tile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import comb

from instasam.config import PostprocessConfig, replace
from instasam.postprocess import (
    edge_map,
    instances_from_maps,
    nuclei_from_markers,
    sobel,
    sobel_kernels,
    split_by_centres,
)
from instasam.targets import foreground_map, hv_maps


def _disk(shape, centre, radius) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _touching_disks(shape=(64, 72), centres=((32, 26), (32, 44)), radius=11) -> np.ndarray:
    """Two overlapping disks, each shared pixel given to the nearer centre."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    dist = np.stack([np.hypot(rr - r, cc - c) for r, c in centres])
    labels = np.where(dist.min(axis=0) <= radius, dist.argmin(axis=0) + 1, 0)
    return labels.astype(np.int32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def _best_iou(pred: np.ndarray, target: np.ndarray) -> float:
    return max(_iou(pred == k, target) for k in range(1, pred.max() + 1))


# --- Sobel kernels ---------------------------------------------------------------------


def test_sobel_3_is_the_classic_operator():
    smoothing, derivative = sobel_kernels(3)
    np.testing.assert_array_equal(
        np.outer(smoothing, derivative), [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    )


def test_sobel_5_factors():
    smoothing, derivative = sobel_kernels(5)
    np.testing.assert_array_equal(smoothing, [1, 4, 6, 4, 1])
    np.testing.assert_array_equal(derivative, [-1, -2, 0, 2, 1])


@pytest.mark.parametrize("ksize", [5, 7, 21, 31])
def test_large_sobel_is_binomial_and_antisymmetric(ksize):
    smoothing, derivative = sobel_kernels(ksize)
    assert smoothing.shape == derivative.shape == (ksize,)
    np.testing.assert_array_equal(smoothing, comb(ksize - 1, np.arange(ksize), exact=False))
    np.testing.assert_array_equal(derivative, -derivative[::-1])
    assert derivative[ksize // 2] == 0 and derivative.sum() == 0
    assert np.all(derivative[ksize // 2 + 1 :] > 0)  # positive response to a rising ramp
    np.testing.assert_array_equal(
        derivative, np.convolve(comb(ksize - 3, np.arange(ksize - 2)), [-1, 0, 1])
    )


@pytest.mark.parametrize("ksize", [1, 2, 4, 20])
def test_even_or_tiny_sobel_size_is_refused(ksize):
    with pytest.raises(ValueError):
        sobel_kernels(ksize)


def test_sobel_follows_its_axis():
    ramp = np.tile(np.arange(30, dtype=float), (20, 1))  # rises along x
    dx, dy = sobel(ramp, axis=1, ksize=5), sobel(ramp, axis=0, ksize=5)
    interior = (slice(3, -3), slice(3, -3))
    assert np.all(dx[interior] > 0) and np.allclose(dx[interior], dx[10, 10])
    assert np.allclose(dy, 0)
    np.testing.assert_allclose(sobel(ramp.T, axis=0, ksize=5), dx.T)


# --- instances_from_maps ---------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["hovernet", "positive_max"])
@pytest.mark.parametrize("config", [PostprocessConfig(), PostprocessConfig.hovernet()])
def test_two_touching_disks_are_split(scaling, config):
    labels = _touching_disks()
    pred = instances_from_maps(foreground_map(labels), hv_maps(labels, scaling), config)
    assert pred.dtype == np.int32 and pred.shape == labels.shape
    assert pred.max() == 2 and set(np.unique(pred)) == {0, 1, 2}
    for k in (1, 2):
        assert _best_iou(pred, labels == k) > 0.8


def test_vertically_touching_disks_are_split():
    labels = _touching_disks(shape=(72, 64), centres=((26, 32), (44, 32)))
    pred = instances_from_maps(foreground_map(labels), hv_maps(labels))
    assert pred.max() == 2
    for k in (1, 2):
        assert _best_iou(pred, labels == k) > 0.8


def test_foreground_without_distance_signal_is_one_object():
    labels = _touching_disks()
    fg = foreground_map(labels)
    pred = instances_from_maps(fg, np.zeros((2, *fg.shape), np.float32))
    assert pred.max() == 1
    np.testing.assert_array_equal(pred > 0, fg > 0)


@pytest.mark.parametrize("fill", [0.0, 0.3])
def test_empty_foreground_gives_zeros(fill):
    fg = np.full((40, 50), fill, dtype=np.float32)
    pred = instances_from_maps(fg, np.random.default_rng(0).normal(size=(2, 40, 50)))
    assert pred.dtype == np.int32 and pred.shape == (40, 50) and not pred.any()
    assert not edge_map(np.zeros((2, 40, 50)), fg > 0.5, 21).any()


def test_min_area_removes_specks():
    labels = np.zeros((60, 60), dtype=np.int32)
    labels[_disk(labels.shape, (30, 30), 8)] = 1
    labels[2:5, 2:6] = 2  # 12 pixels
    labels[50:54, 50:54] = 3  # 16 pixels
    fg, hv = foreground_map(labels), hv_maps(labels)
    pred = instances_from_maps(fg, hv, PostprocessConfig(min_area=20))
    assert pred.max() == 1 and _best_iou(pred, labels == 1) > 0.95
    pred = instances_from_maps(fg, hv, PostprocessConfig(min_area=14, min_marker_area=1))
    assert pred.max() == 2 and not pred[2:5, 2:6].any() and pred[50:54, 50:54].all()


def test_holes_in_the_foreground_are_filled():
    labels = np.zeros((50, 50), dtype=np.int32)
    labels[_disk(labels.shape, (25, 25), 10)] = 1
    fg = foreground_map(labels)
    fg[24:27, 24:27] = 0
    pred = instances_from_maps(fg, hv_maps(labels))
    assert pred.max() == 1 and pred[25, 25] == 1


def test_shrink_takes_one_pixel_off_each_outline():
    labels = np.zeros((50, 50), dtype=np.int32)
    labels[_disk(labels.shape, (25, 25), 10)] = 1
    fg, hv = foreground_map(labels), hv_maps(labels)
    whole = instances_from_maps(fg, hv) > 0
    shrunk = instances_from_maps(fg, hv, PostprocessConfig(shrink=1)) > 0
    # A pixel survives when it and its four neighbours are inside the whole object.
    inner = whole.copy()
    inner[1:, :] &= whole[:-1, :]
    inner[:-1, :] &= whole[1:, :]
    inner[:, 1:] &= whole[:, :-1]
    inner[:, :-1] &= whole[:, 1:]
    np.testing.assert_array_equal(shrunk, inner)
    assert 0 < shrunk.sum() < whole.sum()


def test_shrink_separates_touching_nuclei_and_spares_the_tile_border():
    labels = _touching_disks()
    fg, hv = foreground_map(labels), hv_maps(labels)
    pred = instances_from_maps(fg, hv, PostprocessConfig(shrink=1))
    assert pred.max() == 2
    grown = np.zeros_like(pred)
    for k in (1, 2):  # each object dilated by one pixel (4-neighbours) stays off the other
        mask = pred == k
        near = mask.copy()
        near[1:] |= mask[:-1]
        near[:-1] |= mask[1:]
        near[:, 1:] |= mask[:, :-1]
        near[:, :-1] |= mask[:, 1:]
        grown[near] += 1
    assert grown.max() == 1
    edge = np.zeros((20, 20), dtype=np.int32)
    edge[:8, :8] = 1  # touches the top and left borders
    out = instances_from_maps(foreground_map(edge), hv_maps(edge), PostprocessConfig(shrink=1))
    assert out[0, 0] == 1 and out[:7, :7].all() and not out[7, :].any() and not out[:, 7].any()


def test_shrink_then_min_area_drops_what_became_too_small():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[10:15, 10:15] = 1  # 25 px; 9 px after one shrink
    fg, hv = foreground_map(labels), hv_maps(labels)
    config = PostprocessConfig(min_area=20, min_marker_area=1, marker_opening=0)
    assert instances_from_maps(fg, hv, config).max() == 1
    assert instances_from_maps(fg, hv, replace(config, shrink=1)).max() == 0


def test_hovernet_preset_uses_its_thresholds():
    default, hovernet = PostprocessConfig(), PostprocessConfig.hovernet()
    assert (default.fg_threshold, default.edge_threshold, default.sobel_ksize) == (0.7, 0.5, 21)
    assert (hovernet.fg_threshold, hovernet.edge_threshold, hovernet.min_area) == (0.5, 0.4, 10)
    labels = np.zeros((60, 60), dtype=np.int32)
    labels[_disk(labels.shape, (20, 20), 8)] = 1
    labels[45:49, 45:49] = 2  # 16 pixels: below the authors' min_area 20, above HoVer-Net's 10
    fg, hv = foreground_map(labels), hv_maps(labels)
    assert instances_from_maps(fg, hv, default).max() == 1
    assert instances_from_maps(fg, hv, hovernet).max() == 2
    # A probability of 0.6 is foreground for HoVer-Net (0.5), not for the authors (0.7).
    soft = fg * 0.6
    assert not instances_from_maps(soft, hv, default).any()
    assert instances_from_maps(soft, hv, hovernet).max() == 2


def test_edge_threshold_moves_the_markers():
    labels = _touching_disks()
    fg, hv = foreground_map(labels), hv_maps(labels)
    edges = edge_map(hv, fg > 0, 21)
    assert edges.min() >= 0 and edges.max() == pytest.approx(1) and not edges[fg == 0].any()
    # The boundary between the disks is an edge, each centre is not.
    assert edges[32, 35] > 0.5 and edges[32, 26] < 0.4 and edges[32, 44] < 0.4
    # Everything is "edge" at threshold 0: no markers, one object per component.
    config = replace(PostprocessConfig(), edge_threshold=0.0)
    assert instances_from_maps(fg, hv, config).max() == 1
    assert not instances_from_maps(fg, hv, replace(config, keep_unmarked=False)).any()


def test_component_without_marker_is_kept_or_dropped():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[10:13, 10:50] = 1  # 3 px wide: the disk-2 opening removes its marker
    fg, hv = foreground_map(labels), np.zeros((2, 40, 60), np.float32)
    kept = instances_from_maps(fg, hv)
    assert kept.max() == 1 and (kept > 0).sum() == 120
    assert not instances_from_maps(fg, hv, PostprocessConfig(keep_unmarked=False)).any()


def test_ids_are_consecutive_from_one():
    labels = np.zeros((80, 80), dtype=np.int32)
    for k, (r, c) in enumerate([(15, 15), (15, 60), (60, 15), (60, 60), (40, 40)], start=1):
        labels[_disk(labels.shape, (r, c), 7)] = k * 9
    pred = instances_from_maps(foreground_map(labels), hv_maps(labels))
    np.testing.assert_array_equal(np.unique(pred), np.arange(6))
    assert pred[15, 15] == 1  # raster order of first pixels


def test_bad_inputs_are_refused():
    fg = np.zeros((10, 12), np.float32)
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        instances_from_maps(fg, np.zeros((10, 12, 2), np.float32))
    with pytest.raises(ValueError):
        instances_from_maps(fg[None], np.zeros((2, 10, 12), np.float32))
    bad = fg.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        instances_from_maps(bad, np.zeros((2, 10, 12), np.float32))


@pytest.mark.realdata
def test_ground_truth_maps_recover_a_real_tile(monuseg_root):
    from instasam.io.labels import read_label_map
    from instasam.metrics import compute_metrics

    split = json.loads((monuseg_root / "splits/kumar_16_14.json").read_text())
    tile = split["test"][1]  # liver, crowded: touching nuclei
    labels = read_label_map(monuseg_root / "train/labels_instance" / f"{tile}.png")
    pred = instances_from_maps(foreground_map(labels), hv_maps(labels))
    assert compute_metrics(labels, pred)["aji"] > 0.95


def test_given_one_marker_per_nucleus_the_watershed_splits_a_merged_foreground():
    # One foreground blob of two touching disks whose own maps would give one marker:
    # a marker per disk (what benchmarks/oracle.py supplies from the truth) splits it.
    truth = _touching_disks()
    foreground = truth > 0
    edges = edge_map(hv_maps(truth), foreground, ksize=21)
    markers = np.zeros_like(truth)
    markers[_disk(truth.shape, (32, 26), 3)] = 1
    markers[_disk(truth.shape, (32, 44), 3)] = 2
    config = PostprocessConfig()
    nuclei = nuclei_from_markers(foreground, markers, edges, config)
    assert nuclei.max() == 2
    for k in (1, 2):
        assert _iou(nuclei == k, truth == k) > 0.85
    lone = nuclei_from_markers(foreground, (markers == 1).astype(np.int32), edges, config)
    assert lone.max() == 1  # one marker: one object over the whole blob


# --- centre markers ---------------------------------------------------------------------


def _gaussians(shape, centres, sigma=3.0) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    bumps = [np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2)) for r, c in centres]
    return np.max(bumps, axis=0)


def test_centre_markers_split_what_flat_distance_maps_leave_whole():
    labels = _touching_disks()
    fg = foreground_map(labels)
    flat = np.zeros((2, *fg.shape), np.float32)
    centres = _gaussians(fg.shape, ((32, 26), (32, 44)))
    with_centres = np.concatenate([flat, centres[None]]).astype(np.float32)
    by_edges = instances_from_maps(fg, with_centres, PostprocessConfig(markers="edges"))
    by_centres = instances_from_maps(fg, with_centres, PostprocessConfig(markers="centres"))
    assert by_edges.max() == 1  # no distance signal: one object
    assert by_centres.max() == 2
    for k in (1, 2):
        assert _best_iou(by_centres, labels == k) > 0.8


def test_centre_peaks_below_the_threshold_or_too_close_are_not_markers():
    labels = _touching_disks()
    fg = foreground_map(labels)
    maps = np.concatenate([hv_maps(labels), _gaussians(fg.shape, ((32, 26), (32, 44)))[None]])
    weak = maps.copy()
    weak[2] *= np.where(np.arange(fg.shape[1]) < 35, 1.0, 0.2)  # the right peak at 0.2
    config = PostprocessConfig(markers="centres", centre_threshold=0.5)
    assert instances_from_maps(fg, weak.astype(np.float32), config).max() == 1
    far = replace(config, centre_threshold=0.1, centre_distance=25)  # peaks 18 px apart
    assert instances_from_maps(fg, maps.astype(np.float32), far).max() == 1
    near = replace(config, centre_threshold=0.1, centre_distance=4)
    assert instances_from_maps(fg, maps.astype(np.float32), near).max() == 2


def test_centre_markers_without_a_centre_map_are_refused():
    labels = _touching_disks()
    config = PostprocessConfig(markers="centres")
    with pytest.raises(ValueError, match="centre map"):
        instances_from_maps(foreground_map(labels), hv_maps(labels), config)


def test_a_core_spanning_two_centres_is_split_and_the_other_cores_stay():
    markers = np.zeros((20, 40), np.int32)
    markers[5:15, 2:18] = 1  # one core over two nuclei
    markers[5:15, 22:28] = 2  # a core with its centre
    markers[5:15, 32:38] = 3  # a core the centre map missed
    centres = np.zeros_like(markers)
    for k, (r, c) in enumerate([(10, 5), (10, 14), (10, 25)], start=1):
        centres[r, c] = k
    split = split_by_centres(markers, centres)
    np.testing.assert_array_equal(split[markers == 2], 2)
    np.testing.assert_array_equal(split[markers == 3], 3)
    assert not split[(markers == 1) & (centres == 0)].any()
    assert split[10, 5] != split[10, 14] and min(split[10, 5], split[10, 14]) > 3
    np.testing.assert_array_equal(split_by_centres(markers, np.zeros_like(markers)), markers)


def test_edges_and_centres_markers_split_touching_nuclei_the_edges_bridge():
    labels = _touching_disks()
    fg = foreground_map(labels)
    centres = _gaussians(fg.shape, ((32, 26), (32, 44)))
    maps = np.concatenate([np.zeros((2, *fg.shape)), centres[None]]).astype(np.float32)
    pred = instances_from_maps(fg, maps, PostprocessConfig(markers="edges+centres"))
    assert pred.max() == 2  # the flat maps leave one core; its two centres split it


def test_the_oracles_network_row_is_the_post_processing_the_model_runs():
    # benchmarks/oracle.py rebuilds the network's instances from its parts; with centre
    # markers they must be what instances_from_maps gives, or its gaps mean nothing.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import oracle

    labels = _touching_disks()
    fg = foreground_map(labels)
    flat = np.zeros((2, *fg.shape), np.float32)
    maps = np.concatenate([flat, _gaussians(fg.shape, ((32, 26), (32, 44)))[None]])
    maps = maps.astype(np.float32)
    for markers in ("edges", "centres", "edges+centres"):
        config = PostprocessConfig(markers=markers, centre_threshold=0.3)
        rows = oracle.oracle_rows(fg, maps, labels, config)
        np.testing.assert_array_equal(rows["network"], instances_from_maps(fg, maps, config))
    assert rows["network"].max() == 2  # the centres split what flat maps leave whole


# --- a threshold grid with shared stages -----------------------------------------------------


def _noisy_maps(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Foreground, distance and centre maps of 30 random (often touching) disks, blurred and
    noisy as a network's are."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (96, 128)
    centres = rng.uniform((6, 6), (90, 122), size=(30, 2))
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    dist = np.stack([np.hypot(rr - r, cc - c) for r, c in centres])
    radius = rng.uniform(4, 9, size=30)[:, None, None]
    inside = dist <= radius
    labels = np.where(inside.any(0), np.where(inside, dist, np.inf).argmin(0) + 1, 0)
    fg = ndimage.gaussian_filter(foreground_map(labels.astype(np.int32)), 1.5)
    fg = np.clip(fg + rng.normal(0, 0.08, shape), 0, 0.95).astype(np.float32)
    hv = hv_maps(labels.astype(np.int32)) + rng.normal(0, 0.1, (2, *shape))
    centre = _gaussians(shape, centres) + rng.normal(0, 0.05, shape)
    return fg, np.concatenate([hv, centre[None]]).astype(np.float32)


def test_a_grid_with_shared_stages_equals_one_call_per_setting():
    from instasam.postprocess import instances_for_settings
    from instasam.training.validation import _settings

    fg, hv = _noisy_maps()
    base = PostprocessConfig(min_area=10)
    configs = [replace(base, **s) for s in _settings(with_centres=True)]
    configs.append(replace(base, fg_threshold=0.999))  # no foreground at all
    configs.append(replace(base, shrink=2, smoothing_sigma=0.0))
    seen = {}
    for i, instances in instances_for_settings(fg, hv, configs):
        assert i not in seen
        seen[i] = instances
    assert sorted(seen) == list(range(len(configs)))
    distinct = set()
    for i, config in enumerate(configs):
        expected = instances_from_maps(fg, hv, config)
        assert seen[i].dtype == expected.dtype and np.array_equal(seen[i], expected), config
        distinct.add(expected.tobytes())
    assert not seen[len(configs) - 2].any()
    assert len(distinct) > 40  # the settings differ here (58 distinct results of 194)


def test_grid_scores_equal_scoring_each_setting():
    from instasam.metrics import compute_metrics, mean_metrics
    from instasam.postprocess import instances_from_maps as one
    from instasam.training.validation import ValTile, _settings, grid_scores, score_maps

    tiles, maps = [], []
    for seed in (1, 2, 3):
        fg, hv = _noisy_maps(seed)
        tiles.append(ValTile(f"t{seed}", np.zeros((*fg.shape, 3), np.uint8), one(fg, hv)))
        maps.append(_noisy_maps(seed + 10))
    configs = [replace(PostprocessConfig(), **s) for s in _settings(with_centres=True)[::7]]
    pairs = list(zip(maps, tiles, strict=True))
    expected = [
        mean_metrics([compute_metrics(t.labels, one(fg, hv, c)) for (fg, hv), t in pairs])
        for c in configs
    ]
    for workers in (1, 2, 3):  # tiles scored in threads: the same rows, in the same order
        assert grid_scores(maps, tiles, configs, workers) == expected
    assert [score_maps(maps, tiles, c) for c in configs] == expected
