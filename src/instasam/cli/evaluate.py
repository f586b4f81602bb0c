"""`instasam evaluate`: metrics of predicted instance label maps against the ground truth.

Label files are paired by stem (``<stem>.{tif,tiff,png,npy}``). The command prints one
row per image and the mean, in percent; ``--json`` holds the same figures as fractions in
[0, 1]: ``{"images": {stem: {metric: value}}, "mean": {metric: value}}``. Every input is
read and checked (and the report built in memory) before any file is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from instasam.errors import InputError
from instasam.io.atomic import check_output_file, check_output_folder, write_text_atomic
from instasam.io.images import list_images
from instasam.io.labels import LABEL_SUFFIXES, read_label_map
from instasam.metrics import METRIC_KEYS, METRIC_LABELS, compute_metrics, mean_metrics

#: A progress bar appears by default above this many images (on a terminal).
PROGRESS_MIN_IMAGES = 4
_SHOWN_STEMS = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``instasam evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against ground truth (Dice_obj, AJI, AJI+, PQ, ...)",
        description=(
            "Score predicted instance label maps against ground-truth ones, paired by file "
            "stem. Prints a per-image and mean table in percent."
        ),
    )
    parser.add_argument(
        "--gt",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder of ground-truth label maps (.tif, .tiff, .png, .npy)",
    )
    parser.add_argument(
        "--pred",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder of predicted label maps, same stems as --gt",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write per-image and mean metrics (fractions in [0, 1]) as JSON",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write DIR/report.html: table, AJI plot and outline overlays",
    )
    parser.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="H&E tiles named by stem, background of the report's overlays",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar (default: on a terminal, above {PROGRESS_MIN_IMAGES} images)",
    )
    parser.set_defaults(func=run)


def _few(stems: list[str]) -> str:
    more = len(stems) - _SHOWN_STEMS
    return ", ".join(stems[:_SHOWN_STEMS]) + (f" (and {more} more)" if more > 0 else "")


def label_files(folder: Path) -> dict[str, Path]:
    """Label files directly inside ``folder`` by stem; refuses a missing or empty folder."""
    if not folder.exists():
        raise InputError(folder, "folder not found")
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in LABEL_SUFFIXES:
            continue
        if path.stem in files:
            raise InputError(
                folder,
                f"two label files share the stem {path.stem!r}: "
                f"{files[path.stem].name}, {path.name}",
            )
        files[path.stem] = path
    if not files:
        raise InputError(folder, f"no label files ({', '.join(LABEL_SUFFIXES)})")
    return files


def paired_files(gt_dir: Path, pred_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, gt_file, pred_file)`` for every stem; both folders must hold the same stems."""
    gt, pred = label_files(gt_dir), label_files(pred_dir)
    no_pred = sorted(set(gt) - set(pred))
    no_gt = sorted(set(pred) - set(gt))
    if no_pred or no_gt:
        parts = []
        if no_pred:
            parts.append(f"no prediction for {len(no_pred)} ground-truth stem(s): {_few(no_pred)}")
        if no_gt:
            parts.append(f"no ground truth ({gt_dir}) for {len(no_gt)} stem(s): {_few(no_gt)}")
        raise InputError(pred_dir, "; ".join(parts))
    return [(stem, gt[stem], pred[stem]) for stem in sorted(gt)]


def _check_images(images_dir: Path, stems: list[str]) -> None:
    available = {p.stem for p in list_images(images_dir)}
    missing = [s for s in stems if s not in available]
    if missing:
        raise InputError(images_dir, f"no image for {len(missing)} stem(s): {_few(missing)}")


def _check_outputs(args: argparse.Namespace) -> None:
    if args.json is not None:
        check_output_file(args.json)
    if args.report is not None:
        check_output_folder(args.report)


def score_pairs(
    pairs: list[tuple[str, Path, Path]], progress: bool | None = None
) -> dict[str, dict[str, float]]:
    """Metrics of each pair, by stem. Raises :class:`InputError` on a size mismatch."""
    show = (
        progress
        if progress is not None
        else (len(pairs) > PROGRESS_MIN_IMAGES and sys.stderr.isatty())
    )
    scores: dict[str, dict[str, float]] = {}
    with tqdm(pairs, desc="evaluate", unit="image", disable=not show, leave=False) as bar:
        for stem, gt_path, pred_path in bar:
            gt, pred = read_label_map(gt_path), read_label_map(pred_path)
            if gt.shape != pred.shape:
                raise InputError(
                    pred_path,
                    f"size {pred.shape[1]}x{pred.shape[0]} does not match ground "
                    f"truth {gt_path} ({gt.shape[1]}x{gt.shape[0]})",
                )
            scores[stem] = compute_metrics(gt, pred)
    return scores


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Aligned text table, one row per image and a mean row, metrics in percent."""
    stems = list(results["images"])
    first = max([len("image"), len("mean"), *(len(s) for s in stems)])
    widths = [max(len(METRIC_LABELS[k]), 6) for k in METRIC_KEYS]

    def row(name: str, values: list[str]) -> str:
        cells = (v.rjust(w) for v, w in zip(values, widths, strict=True))
        return "  ".join([name.ljust(first), *cells]).rstrip()

    def numbers(metrics: Mapping[str, float]) -> list[str]:
        return [f"{100.0 * metrics[k]:.2f}" for k in METRIC_KEYS]

    lines = [
        "Metrics in % (the JSON holds fractions in [0, 1])",
        row("image", [METRIC_LABELS[k] for k in METRIC_KEYS]),
    ]
    lines.append("-" * len(lines[-1]))
    lines += [row(stem, numbers(results["images"][stem])) for stem in stems]
    lines.append("-" * len(lines[1]))
    lines.append(row("mean", numbers(results["mean"])))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print the table and write the JSON and the report."""
    pairs = paired_files(args.gt, args.pred)
    stems = [stem for stem, _, _ in pairs]
    if args.images is not None:
        _check_images(args.images, stems)
    _check_outputs(args)
    per_image = score_pairs(pairs, args.progress)
    results = {
        "images": per_image,
        "mean": mean_metrics([per_image[s] for s in stems]),
    }
    report_html = None
    if args.report is not None:
        from instasam.report import build_report_html  # imports Pillow drawing only when asked

        report_html = build_report_html(results, args.gt, args.pred, args.images)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    if report_html is not None:
        from instasam.report import write_html

        write_html(args.report, report_html)
    print(format_table(results))
    return 0
