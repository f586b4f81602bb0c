"""``instasam predict``: instance maps for image files with a trained model."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from instasam.cli.postprocess import (
    add_threshold_options,
    non_negative_float,
    positive_float,
    threshold_overrides,
)
from instasam.errors import InputError
from instasam.io.images import list_images, read_rgb


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment nuclei in image files",
        description="Segment nuclei with a trained model. Writes OUT/<stem>.tif (instance ids, "
        "0 = background) per image; images that already have an output are skipped (resume). "
        "OUT/prediction.json records the model, its SHA-256, the thresholds and the "
        "precision used (`instasam evaluate --report` shows them); `instasam models` shows "
        "a shipped model's thresholds.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument(
        "--model",
        default="monuseg-points",
        help="a shipped model's name (`instasam models`) or RUN/model.pt from instasam train "
        "(default: monuseg-points)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<stem>.png")
    p.add_argument(
        "--geojson",
        action="store_true",
        help="also write OUT/<stem>.geojson: the nuclei as QuPath detections (File > Import "
        "objects), with per-nucleus measurements: area, centroid, perimeter, axes, "
        "eccentricity, solidity, orientation, mean haematoxylin and eosin optical density "
        "and mean colour",
    )
    p.add_argument(
        "--mpp",
        type=positive_float,
        help="microns per pixel of the images (0.25 at 40x, 0.5 at 20x): they are resampled "
        "to the network's resolution (--target-mpp) and the results back, and the GeoJSON's "
        "measurements are in µm; default: used as they are",
    )
    p.add_argument(
        "--target-mpp",
        type=positive_float,
        help="microns per pixel the network works at, with --mpp (default: the model's own, "
        "0.25 for the shipped model)",
    )
    p.add_argument("--sam-checkpoint", help="backbone weights, if not the default source")
    p.add_argument("--overlap", type=int, help="pixels shared by neighbouring windows")
    add_threshold_options(p)
    p.add_argument(
        "--save-maps",
        action="store_true",
        help="also write OUT/maps/<stem>.npz (foreground probability, distance maps) "
        "to re-run post-processing without the model (instasam postprocess)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo images that have an output")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    add_speed_options(p)
    p.set_defaults(func=run)


def add_precision_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The nuclei network's arithmetic (predict, predict-wsi, train, tune)."""
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default): bf16 where the CPU has native bf16 (AVX-512 BF16/AMX), else "
        "fp32 (nuclei network models)",
    )


def add_device_option(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None, text: str
) -> None:
    """Where the nuclei network runs (predict, predict-wsi, predict-cohort, train)."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default, help=text)


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """Hardware, arithmetic, test-time augmentation and stain standardisation of the nuclei
    network (shared with predict-wsi and predict-cohort)."""
    add_precision_option(p)
    add_device_option(
        p,
        "cpu",
        "where the nuclei network runs: cpu (default), cuda, or auto (a CUDA GPU where there "
        "is one); post-processing stays on the CPU",
    )
    p.add_argument(
        "--flips",
        action="store_true",
        help="average the maps of the image and its three flips (4x the network's time)",
    )
    p.add_argument(
        "--stain-strength",
        type=non_negative_float,
        help="how far each image's (a slide's: the whole slide's) haematoxylin and eosin "
        "densities are moved toward those of the network's training tiles, 0 (off) to 1 "
        "(all the way); default: the model's (0.25 for the shipped model; 0 for networks "
        "trained before training saved a stain reference)",
    )


def image_files(paths: list[Path]) -> list[Path]:
    """Expand folders; refuse missing paths and duplicate stems before any work."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += list_images(path)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "not found")
    stems = [f.stem for f in files]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise InputError(files[stems.index(dup[0])], f"two inputs share the name {dup[0]!r}")
    if not files:
        raise InputError(paths[0], "no images found")
    return files


def prediction_record(args: argparse.Namespace, predictor, scale: float) -> dict:
    """What made this folder's label maps, for the report and for the user who finds it."""
    from dataclasses import asdict

    from instasam import __version__
    from instasam.pretrained import file_sha256, resolve_model

    path = resolve_model(args.model)
    return {
        "model": str(args.model),
        "file": str(path),
        "sha256": file_sha256(path),
        "postprocess": asdict(predictor.postprocess),
        "precision": getattr(predictor, "precision", "fp32"),
        "flips": bool(getattr(predictor, "flips", False)),
        "stain": asdict(predictor.stain) if hasattr(predictor, "stain") else None,
        "mpp": args.mpp,
        "resampled_by": scale,
        "device": getattr(predictor, "device", "cpu"),
        "instasam": __version__,
    }


def run(args: argparse.Namespace) -> int:
    from instasam.io.atomic import check_output_folder

    check_output_folder(args.out)
    files = image_files(args.images)
    images = {f: read_rgb(f) for f in files}  # every input is checked before any output
    import json

    import torch  # after the inputs are checked: a bad one is refused in a second
    from tqdm.auto import tqdm

    from instasam.io.atomic import write_text_atomic
    from instasam.io.labels import write_label_map
    from instasam.io.maps import write_maps
    from instasam.io.overlays import write_overlay_png
    from instasam.io.qupath import id_namespace, write_detections
    from instasam.predict.resolution import resolution_scale
    from instasam.predict.tiles import load_predictor
    from instasam.report import PREDICTION_RECORD

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = load_predictor(
        args.model,
        backbone_checkpoint=args.sam_checkpoint,
        precision=args.precision,
        flips=args.flips,
        device=args.device,
        stain_strength=args.stain_strength,
        overrides=threshold_overrides(args),
    )
    model = getattr(predictor, "model", None)
    if model is not None and not model.backbone.pretrained:
        print("warning: this model's backbone has RANDOM weights; its output is not meaningful")
    if args.overlap is not None and model is not None:
        predictor.config = replace(predictor.config, overlap=args.overlap)
    target_mpp = args.target_mpp or getattr(predictor, "mpp", None)
    if args.mpp and target_mpp is None:
        print("note: the model records no resolution; the images are used as they are")
    scale = resolution_scale(args.mpp, target_mpp)  # 1: used as they are
    record = prediction_record(args, predictor, scale)
    write_text_atomic(args.out / PREDICTION_RECORD, json.dumps(record, indent=2))
    done = 0
    for path in tqdm(files, desc="images", unit="image", disable=None):
        out = args.out / f"{path.stem}.tif"
        if out.exists() and not args.overwrite:
            continue
        fg, hv, labels = maps_and_instances(predictor, images[path], scale)
        if args.save_maps:
            write_maps(args.out / "maps" / f"{path.stem}.npz", fg, hv)
        if args.overlay:
            write_overlay_png(args.out / "overlays" / f"{path.stem}.png", images[path], labels)
        if args.geojson:
            namespace = id_namespace(path.name)
            write_detections(
                args.out / f"{path.stem}.geojson",
                labels,
                mpp=args.mpp,
                namespace=namespace,
                image=images[path],
            )
        write_label_map(out, labels)  # last: its presence marks the image as done (resume)
        done += 1
    print(f"{done} image(s) segmented, {len(files) - done} already done; output in {args.out}")
    return 0


def maps_and_instances(predictor, image, scale: float):
    """The network's maps and the nuclei of ``image``, the network run on it resized by
    ``scale``; all three at the image's size."""
    from skimage.segmentation import relabel_sequential

    from instasam.postprocess import instances_from_maps
    from instasam.predict.resolution import labels_resized_to, maps_resized_to, resized_image

    if scale == 1.0:
        fg, hv = predictor.predict_maps(image)
        return fg, hv, instances_from_maps(fg, hv, predictor.postprocess)
    fg, hv = predictor.predict_maps(resized_image(image, scale))
    # The watershed runs where the network did, so minimum areas and the shrink keep
    # their meaning; only its result is brought back.
    labels = labels_resized_to(instances_from_maps(fg, hv, predictor.postprocess), image.shape[:2])
    labels = relabel_sequential(labels)[0]  # a nucleus may vanish when shrunk
    return (*maps_resized_to(fg, hv, image.shape[:2]), labels)
