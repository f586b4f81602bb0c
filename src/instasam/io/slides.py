"""Whole-slide images: pyramidal TIFF/SVS through tiffslide, resolution, tiles and tissue.

Resolution
    Microns per pixel (mpp) of level 0 come from the slide's metadata (``tiffslide.mpp-x``/
    ``-y``, which tiffslide fills from Aperio descriptions and the TIFF resolution tags,
    ``openslide.mpp-x``/``-y``, or an OME-XML description's ``PhysicalSizeX``/``Y``).
    Values outside :data:`PLAUSIBLE_MPP` are ignored as not being a microscope calibration
    (a 72-dpi default is 353 µm/px). With no usable value the slide is refused with a
    message asking for ``--mpp``; a value given by the user always wins over the metadata.

Working level
    The model sees tiles at its training resolution (:data:`DEFAULT_TARGET_MPP`, MoNuSeg at
    40x, unless the model says otherwise). We read the coarsest level that is still at
    least as fine as the target (within :data:`MPP_TOLERANCE`), so tiles are only ever
    reduced, never blown up, unless the slide itself is coarser than the target; the
    residual ``scale`` is the factor tiles are resized by (1.0: no resizing).

Non-pyramidal TIFF
    A single-level TIFF (e.g. one exported tile) is read as a one-level slide. Above
    :data:`SINGLE_LEVEL_WARN_PIXELS` a :class:`SlideWarning` says that every read, the
    tissue mask included, decodes full-resolution pixels, which is slow for a large image.

Tissue mask
    Otsu's threshold on the HSV saturation of a low-resolution image (about
    :data:`TISSUE_MASK_MPP` µm/px): glass is white or grey whatever the scanner's
    brightness (saturation near 0) while haematoxylin and eosin are both saturated, and
    unlike optical density, saturation does not mistake black scan borders or padding for
    tissue. The threshold is clipped to [:data:`MIN_TISSUE_SATURATION`,
    :data:`MAX_TISSUE_SATURATION`] so that a slide of glass only finds nothing and a tile
    that is all tissue is not split into two classes. The mask is then closed (3 x 3),
    rid of specks (dust, debris) and of holes (lumens, tears, fat) smaller than
    :data:`MIN_TISSUE_AREA_UM2`, and dilated by one mask pixel so that tissue edges are not
    lost. A slide where nothing is left is refused as empty (no tissue found).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instasam.errors import InputError
from instasam.io.images import as_rgb_uint8

DEFAULT_TARGET_MPP = 0.25  # µm/px the model was trained at: MoNuSeg, 40x
DEFAULT_TILE = 1024  # model pixels per tile side
DEFAULT_OVERLAP = 64  # model pixels shared by neighbouring tiles; > the largest nucleus
MPP_TOLERANCE = 0.05  # relative: a level this close to the target is used as it is
PLAUSIBLE_MPP = (0.01, 20.0)  # µm/px; metadata outside is not a microscope calibration
TISSUE_MASK_MPP = 8.0  # µm/px of the image the tissue mask is computed on
MIN_TISSUE_SATURATION = 0.05  # Otsu threshold floor: pale glass is never tissue
MAX_TISSUE_SATURATION = 0.15  # Otsu threshold cap: faint eosin is still tissue
MIN_TISSUE_AREA_UM2 = 2500.0  # specks and holes below (a 50 µm square) are removed/filled
SINGLE_LEVEL_WARN_PIXELS = 4096 * 4096
_STRIP_PIXELS = 4_000_000  # level pixels decoded per read when reducing a level for the mask
#: File suffixes read as (pyramidal) TIFF slides.
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2", ".ptif", ".qptiff")


class SlideWarning(UserWarning):
    """Something about a slide that works but that the user should know."""


@dataclass(frozen=True)
class WorkingLevel:
    """Where tiles are read and how they are resized to the model's resolution.

    Attributes
    ----------
    level : int
        Pyramid level read.
    level_mpp : float
        Microns per pixel of that level.
    target_mpp : float
        Microns per pixel the model expects.
    scale : float
        Resize factor from level pixels to model pixels (``level_mpp / target_mpp``, or
        exactly 1.0 within :data:`MPP_TOLERANCE`).
    downsample : tuple of float
        Level-0 pixels per level pixel, ``(x, y)``.
    """

    level: int
    level_mpp: float
    target_mpp: float
    scale: float
    downsample: tuple[float, float]


@dataclass(frozen=True)
class Tile:
    """One tile of a level: where it is read and the part of it whose nuclei it owns.

    All coordinates are pixels of the working level. The cores of all tiles partition the
    level: a pixel column ``c`` belongs to the tile with ``core_x[0] <= c < core_x[1]``.
    """

    row: int
    col: int
    x: int
    y: int
    width: int
    height: int
    core_x: tuple[int, int]
    core_y: tuple[int, int]
    level_size: tuple[int, int]  # (width, height) of the level, to tell the slide border

    @property
    def name(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def at_left(self) -> bool:
        return self.x == 0

    @property
    def at_top(self) -> bool:
        return self.y == 0

    @property
    def at_right(self) -> bool:
        return self.x + self.width >= self.level_size[0]

    @property
    def at_bottom(self) -> bool:
        return self.y + self.height >= self.level_size[1]


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and the level-0 pixels one mask pixel covers."""

    mask: np.ndarray
    downsample: tuple[float, float]  # level-0 pixels per mask pixel, (x, y)
    threshold: float  # saturation threshold used, in [0, 1]

    @property
    def fraction(self) -> float:
        """Share of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def touches(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether the level-0 box ``[x0, x1) x [y0, y1)`` contains any tissue pixel."""
        dx, dy = self.downsample
        h, w = self.mask.shape
        c0, c1 = max(0, int(x0 // dx)), min(w, math.ceil(x1 / dx))
        r0, r1 = max(0, int(y0 // dy)), min(h, math.ceil(y1 / dy))
        return bool(c1 > c0 and r1 > r0 and self.mask[r0:r1, c0:c1].any())


def slide_mpp(properties: dict[str, Any]) -> float | None:
    """Microns per level-0 pixel from a slide's properties, or None if there is none usable.

    Looks at ``tiffslide.mpp-x/y`` (Aperio descriptions, TIFF resolution tags), then
    ``openslide.mpp-x/y``, then the ``PhysicalSizeX/Y`` of OME-XML in the image
    description (OME-TIFFs, e.g. exported by QuPath or bfconvert, which tiffslide skips).
    """
    candidates = [
        (properties.get(f"{prefix}.mpp-x"), properties.get(f"{prefix}.mpp-y"))
        for prefix in ("tiffslide", "openslide")
    ]
    candidates.append(_ome_mpp(properties.get("tiff.ImageDescription")))
    for pair in candidates:
        values = []
        for raw in pair:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
                values.append(value)
        if values:
            return float(np.mean(values))
    return None


_MICRONS_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3}


def _ome_mpp(description: Any) -> tuple[float | None, float | None]:
    """``(PhysicalSizeX, PhysicalSizeY)`` in µm of the first OME ``Pixels`` element."""
    if not isinstance(description, str) or "<OME" not in description[:2000]:
        return None, None
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(description)
    except ElementTree.ParseError:
        return None, None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None
    sizes = []
    for axis in ("X", "Y"):
        unit = _MICRONS_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        try:
            value = float(pixels.get(f"PhysicalSize{axis}", "nan"))
        except ValueError:
            value = math.nan
        sizes.append(value * unit if unit is not None and math.isfinite(value) else None)
    return sizes[0], sizes[1]


class Slide:
    """A whole-slide image opened with tiffslide; every failure is an :class:`InputError`.

    Parameters
    ----------
    path : path
        Pyramidal TIFF, SVS or plain (single-level) TIFF.
    mpp : float, optional
        Microns per level-0 pixel; overrides the metadata. Needed when the file has none.

    Attributes
    ----------
    mpp : float
        Microns per level-0 pixel.
    mpp_source : str
        ``"user"`` or ``"metadata"``.
    """

    def __init__(self, path: str | os.PathLike, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "file not found")
        if self.path.stat().st_size == 0:
            raise InputError(self.path, "empty file (0 bytes)")
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise InputError(self.path, f"--mpp must be a positive number, got {mpp}")
        self._slide = self._open()
        try:
            self._read_metadata(mpp)
        except BaseException:
            self.close()
            raise

    def _open(self) -> Any:
        from tiffslide import TiffSlide

        if self.path.suffix.lower() not in SLIDE_SUFFIXES:
            with open(self.path, "rb") as fh:
                head = fh.read(4)
            if head[:2] not in (b"II", b"MM"):
                raise InputError(
                    self.path,
                    "not a TIFF/SVS slide; use `instasam predict` for PNG/JPEG tiles",
                )
        with _tiff_log() as problems:
            try:
                slide = TiffSlide(self.path)
                _ = slide.properties, slide.level_dimensions  # parses every IFD now
            except Exception as exc:  # tifffile/tiffslide raise many kinds on bad files
                raise InputError(self.path, f"cannot read slide ({_describe(exc)})") from None
        if problems:
            slide.close()
            raise InputError(self.path, f"corrupted TIFF ({problems[0]})")
        return slide

    def _read_metadata(self, mpp: float | None) -> None:
        slide = self._slide
        self.level_count: int = slide.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in slide.level_dimensions
        )
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        if min(self.dimensions) <= 0:
            raise InputError(self.path, "empty image (0 pixels)")
        axes = slide.properties.get("tiffslide.series-axes")
        if axes not in ("YXS", "CYX"):
            raise InputError(self.path, f"expected an RGB slide, got image axes {axes!r}")
        self.pyramidal = self.level_count > 1
        width, height = self.dimensions
        if not self.pyramidal and width * height > SINGLE_LEVEL_WARN_PIXELS:
            warnings.warn(
                f"{self.path}: single-level TIFF ({width}x{height}), no pyramid: the tissue "
                "mask and every tile decode full-resolution pixels (slow for a whole slide)",
                SlideWarning,
                stacklevel=3,
            )
        metadata_mpp = slide_mpp(slide.properties)
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "user"
        elif metadata_mpp is not None:
            self.mpp, self.mpp_source = metadata_mpp, "metadata"
        else:
            raw = slide.properties.get("tiffslide.mpp-x")
            found = (
                f"the metadata's {float(raw):.4g} µm/px is not a microscope calibration"
                if isinstance(raw, (int, float)) and raw
                else "no pixel size (microns per pixel) in the file's metadata"
            )
            raise InputError(
                self.path, f"{found}; pass --mpp (e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)"
            )

    @property
    def name(self) -> str:
        return self.path.name

    def downsample(self, level: int) -> tuple[float, float]:
        """Level-0 pixels per pixel of ``level``, ``(x, y)``."""
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        return w0 / w, h0 / h

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of ``level``."""
        return self.mpp * float(np.mean(self.downsample(level)))

    def working_level(
        self, target_mpp: float = DEFAULT_TARGET_MPP, level: int | None = None
    ) -> WorkingLevel:
        """The level to read for a model trained at ``target_mpp`` (see the module notes).

        ``level`` forces a level; tiles are still resized to ``target_mpp``.
        """
        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise InputError(None, f"target mpp must be a positive number, got {target_mpp}")
        if level is None:
            level = 0
            for candidate in range(self.level_count):
                if self.level_mpp(candidate) <= target_mpp * (1 + MPP_TOLERANCE):
                    level = candidate  # levels get coarser: keep the last that is fine enough
        elif not 0 <= level < self.level_count:
            raise InputError(
                self.path, f"--level {level} does not exist (levels 0-{self.level_count - 1})"
            )
        level_mpp = self.level_mpp(level)
        scale = level_mpp / target_mpp
        if abs(scale - 1.0) <= MPP_TOLERANCE:
            scale = 1.0
        return WorkingLevel(level, level_mpp, float(target_mpp), scale, self.downsample(level))

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB ``uint8`` ``(height, width, 3)`` of ``level`` from its pixel ``(x, y)``.

        The box must lie inside the level. Decoding errors are :class:`InputError`.
        """
        lw, lh = self.level_dimensions[level]
        if not (
            0 <= x and 0 <= y and width > 0 and height > 0 and x + width <= lw and y + height <= lh
        ):
            raise ValueError(f"box {x},{y} {width}x{height} outside level {level} ({lw}x{lh})")
        downsample = float(self._slide.level_downsamples[level])
        location = (_level0_location(x, downsample), _level0_location(y, downsample))
        failure = None
        try:
            array = self._slide.read_region(
                location, level, (width, height), as_array=True, padding=False
            )
        except Exception as exc:  # decoder errors come in many classes
            failure = _describe(exc)
        if failure is not None:
            gc.collect()  # let zarr's failed reader tasks go quietly, before the message
            raise InputError(self.path, f"cannot decode level {level} at ({x}, {y}): {failure}")
        array = np.asarray(array)
        if array.shape[:2] != (height, width):
            raise InputError(
                self.path, f"level {level} returned {array.shape[:2]} for {height}x{width}"
            )
        return as_rgb_uint8(array, self.path)

    def thumbnail(self, max_mpp: float = TISSUE_MASK_MPP) -> tuple[np.ndarray, tuple[float, float]]:
        """A low-resolution RGB image of the whole slide and its level-0 pixels per pixel.

        Reads the coarsest level at most ``max_mpp`` µm/px and reduces it further by block
        averaging a strip at a time, so a single-level slide never sits whole in memory.
        Blocks at the right and bottom edges may be partial (edge pixels repeated).
        """
        level = 0
        for candidate in range(self.level_count):
            if self.level_mpp(candidate) <= max_mpp:
                level = candidate
        lw, lh = self.level_dimensions[level]
        factor = max(1, min(int(max_mpp / self.level_mpp(level)), lw, lh))
        out_w, out_h = math.ceil(lw / factor), math.ceil(lh / factor)
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        strip = max(1, _STRIP_PIXELS // (lw * factor))  # mask rows per read
        for r0 in range(0, out_h, strip):
            rows = min(strip, out_h - r0)
            y0 = r0 * factor
            block = self.read(level, 0, y0, lw, min(rows * factor, lh - y0))
            pad = ((0, rows * factor - block.shape[0]), (0, out_w * factor - lw), (0, 0))
            if any(p[1] for p in pad):
                block = np.pad(block, pad, mode="edge")
            block = block.reshape(rows, factor, out_w, factor, 3).mean(
                axis=(1, 3), dtype=np.float32
            )
            out[r0 : r0 + rows] = np.round(block).astype(np.uint8)
        dx, dy = self.downsample(level)
        return out, (dx * factor, dy * factor)

    def tissue_mask(self, mask_mpp: float = TISSUE_MASK_MPP) -> TissueMask:
        """Tissue mask of the whole slide (see the module notes); no tissue is allowed here."""
        rgb, downsample = self.thumbnail(mask_mpp)
        pixel_um2 = self.mpp**2 * downsample[0] * downsample[1]
        mask, threshold = tissue_mask_from_rgb(rgb, int(MIN_TISSUE_AREA_UM2 / pixel_um2))
        return TissueMask(mask, downsample, threshold)

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            with contextlib.suppress(Exception):
                slide.close()
            self._slide = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, {self.dimensions[0]}x{self.dimensions[1]}, "
            f"{self.level_count} levels, {self.mpp:.4g} µm/px from {self.mpp_source})"
        )


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """Open a slide (see :class:`Slide`)."""
    return Slide(path, mpp)


def tissue_mask_from_rgb(rgb: np.ndarray, min_pixels: int = 0) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a low-resolution RGB image and the saturation threshold used.

    ``min_pixels``: pieces of tissue and holes in it smaller than this are removed and
    filled (see the module notes); capped at 1 % of the image, so that the tissue of a
    small image (a tile saved as a TIFF) is never taken for a speck.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    rgb = np.asarray(rgb, dtype=np.float32)
    high = rgb.max(axis=2)
    low = rgb.min(axis=2)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    if saturation.size == 0:
        return np.zeros(saturation.shape, dtype=bool), MIN_TISSUE_SATURATION
    if float(saturation.max() - saturation.min()) < 1e-6:
        threshold = float(saturation.flat[0]) - 1e-6  # one colour: Otsu is undefined
    else:
        threshold = float(threshold_otsu(saturation))
    threshold = float(np.clip(threshold, MIN_TISSUE_SATURATION, MAX_TISSUE_SATURATION))
    mask = saturation > threshold
    if mask.any():
        structure = np.ones((3, 3), dtype=bool)
        mask = ndimage.binary_closing(mask, structure, border_value=0) | mask
        min_pixels = min(min_pixels, mask.size // 100)
        if min_pixels > 1:
            mask &= ~_small_parts(mask, min_pixels, structure)  # specks (8-connected)
            mask |= _small_parts(~mask, min_pixels, None)  # holes (4-connected)
        mask = ndimage.binary_dilation(mask, structure)
    return mask, threshold


def _small_parts(mask: np.ndarray, min_pixels: int, structure: np.ndarray | None) -> np.ndarray:
    """The connected parts of ``mask`` with fewer than ``min_pixels`` pixels."""
    from scipy import ndimage

    parts, _ = ndimage.label(mask, structure)
    small = np.bincount(parts.ravel()) < min_pixels
    small[0] = False
    return small[parts]


def tile_grid(level_size: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Tiles of ``tile`` x ``tile`` pixels overlapping by ``overlap`` over a level.

    Rows then columns. The last tile of a row or column is moved back to end at the
    border, and a level narrower than a tile gets one tile as wide as the level. Each
    tile's core runs to the middle of its overlap with each neighbour (to the border at
    the slide's edge), so the cores partition the level.
    """
    from instasam.tiling import core_spans, window_starts

    if tile <= 0 or overlap < 0 or tile <= overlap:
        raise InputError(None, f"--tile ({tile}) must be larger than --overlap ({overlap}) >= 0")
    width, height = level_size
    xs, ys = window_starts(width, tile, overlap), window_starts(height, tile, overlap)
    x_cores, y_cores = core_spans(xs, tile, width), core_spans(ys, tile, height)
    tiles = []
    for row, (y, core_y) in enumerate(zip(ys, y_cores, strict=True)):
        for col, (x, core_x) in enumerate(zip(xs, x_cores, strict=True)):
            tiles.append(
                Tile(
                    row=row,
                    col=col,
                    x=x,
                    y=y,
                    width=min(tile, width - x),
                    height=min(tile, height - y),
                    core_x=core_x,
                    core_y=core_y,
                    level_size=(width, height),
                )
            )
    return tiles


def tiles_on_tissue(
    tiles: list[Tile], mask: TissueMask, downsample: tuple[float, float]
) -> list[Tile]:
    """The tiles whose footprint (level pixels, ``downsample`` to level 0) touches tissue."""
    dx, dy = downsample
    return [
        t
        for t in tiles
        if mask.touches(t.x * dx, t.y * dy, (t.x + t.width) * dx, (t.y + t.height) * dy)
    ]


@contextlib.contextmanager
def _tiff_log() -> Iterator[list[str]]:
    """Collect tifffile's complaints about broken structure instead of printing them."""
    problems: list[str] = []

    class _Collect(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            if "corrupt" in message.lower() or "TiffFileError" in message:
                problems.append(message.split(" raised ", 1)[-1])
            return False  # tifffile's warnings about a slide are ours to report

    logger = logging.getLogger("tifffile")
    collector = _Collect()
    logger.addFilter(collector)
    try:
        yield problems
    finally:
        logger.removeFilter(collector)


def _level0_location(pixel: int, downsample: float) -> int:
    """The level-0 coordinate that tiffslide maps to ``pixel`` of a level.

    tiffslide reads from ``int(location / downsample)`` with its own (axis-averaged)
    downsample; searching for the integer avoids off-by-one pixels from rounding.
    """
    location = max(0, math.floor(pixel * downsample) - 1)
    while int(location / downsample) < pixel:
        location += 1
    return location


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = exc.__class__.__name__
    return f"{name}: {text}" if text else name
