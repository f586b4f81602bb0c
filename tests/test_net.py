"""The full-resolution nuclei network: model, crops, precision choice, training, prediction."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from instasam import IGNORE
from instasam.config import NetConfig, NucleiNetConfig
from instasam.errors import InputError
from instasam.model.unet import NucleiUNet, net_from_payload, save_net
from instasam.predict.tiles import NetPredictor, load_predictor, predict_net_maps
from instasam.pseudo_labels.refine import (
    background_beside_nuclei,
    ignore_around_unlabelled_points,
)
from instasam.training import precision as precision_module
from instasam.training.crops import (
    LabelledTile,
    crop_targets,
    downscaled,
    jitter_colour,
    training_batch,
)
from instasam.training.loop import (
    BUDGET_RESERVE,
    fitted_steps,
    learning_rate,
    train_net,
    update_ema,
)
from instasam.training.precision import resolve_device, resolve_precision
from instasam.training.validation import ValTile

TINY = NucleiNetConfig(widths=(4, 8, 16), centre_head=False)  # tiles without points


def disks(size: int = 96, n: int = 6, radius: int = 7, seed: int = 0):
    """Dark disks on a pink background, with their instance labels."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), (230, 190, 210), dtype=np.uint8)
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    centres = []
    for k in range(1, n + 1):
        cy, cx = rng.integers(radius + 2, size - radius - 2, size=2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        labels[inside & (labels == 0)] = k
        image[inside] = (90, 60, 150)
        centres.append((cx, cy))
    return image, labels, np.array(centres, dtype=np.float64)


def tiny_net_config(**train) -> NetConfig:
    config = NetConfig(net=TINY)
    defaults = {"steps": 4, "batch_size": 2, "crop_size": 64, "val_every": 2}
    defaults |= {"checkpoint_every": 1, "warmup_steps": 1, "precision": "fp32"}
    return replace(config, train=replace(config.train, **(defaults | train)))


# -- model ---------------------------------------------------------------------------------
def test_network_keeps_any_image_size_and_bounds_the_distance_maps():
    net = NucleiUNet(TINY).eval()
    with torch.no_grad():
        out = net.forward_any(torch.rand(1, 3, 37, 50) * 255)
    assert out.shape == (1, 3, 37, 50)
    assert out[:, 1:].abs().max() <= 1.0


def test_checkpoint_round_trips_exactly_and_refuses_another_shape(tmp_path):
    torch.manual_seed(0)
    net = NucleiUNet(TINY).eval()
    config = NetConfig(net=TINY)
    save_net(tmp_path / "m.pt", net, config, step=3)
    payload = torch.load(tmp_path / "m.pt", weights_only=False)
    again, again_config = net_from_payload(payload, tmp_path / "m.pt")
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert again_config == config
    payload["config"]["net"]["widths"] = [4, 8, 32]
    from instasam.errors import InputError

    with pytest.raises(InputError, match="does not fit its network"):
        net_from_payload(payload, tmp_path / "m.pt")


# -- precision -----------------------------------------------------------------------------
def test_precision_follows_the_cpu_flag_both_ways(monkeypatch):
    assert resolve_precision("auto", native_bf16=True) == "bf16"
    assert resolve_precision("auto", native_bf16=False) == "fp32"
    assert resolve_precision("fp32", native_bf16=True) == "fp32"
    assert resolve_precision("bf16", native_bf16=False) == "bf16"  # the user may insist
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("fp16")


def test_precision_on_a_gpu_follows_the_gpu_not_the_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision_module, "gpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", device="cuda") == "bf16"
    assert resolve_precision("auto", device="cpu") == "fp32"
    monkeypatch.setattr(precision_module, "gpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", device="cuda") == "fp32"


def test_device_takes_a_gpu_only_where_there_is_one():
    assert resolve_device("auto", cuda_available=True) == "cuda"
    assert resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve_device("cpu", cuda_available=True) == "cpu"
    assert resolve_device("cuda", cuda_available=True) == "cuda"
    with pytest.raises(InputError, match=r"^--device: no CUDA GPU"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(InputError, match=r"^--device: unknown device"):
        resolve_device("tpu", cuda_available=True)


def test_bf16_maps_agree_with_fp32():
    torch.manual_seed(0)
    net = NucleiUNet(TINY).eval()
    image, _, _ = disks(size=64)
    fg32, hv32 = predict_net_maps(net, image, "fp32")
    fg16, hv16 = predict_net_maps(net, image, "bf16")
    assert np.abs(fg32 - fg16).max() < 0.05 and np.abs(hv32 - hv16).max() < 0.05


def test_windowed_prediction_matches_one_pass_away_from_nothing():
    torch.manual_seed(0)
    net = NucleiUNet(TINY).eval()
    image, _, _ = disks(size=160, n=12)
    whole_fg, whole_hv = predict_net_maps(net, image, "fp32", window=256)
    tiled_fg, tiled_hv = predict_net_maps(net, image, "fp32", window=96)
    # The tiny net's receptive field (~40 px) is inside the 32-px core margin of a 64-px
    # overlap only partly; the stitched maps must still be close everywhere.
    assert np.abs(whole_fg - tiled_fg).max() < 0.05
    assert np.abs(whole_hv - tiled_hv).max() < 0.05


def test_flips_average_is_exactly_flip_equivariant():
    # Averaged over the four flips with the signs turned back, the maps of a mirrored
    # image are the mirrored maps, the horizontal map's sign flipped - for any network.
    torch.manual_seed(0)
    net = NucleiUNet(TINY).eval()
    image, _, _ = disks(size=64)
    fg, hv = predict_net_maps(net, image, "fp32", flips=True)
    fg_m, hv_m = predict_net_maps(net, np.ascontiguousarray(image[:, ::-1]), "fp32", flips=True)
    assert np.allclose(fg_m, fg[:, ::-1], atol=1e-5)
    assert np.allclose(hv_m[0], -hv[0][:, ::-1], atol=1e-5)
    assert np.allclose(hv_m[1], hv[1][:, ::-1], atol=1e-5)
    _, plain = predict_net_maps(net, image, "fp32")
    assert not np.allclose(plain, hv, atol=1e-3)  # the average is not the plain pass


# -- labels and crops ----------------------------------------------------------------------
def test_unlabelled_points_get_an_ignored_disk_and_labelled_ones_do_not():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:10, 5:10] = 1  # point 1's nucleus is labelled; point 2's is not
    labels[20:24, 28:32] = 3  # another nucleus next to point 2 stays labelled
    points = np.array([[7.0, 7.0], [25.0, 22.0], [35.0, 5.0]])
    labels[3, 35] = 3  # point 3's id present elsewhere in the map: labelled
    out = ignore_around_unlabelled_points(labels, points, radius=4)
    assert out[22, 25] == IGNORE and out[22, 21] == IGNORE and out[22, 20] == 0
    assert (out[20:24, 28:32] == 3).all()
    assert (out[5:10, 5:10] == 1).all() and (out[0:4, 0:4] == 0).all()
    assert out[5, 35] == 0


def test_a_filled_disk_teaches_the_centre_of_an_unlabelled_nucleus():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:10, 5:10] = 1  # point 1's nucleus is labelled
    labels[20:24, 28:32] = 7  # another nucleus beside point 2's
    labels[24, 20] = IGNORE  # an ignored pixel inside the fill is filled too
    points = np.array([[7.0, 7.0], [25.0, 22.0], [21.0, 35.0]])
    out = ignore_around_unlabelled_points(labels, points, radius=6, fill_radius=2)
    assert out[22, 25] == 2 and out[22, 23] == 2 and out[24, 25] == 2  # point 2's disk
    assert out[22, 22] == IGNORE and out[17, 25] == IGNORE  # the ring beyond it
    assert (out[20:24, 28:32] == 7).all() and (out[5:10, 5:10] == 1).all()
    assert out[35, 21] == 3 and out[33, 21] == 3  # point 3's disk gets id 3
    assert (out == 2).sum() == 13  # a radius-2 disk: 13 pixels
    same = ignore_around_unlabelled_points(labels, points, radius=6)
    assert not (same == 2).any() and same[22, 25] == IGNORE


def test_the_ignored_rim_of_one_nucleus_becomes_background_and_a_seam_stays_ignored():
    labels = np.full((40, 40), IGNORE, dtype=np.int32)
    labels[:, 30:] = 0
    labels[10:16, 4:10] = 1
    labels[10:16, 12:18] = 2  # two columns of IGNORE between nuclei 1 and 2: their seam
    out = background_beside_nuclei(labels, margin=3)
    assert out[9, 6] == 0 and out[7, 6] == 0 and out[6, 6] == IGNORE  # 1, 3 and 4 px away
    assert out[13, 20] == 0 and out[13, 21] == IGNORE  # beside nucleus 2 only
    assert out[13, 10] == IGNORE and out[13, 11] == IGNORE  # near both
    assert out[30, 6] == IGNORE  # far from any nucleus
    assert (out[10:16, 4:10] == 1).all() and (out[:, 30:] == 0).all()
    assert (background_beside_nuclei(labels, margin=0) == labels).all()


def test_targets_carry_no_weight_on_ignored_pixels():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[5:12, 5:12] = 1
    labels[0:3, :] = IGNORE
    t = crop_targets(labels)
    assert (t.weight[0:3] == 0).all() and (t.weight[3:] == 1).all()
    assert t.foreground.sum() == 49 and (t.foreground[0:3] == 0).all()
    assert t.distance[0, 8, 5] == -1.0 and t.distance[0, 8, 11] == 1.0


def test_colour_jitter_is_off_at_zero_and_varies_otherwise():
    image, _, _ = disks(size=32)
    config = NetConfig().train
    rng = np.random.default_rng(0)
    off = replace(config, hed_scale=0.0, hed_shift=0.0, intensity=0.0)
    assert np.array_equal(jitter_colour(image, off, rng), image)
    a, b = jitter_colour(image, config, rng), jitter_colour(image, config, rng)
    assert a.dtype == np.uint8 and a.shape == image.shape and not np.array_equal(a, b)


def test_downscaling_is_off_by_default_without_touching_the_random_stream():
    image, _, _ = disks(size=32)
    rng = np.random.default_rng(0)
    assert downscaled(image, NetConfig().train, rng) is image
    assert rng.random() == np.random.default_rng(0).random()  # no draw was made


def test_downscaling_removes_fine_detail_and_keeps_smooth_shading():
    rows = np.arange(64)[:, None, None]
    stripes = np.broadcast_to(np.where(rows % 2 == 0, 40, 220), (64, 64, 3)).astype(np.uint8)
    ramp = np.broadcast_to(rows * 3 + 30, (64, 64, 3)).astype(np.uint8)
    config = replace(NetConfig().train, downscale_p=1.0, downscale_range=(0.5, 0.5))
    rng = np.random.default_rng(0)
    blurred, smooth = downscaled(stripes, config, rng), downscaled(ramp, config, rng)
    assert blurred.shape == stripes.shape and blurred.dtype == np.uint8
    assert np.ptp(blurred[8:-8].astype(int)) < 40  # 1-px stripes: 180 grey levels apart
    assert np.abs(smooth[8:-8].astype(int) - ramp[8:-8]).max() <= 3


def test_a_batch_has_the_configured_crops():
    image, labels, _ = disks()
    config = tiny_net_config()
    images, targets, embeddings = training_batch(
        [LabelledTile("a", image, labels)],
        config.train,
        config.augment,
        "hovernet",
        np.random.default_rng(0),
    )
    assert images.shape == (2, 64, 64, 3) and len(targets) == 2 and embeddings is None


# -- the loop ------------------------------------------------------------------------------
def test_learning_rate_warms_up_then_decays_to_one_percent():
    config = replace(NetConfig().train, steps=100, warmup_steps=10, lr=1e-3)
    rates = [learning_rate(s, config) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert learning_rate(100, config) == pytest.approx(1e-5)


def test_ema_moves_toward_the_weights():
    a, b = NucleiUNet(TINY), NucleiUNet(TINY)
    with torch.no_grad():
        for p in a.parameters():
            p.zero_()
        for p in b.parameters():
            p.fill_(1.0)
    update_ema(a, b, decay=0.9, step=1000)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in a.parameters())


def test_training_lowers_the_loss_on_disks(tmp_path):
    image, labels, _ = disks(size=64, n=5)
    tiles = [LabelledTile("a", image, labels)]
    config = tiny_net_config(steps=60, lr=1e-2, val_every=1000, checkpoint_every=1000)
    config = replace(config, augment=replace(config.augment, affine_p=0.0))
    losses = []
    train_net(
        tiles, [], tmp_path, config, progress=False, on_step=lambda s, parts: losses.append(parts)
    )
    assert np.mean([x["loss"] for x in losses[-10:]]) < 0.7 * np.mean(
        [x["loss"] for x in losses[:10]]
    )


def test_training_resumes_to_the_same_weights_and_tunes_thresholds(tmp_path):
    image, labels, _ = disks()
    tiles = [LabelledTile("a", image, labels)]
    val = [ValTile("v", image, labels)]
    config = tiny_net_config()
    train_net(tiles, val, tmp_path / "straight", config, progress=False)

    class Stop(Exception):
        pass

    def stop_at_three(state, losses):
        if state.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_net(tiles, val, tmp_path / "cut", config, progress=False, on_step=stop_at_three)
    state = train_net(tiles, val, tmp_path / "cut", config, resume=True, progress=False)
    assert state.step == 4
    one = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    two = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    for name, tensor in one["ema"].items():
        assert torch.equal(tensor, two["ema"][name]), name
    predictor = load_predictor(tmp_path / "straight" / "model.pt", precision="fp32")
    assert isinstance(predictor, NetPredictor)
    assert (tmp_path / "straight" / "thresholds.json").is_file()
    assert predictor.predict_instances(image).shape == labels.shape


def test_the_nuclei_network_trains_with_the_gradient_loss_and_the_paper_form_without():
    from instasam.config import InstaSAMConfig

    assert NetConfig().loss.w_grad == 1.0 and InstaSAMConfig().loss.w_grad == 0.0
    # A configuration file that sets other loss weights keeps the section's own default.
    assert NetConfig.from_dict({"loss": {"w_dist": 2.0}}).loss.w_grad == 1.0
    assert NetConfig.from_dict({"loss": {"w_grad": 0.0}}).loss.w_grad == 0.0


def test_a_time_budget_cuts_the_steps_to_what_fits_and_never_adds_any():
    config = replace(NetConfig().train, steps=1500, max_minutes=10.0)
    usable = 600.0 * (1.0 - BUDGET_RESERVE)  # 540 s
    # 20 steps done in 20 s at 1 s a step: 520 s left, 520 more steps
    assert fitted_steps(config, 20, 20.0, 1.0) == 540
    assert fitted_steps(config, 20, 20.0, 0.1) == 1500  # the budget allows more: not raised
    assert fitted_steps(config, 20, usable + 5.0, 1.0) == 20  # already over: stop now
    assert fitted_steps(replace(config, max_minutes=None), 20, 1e9, 1.0) == 1500


def test_training_under_a_tiny_budget_stops_after_the_probe_and_resumes_as_fitted(tmp_path):
    image, labels, _ = disks()
    tiles, val = [LabelledTile("a", image, labels)], [ValTile("v", image, labels)]
    config = tiny_net_config(steps=40, budget_probe_steps=5, max_minutes=1e-6, val_every=20)
    state = train_net(tiles, val, tmp_path / "run", config, progress=False)
    assert (state.step, state.steps) == (5, 5)
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"fitted_steps": 5' in line for line in log)
    assert "val" in json.loads(log[-1])  # the last step validates, as at a run's end
    assert (tmp_path / "run" / "thresholds.json").is_file()
    again = train_net(tiles, val, tmp_path / "run", config, resume=True, progress=False)
    assert again.step == 5  # a resumed run keeps its fitted count

    roomy = replace(config, train=replace(config.train, max_minutes=1e4))
    assert train_net(tiles, [], tmp_path / "roomy", roomy, progress=False).step == 40


def test_training_with_worker_processes_is_repeatable_and_draws_other_crops(tmp_path):
    image, labels, _ = disks()
    tiles = [LabelledTile("a", image, labels)]
    config = tiny_net_config()
    for name, workers in (("one", 2), ("two", 2), ("none", 0)):
        train_net(tiles, [], tmp_path / name, config, progress=False, workers=workers)
    one, two, none = (
        torch.load(tmp_path / n / "last.pt", weights_only=False)["net"]
        for n in ("one", "two", "none")
    )
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], none[k]) for k in one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_first_step_on_the_gpu_has_the_cpu_loss(tmp_path, monkeypatch):
    # Only the first loss can be compared: Adam's first update is +-lr wherever a gradient
    # is non-zero, so rounding in near-zero gradients moves weights by 2 lr afterwards.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    image, labels, _ = disks()
    tiles = [LabelledTile("a", image, labels)]
    config = tiny_net_config(steps=1)
    first = {}
    for device in ("cpu", "cuda"):
        record = first.setdefault(device, [])
        train_net(
            tiles,
            [],
            tmp_path / device,
            config,
            progress=False,
            device=device,
            on_step=lambda s, parts, record=record: record.append(parts["loss"]),
        )
    assert first["cuda"][0] == pytest.approx(first["cpu"][0], rel=1e-4)


def test_validation_chooses_a_shrink_only_for_outlines_drawn_too_large():
    from skimage.segmentation import expand_labels

    from instasam.config import PostprocessConfig
    from instasam.targets import foreground_map, hv_maps
    from instasam.training.validation import choose_thresholds

    _, labels, _ = disks(size=128, n=8, seed=3)
    tiles = [ValTile("v", np.zeros((*labels.shape, 3), np.uint8), labels)]
    for drawn, expected in ((labels, 0), (expand_labels(labels, 1), 1)):
        maps = [(foreground_map(drawn), hv_maps(drawn))]
        chosen, table = choose_thresholds(maps, tiles, PostprocessConfig())
        assert chosen.shrink == expected
        assert {row["shrink"] for row in table} == {0, 1}


# -- the centre head -----------------------------------------------------------------------
CENTRED = replace(TINY, centre_head=True)


def test_a_centre_heatmap_peaks_where_the_crop_sees_each_point():
    from instasam.augment import random_transform
    from instasam.training.crops import centre_heatmap, inside_tile

    config = replace(NetConfig().augment, scale_range=(0.5, 0.5))  # the crop zooms out 2x
    transform = random_transform((400, 400), 64, config, np.random.default_rng(4))
    rows, cols = transform.tile_coordinates()
    points = np.array([[cols[20, 30], rows[20, 30]], [cols[50, 10], rows[50, 10]]])
    heat = centre_heatmap(points, transform, sigma=4.0)
    assert heat[20, 30] == pytest.approx(1.0) and heat[50, 10] == pytest.approx(1.0)
    # 4 px in the tile are 2 px in the crop: one crop sigma from a peak, exp(-1/2) of it.
    assert heat[20, 32] == pytest.approx(np.exp(-0.5), abs=0.02)
    assert heat[5, 60] < 1e-3
    assert centre_heatmap(np.zeros((0, 2)), transform, 4.0).max() == 0
    # A crop reaching past the tile: only the tile's part is taught.
    small = random_transform((40, 40), 64, config, np.random.default_rng(4))
    inside = inside_tile(small, (40, 40))
    rows, cols = small.tile_coordinates()
    within = (rows > -0.5) & (rows < 39.5) & (cols > -0.5) & (cols < 39.5)
    assert 0 < inside.mean() < 1
    np.testing.assert_array_equal(inside, within)


def test_a_batch_carries_centres_only_for_tiles_with_points():
    image, labels, centres = disks()
    config = tiny_net_config()
    rng = np.random.default_rng(0)
    args = (config.train, config.augment, "hovernet", rng)
    _, plain, _ = training_batch([LabelledTile("a", image, labels)], *args)
    assert all(t.centres is None for t in plain)
    _, targets, _ = training_batch([LabelledTile("a", image, labels, points=centres)], *args)
    for t in targets:
        assert t.centres.shape == t.inside.shape == (64, 64)
        # Peaks sit in nuclei: where the heatmap is high, the crop's labels are foreground.
        assert t.foreground[t.centres > 0.9].all()


def test_a_centre_head_adds_a_fourth_map_that_flips_without_a_sign():
    torch.manual_seed(0)
    net = NucleiUNet(CENTRED).eval()
    image, _, _ = disks(size=64)
    with torch.no_grad():
        assert net.forward_any(torch.rand(1, 3, 37, 50) * 255).shape == (1, 4, 37, 50)
    _, maps = predict_net_maps(net, image, "fp32", flips=True)
    assert maps.shape == (3, 64, 64) and 0 <= maps[2].min() and maps[2].max() <= 1
    _, mirrored = predict_net_maps(net, np.ascontiguousarray(image[:, ::-1]), "fp32", flips=True)
    assert np.allclose(mirrored[2], maps[2][:, ::-1], atol=1e-5)
    big, _, _ = disks(size=160, n=12)
    whole = predict_net_maps(net, big, "fp32", window=256)[1]
    tiled = predict_net_maps(net, big, "fp32", window=96)[1]
    assert tiled.shape == (3, 160, 160) and np.abs(whole - tiled).max() < 0.05


def test_training_teaches_the_centre_head_where_the_points_are(tmp_path):
    from instasam.postprocess import centre_markers

    image, labels, centres = disks(size=64, n=4, seed=2)
    tiles = [LabelledTile("a", image, labels, points=centres)]
    config = tiny_net_config(steps=150, lr=1e-2, val_every=1000, checkpoint_every=1000)
    config = replace(config, net=CENTRED, augment=replace(config.augment, affine_p=0.0))
    losses = []
    train_net(
        tiles, [], tmp_path, config, progress=False, on_step=lambda s, parts: losses.append(parts)
    )
    assert np.mean([x["centre"] for x in losses[-10:]]) < 0.5 * losses[0]["centre"]
    net = load_predictor(tmp_path / "model.pt", precision="fp32").net
    _, maps = predict_net_maps(net, image, "fp32")
    found = np.argwhere(centre_markers(labels > 0, maps[2], config.postprocess))
    assert len(found) == len(centres)
    for x, y in centres:
        assert np.hypot(found[:, 0] - y, found[:, 1] - x).min() < 7  # inside its disk


def test_validation_tries_centre_markers_only_with_a_centre_map():
    from instasam.config import PostprocessConfig
    from instasam.targets import foreground_map, hv_maps
    from instasam.training.validation import choose_thresholds

    _, labels, centres = disks(size=128, n=8, seed=3)
    tiles = [ValTile("v", np.zeros((*labels.shape, 3), np.uint8), labels)]
    yy, xx = np.mgrid[:128, :128]
    heat = np.max([np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0) for x, y in centres], axis=0)
    flat = np.zeros((2, *labels.shape))
    _, table = choose_thresholds(
        [(foreground_map(labels), hv_maps(labels))], tiles, PostprocessConfig()
    )
    assert {row["markers"] for row in table} == {"edges"}
    # Flat distance maps cannot split touching disks; the centre peaks can.
    maps = [(foreground_map(labels), np.concatenate([flat, heat[None]]))]
    chosen, table = choose_thresholds(maps, tiles, PostprocessConfig())
    assert chosen.markers == "centres"
    assert {row["markers"] for row in table} == {"edges", "centres", "edges+centres"}


def test_the_chosen_settings_scores_match_scoring_it_again():
    from skimage.segmentation import expand_labels

    from instasam.config import PostprocessConfig
    from instasam.targets import foreground_map, hv_maps
    from instasam.training.validation import choose_thresholds, chosen_scores, score_maps

    _, labels, _ = disks(size=128, n=8, seed=5)
    tiles = [ValTile("v", np.zeros((*labels.shape, 3), np.uint8), labels)]
    drawn = expand_labels(labels, 1)
    maps = [(0.9 * foreground_map(drawn), hv_maps(drawn))]
    chosen, table = choose_thresholds(maps, tiles, PostprocessConfig())
    read = chosen_scores(table)
    again = score_maps(maps, tiles, chosen)
    assert read.keys() == again.keys()
    assert read == pytest.approx(again)
    # Settings differ in score here, so reading the wrong row would show.
    assert len({round(row["aji"], 6) for row in table}) > 1


def test_a_configuration_round_trips_with_and_without_a_flips_setting():
    from instasam.config import PostprocessConfig

    plain = NetConfig()
    assert plain.net.centre_head and plain.flips_postprocess is None
    assert NetConfig.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain
    flips = replace(plain, flips_postprocess=PostprocessConfig(markers="centres", shrink=1))
    assert NetConfig.from_dict(json.loads(json.dumps(flips.to_dict()))) == flips


def test_a_checkpoint_saved_before_the_centre_head_existed_loads_without_one(tmp_path):
    headless = replace(TINY, centre_head=False)
    save_net(tmp_path / "old.pt", NucleiUNet(headless), NetConfig(net=headless))
    payload = torch.load(tmp_path / "old.pt", weights_only=False)
    del payload["config"]["net"]["centre_head"]  # as written before the field existed
    net, config = net_from_payload(payload, tmp_path / "old.pt")
    assert net.centre_head is None and not config.net.centre_head


def test_a_centre_head_without_points_is_refused_before_training(tmp_path):
    image, labels, _ = disks()
    config = replace(tiny_net_config(), net=CENTRED)
    with pytest.raises(ValueError, match="learns from points"):
        train_net([LabelledTile("a", image, labels)], [], tmp_path / "run", config, progress=False)
    assert not (tmp_path / "run").exists()
