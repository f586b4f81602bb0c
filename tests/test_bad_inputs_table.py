"""Every bad input the commands meet, run through the real CLI, written to docs/BAD_INPUTS.md.

Each case must exit with status 2, print exactly one line ``instasam: error: <file>:
<reason>`` without a traceback, and leave no new file or folder behind. The table in
``docs/BAD_INPUTS.md`` is generated from these runs and compared with the committed one, so
it cannot drift; ``INSTASAM_WRITE_DOCS=1 pytest tests/test_bad_inputs_table.py`` rewrites it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instasam.cli import main
from instasam.cli.demo import sample_dir
from instasam.io.labels import write_label_map

DOC = Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUTS.md"
SAMPLE_TEST = "TCGA-E2-A1B5-01Z-00-DX1_y400_x500"


def _data(root: Path, stem: str = "tile", size: int = 64, points: str | None = "x,y\n10,12\n"):
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    rgb = np.full((size, size, 3), 200, dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
    if points is not None:
        (root / "points" / f"{stem}.csv").write_text(points)
    return root


def _labels(folder: Path, stem: str, shape=(64, 64), truncate: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.tif"
    labels = np.zeros(shape, dtype=np.int32)
    labels[10:30, 10:30] = 1
    write_label_map(path, labels)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def _case_prepare_missing(t):
    return ["prepare", "monuseg", str(t / "nowhere"), str(t / "out")], t / "nowhere"


def _case_prepare_bad_xml(t):
    src = t / "src"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "images" / "a.tif")
    (src / "annotations" / "a.xml").write_text("<Annotations><Region>")
    return ["prepare", "monuseg", str(src), str(t / "out")], src / "annotations" / "a.xml"


def _case_prepare_bad_shift(t):
    return ["prepare", "monuseg", str(sample_dir()), str(t / "out"), "--shift", "8-2"], "--shift"


def _case_pseudo_no_images(t):
    (t / "data").mkdir()
    return ["pseudo", "--data", str(t / "data"), "--out", str(t / "out")], t / "data"


def _case_pseudo_header_only(t):
    data = _data(t / "data", points="x,y\n")
    argv = ["pseudo", "--data", str(data), "--out", str(t / "out"), "--source", "cv"]
    return argv, data / "points" / "tile.csv"


def _case_pseudo_point_outside(t):
    data = _data(t / "data", points="x,y\n10,12\n500,3\n")
    argv = ["pseudo", "--data", str(data), "--out", str(t / "out"), "--source", "cv"]
    return argv, data / "points" / "tile.csv"


def _case_pseudo_points_not_numbers(t):
    data = _data(t / "data", points="x,y\n10,abc\n")
    argv = ["pseudo", "--data", str(data), "--out", str(t / "out"), "--source", "cv"]
    return argv, data / "points" / "tile.csv"


def _case_pseudo_model_without_model(t):
    data = _data(t / "data", points="x,y\n10,12\n")
    argv = ["pseudo", "--data", str(data), "--out", str(t / "out"), "--source", "model"]
    return argv, "--source model"


def _case_pseudo_previous_lacks_a_tile(t):
    data = _data(t / "data", points="x,y\n10,12\n")
    (t / "previous").mkdir()
    argv = ["pseudo", "--data", str(data), "--out", str(t / "out"), "--source", "model"]
    argv += ["--model", "monuseg-points", "--previous", str(t / "previous")]
    return argv, t / "previous" / "labels" / "tile.tif"


def _case_train_missing_points(t):
    data = _data(t / "data", points=None)
    return ["train", "--data", str(data), "--out", str(t / "out")], data


def _case_train_bad_config(t):
    data = _data(t / "data")
    (t / "config.json").write_text("{not json")
    argv = [
        "train",
        "--data",
        str(data),
        "--out",
        str(t / "out"),
        "--config",
        str(t / "config.json"),
    ]
    return argv, t / "config.json"


def _case_train_epochs_for_net(t):
    data = _data(t / "data")
    return ["train", "--data", str(data), "--out", str(t / "out"), "--epochs", "2"], "--epochs"


def _case_train_init_missing(t):
    data = _data(t / "data")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--init", str(t / "m.pt")]
    return argv, t / "m.pt"


def _case_train_init_not_checkpoint(t):
    data = _data(t / "data")
    (t / "m.pt").write_text("hello")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--init", str(t / "m.pt")]
    return argv, t / "m.pt"


def _case_train_init_instasam_run(t):
    data = _data(t / "data")
    torch.save({"format": "instasam-1", "state": {}}, t / "m.pt")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--init", str(t / "m.pt")]
    return argv, t / "m.pt"


def _case_train_negative_workers(t):
    data = _data(t / "data")
    return ["train", "--data", str(data), "--out", str(t / "out"), "--workers", "-1"], "--workers"


def _case_train_zero_budget(t):
    data = _data(t / "data")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--max-minutes", "0"]
    return argv, "--max-minutes"


def _case_train_downscale_above_one(t):
    data = _data(t / "data")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--downscale", "1.5"]
    return argv, "--downscale"


def _case_train_device_for_instasam(t):
    data = _data(t / "data")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--arch", "instasam"]
    return [*argv, "--device", "cpu"], "--device"


def _case_train_sam_fusion_backbone(t):
    data = _data(t / "data")
    argv = ["train", "--data", str(data), "--out", str(t / "out"), "--sam-fusion"]
    return [*argv, "--backbone", "sam_vit_b"], "--backbone"


def _case_predict_missing(t):
    return ["predict", str(t / "none.png"), "--out", str(t / "out")], t / "none.png"


def _case_predict_greyscale(t):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(t / "grey.png")
    return ["predict", str(t / "grey.png"), "--out", str(t / "out")], t / "grey.png"


def _case_predict_truncated_tiff(t):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(t / "a.tif", compression="tiff_deflate")
    data = (t / "a.tif").read_bytes()
    (t / "a.tif").write_bytes(data[: len(data) // 3])
    return ["predict", str(t / "a.tif"), "--out", str(t / "out")], t / "a.tif"


def _case_predict_unknown_model(t):
    image = sample_dir() / "images" / f"{SAMPLE_TEST}.tif"
    return [
        "predict",
        str(image),
        "--model",
        "no-such-model",
        "--out",
        str(t / "out"),
    ], "no-such-model"


def _case_predict_damaged_model(t):
    (t / "m.pt").write_bytes(b"\x80\x02garbage")
    image = sample_dir() / "images" / f"{SAMPLE_TEST}.tif"
    return ["predict", str(image), "--model", str(t / "m.pt"), "--out", str(t / "out")], t / "m.pt"


def _case_predict_out_is_file(t):
    (t / "f").write_text("x")
    image = sample_dir() / "images" / f"{SAMPLE_TEST}.tif"
    return ["predict", str(image), "--out", str(t / "f")], t / "f"


def _case_predict_stain_without_reference(t):
    from instasam.config import NetConfig, NucleiNetConfig
    from instasam.model.unet import NucleiUNet, save_net

    shape = NucleiNetConfig(widths=(4, 8))
    save_net(t / "old.pt", NucleiUNet(shape), NetConfig(net=shape))
    image = sample_dir() / "images" / f"{SAMPLE_TEST}.tif"
    argv = ["predict", str(image), "--model", str(t / "old.pt"), "--out", str(t / "out")]
    return [*argv, "--stain-strength", "0.5"], t / "old.pt"


def _case_predict_centres_without_a_centre_head(t):
    from instasam.config import NetConfig, NucleiNetConfig
    from instasam.model.unet import NucleiUNet, save_net

    shape = NucleiNetConfig(widths=(4, 8), centre_head=False)
    save_net(t / "net.pt", NucleiUNet(shape), NetConfig(net=shape))
    image = sample_dir() / "images" / f"{SAMPLE_TEST}.tif"
    argv = ["predict", str(image), "--model", str(t / "net.pt"), "--out", str(t / "out")]
    return [*argv, "--markers", "centres"], t / "net.pt"


def _case_postprocess_centres_without_a_centre_map(t):
    from instasam.io.maps import write_maps

    (t / "maps").mkdir()
    write_maps(t / "maps" / "a.npz", np.zeros((8, 8)), np.zeros((2, 8, 8)))
    argv = ["postprocess", str(t / "maps"), "--out", str(t / "out")]
    return [*argv, "--markers", "edges+centres"], t / "maps" / "a.npz"


def _case_postprocess_damaged_maps(t):
    (t / "maps").mkdir()
    (t / "maps" / "a.npz").write_bytes(b"not a zip")
    return ["postprocess", str(t / "maps"), "--out", str(t / "out")], t / "maps" / "a.npz"


def _case_tune_out_exists(t):
    data = _data(t / "val")
    _labels(data / "labels", "tile")
    (t / "tuned.pt").write_bytes(b"x")
    return ["tune", "--val", str(data), "--out", str(t / "tuned.pt")], t / "tuned.pt"


def _case_tune_val_without_labels(t):
    data = _data(t / "val")
    return ["tune", "--val", str(data), "--out", str(t / "tuned.pt")], data / "labels"


def _case_tune_not_a_nuclei_network(t):
    data = _data(t / "val")
    _labels(data / "labels", "tile")
    torch.save({"format": "something else"}, t / "m.pt")
    argv = ["tune", "--val", str(data), "--model", str(t / "m.pt"), "--out", str(t / "o.pt")]
    return argv, t / "m.pt"


def _case_evaluate_other_stems(t):
    _labels(t / "gt", "a")
    _labels(t / "pred", "b")
    return ["evaluate", "--gt", str(t / "gt"), "--pred", str(t / "pred")], t / "pred"


def _case_evaluate_size_mismatch(t):
    _labels(t / "gt", "a")
    bad = _labels(t / "pred", "a", shape=(32, 64))
    return ["evaluate", "--gt", str(t / "gt"), "--pred", str(t / "pred")], bad


def _case_evaluate_truncated(t):
    _labels(t / "gt", "a")
    bad = _labels(t / "pred", "a", shape=(300, 300), truncate=True)
    return ["evaluate", "--gt", str(t / "gt"), "--pred", str(t / "pred")], bad


def _case_evaluate_json_folder(t):
    _labels(t / "gt", "a")
    (t / "j").mkdir()
    argv = ["evaluate", "--gt", str(t / "gt"), "--pred", str(t / "gt"), "--json", str(t / "j")]
    return argv, t / "j"


def _case_wsi_not_geojson(t):
    return ["predict-wsi", str(t / "s.svs"), "--out", str(t / "out.txt")], t / "out.txt"


def _case_wsi_missing_slide(t):
    return ["predict-wsi", str(t / "s.svs"), "--out", str(t / "out.geojson")], t / "s.svs"


def _case_cohort_manifest_without_slide_column(t):
    manifest = t / "cohort.csv"
    manifest.write_text("file,mpp\na.svs,0.25\n")
    return ["predict-cohort", str(manifest), "--out", str(t / "out")], manifest


def _case_cohort_folder_without_slides(t):
    (t / "scans").mkdir()
    (t / "scans" / "notes.txt").write_text("no slides here")
    return ["predict-cohort", str(t / "scans"), "--out", str(t / "out")], t / "scans"


CASES = {
    ("prepare", "source folder missing"): _case_prepare_missing,
    ("prepare", "malformed MoNuSeg XML"): _case_prepare_bad_xml,
    ("prepare", "--shift range reversed"): _case_prepare_bad_shift,
    ("pseudo", "data folder without images/"): _case_pseudo_no_images,
    ("pseudo", "points table with a header and no rows"): _case_pseudo_header_only,
    ("pseudo", "a point outside its image"): _case_pseudo_point_outside,
    ("pseudo", "a point coordinate that is not a number"): _case_pseudo_points_not_numbers,
    ("pseudo", "--source model without --model"): _case_pseudo_model_without_model,
    ("pseudo", "--previous lacks a tile's labels"): _case_pseudo_previous_lacks_a_tile,
    ("train", "an image without a points file"): _case_train_missing_points,
    ("train", "--config not JSON"): _case_train_bad_config,
    ("train", "--epochs given to the nuclei network (--arch net)"): _case_train_epochs_for_net,
    ("train", "--sam-fusion with a backbone it cannot read whole tiles with"): (
        _case_train_sam_fusion_backbone
    ),
    ("train", "--workers below 0"): _case_train_negative_workers,
    ("train", "--max-minutes not above 0"): _case_train_zero_budget,
    ("train", "--downscale above 1"): _case_train_downscale_above_one,
    ("train", "--device with --arch instasam"): _case_train_device_for_instasam,
    ("train", "--init file missing"): _case_train_init_missing,
    ("train", "--init not a checkpoint"): _case_train_init_not_checkpoint,
    ("train", "--init an InstaSAM (not nuclei-network) run"): _case_train_init_instasam_run,
    ("predict", "image missing"): _case_predict_missing,
    ("predict", "greyscale image"): _case_predict_greyscale,
    ("predict", "truncated compressed TIFF"): _case_predict_truncated_tiff,
    ("predict", "unknown shipped model name"): _case_predict_unknown_model,
    ("predict", "damaged model file"): _case_predict_damaged_model,
    ("predict", "--out names an existing file"): _case_predict_out_is_file,
    (
        "predict",
        "--stain-strength for a network saved without a stain reference",
    ): _case_predict_stain_without_reference,
    (
        "predict",
        "--markers centres for a network without a centre head",
    ): _case_predict_centres_without_a_centre_head,
    ("postprocess", "damaged .npz maps"): _case_postprocess_damaged_maps,
    (
        "postprocess",
        "--markers edges+centres for maps without a centre map",
    ): _case_postprocess_centres_without_a_centre_map,
    ("tune", "--out exists (no --overwrite)"): _case_tune_out_exists,
    ("tune", "--val tiles without outlines"): _case_tune_val_without_labels,
    ("tune", "--model not a nuclei network"): _case_tune_not_a_nuclei_network,
    ("evaluate", "GT and predictions with different names"): _case_evaluate_other_stems,
    ("evaluate", "prediction of another size"): _case_evaluate_size_mismatch,
    ("evaluate", "truncated label TIFF"): _case_evaluate_truncated,
    ("evaluate", "--json names a folder"): _case_evaluate_json_folder,
    ("predict-wsi", "--out not .geojson"): _case_wsi_not_geojson,
    ("predict-wsi", "slide missing"): _case_wsi_missing_slide,
    (
        "predict-cohort",
        "manifest without a 'slide' column",
    ): _case_cohort_manifest_without_slide_column,
    ("predict-cohort", "folder holding no slide"): _case_cohort_folder_without_slides,
}


def _run_case(build, tmp: Path, capsys) -> tuple[int, list[str], Path | str]:
    tmp.mkdir()
    argv, named = build(tmp)
    before = sorted(tmp.rglob("*"))
    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert sorted(tmp.rglob("*")) == before, "the command left files behind"
    return status, err, named


def test_every_bad_input_is_one_line_exit_2_and_the_table_is_current(tmp_path, capsys):
    rows = ["| command | bad input | exit | message |", "| --- | --- | --- | --- |"]
    for i, ((command, what), build) in enumerate(CASES.items()):
        status, err, named = _run_case(build, tmp_path / f"case{i}", capsys)
        assert status == 2, (command, what, err)
        assert len(err) == 1, (command, what, err)
        assert err[0].startswith(f"instasam: error: {named}"), (command, what, err[0])
        message = (
            err[0].replace(str(tmp_path / f"case{i}"), "DIR").replace(str(sample_dir()), "SAMPLE")
        )
        rows.append(f"| `{command}` | {what} | {status} | `{message}` |")
    table = "\n".join(
        [
            "# Bad input: what each command says",
            "",
            "Generated by `tests/test_bad_inputs_table.py`, which runs every case through the "
            "real command line and checks: exit status 2, one line naming the file and the "
            "reason, no traceback, nothing written. `DIR` is the case's temporary folder, "
            "`SAMPLE` the bundled sample. Regenerate with "
            "`INSTASAM_WRITE_DOCS=1 pytest tests/test_bad_inputs_table.py`.",
            "",
            *rows,
            "",
        ]
    )
    if os.environ.get("INSTASAM_WRITE_DOCS"):
        DOC.write_text(table)
    assert DOC.is_file() and DOC.read_text() == table, "docs/BAD_INPUTS.md is out of date"


def test_the_table_lists_every_case():
    text = DOC.read_text()
    assert all(f"| {what} |" in text for _, what in CASES)
    assert json.dumps(len(CASES)) and text.count("\n| `") == len(CASES)
