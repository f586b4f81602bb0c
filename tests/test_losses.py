"""The gradient loss on the distance maps (HoVer-Net's MSGE) and its place in training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from instasam import IGNORE
from instasam.losses import masked_distance_loss, masked_gradient_loss
from instasam.model.unet import NucleiUNet
from instasam.training.crops import LabelledTile, crop_targets
from instasam.training.loop import batch_losses, train_net
from tests.test_net import tiny_net_config


def two_touching_nuclei(size: int = 40) -> np.ndarray:
    """Two 12-px-wide boxes side by side, sharing a vertical edge at column 20."""
    labels = np.zeros((size, size), dtype=np.int32)
    labels[12:28, 8:20] = 1
    labels[12:28, 20:32] = 2
    return labels


def as_tensors(labels: np.ndarray):
    targets = crop_targets(labels)
    hv = torch.from_numpy(targets.distance)[None]
    fg = torch.from_numpy(targets.foreground)[None]
    weight = torch.from_numpy(targets.weight)[None]
    return hv, fg, weight


def test_a_ramp_has_a_slope_of_twelve_per_pixel_as_in_hovernet():
    # One wide nucleus whose horizontal map rises by 2/30 per pixel: inside, away from its
    # rim, the kernel reads 12 x that slope, so a flat prediction costs (12 * 2/30)^2.
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:35, 5:36] = 1
    hv, fg, _ = as_tensors(labels)
    inner = torch.zeros_like(fg)
    inner[:, 10:30, 10:30] = 1
    flat = torch.zeros_like(hv)
    flat[:, 1] = hv[:, 1]  # the vertical map right, the horizontal one flat
    loss = masked_gradient_loss(flat, hv, inner, torch.ones_like(fg))
    assert np.isclose(loss.item(), (12 * 2 / 30) ** 2 / 2, rtol=1e-4)


def test_exact_maps_cost_nothing_and_a_blurred_seam_costs_more_than_its_values_say():
    labels = two_touching_nuclei()
    hv, fg, weight = as_tensors(labels)
    assert masked_gradient_loss(hv, hv, fg, weight).item() == 0.0
    # Blur the horizontal map across the seam: the values move only near it, so the value
    # loss sees a small change, the gradient loss a large one.
    blurred = hv.clone()
    row = blurred[0, 0, 12:28]
    for col in (18, 19, 20, 21):
        row[:, col] = (hv[0, 0, 12:28, col - 1] + hv[0, 0, 12:28, col + 1]) / 2
    value = masked_distance_loss(blurred, hv, weight[:, None], kind="smooth_l1").item()
    gradient = masked_gradient_loss(blurred, hv, fg, weight).item()
    assert 0 < value < 0.01
    assert gradient > 20 * value


def test_predictions_on_ignored_pixels_do_not_move_the_loss():
    labels = two_touching_nuclei()
    labels[:6, :] = IGNORE
    labels[10:30, 32:35] = IGNORE  # an uncertain rim right beside nucleus 2
    hv, fg, weight = as_tensors(labels)
    pred = hv + 0.05 * torch.randn(hv.shape, generator=torch.Generator().manual_seed(0))
    changed = pred.clone()
    ignored = torch.from_numpy(labels == IGNORE)
    changed[0, :, ignored] = torch.rand(2, int(ignored.sum()))
    before = masked_gradient_loss(pred, hv, fg, weight).item()
    assert before > 0
    assert masked_gradient_loss(changed, hv, fg, weight).item() == before


def test_training_adds_the_gradient_part_only_when_weighted(tmp_path):
    labels = two_touching_nuclei(64)
    image = np.where(labels[..., None] > 0, 80, 220).astype(np.uint8).repeat(3, axis=-1)
    config = tiny_net_config(steps=3, crop_size=32, val_every=100, checkpoint_every=100)
    net = NucleiUNet(config.net)
    targets = [crop_targets(labels)]
    off = replace(config, loss=replace(config.loss, w_grad=0.0))
    assert set(batch_losses(net, image[None], targets, off, "fp32")) == {"fg", "dist"}
    config = replace(config, loss=replace(config.loss, w_grad=1.0))
    on = batch_losses(net, image[None], targets, config, "fp32")
    assert set(on) == {"fg", "dist", "grad"} and on["grad"].item() > 0
    # and a run with it trains: every step's logged parts include it
    seen = []
    tiles = [LabelledTile("a", image, labels)]
    record = lambda state, parts: seen.append(parts)  # noqa: E731
    train_net(tiles, [], tmp_path, config, progress=False, on_step=record)
    assert len(seen) == 3 and all("grad" in parts for parts in seen)
