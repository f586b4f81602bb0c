"""``instasam prepare``: turn a labelled dataset into images, instance labels and points.

::

    instasam prepare monuseg SRC OUT [--labels auto|xml|instance]
    instasam prepare cpm17   SRC OUT
    instasam prepare folder  SRC OUT [--images images] [--labels labels]
        common: [--shift 4-6 [--seed 0]] [--split FILE --subset NAME] [--points-format csv]

Output (the dataset folder of :mod:`instasam.io.folder`)::

    OUT/images/<stem>.png   OUT/labels/<stem>.tif   OUT/points/<stem>.csv

Behaviour a user should know:

* Every input is read and checked (images, labels, sizes, split) before the first file is
  written, so bad input leaves no output; each file is then written atomically. A rerun
  redoes every tile and replaces its files (preparing is quick); files of other stems
  already in OUT are left alone, with a warning.
* Images are converted as :mod:`instasam.io.images` says (RGBA composited over white,
  16-bit scaled to 8-bit, greyscale refused) and written as PNG.
* Points are the nucleus centres of :func:`instasam.points.points_from_instances`;
  ``--shift LOW-HIGH`` moves each one as :func:`instasam.points.shift_points` does, with a
  per-image seed derived from ``--seed`` and the image's stem, so a tile's points do not
  depend on which other tiles are prepared with it.
* MoNuSeg XML is rasterised by :func:`instasam.io.monuseg.read_monuseg_xml`;
  ``--labels auto`` takes ``labels_instance/`` maps where a tile has one and the XML
  otherwise. The two differ by about half a pixel (see that module): ``--xml-origin
  matlab`` rasterises XML in the ``labels_instance`` convention, so that tiles labelled
  from XML (e.g. the official test set) match tiles labelled from those maps.
* A label map with no nucleus is kept (its points file is empty) with a warning; one
  that looks like a binary mask (a single id over several separate blobs) is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from instasam.errors import InputError
from instasam.io.atomic import check_output_folder
from instasam.io.folder import Sample, check_label_size, index_by_stem, pick_one, unique_images
from instasam.io.images import IMAGE_SUFFIXES, read_rgb, write_rgb
from instasam.io.labels import LABEL_SUFFIXES, read_label_map, write_label_map
from instasam.io.points import write_points_csv, write_points_geojson
from instasam.points import parse_shift, points_from_instances, shift_points

SUBSETS = ("train", "val", "test", "testA", "testB")
#: ``--xml-origin`` -> XML coordinate of the centre of pixel 0.
XML_ORIGINS = {"corner": 0.5, "matlab": 1.0}
#: Tiles are kept in memory between checking and writing up to this many bytes; beyond
#: it they are read again for writing (same result: reading is deterministic).
KEEP_IN_MEMORY_BYTES = 2 * 1024**3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="convert a labelled dataset to images/, labels/ and points/",
        description="Convert a labelled dataset into OUT/images/<stem>.png, "
        "OUT/labels/<stem>.tif and OUT/points/<stem>.csv (one point per nucleus: its centre, "
        "optionally shifted). Every input is checked before anything is written.",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    monuseg = formats.add_parser(
        "monuseg",
        help="MoNuSeg: images/ (or 'Tissue Images/') + annotations/ XML or labels_instance/",
        description="MoNuSeg folder: images in images/ or 'Tissue Images/', Aperio XML in "
        "annotations/ or Annotations/, optional instance maps in labels_instance/.",
    )
    monuseg.add_argument(
        "--labels",
        choices=("auto", "xml", "instance"),
        default="auto",
        help="labels from labels_instance/ maps, the XML, or auto: the map where a tile "
        "has one, else its XML (default auto)",
    )
    monuseg.add_argument(
        "--xml-origin",
        choices=tuple(XML_ORIGINS),
        default="corner",
        help="where the XML puts pixel centres: corner = Aperio's own convention, pixel 0 "
        "centred at 0.5, best aligned with the image (default); matlab = 1-based centres at "
        "1.0, the convention of the training set's labels_instance maps",
    )
    cpm17 = formats.add_parser(
        "cpm17",
        help="CPM17: Images/*.png + Labels/*.mat (inst_map)",
        description="A CPM17 train or test folder: Images/<name>.png, Labels/<name>.mat.",
    )
    folder = formats.add_parser(
        "folder",
        help="any folder of images + instance label maps (e.g. TNBC)",
        description="SRC/IMAGES/<stem>.<image> with SRC/LABELS/<stem>.{tif,png,npy} (or "
        "<stem>_label.*) holding instance ids, e.g. TNBC: --labels labels_instance.",
    )
    folder.add_argument("--images", default="images", help="image subfolder (default images)")
    folder.add_argument(
        "--labels", default="labels", help="instance label subfolder (default labels)"
    )
    for sub in (monuseg, cpm17, folder):
        sub.add_argument("src", type=Path, metavar="SRC", help="dataset folder")
        sub.add_argument("out", type=Path, metavar="OUT", help="output folder")
        sub.add_argument(
            "--shift",
            metavar="LOW-HIGH",
            help="move each point a random LOW-HIGH px, e.g. 2-4, 4-6 or 6-8",
        )
        sub.add_argument(
            "--seed", type=int, default=0, metavar="N", help="seed of the shifts (default 0)"
        )
        sub.add_argument(
            "--split",
            type=Path,
            metavar="FILE",
            help="JSON file with a list of image stems per subset",
        )
        sub.add_argument(
            "--subset",
            metavar="NAME",
            help=f"which list of --split to prepare ({', '.join(SUBSETS)}, ...)",
        )
        sub.add_argument(
            "--points-format",
            choices=("csv", "geojson"),
            default="csv",
            help="csv: x,y in pixels (default); geojson: QuPath point annotations",
        )
        sub.set_defaults(func=run)


# ---------------------------------------------------------------- inputs


def subset_stems(split: Path | None, subset: str | None) -> list[str] | None:
    """The image stems listed under ``subset`` in the split file (None: no split given).

    The file is a JSON object of lists, e.g. ``{"train": [...], "test": [...]}``; entries
    are stems or file names with an image suffix (``07_1.png``), which is dropped.
    """
    if split is None and subset is None:
        return None
    if subset is None:
        raise InputError(split, "--split needs --subset (which list to prepare)")
    if split is None:
        raise InputError(None, f"--subset {subset} needs --split FILE")
    if not split.is_file():
        raise InputError(split, "file not found")
    try:
        data = json.loads(split.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(split, f"cannot read split ({exc})") from None
    if not isinstance(data, dict) or subset not in data:
        names = (
            [k for k, v in data.items() if isinstance(v, list)] if isinstance(data, dict) else []
        )
        raise InputError(split, f"no subset {subset!r} (found: {', '.join(names) or 'none'})")
    stems = data[subset]
    if not isinstance(stems, list) or not all(isinstance(s, str) for s in stems):
        raise InputError(split, f"subset {subset!r} is not a list of image names")
    # Some splits list file names (TNBC's: "07_1.png"): match them by stem.
    stems = [Path(s).stem if Path(s).suffix.lower() in IMAGE_SUFFIXES else s for s in stems]
    if len(set(stems)) != len(stems):
        raise InputError(split, f"subset {subset!r} lists an image twice")
    return stems


def folder_samples(
    src: Path, images: str, labels: str, only: list[str] | None = None
) -> list[Sample]:
    """Images of ``src/images`` with their label maps in ``src/labels`` (or ``<stem>_label``)."""
    if not src.is_dir():
        raise InputError(src, "folder not found")
    labels_dir = src / labels
    if not labels_dir.is_dir():
        raise InputError(labels_dir, "label folder not found")
    index = index_by_stem(labels_dir, LABEL_SUFFIXES)
    samples = []
    for image in unique_images(src / images):
        if only is not None and image.stem not in only:
            continue
        label = pick_one(index, image.stem, labels_dir) or pick_one(
            index, f"{image.stem}_label", labels_dir
        )
        if label is None:
            raise InputError(labels_dir, f"no label map for {image.name}")
        samples.append(Sample(image.stem, image, label))
    return samples


def list_inputs(args: argparse.Namespace, only: list[str] | None) -> list[Sample]:
    if args.format == "monuseg":
        from instasam.io.monuseg import list_monuseg

        return list_monuseg(args.src, args.labels, only)
    if args.format == "cpm17":
        from instasam.io.cpm17 import list_cpm17

        return list_cpm17(args.src, only)
    return folder_samples(args.src, args.images, args.labels, only)


def select_subset(
    samples: list[Sample], split: Path | None, stems: list[str] | None
) -> list[Sample]:
    """``samples`` in the split's order; a listed stem without an image is an error."""
    if stems is None:
        return samples
    by_stem = {s.stem: s for s in samples}
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise InputError(
            split, f"{len(missing)} listed image(s) not in the source, e.g. {missing[0]!r}"
        )
    return [by_stem[s] for s in stems]


def read_labels(
    path: Path, shape: tuple[int, int], xml_pixel_centre: float = XML_ORIGINS["corner"]
) -> np.ndarray:
    """Instance labels from an XML (rasterised at ``shape``), a ``.mat`` or a label map."""
    suffix = path.suffix.lower()
    if suffix == ".xml":
        from instasam.io.monuseg import read_monuseg_xml

        return read_monuseg_xml(path, shape, pixel_centre=xml_pixel_centre)
    if suffix == ".mat":
        from instasam.io.cpm17 import read_cpm17_label

        return read_cpm17_label(path)
    return read_label_map(path)


def check_not_binary(labels: np.ndarray, path: Path) -> None:
    """Refuse a single id spread over several blobs: a semantic mask, not instances."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 1:
        _, blobs = ndi.label(labels > 0)
        if blobs >= 3:
            raise InputError(
                path,
                f"looks like a binary mask (one id, {ids[0]}, over {blobs} separate "
                "objects); instance ids are needed",
            )


def check_output(out: Path, samples: list[Sample]) -> list[str]:
    """Refuse an OUT that would overwrite inputs; warnings for files it already holds."""
    outputs = {(out / d).resolve() for d in ("images", "labels", "points")}
    inputs = {s.image_path.parent.resolve() for s in samples}
    inputs |= {s.label_path.parent.resolve() for s in samples if s.label_path is not None}
    clash = sorted(outputs & inputs)
    if clash:
        raise InputError(out, f"{clash[0]} is also an input folder; choose another output folder")
    stems = {s.stem for s in samples}
    others = []
    if (out / "images").is_dir():
        others = [p for p in (out / "images").iterdir() if p.is_file() and p.stem not in stems]
    if others:
        return [f"{out / 'images'}: {len(others)} other image(s) already there are left as is"]
    return []


# ---------------------------------------------------------------- work


@dataclass
class Prepared:
    """One tile, checked; its arrays are dropped when memory is short (read again later)."""

    sample: Sample
    points: np.ndarray
    image: np.ndarray | None
    labels: np.ndarray | None


def stem_seed(seed: int, stem: str) -> np.random.SeedSequence:
    """A per-image seed that does not depend on which other images are prepared."""
    return np.random.SeedSequence([seed, zlib.crc32(stem.encode("utf-8"))])


def load_tile(
    sample: Sample, xml_pixel_centre: float = XML_ORIGINS["corner"]
) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels of one sample, checked against each other."""
    image = read_rgb(sample.image_path)
    labels = read_labels(sample.label_path, image.shape[:2], xml_pixel_centre)
    check_label_size(labels, image, sample.label_path, sample.image_path)
    check_not_binary(labels, sample.label_path)
    return image, labels


def check_all(
    samples: list[Sample],
    shift: tuple[float, float] | None,
    seed: int,
    xml_pixel_centre: float = XML_ORIGINS["corner"],
) -> tuple[list[Prepared], list[str]]:
    """Read and check every tile and compute its points; collect warnings as lines."""
    prepared: list[Prepared] = []
    notes: list[str] = []
    kept = 0
    for sample in tqdm(samples, desc="checking", unit="tile", disable=None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image, labels = load_tile(sample, xml_pixel_centre)
        notes += [str(w.message) for w in caught]
        points, _ = points_from_instances(labels)
        if len(points) == 0:
            notes.append(f"{sample.label_path}: no nuclei; written with an empty points file")
        if shift is not None:
            points = shift_points(points, labels.shape, *shift, seed=stem_seed(seed, sample.stem))
        kept += image.nbytes + labels.nbytes
        keep = kept <= KEEP_IN_MEMORY_BYTES
        prepared.append(Prepared(sample, points, image if keep else None, labels if keep else None))
    return prepared, notes


def tiles_to_write(
    prepared: list[Prepared], xml_pixel_centre: float
) -> Iterator[tuple[Prepared, np.ndarray, np.ndarray]]:
    for item in prepared:
        if item.image is None or item.labels is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # already reported while checking
                image, labels = load_tile(item.sample, xml_pixel_centre)
        else:
            image, labels = item.image, item.labels
        yield item, image, labels


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    shift = None
    if args.shift is not None:
        try:
            shift = parse_shift(args.shift)
        except ValueError as exc:
            raise InputError("--shift", str(exc)) from None
    stems = subset_stems(args.split, args.subset)
    samples = select_subset(list_inputs(args, stems), args.split, stems)
    if not samples:
        raise InputError(args.src, "no images found")
    notes = check_output(args.out, samples)
    xml_pixel_centre = XML_ORIGINS[getattr(args, "xml_origin", "corner")]
    prepared, more_notes = check_all(samples, shift, args.seed, xml_pixel_centre)
    for note in notes + more_notes:
        print(f"instasam: warning: {note}", file=sys.stderr)

    write_points: Callable[[Path, np.ndarray], None]
    if args.points_format == "geojson":
        write_points, suffix = write_points_geojson, ".geojson"
    else:
        write_points, suffix = write_points_csv, ".csv"
    bar = tqdm(total=len(prepared), desc="writing", unit="tile", disable=None)
    for item, image, labels in tiles_to_write(prepared, xml_pixel_centre):
        stem = item.sample.stem
        write_rgb(args.out / "images" / f"{stem}.png", image)
        write_label_map(args.out / "labels" / f"{stem}.tif", labels)
        write_points(args.out / "points" / f"{stem}{suffix}", item.points)
        bar.update()
    bar.close()
    nuclei = sum(len(p.points) for p in prepared)
    shifted = f", points shifted {args.shift} px (seed {args.seed})" if shift else ""
    print(f"prepared {len(prepared)} tile(s), {nuclei} nuclei{shifted} -> {args.out}")
    return 0


__all__ = [
    "add_parser",
    "check_all",
    "folder_samples",
    "read_labels",
    "run",
    "select_subset",
    "stem_seed",
    "subset_stems",
]
