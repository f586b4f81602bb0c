"""The shipped model: checked by hash, loaded strictly, and good on a crop it never saw."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from instasam.cli import main
from instasam.cli.demo import sample_dir
from instasam.errors import InputError
from instasam.io.monuseg import load_monuseg_tile
from instasam.metrics import compute_metrics
from instasam.model.unet import NucleiUNet, is_net_checkpoint
from instasam.predict.tiles import NetPredictor, load_predictor
from instasam.pretrained import DEFAULT_MODEL, REGISTRY, pretrained_path

TEST_CROP = "TCGA-E2-A1B5-01Z-00-DX1_y400_x500"  # the sample's test crop (a Kumar test tile)


def _test_crop():
    sample = sample_dir()
    return load_monuseg_tile(
        sample / "images" / f"{TEST_CROP}.tif", sample / "annotations" / f"{TEST_CROP}.xml"
    )


def test_the_default_model_ships_with_a_card_and_loads_strictly():
    entry = REGISTRY[DEFAULT_MODEL]
    assert entry.path.stat().st_size <= 25e6 and entry.card.is_file()
    assert "CC BY-NC-SA 4.0" in entry.card.read_text() and "CC BY-NC-SA 4.0" in entry.licence
    payload = torch.load(pretrained_path(DEFAULT_MODEL), weights_only=False)
    assert is_net_checkpoint(payload)
    net = NucleiUNet(dataclasses.replace(NucleiUNet().config))  # default shape
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not missing and not unexpected


def test_a_damaged_shipped_file_is_refused_by_its_hash(tmp_path, monkeypatch):
    entry = REGISTRY[DEFAULT_MODEL]
    copy = tmp_path / entry.filename
    data = bytearray(entry.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    fake = dataclasses.replace(entry)
    monkeypatch.setattr(type(fake), "path", property(lambda self: copy))
    monkeypatch.setitem(REGISTRY, DEFAULT_MODEL, fake)
    with pytest.raises(InputError, match="SHA-256 mismatch"):
        pretrained_path(DEFAULT_MODEL)


def test_the_shipped_model_segments_a_crop_it_was_not_trained_on():
    image, labels = _test_crop()
    predictor = load_predictor(DEFAULT_MODEL, precision="fp32")
    assert isinstance(predictor, NetPredictor)
    scores = compute_metrics(labels, predictor.predict_instances(image))
    # An untrained network of the same shape scores AJI 0.0 here (checked below).
    assert scores["aji"] > 0.5 and scores["dice_obj"] > 0.7
    torch.manual_seed(0)
    untrained = dataclasses.replace(predictor, net=NucleiUNet(predictor.net.config).eval())
    assert compute_metrics(labels, untrained.predict_instances(image))["aji"] < 0.2


def test_bf16_and_fp32_give_the_same_nuclei_on_a_real_crop():
    image, _ = _test_crop()
    fp32 = load_predictor(DEFAULT_MODEL, precision="fp32")
    bf16 = load_predictor(DEFAULT_MODEL, precision="bf16")
    fg32, hv32 = fp32.predict_maps(image)
    fg16, hv16 = bf16.predict_maps(image)
    assert np.abs(fg32 - fg16).max() < 0.05 and np.abs(hv32 - hv16).max() < 0.1
    assert fp32.predict_instances(image).max() == bf16.predict_instances(image).max()


def test_models_command_lists_the_shipped_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert DEFAULT_MODEL in out and "Kumar" in out and "CC BY-NC-SA 4.0" in out
    # The shipped file's two settings, one pass and flips, as saved in it.
    assert "split at centres" in out and "--flips:" in out


def test_an_unknown_model_name_is_one_line(tmp_path, capsys):
    argv = ["predict", str(sample_dir() / "images"), "--model", "no-such-model"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instasam: error: no-such-model:")
