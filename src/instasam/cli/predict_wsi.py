"""``instasam predict-wsi``: nuclei of a whole slide as QuPath detections (GeoJSON)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instasam.cli.postprocess import add_threshold_options, threshold_overrides
from instasam.cli.predict import add_speed_options

if TYPE_CHECKING:
    from instasam.predict.slides import SlidePredictConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict-wsi",
        help="segment the nuclei of a whole slide into a QuPath GeoJSON",
        description="Segment every nucleus of a whole-slide image (pyramidal TIFF/SVS, or a "
        "plain TIFF) and write them as QuPath detections (File > Import objects). Tiles "
        "without tissue are skipped. An interrupted run resumes where it stopped: finished "
        "tiles are kept in OUT.partial/ until OUT is complete.",
    )
    p.add_argument("slide", type=Path, help="slide file (.svs, .tif, ...)")
    p.add_argument("--out", required=True, type=Path, help="output .geojson")
    p.add_argument(
        "--mpp",
        type=float,
        help="microns per pixel of the slide's full resolution (overrides its metadata)",
    )
    p.add_argument(
        "--points",
        type=Path,
        help="points (CSV or QuPath GeoJSON, full-resolution pixels) to count how many fall "
        "inside a predicted nucleus",
    )
    p.add_argument(
        "--table",
        type=Path,
        help="also write one CSV row per nucleus (its measurements) to this file",
    )
    add_slide_options(p)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=run)


def add_slide_options(p: argparse.ArgumentParser) -> None:
    """Model, tiling and measurement options shared by predict-wsi and predict-cohort."""
    from instasam.io.slides import DEFAULT_OVERLAP, DEFAULT_TARGET_MPP, DEFAULT_TILE

    p.add_argument(
        "--model",
        default="monuseg-points",
        help="a shipped model's name (`instasam models`) or RUN/model.pt from instasam train "
        "(default: monuseg-points)",
    )
    p.add_argument(
        "--target-mpp",
        type=float,
        help="microns per pixel the model works at (default: the model's own, else "
        f"{DEFAULT_TARGET_MPP})",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        help="tile side, model pixels (default: %(default)s)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help="model pixels shared by neighbouring tiles; must exceed the largest nucleus "
        "diameter (default: %(default)s)",
    )
    p.add_argument("--level", type=int, help="pyramid level to read (default: from the mpp)")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="discard the finished tiles of an earlier run (a run with other settings is "
        "refused otherwise)",
    )
    p.add_argument(
        "--no-tissue-mask", action="store_true", help="process every tile, tissue or not"
    )
    p.add_argument(
        "--no-measurements",
        action="store_true",
        help="only area and centroid per nucleus, not the shape and stain measurements "
        "(about 0.6 s less per 1000x1000 tile)",
    )
    add_speed_options(p)
    add_threshold_options(p)


def slide_config(args: argparse.Namespace) -> SlidePredictConfig:
    """The whole-slide settings of parsed :func:`add_slide_options` arguments."""
    from instasam.predict.slides import SlidePredictConfig

    return SlidePredictConfig(
        tile=args.tile,
        overlap=args.overlap,
        target_mpp=args.target_mpp,
        level=args.level,
        use_tissue_mask=not args.no_tissue_mask,
        measure=not args.no_measurements,
    )


def model_fingerprint(
    path: Path, overrides: dict[str, float] | None = None, stain_strength: float | None = None
) -> dict[str, Any]:
    """What a resumed run checks the model against: the file's name, size and time, and
    the post-processing settings and stain strength given on the command line, if any."""
    stat = path.stat()
    fingerprint: dict[str, Any] = {"model": path.name, "bytes": stat.st_size}
    fingerprint["mtime"] = stat.st_mtime
    if overrides:
        fingerprint["postprocess"] = dict(sorted(overrides.items()))
    if stain_strength is not None:
        fingerprint["stain_strength"] = stain_strength
    return fingerprint


def run(args: argparse.Namespace) -> int:
    from instasam.errors import InputError
    from instasam.io.atomic import check_output_file
    from instasam.io.points import check_points_inside, read_points
    from instasam.io.slides import DEFAULT_TARGET_MPP, SlideWarning, open_slide
    from instasam.predict.slides import check_tissue, predict_slide

    if args.out.suffix.lower() not in (".geojson", ".json"):
        raise InputError(args.out, "--out must end in .geojson")
    if args.table is not None:
        check_output_file(args.table)
    config = slide_config(args)
    # Everything about the slide is checked before the (slow) model loads.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SlideWarning)
        slide = open_slide(args.slide, mpp=args.mpp)
    for warning in caught:
        print(f"instasam: warning: {warning.message}", file=sys.stderr)
    with slide:
        tissue = None
        if config.use_tissue_mask:
            tissue = slide.tissue_mask()
            check_tissue(slide, tissue)
        points = None
        if args.points is not None:
            points = read_points(args.points, mpp=slide.mpp)
            check_points_inside(points, (slide.dimensions[1], slide.dimensions[0]), args.points)
        if args.level is not None:  # a level the slide lacks fails before the model loads
            slide.working_level(args.target_mpp or DEFAULT_TARGET_MPP, args.level)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from instasam.predict.tiles import load_predictor
        from instasam.pretrained import resolve_model

        model_path = resolve_model(args.model)
        if not model_path.is_file():
            raise InputError(model_path, "model file not found")

        predictor = load_predictor(
            model_path,
            precision=args.precision,
            flips=args.flips,
            device=args.device,
            stain_strength=args.stain_strength,
            overrides=threshold_overrides(args),
        )
        result = predict_slide(
            slide,
            predictor,
            args.out,
            config,
            resume=not args.no_resume,
            points=points,
            tissue=tissue,
            fingerprint=model_fingerprint(
                model_path, threshold_overrides(args), args.stain_strength
            ),
            points_name=str(args.points),
            table=args.table,
        )
    w = result.working
    print(
        f"{args.out}: {result.nuclei} nuclei from {result.tiles_on_tissue} of "
        f"{result.tiles_total} tiles on tissue ({result.tiles_resumed} resumed), level "
        f"{w.level} at {w.level_mpp:.3g} µm/px x{w.scale:.3g} -> {w.target_mpp:.3g} µm/px, "
        f"{result.tissue_megapixels:.1f} Mpx of tissue in {result.seconds:.0f} s"
    )
    if result.points:
        print(f"{result.points_in_nuclei} of {result.points} points fall inside a nucleus")
    for note in result.notes:
        print(f"instasam: note: {note}", file=sys.stderr)
    return 0
