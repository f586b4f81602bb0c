"""``instasam prepare``: turn a labelled dataset into images, instance labels and points.

Output (the dataset folder format of :mod:`instasam.io.folder`)::

    OUT/images/<stem>.png   OUT/labels/<stem>.tif   OUT/points/<stem>.csv

Every input is read and checked before the first file is written, so bad input leaves
no partial output.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from instasam.errors import InputError
from instasam.io.images import IMAGE_SUFFIXES, list_images, read_rgb, write_rgb
from instasam.io.labels import find_label_file, read_label_map, write_label_map
from instasam.io.points import write_points_csv, write_points_geojson
from instasam.points import parse_shift, points_from_instances, shift_points

SUBSETS = ("train", "val", "test", "testA", "testB")


@dataclass
class Entry:
    """One input image and how to get its instance labels once its size is known."""

    stem: str
    image_path: Path
    labels: Callable[[tuple[int, int]], np.ndarray]
    label_path: Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="convert a labelled dataset to images/, labels/ and points/",
        description="Convert a labelled dataset into OUT/images/*.png, OUT/labels/*.tif and "
        "OUT/points/*.csv (one point per nucleus: its centre, optionally shifted).",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    monuseg = formats.add_parser("monuseg", help="MoNuSeg: TIFF tiles + Aperio XML")
    monuseg.add_argument(
        "--labels",
        choices=("auto", "xml", "instance"),
        default="auto",
        help="labels from labels_instance/ PNGs or the XML (auto: PNG when present, else XML)",
    )
    cpm17 = formats.add_parser("cpm17", help="CPM17: Images/*.png + Labels/*.mat (inst_map)")
    folder = formats.add_parser("folder", help="any images folder + instance-mask folder")
    folder.add_argument("--images", default="images", help="image subfolder (default images)")
    folder.add_argument("--labels", default="labels", help="label subfolder (default labels)")
    for sub in (monuseg, cpm17, folder):
        sub.add_argument("src", type=Path, help="dataset folder")
        sub.add_argument("out", type=Path, help="output folder")
        sub.add_argument("--shift", help="move points by a distance in LOW-HIGH px, e.g. 4-6")
        sub.add_argument("--seed", type=int, default=0, help="seed of the shifts (default 0)")
        sub.add_argument("--split", type=Path, help="JSON with lists of stems per subset")
        sub.add_argument("--subset", help="which list of --split to prepare (e.g. train)")
        sub.add_argument("--points-format", choices=("csv", "geojson"), default="csv")
        sub.set_defaults(func=run)


def monuseg_entries(src: Path, mode: str, wanted: set[str] | None = None) -> list[Entry]:
    from instasam.io.monuseg import monuseg_layout, read_monuseg_xml

    images_dir, xml_dir, instance_dir = monuseg_layout(src)
    if mode == "xml" and xml_dir is None:
        raise InputError(src, "no annotations/ folder of XML files")
    if mode == "instance" and instance_dir is None:
        raise InputError(src, "no labels_instance/ folder")
    entries = []
    for image in _wanted(list_images(images_dir), wanted):
        png = find_label_file(instance_dir, image.stem) if instance_dir and mode != "xml" else None
        xml = xml_dir / f"{image.stem}.xml" if xml_dir else None
        if png is not None:
            entries.append(Entry(image.stem, image, lambda shape, p=png: read_label_map(p), png))
        elif mode != "instance" and xml is not None and xml.is_file():
            entries.append(
                Entry(image.stem, image, lambda shape, x=xml: read_monuseg_xml(x, shape), xml)
            )
        else:
            where = "labels_instance/" if mode == "instance" else "annotations/"
            raise InputError(image, f"no annotation for this image in {where}")
    return entries


def cpm17_entries(src: Path, wanted: set[str] | None = None) -> list[Entry]:
    from instasam.io.cpm17 import cpm17_layout, read_cpm17_label

    images_dir, labels_dir = cpm17_layout(src)
    entries = []
    for image in _wanted(list_images(images_dir), wanted):
        mat = labels_dir / f"{image.stem}.mat"
        if not mat.is_file():
            raise InputError(mat, "missing label file for " + image.name)
        entries.append(Entry(image.stem, image, lambda shape, m=mat: read_cpm17_label(m), mat))
    return entries


def folder_entries(
    src: Path, images: str, labels: str, wanted: set[str] | None = None
) -> list[Entry]:
    entries = []
    for image in _wanted(list_images(src / images), wanted):
        label = find_label_file(src / labels, image.stem) or _suffixed_label(
            src / labels, image.stem
        )
        if label is None:
            raise InputError(src / labels, f"no label map for {image.name}")
        entries.append(Entry(image.stem, image, lambda shape, p=label: read_label_map(p), label))
    return entries


def _wanted(images: list[Path], wanted: set[str] | None) -> list[Path]:
    return images if wanted is None else [p for p in images if p.stem in wanted]


def _suffixed_label(folder: Path, stem: str) -> Path | None:
    """Label files named ``<stem>_label.png`` (a common convention)."""
    for suffix in (".png", ".tif", ".tiff"):
        candidate = folder / f"{stem}_label{suffix}"
        if candidate.is_file():
            return candidate
    return None


def subset_stems(split: Path | None, subset: str | None) -> list[str] | None:
    """The stems listed under ``subset`` in the split file (None: no split given)."""
    if split is None and subset is None:
        return None
    if split is None or subset is None:
        raise InputError(split or subset, "--split and --subset go together")
    try:
        stems = json.loads(split.read_text())[subset]
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(split, f"cannot read split ({exc.__class__.__name__})") from None
    except KeyError:
        raise InputError(split, f"no subset {subset!r} in the split") from None
    if not isinstance(stems, list) or not all(isinstance(s, str) for s in stems):
        raise InputError(split, f"subset {subset!r} is not a list of names")
    return stems


def select_subset(entries: list[Entry], split: Path | None, stems: list[str] | None) -> list[Entry]:
    if stems is None:
        return entries
    by_stem = {e.stem: e for e in entries}
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise InputError(
            split, f"{len(missing)} listed image(s) not in the source, e.g. {missing[0]}"
        )
    return [by_stem[s] for s in stems]


def stem_seed(seed: int, stem: str) -> np.random.SeedSequence:
    """A per-image seed that does not depend on which other images are prepared."""
    return np.random.SeedSequence([seed, zlib.crc32(stem.encode())])


def run(args: argparse.Namespace) -> int:
    stems = subset_stems(args.split, args.subset)
    wanted = None if stems is None else set(stems)
    if args.format == "monuseg":
        entries = monuseg_entries(args.src, args.labels, wanted)
    elif args.format == "cpm17":
        entries = cpm17_entries(args.src, wanted)
    else:
        entries = folder_entries(args.src, args.images, args.labels, wanted)
    entries = select_subset(entries, args.split, stems)
    if not entries:
        raise InputError(args.src, "no images found")
    shift = None
    if args.shift:
        try:
            shift = parse_shift(args.shift)
        except ValueError as exc:
            raise InputError(None, str(exc)) from None
    prepared = []
    for entry in tqdm(entries, desc="reading", unit="image", disable=None):
        image = read_rgb(entry.image_path)
        labels = entry.labels(image.shape[:2])
        if labels.shape != image.shape[:2]:
            raise InputError(
                entry.label_path,
                f"size {labels.shape[1]}x{labels.shape[0]} differs from its image "
                f"{entry.image_path.name} ({image.shape[1]}x{image.shape[0]})",
            )
        if not labels.any():
            raise InputError(entry.label_path, "no nuclei annotated")
        points, _ = points_from_instances(labels)
        if shift is not None:
            seed = int(stem_seed(args.seed, entry.stem).generate_state(1)[0])
            points = shift_points(points, labels.shape, *shift, seed=seed)
        prepared.append((entry.stem, image, labels, points))
    write_points = write_points_csv if args.points_format == "csv" else write_points_geojson
    suffix = ".csv" if args.points_format == "csv" else ".geojson"
    for stem, image, labels, points in tqdm(prepared, desc="writing", unit="image", disable=None):
        write_rgb(args.out / "images" / f"{stem}.png", image)
        write_label_map(args.out / "labels" / f"{stem}.tif", labels)
        write_points(args.out / "points" / f"{stem}{suffix}", points)
    nuclei = sum(len(p[3]) for p in prepared)
    print(f"prepared {len(prepared)} image(s), {nuclei} nuclei -> {args.out}")
    return 0


__all__ = ["IMAGE_SUFFIXES", "add_parser", "run"]
