"""One self-contained HTML evaluation report: metric table, AJI bar plot, outline overlays.

Everything lives in ``report.html``: overlays are base64 PNG ``data:`` URIs, the plot is
inline SVG, the style sheet is inline, so the file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping
from pathlib import Path

from instasam import __version__
from instasam.errors import InputError
from instasam.io.atomic import write_text_atomic
from instasam.io.images import list_images, read_rgb
from instasam.io.labels import find_label_file, read_label_map
from instasam.io.overlays import GT_COLOUR, PRED_COLOUR, overlay_png_bytes
from instasam.metrics import METRIC_KEYS, METRIC_LABELS

REPORT_NAME = "report.html"
#: What ``instasam predict`` records beside its label maps (model, thresholds, precision).
PREDICTION_RECORD = "prediction.json"
#: Longest side of the overlays in the report; ~200 kB per H&E tile at 480.
DEFAULT_MAX_SIDE = 480

Results = Mapping[str, Mapping[str, Mapping[str, float]]]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.2em 0.6em; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
tr.mean td { font-weight: bold; border-top: 2px solid #444; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figcaption { font-size: 0.85em; max-width: 480px; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; }
"""


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _percent(value: float) -> str:
    return f"{100.0 * value:.2f}"


def _metric_table(results: Results, counts: Mapping[str, tuple[int, int]]) -> str:
    """Per-image metrics (%) and nucleus counts (ground truth, predicted), and the mean."""
    head = "".join(f"<th>{html.escape(METRIC_LABELS[k])}</th>" for k in METRIC_KEYS)
    head += "<th>GT nuclei</th><th>predicted</th>"
    rows = []
    for stem, metrics in results["images"].items():
        cells = "".join(f"<td>{_percent(metrics[k])}</td>" for k in METRIC_KEYS)
        cells += "".join(f"<td>{n:,}</td>" for n in counts[stem])
        rows.append(f"<tr><td>{html.escape(stem)}</td>{cells}</tr>")
    mean = "".join(f"<td>{_percent(results['mean'][k])}</td>" for k in METRIC_KEYS)
    totals = [sum(c[i] for c in counts.values()) for i in (0, 1)]
    mean += "".join(f"<td>{n:,} in all</td>" for n in totals)
    rows.append(f'<tr class="mean"><td>mean</td>{mean}</tr>')
    return (
        '<table id="metrics">\n<thead><tr><th>image</th>'
        + head
        + "</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>"
    )


def aji_bar_svg(results: Results, width: int = 640) -> str:
    """Horizontal bar plot of the per-image AJI (in %) with the mean as a dashed line."""
    stems = list(results["images"])
    values = [float(results["images"][s]["aji"]) for s in stems]
    row, top, bottom = 18, 40, 30  # the title, then the mean's label, above the bars
    label_w = min(320, 12 + 7 * max((len(s) for s in stems), default=4))
    value_w = 52
    plot_w = max(100, width - label_w - value_w)
    height = top + row * len(stems) + bottom
    x0 = label_w

    def x_at(fraction: float) -> float:
        return x0 + plot_w * min(max(fraction, 0.0), 1.0)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" '
        'role="img" aria-label="AJI per image">',
        f'<text x="{x0}" y="14" font-weight="bold">AJI per image (%)</text>',
    ]
    for tick in range(0, 101, 20):
        x = x_at(tick / 100)
        y_end = top + row * len(stems)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y_end}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{y_end + 14}" text-anchor="middle">{tick}</text>'
        )
    for i, (stem, value) in enumerate(zip(stems, values, strict=True)):
        y = top + i * row
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 13}" text-anchor="end">{html.escape(stem)}</text>'
            f'<rect x="{x0}" y="{y + 3}" width="{x_at(value) - x0:.1f}" height="{row - 6}" '
            f'fill="#4a7ab5"><title>{html.escape(stem)}: {_percent(value)}</title></rect>'
            f'<text x="{x_at(value) + 4:.1f}" y="{y + 13}">{_percent(value)}</text>'
        )
    if stems:
        mean = float(results["mean"]["aji"])
        x = x_at(mean)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + row * len(stems)}" '
            'stroke="#c0392b" stroke-dasharray="4 3"/>'
            f'<text x="{x:.1f}" y="{top - 6}" fill="#c0392b" text-anchor="middle">'
            f"mean {_percent(mean)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _image_paths(images_dir: str | os.PathLike | None) -> dict[str, Path]:
    if images_dir is None:
        return {}
    return {p.stem: p for p in list_images(images_dir)}


def _label_path(folder: str | os.PathLike, stem: str) -> Path:
    path = find_label_file(folder, stem)
    if path is None:
        raise InputError(folder, f"no label file for {stem!r}")
    return path


def _overlay_figure(
    stem: str,
    metrics: Mapping[str, float],
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    image_path: Path | None,
    max_side: int,
) -> tuple[str, tuple[int, int]]:
    """The overlay figure of one image, and its (ground-truth, predicted) nucleus counts."""
    gt_path, pred_path = _label_path(gt_dir, stem), _label_path(pred_dir, stem)
    gt, pred = read_label_map(gt_path), read_label_map(pred_path)
    if gt.shape != pred.shape:
        raise InputError(
            pred_path,
            f"size {pred.shape[1]}x{pred.shape[0]} differs from {gt_path} "
            f"({gt.shape[1]}x{gt.shape[0]})",
        )
    image = None
    if image_path is not None:
        image = read_rgb(image_path)
        if image.shape[:2] != gt.shape:
            raise InputError(
                image_path,
                f"size {image.shape[1]}x{image.shape[0]} differs from {gt_path} "
                f"({gt.shape[1]}x{gt.shape[0]})",
            )
    png = overlay_png_bytes(image, [gt, pred], [GT_COLOUR, PRED_COLOUR], max_side=max_side)
    data = base64.b64encode(png).decode("ascii")
    caption = ", ".join(
        f"{METRIC_LABELS[k]} {_percent(metrics[k])}%" for k in ("aji", "dice_obj", "pq")
    )
    background = "H&amp;E" if image is not None else "grey background"
    figure = (
        f'<figure id="{html.escape(stem, quote=True)}">'
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(stem, quote=True)} overlay">'
        f"<figcaption><b>{html.escape(stem)}</b> ({gt.shape[1]}x{gt.shape[0]}, "
        f"{background}): {caption}</figcaption></figure>"
    )
    return figure, (_count(gt), _count(pred))


def _count(labels) -> int:
    import numpy as np

    return int(np.count_nonzero(np.unique(labels)))


def build_report_html(
    results: Results,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> str:
    """The report as one HTML string (reads the label maps and images again, by stem).

    Parameters
    ----------
    results : mapping
        ``{"images": {stem: {metric: value}}, "mean": {metric: value}}``, fractions.
    gt_dir, pred_dir : path
        Folders holding ``<stem>.{tif,tiff,png,npy}`` label maps.
    images_dir : path, optional
        Folder of H&E tiles named by stem; without it outlines are drawn on grey.
    max_side : int
        Overlays larger than this are shrunk (nearest id for labels, area mean for images).

    Raises
    ------
    InputError
        If a label file or image is missing, unreadable, or of the wrong size.
    """
    images = _image_paths(images_dir)
    if images_dir is not None:
        missing = [stem for stem in results["images"] if stem not in images]
        if missing:
            raise InputError(images_dir, f"no image for {_few(missing)}")
    figures, counts = [], {}
    for stem, metrics in results["images"].items():
        figure, counts[stem] = _overlay_figure(
            stem, metrics, gt_dir, pred_dir, images.get(stem), max_side
        )
        figures.append(figure)
    legend = (
        f'<span class="swatch" style="background:{_hex(GT_COLOUR)}"></span> ground truth '
        f'&nbsp; <span class="swatch" style="background:{_hex(PRED_COLOUR)}"></span> '
        "prediction (drawn on top)"
    )
    n_images = len(results["images"])
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>instasam evaluation report</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<h1>instasam evaluation report</h1>",
            f"<p>Ground truth: <code>{html.escape(str(gt_dir))}</code><br>"
            f"Prediction: <code>{html.escape(str(pred_dir))}</code><br>"
            f"{n_images} image(s); metrics in %, mean over images; "
            f"instasam {html.escape(__version__)}.</p>",
            _provenance(pred_dir),
            "<h2>Metrics (%)</h2>",
            _metric_table(results, counts),
            "<p>Dice_obj: object-level Dice; AJI+: one-to-one AJI; PQ = DQ x SQ at IoU &gt; 0.5; "
            "Dice_pix: foreground Dice; Prec/Rec/F1: detection at IoU &gt; 0.5.</p>",
            "<h2>AJI per image</h2>",
            aji_bar_svg(results),
            "<h2>Overlays</h2>",
            f"<p>{legend}</p>",
            '<div class="grid">',
            *figures,
            "</div>",
            "</body></html>",
            "",
        ]
    )


def write_report(
    out_dir: str | os.PathLike,
    results: Results,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Path:
    """Write ``out_dir/report.html`` atomically (see :func:`build_report_html`).

    Returns
    -------
    Path
        The report file.
    """
    text = build_report_html(results, gt_dir, pred_dir, images_dir, max_side)
    return write_html(out_dir, text)


def write_html(out_dir: str | os.PathLike, text: str) -> Path:
    """Write a built report into ``out_dir`` atomically and return its path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "report folder is a file")
    path = out_dir / REPORT_NAME
    write_text_atomic(path, text)
    return path


def _provenance(pred_dir: str | os.PathLike) -> str:
    """What made the predictions (``instasam predict`` writes it), or that it is unknown."""
    import json

    path = Path(pred_dir) / PREDICTION_RECORD
    try:
        record = json.loads(path.read_text())
        post = record["postprocess"]
        text = (
            f"Model: <code>{html.escape(str(record['model']))}</code>"
            + (f" (sha256 {html.escape(record['sha256'][:12])}…)" if record.get("sha256") else "")
            + f"; thresholds: foreground {post['fg_threshold']}, {_markers_in(post)}"
            + (f", shrink {post['shrink']} px" if post.get("shrink") else "")
            + f"; precision {html.escape(str(record['precision']))}"
            + ("; four flips averaged" if record.get("flips") else "")
            + (" on a GPU" if record.get("device") == "cuda" else "")
            + f"; instasam {html.escape(str(record.get('instasam', '?')))}."
        )
    except (OSError, ValueError, KeyError, TypeError):
        text = (
            f"Model and thresholds: unknown (no readable <code>{PREDICTION_RECORD}</code> "
            "in the prediction folder; `instasam predict` writes one)."
        )
    return f'<p id="provenance">{text}</p>'


def _markers_in(post: Mapping) -> str:
    """A prediction record's watershed seeds, in the words of ``marker_setting``."""
    from dataclasses import fields, replace

    from instasam.config import PostprocessConfig
    from instasam.postprocess import marker_setting

    known = {f.name for f in fields(PostprocessConfig)}
    return marker_setting(replace(PostprocessConfig(), **{k: post[k] for k in known & set(post)}))


def _few(stems: list[str], shown: int = 3) -> str:
    head = ", ".join(stems[:shown])
    more = len(stems) - shown
    return head + (f" (and {more} more)" if more > 0 else "")


__all__ = [
    "DEFAULT_MAX_SIDE",
    "REPORT_NAME",
    "aji_bar_svg",
    "build_report_html",
    "write_html",
    "write_report",
]
