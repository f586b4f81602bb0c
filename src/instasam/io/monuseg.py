"""MoNuSeg: RGB TIFF tiles with Aperio XML nucleus outlines.

The XML holds ``Annotations/Annotation/Regions/Region/Vertices/Vertex`` with float ``X``,
``Y`` pixel coordinates, one Region per nucleus. :func:`read_monuseg_xml` rasterises the
polygons into an instance map: nucleus k is the k-th Region, a pixel belongs to a polygon
when its centre is inside (scikit-image's rule), and where polygons overlap the later one
wins. Regions with fewer than three vertices cannot enclose anything and are skipped (and
counted); a Region entirely outside the image is an error, as it means the XML belongs to
another image; partly outside Regions are clipped.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from instasam.errors import InputError
from instasam.io.images import read_rgb


def monuseg_polygons(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """``(region id, (V, 2) float array of x, y)`` for every Region, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(path, f"malformed XML ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.__class__.__name__})") from None
    regions = []
    for region in root.iter("Region"):
        try:
            vertices = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        except (KeyError, ValueError):
            raise InputError(
                path, f"Region {region.get('Id', '?')}: a Vertex lacks numeric X/Y"
            ) from None
        regions.append(
            (region.get("Id", str(len(regions) + 1)), np.asarray(vertices).reshape(-1, 2))
        )
    if not regions:
        raise InputError(path, "empty annotation (no Region elements)")
    return regions


def read_monuseg_xml(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a MoNuSeg XML file into an ``(H, W)`` int32 instance map."""
    h, w = shape
    labels = np.zeros((h, w), dtype=np.int32)
    skipped = 0
    for k, (region_id, vertices) in enumerate(monuseg_polygons(path), start=1):
        if len(vertices) < 3:
            skipped += 1
            continue
        xs, ys = vertices[:, 0], vertices[:, 1]
        if xs.max() < -0.5 or ys.max() < -0.5 or xs.min() > w - 0.5 or ys.min() > h - 0.5:
            raise InputError(path, f"Region {region_id} lies outside the {w}x{h} image")
        rr, cc = fill_polygon(ys, xs, shape=(h, w))
        if rr.size == 0:  # thinner than a pixel: keep the nucleus as its vertex pixels
            rr = np.clip(np.round(ys).astype(int), 0, h - 1)
            cc = np.clip(np.round(xs).astype(int), 0, w - 1)
        labels[rr, cc] = k
    if skipped:
        warnings.warn(
            f"{path}: skipped {skipped} Region(s) with fewer than 3 vertices", stacklevel=2
        )
    if not labels.any():
        raise InputError(path, "no nucleus inside the image")
    return labels


def load_monuseg_tile(
    image_path: str | os.PathLike, xml_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """The RGB tile and its rasterised instance map."""
    image = read_rgb(image_path)
    return image, read_monuseg_xml(xml_path, image.shape[:2])


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def monuseg_layout(src: str | os.PathLike) -> tuple[Path, Path | None, Path | None]:
    """Images, XML and instance-label folders of a MoNuSeg copy (the last two optional).

    Accepts the challenge's layout (``Tissue Images/``, ``Annotations/``) and lower-case
    ``images/``, ``annotations/``, plus ``labels_instance/`` (pre-rasterised maps).
    """
    src = Path(src)
    images = _first_dir(src, ("images", "Tissue Images", "Tissue_Images", "tissue_image"))
    if images is None:
        raise InputError(src, "no images/ (or 'Tissue Images/') folder")
    xml = _first_dir(src, ("annotations", "Annotations"))
    instance = _first_dir(src, ("labels_instance",))
    if xml is None and instance is None:
        raise InputError(src, "no annotations/ (XML) or labels_instance/ folder")
    return images, xml, instance
