"""``instasam predict-cohort``: many slides on a Dask cluster, with a table per slide."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from instasam.cli.postprocess import threshold_overrides
from instasam.cli.predict_wsi import add_slide_options, model_fingerprint, slide_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict-cohort",
        help="segment the nuclei of many slides on a Dask cluster",
        description="Segment every slide of a cohort, spreading batches of tissue tiles over "
        "Dask workers (a local cluster by default, or an existing one with --scheduler). "
        "Writes DIR/<slide>.geojson (QuPath detections), DIR/<slide>.nuclei.csv (one row "
        "per nucleus with its measurements) and DIR/cohort.csv (one row per slide: tissue "
        "area, nuclei per mm², median and IQR of area and haematoxylin density, time, "
        "status). A rerun skips finished slides and tiles; a slide that fails is reported "
        "in cohort.csv while the others finish.",
    )
    p.add_argument(
        "slides",
        nargs="+",
        type=Path,
        help="slide files, folders of slides, or CSV manifests (a 'slide' column, paths "
        "relative to the manifest, and an optional 'mpp' column)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (shared by workers)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        help="worker processes of the local cluster (default: one per CPU core, at most one "
        "per 2 GB of memory)",
    )
    where.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler (e.g. tcp://host:8786); its workers "
        "need instasam installed and must see --out and the slides at the same paths",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        help="torch threads per worker (default: the cores / the local workers; 1 on a "
        "--scheduler cluster)",
    )
    p.add_argument(
        "--tiles-per-task",
        type=int,
        default=8,
        help="tiles segmented by one Dask task (default: %(default)s)",
    )
    add_slide_options(p)
    p.set_defaults(func=run)


def default_workers(cores: int, memory_bytes: int | None = None) -> int:
    """One single-threaded worker per core, as many as fit at 2 GB each.

    On 2 cores, 2 workers x 1 thread segmented a 4-slide cohort in 87.7 s against 116.9 s
    for 1 worker x 2 threads (`benchmarks/bench_cohort.py`): the watershed and the
    measurements run on one thread, and torch gains less than 2x from a second one. A
    worker's model run peaks near 1.5 GB.
    """
    if memory_bytes is None:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    return max(1, min(cores, memory_bytes // (2 * 1024**3)))


def run(args: argparse.Namespace) -> int:
    from instasam.errors import InputError
    from instasam.io.atomic import check_output_folder
    from instasam.predict.cohort import ModelSpec, cohort_slides, predict_cohort
    from instasam.pretrained import resolve_model

    config = slide_config(args)
    slides = cohort_slides(args.slides)
    check_output_folder(args.out)
    if args.workers is not None and args.workers < 1:
        raise InputError(None, f"--workers must be >= 1, got {args.workers}")
    if args.tiles_per_task < 1:
        raise InputError(None, f"--tiles-per-task must be >= 1, got {args.tiles_per_task}")
    model_path = resolve_model(args.model)
    if not model_path.is_file():
        raise InputError(model_path, "model file not found")
    from instasam.training.precision import resolve_device

    resolve_device(args.device)  # here, not in every worker on each of its slides
    cores = os.cpu_count() or 1
    workers = args.workers or default_workers(cores)
    threads = args.threads_per_worker or (1 if args.scheduler else max(1, cores // workers))
    overrides = threshold_overrides(args)
    if overrides.get("markers", "edges") != "edges":  # refused here, not in every worker
        from instasam.predict.tiles import load_predictor

        load_predictor(model_path, overrides=overrides)
    spec = ModelSpec(
        str(model_path.resolve()),
        args.precision,
        args.flips,
        threads,
        device=args.device,
        postprocess=tuple(sorted(overrides.items())),
        stain_strength=args.stain_strength,
    )

    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado"):  # their start-up chatter is not for users
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.scheduler:
        cluster, client = None, Client(args.scheduler)
        where = f"{len(client.scheduler_info()['workers'])} workers at {args.scheduler}"
    else:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,  # a failed slide is reported once, by us
        )
        client = Client(cluster)
        where = f"a local cluster of {workers} worker(s) x {threads} thread(s)"
    try:
        print(f"{len(slides)} slides on {where}; dashboard: {client.dashboard_link}")
        result = predict_cohort(
            slides,
            args.out,
            spec,
            client,
            config,
            resume=not args.no_resume,
            tiles_per_task=args.tiles_per_task,
            fingerprint=model_fingerprint(model_path, overrides, args.stain_strength),
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    done = len(result.rows) - len(result.failed)
    nuclei = sum(r.nuclei for r in result.rows)
    print(
        f"{args.out / 'cohort.csv'}: {done} of {len(result.rows)} slides done "
        f"({result.skipped} from an earlier run), {nuclei} nuclei, "
        f"{result.tiles_predicted} tiles segmented in {result.seconds:.0f} s"
    )
    for row in result.failed:
        print(f"instasam: error: {row.path}: {row.reason}", file=sys.stderr)
    return 2 if result.failed else 0
