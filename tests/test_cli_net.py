"""``instasam train --arch net`` and ``--init`` through the CLI, on the bundled sample."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from instasam.cli import main
from instasam.config import NetConfig, NucleiNetConfig
from instasam.io.images import list_images, read_rgb
from instasam.io.labels import read_label_map
from instasam.model.unet import NucleiUNet, save_net
from instasam.stain import reference_densities


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """A nuclei-network configuration small enough to train in seconds."""
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(NetConfig(net=NucleiNetConfig(widths=(4, 8))).to_dict()))
    return path


def _train(prepared, config, run, *extra):
    argv = ["train", "--data", str(prepared / "train"), "--val", str(prepared / "test")]
    argv += ["--out", str(run), "--pseudo", "gt", "--steps", "2", "--batch-size", "1"]
    return main([*argv, "--config", str(config), "--quiet", *extra])


def test_train_net_then_predict_with_it(prepared, tiny_config, capsys):
    run = prepared / "run"
    assert _train(prepared, tiny_config, run) == 0
    out = capsys.readouterr().out
    assert "nuclei network" in out and "kept step" in out and "val AJI" in out
    pred = prepared / "pred"
    argv = ["predict", str(prepared / "test" / "images"), "--model", str(run / "model.pt")]
    assert main([*argv, "--out", str(pred), "--precision", "fp32", "--fg-threshold", "0.6"]) == 0
    (tif,) = pred.glob("*.tif")
    assert read_label_map(tif).shape == (256, 256)
    record = json.loads((pred / "prediction.json").read_text())
    assert record["sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert record["postprocess"]["fg_threshold"] == 0.6  # what was used, not the default
    assert record["precision"] == "fp32" and record["flips"] is False
    assert record["device"] == "cpu"
    # The network keeps its training tiles' staining, and prediction moves toward it.
    saved = NetConfig.from_dict(torch.load(run / "model.pt", weights_only=False)["config"])
    images = [read_rgb(p) for p in list_images(prepared / "train" / "images")]
    assert saved.stain.reference == pytest.approx(reference_densities(images))
    assert record["stain"]["reference"] == pytest.approx(saved.stain.reference)
    assert record["stain"]["strength"] == saved.stain.strength > 0


def test_fine_tuning_starts_from_the_given_weights_and_shape(prepared, tiny_config, tmp_path):
    torch.manual_seed(1)
    shape = NucleiNetConfig(widths=(4, 8, 16))  # not the run configuration's (4, 8)
    start = NucleiUNet(shape)
    save_net(tmp_path / "start.pt", start, NetConfig(net=shape))
    run = tmp_path / "tuned"
    assert _train(prepared, tiny_config, run, "--init", str(tmp_path / "start.pt")) == 0
    last = torch.load(run / "last.pt", weights_only=False)["net"]
    # Two small steps move the weights a little from where they started, not from scratch.
    diff = (last["fg_head.weight"] - start.state_dict()["fg_head.weight"]).abs().max()
    assert diff < 0.05
    # A few tiles' batch statistics do not replace the ones the weights were trained with.
    for name, tensor in start.state_dict().items():
        if "running_" in name:
            assert torch.equal(last[name], tensor), name


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "instasam_run", "damaged"])
def test_bad_init_is_one_line_and_exit_2(prepared, tiny_config, tmp_path, capsys, case):
    bad = tmp_path / "bad.pt"
    if case == "not_a_checkpoint":
        bad.write_text("hello")
    elif case == "instasam_run":
        torch.save({"format": "instasam-1", "state": {}}, bad)
    elif case == "damaged":  # weights of one shape under a configuration of another
        save_net(bad, NucleiUNet(NucleiNetConfig(widths=(4, 8, 16))), NetConfig())
    run = tmp_path / "run"
    assert _train(prepared, tiny_config, run, "--init", str(bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"instasam: error: {bad}")
    assert not run.exists()


def test_asking_for_a_gpu_where_there_is_none_is_one_line_and_exit_2(
    prepared, tiny_config, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert _train(prepared, tiny_config, run, "--device", "cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instasam: error: --device: no CUDA GPU")
    assert not (run / "model.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_saves_cpu_weights_that_predict_here(prepared, tiny_config, tmp_path):
    run = tmp_path / "cuda"
    assert _train(prepared, tiny_config, run, "--device", "cuda") == 0
    state = torch.load(run / "model.pt", weights_only=False)["state"]
    assert all(t.device.type == "cpu" for t in state.values())
    argv = ["predict", str(prepared / "test" / "images"), "--model", str(run / "model.pt")]
    assert main([*argv, "--out", str(tmp_path / "pred")]) == 0


def test_predict_on_a_gpu_where_there_is_none_is_one_line_and_exit_2(
    prepared, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["predict", str(prepared / "test" / "images"), "--out", str(tmp_path / "pred")]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instasam: error: --device: no CUDA GPU")
    assert not (tmp_path / "pred").exists()


def test_an_instasam_model_is_refused_on_a_gpu(tmp_path, monkeypatch):
    from instasam.config import InstaSAMConfig, TrainConfig
    from instasam.errors import InputError
    from instasam.model.instasam import build_model, save_checkpoint
    from instasam.predict.tiles import load_predictor

    path = tmp_path / "model.pt"
    save_checkpoint(
        path, build_model(InstaSAMConfig(train=TrainConfig(backbone="litemedsam_tiny")))
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused before any use
    with pytest.raises(InputError, match="CPU only"):
        load_predictor(path, device="cuda")


def test_a_centre_head_trains_from_the_points_and_predicts_through_the_cli(
    prepared, tiny_config, tmp_path, capsys
):
    run = tmp_path / "run"
    assert _train(prepared, tiny_config, run) == 0  # the head is the recipe's default
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(record["centre"] > 0 for record in log)  # the points taught the head
    table = json.loads((run / "thresholds.json").read_text())
    assert {row["markers"] for row in table} == {"edges", "centres", "edges+centres"}
    pred = tmp_path / "pred"
    argv = ["predict", str(prepared / "test" / "images"), "--model", str(run / "model.pt")]
    argv += ["--out", str(pred), "--precision", "fp32", "--markers", "centres", "--save-maps"]
    assert main(argv) == 0
    record = json.loads((pred / "prediction.json").read_text())
    assert record["postprocess"]["markers"] == "centres"
    again = tmp_path / "again"
    argv = ["postprocess", str(pred / "maps"), "--out", str(again), "--markers", "centres"]
    assert main(argv) == 0
    (first,), (second,) = pred.glob("*.tif"), again.glob("*.tif")
    assert read_label_map(first).shape == read_label_map(second).shape == (256, 256)
    capsys.readouterr()


def test_centre_markers_for_a_network_without_a_centre_head_are_one_line_and_exit_2(
    prepared, tmp_path, capsys
):
    headless = NucleiNetConfig(widths=(4, 8), centre_head=False)
    save_net(tmp_path / "net.pt", NucleiUNet(headless), NetConfig(net=headless))
    argv = ["predict", str(prepared / "test" / "images"), "--model", str(tmp_path / "net.pt")]
    assert main([*argv, "--out", str(tmp_path / "pred"), "--markers", "centres"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instasam: error: ")
    assert "no centre head" in err[0]
    assert not (tmp_path / "pred").exists()
