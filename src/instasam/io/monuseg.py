"""MoNuSeg: RGB TIFF tiles with Aperio (ImageScope) XML nucleus outlines.

The XML holds ``Annotations/Annotation/Regions/Region/Vertices/Vertex`` with float ``X``,
``Y`` attributes, one Region per nucleus. :func:`read_monuseg_xml` rasterises it into an
``int32`` instance map:

* **Ids**: nucleus k is the k-th Region in file order (1-based), the numbering of the
  ``labels_instance`` maps. Where polygons overlap the later Region wins, so an id whose
  polygon is entirely covered by later ones vanishes.
* **Coordinates**: Aperio, like QuPath, measures from the image's top-left *corner*, so the
  centre of pixel ``(r, c)`` is XML ``(X=c+0.5, Y=r+0.5)``; in our point convention it is
  ``(x=c, y=r)`` (see ``docs/CONVENTIONS.md``), so vertices are shifted by -0.5 before
  filling. The outlines sit best on the image at that offset: the contrast across the
  outline (mean grey one pixel outside minus one pixel inside), tried at offsets -1.25 to
  +0.25 in steps of 0.25, peaks between -0.75 and 0 on all 13 training tiles with XML,
  median -0.5, never at -1.0. The training set's ``labels_instance`` maps
  (Qu et al.'s rasterisation) put pixel centres at 1.0, MATLAB's 1-based convention, half
  a pixel further up-left: foreground IoU with ours 0.91-0.95, with ``pixel_centre=1.0``
  0.98-0.995 (6 tiles checked). Pass ``pixel_centre=1.0`` to match those maps.
* **Fill rule**: a pixel belongs to a polygon when its centre lies inside it
  (:func:`skimage.draw.polygon`); a polygon that contains no pixel centre (thinner than a
  pixel) keeps the pixels under its vertices, so that no nucleus is lost.
* **Degenerate Regions** with fewer than three vertices enclose nothing (MoNuSeg has two:
  zero-area slivers, absent from ``labels_instance`` as well): they are skipped with a
  warning and their id stays unused, so later ids keep their Region number.
* A Region **entirely outside** the image means the XML belongs to another image: refused,
  naming the Region's ``Id``. Regions **partly outside** are clipped.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Collection
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from skimage.draw import polygon as polygon_pixels

from instasam.errors import InputError
from instasam.io.folder import (
    Sample,
    check_label_size,
    index_by_stem,
    pick_one,
    unique_images,
)
from instasam.io.images import read_rgb
from instasam.io.labels import LABEL_SUFFIXES, read_label_map

#: XML coordinate of the centre of pixel 0 (Aperio and QuPath: the origin is the corner).
XML_PIXEL_CENTRE = 0.5

IMAGE_DIRS = ("images", "Tissue Images", "Tissue_Images", "tissue_images", "tissue_image")
XML_DIRS = ("annotations", "Annotations")
INSTANCE_DIRS = ("labels_instance",)

LabelSource = Literal["auto", "xml", "instance"]


class Region(NamedTuple):
    """One XML Region: its ``Id`` attribute and its ``(V, 2)`` float64 vertices ``(X, Y)``."""

    region_id: str
    vertices: np.ndarray


def read_monuseg_regions(path: str | os.PathLike) -> list[Region]:
    """Every Region of a MoNuSeg XML file, in file order, with its vertices in XML units.

    Raises
    ------
    InputError
        If the file is missing or unreadable, is not well-formed XML (the parser's message
        and position are given), has no Region ("empty annotation"), or a Vertex lacks
        finite numeric ``X``/``Y``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(path, f"malformed XML ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.__class__.__name__}: {exc})") from None
    regions = []
    for number, element in enumerate(root.iter("Region"), start=1):
        region_id = element.get("Id", f"#{number}")
        try:
            vertices = np.array(
                [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in element.iter("Vertex")],
                dtype=np.float64,
            ).reshape(-1, 2)
        except (KeyError, ValueError):
            raise InputError(path, f"Region {region_id}: a Vertex lacks numeric X/Y") from None
        if not np.isfinite(vertices).all():
            raise InputError(path, f"Region {region_id}: a Vertex has a non-finite X/Y")
        regions.append(Region(region_id, vertices))
    if not regions:
        raise InputError(path, "empty annotation (no Region elements)")
    return regions


def monuseg_polygons(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """``(region id, (V, 2) X/Y vertices)`` per Region; alias of :func:`read_monuseg_regions`."""
    return [tuple(r) for r in read_monuseg_regions(path)]


def rasterise_regions(
    regions: list[Region],
    shape: tuple[int, int],
    path: str | os.PathLike | None = None,
    pixel_centre: float = XML_PIXEL_CENTRE,
) -> np.ndarray:
    """Fill ``regions`` into an ``(H, W)`` int32 map, Region k (1-based) -> id k.

    See the module notes for the fill rule, overlaps and the refusals; ``path`` is only
    used to name the file in errors and warnings.
    """
    h, w = shape
    labels = np.zeros((h, w), dtype=np.int32)
    degenerate = []
    for k, (region_id, vertices) in enumerate(regions, start=1):
        if len(vertices) < 3:
            degenerate.append(region_id)
            continue
        xs = vertices[:, 0] - pixel_centre
        ys = vertices[:, 1] - pixel_centre
        # The image covers [-0.5, W - 0.5] x [-0.5, H - 0.5] in pixel-centre coordinates.
        if xs.max() < -0.5 or ys.max() < -0.5 or xs.min() > w - 0.5 or ys.min() > h - 0.5:
            raise InputError(
                path,
                f"Region {region_id} lies entirely outside the {w}x{h} image "
                f"(X {vertices[:, 0].min():.1f}..{vertices[:, 0].max():.1f}, "
                f"Y {vertices[:, 1].min():.1f}..{vertices[:, 1].max():.1f})",
            )
        rr, cc = polygon_pixels(ys, xs, shape=(h, w))
        if rr.size == 0:  # thinner than a pixel: keep the pixels under its vertices
            inside = (xs > -0.5) & (xs < w - 0.5) & (ys > -0.5) & (ys < h - 0.5)
            rr = np.clip(np.round(ys[inside]).astype(np.intp), 0, h - 1)
            cc = np.clip(np.round(xs[inside]).astype(np.intp), 0, w - 1)
        labels[rr, cc] = k
    if degenerate:
        warnings.warn(
            f"{path}: skipped {len(degenerate)} Region(s) with fewer than 3 vertices "
            f"(Id {', '.join(degenerate[:5])}{', ...' if len(degenerate) > 5 else ''})",
            UserWarning,
            stacklevel=2,
        )
    if not labels.any():
        raise InputError(path, "no nucleus covers any pixel of the image")
    return labels


def read_monuseg_xml(
    path: str | os.PathLike, shape: tuple[int, int], pixel_centre: float = XML_PIXEL_CENTRE
) -> np.ndarray:
    """Rasterise a MoNuSeg XML file into an ``(H, W)`` int32 instance map.

    Parameters
    ----------
    path : path
        The Aperio XML file.
    shape : (int, int)
        ``(H, W)`` of the image it annotates.
    pixel_centre : float
        XML coordinate of the centre of pixel 0: 0.5 (Aperio's corner origin, default) or
        1.0 (MATLAB's 1-based centres) to match the training set's ``labels_instance``.

    Raises
    ------
    InputError
        See :func:`read_monuseg_regions` and :func:`rasterise_regions`.
    """
    return rasterise_regions(read_monuseg_regions(path), shape, path, pixel_centre)


def load_monuseg_tile(
    image_path: str | os.PathLike, label_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """A MoNuSeg tile and its instance map: ``(H, W, 3)`` uint8 and ``(H, W)`` int32.

    ``label_path`` is the tile's XML (rasterised at the image's size) or an instance label
    map (``labels_instance/<id>.png``), whose size must equal the image's.

    Raises
    ------
    InputError
        For any bad input file, or a label map of another size (naming both files).
    """
    image = read_rgb(image_path)
    label_path = Path(label_path)
    if label_path.suffix.lower() == ".xml":
        return image, read_monuseg_xml(label_path, image.shape[:2])
    labels = read_label_map(label_path)
    check_label_size(labels, image, label_path, image_path)
    return image, labels


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def monuseg_layout(src: str | os.PathLike) -> tuple[Path, Path | None, Path | None]:
    """The images, XML and instance-map folders of a MoNuSeg copy (the last two optional).

    Accepts the challenge's layout (``Tissue Images/``, ``Annotations/``), lower-case
    ``images/`` and ``annotations/``, and ``labels_instance/`` (pre-rasterised maps). At
    least one of the two annotation folders must exist.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "folder not found")
    images = _first_dir(src, IMAGE_DIRS)
    if images is None:
        raise InputError(src, "no images/ (or 'Tissue Images/') folder")
    xml = _first_dir(src, XML_DIRS)
    instance = _first_dir(src, INSTANCE_DIRS)
    if xml is None and instance is None:
        raise InputError(src, "no annotations/ (XML) or labels_instance/ folder")
    return images, xml, instance


def list_monuseg(
    src: str | os.PathLike, labels: LabelSource = "auto", only: Collection[str] | None = None
) -> list[Sample]:
    """One :class:`Sample` per tile of a MoNuSeg folder, its ``label_path`` an XML or a PNG.

    Parameters
    ----------
    src : path
        A folder laid out as :func:`monuseg_layout` describes.
    labels : {"auto", "xml", "instance"}
        Where each tile's labels come from: ``labels_instance/`` maps, the XML, or
        ``"auto"``: the instance map when the tile has one, else its XML. Instance maps
        may be named ``<stem>.png`` or ``<stem>_label.png`` (Qu et al.'s naming).
    only : collection of str, optional
        Keep only the tiles with these stems (others need no annotation).

    Raises
    ------
    InputError
        If the layout is wrong, two images share a name, or a tile has no annotation of
        the kind asked for (the image is named).
    """
    images_dir, xml_dir, instance_dir = monuseg_layout(src)
    if labels == "xml" and xml_dir is None:
        raise InputError(src, "no annotations/ folder of XML files")
    if labels == "instance" and instance_dir is None:
        raise InputError(src, "no labels_instance/ folder")
    use_instance = instance_dir is not None and labels != "xml"
    use_xml = xml_dir is not None and labels != "instance"
    instances = index_by_stem(instance_dir, LABEL_SUFFIXES) if use_instance else {}
    xmls = index_by_stem(xml_dir, (".xml",)) if use_xml else {}
    samples = []
    for image in unique_images(images_dir):
        if only is not None and image.stem not in only:
            continue
        label_path = (
            pick_one(instances, image.stem, instance_dir)
            or pick_one(instances, f"{image.stem}_label", instance_dir)
            or pick_one(xmls, image.stem, xml_dir)
        )
        if label_path is None:
            where = {"xml": "annotations/", "instance": "labels_instance/"}.get(
                labels, "annotations/ or labels_instance/"
            )
            raise InputError(image, f"no annotation for this image in {where}")
        samples.append(Sample(image.stem, image, label_path))
    return samples


__all__ = [
    "XML_PIXEL_CENTRE",
    "Region",
    "list_monuseg",
    "load_monuseg_tile",
    "monuseg_layout",
    "monuseg_polygons",
    "rasterise_regions",
    "read_monuseg_regions",
    "read_monuseg_xml",
]
