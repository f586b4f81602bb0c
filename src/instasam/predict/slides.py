"""Whole-slide prediction: tiles on tissue, each nucleus kept once, streamed and resumable.

Tiles
    The working level (see :mod:`instasam.io.slides`) is cut into tiles of ``tile`` x
    ``tile`` model pixels overlapping by ``overlap`` (both converted to level pixels when
    tiles are resized). Only tiles touching the tissue mask are read. Each tile goes
    through the predictor as one image.

Stitching: every nucleus exactly once, none cut
    A tile's *core* is the tile minus ``overlap / 2`` on each side it shares with a
    neighbour; on the slide's border it runs to the border (the border is not an inner
    edge). Precisely, a core runs to the middle of the overlap with each neighbour, so the
    last tile of a row or column, which is moved back to end at the border and overlaps its
    neighbour by more, still meets it at the middle: the cores partition the level. A tile
    keeps a nucleus when (a) the pixel nearest the nucleus's centroid lies in the tile's
    core and (b) the nucleus does not touch an inner edge of the tile.

    Why this is exact when ``overlap`` exceeds the largest nucleus diameter ``D``:

    * *Never cut*: the tile whose core holds the centroid sees the whole nucleus. Its core
      stays at least ``overlap / 2`` away from each inner edge, and no pixel of a nucleus
      lies further than ``D / 2`` (about) from its centroid, less than ``overlap / 2``; so
      the nucleus lies wholly inside that tile, away from its inner edges, and rule (b) does
      not fire. (To the pixel: with ``r`` the largest horizontal or vertical distance from
      the centroid to a pixel centre, ``r < overlap / 2 - 1/2`` suffices for an even
      overlap; a symmetric nucleus ``D`` px across has ``r = (D - 1) / 2``, so ``D < overlap``.)
    * *Never twice*: every tile that sees the whole nucleus segments the same pixels, so it
      computes the same centroid, which lies in exactly one core: rule (a) keeps it in one
      tile only. A tile that sees only part of the nucleus (cut by its edge) computes
      another centroid, which might fall in its own core - but the part touches that
      tile's inner edge, and rule (b) drops it.

    The one assumption is that a tile segments a nucleus it sees whole like any other tile
    does: exact for the classical stand-in of the tests, but not for a network, whose
    watershed normalises its maps per tile (on a real MoNuSeg tile cut into 256 px tiles,
    the shipped model kept some nuclei twice and 930 pixels in two outlines). So when all
    tiles are done, :mod:`~instasam.predict.seams` settles the nuclei that two tiles may
    both report, from their outlines: a nucleus kept twice is written once, overlapping
    outlines are trimmed apart, and a nucleus whose centroid every tile placed in another
    tile's core is taken from a tile that saw it whole. No two written outlines share a
    pixel. Nuclei larger than the overlap are dropped at the seam rather than cut, counted
    (``dropped_at_edge``, ``largest_reach``) and reported so that ``--overlap`` can be
    raised.

    With tiles resized to the model's resolution (``scale != 1``) outlines are compared on
    the working level's pixel grid, which is approximate by a fraction of a pixel.

Streaming and resume
    Finished tiles go to ``OUT.partial/`` as one small JSON-lines file each (a header
    line, then one QuPath feature per line), written atomically, next to a manifest of the
    run's settings (slide, mpp, working level, tile, overlap, tissue mask use, the model
    file's name, size and time, and the list of tiles). A rerun with the same settings
    skips the tiles already there (``resume=True``, the default). A rerun with *other*
    settings is refused with an :class:`~instasam.errors.InputError` naming the difference:
    mixing tiles of two runs would give an inconsistent file, and silently starting over
    could throw away hours of work; ``resume=False`` (``--no-resume``) deletes the folder
    and starts over. When all tiles are done the GeoJSON is assembled in tile order through
    :class:`~instasam.io.qupath.GeoJSONDetectionWriter` (atomic) and the folder is removed,
    so memory stays flat whatever the slide's size and OUT is either complete or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from instasam.errors import InputError
from instasam.io.atomic import write_text_atomic
from instasam.io.points import check_points_inside
from instasam.io.qupath import (
    GeoJSONDetectionWriter,
    detection_mask,
    encode_feature,
    id_namespace,
    instance_features,
)
from instasam.io.slides import (
    DEFAULT_OVERLAP,
    DEFAULT_TARGET_MPP,
    DEFAULT_TILE,
    Slide,
    Tile,
    TissueMask,
    WorkingLevel,
    tile_grid,
    tiles_on_tissue,
)
from instasam.io.tables import NucleiTableWriter, Spread
from instasam.measure import RGB, STAIN
from instasam.predict import InstancePredictor
from instasam.predict.resolution import resized_image
from instasam.predict.seams import SeamCandidate, exclusive_box, settle_seams
from instasam.stain import reference_densities

PARTIAL_SUFFIX = ".partial"
_MANIFEST = "manifest.json"
_FORMAT = 4  # bump when the partial files change meaning


@dataclass(frozen=True)
class SlidePredictConfig:
    """Settings of a whole-slide run (the CLI's options)."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    target_mpp: float | None = None  # None: the predictor's mpp, else DEFAULT_TARGET_MPP
    level: int | None = None  # None: chosen from the target mpp
    use_tissue_mask: bool = True
    measure: bool = True  # per-nucleus shape and stain measurements (instasam.measure)

    def __post_init__(self) -> None:
        if self.tile <= 0 or self.overlap < 0 or self.tile <= self.overlap:
            raise InputError(
                None, f"--tile ({self.tile}) must be larger than --overlap ({self.overlap}) >= 0"
            )
        if self.target_mpp is not None and not (
            math.isfinite(self.target_mpp) and self.target_mpp > 0
        ):
            raise InputError(None, f"--target-mpp must be positive, got {self.target_mpp}")
        if self.level is not None and self.level < 0:
            raise InputError(None, f"--level must be >= 0, got {self.level}")


@dataclass
class SlideRun:
    """What a whole-slide run did."""

    out: Path
    working: WorkingLevel
    tiles_total: int = 0
    tiles_on_tissue: int = 0
    tiles_resumed: int = 0
    tiles_predicted: int = 0
    nuclei: int = 0
    dropped_at_edge: int = 0  # owned but cut by an inner tile edge (see module notes)
    largest_reach: float = 0.0  # model px from a kept nucleus's centroid to its farthest pixel
    overlap: int = 0
    points: int = 0
    points_in_nuclei: int = 0
    tissue_megapixels: float = 0.0  # tissue area in model pixels
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # With a nuclei table: median and IQR of the nuclei's area and haematoxylin density.
    area_um2: Spread | None = None
    haematoxylin_od: Spread | None = None


@dataclass(frozen=True)
class TilePlan:
    """A slide's tile grid at its working level, and the tiles on tissue to segment."""

    working: WorkingLevel
    tiles: list[Tile]
    todo: list[Tile]
    tile_level: int  # tile side in level pixels
    overlap_level: int
    measure: bool


def partial_dir(out: str | os.PathLike) -> Path:
    """The folder holding the finished tiles of an unfinished run writing ``out``."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def predict_slide(
    slide: Slide,
    predictor: InstancePredictor,
    out: str | os.PathLike,
    config: SlidePredictConfig | None = None,
    *,
    resume: bool = True,
    points: np.ndarray | None = None,
    tissue: TissueMask | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
    points_name: str = "points",
    table: str | os.PathLike | None = None,
) -> SlideRun:
    """Segment the nuclei of a slide into a QuPath GeoJSON file.

    Parameters
    ----------
    slide : Slide
        The open slide (its ``mpp`` resolved).
    predictor : InstancePredictor
        RGB tile -> instance map.
    out : path
        The ``.geojson`` to write (atomically, at the end).
    config : SlidePredictConfig, optional
    resume : bool
        Reuse the finished tiles of an interrupted run with the same settings; False
        discards them.
    points : ndarray ``(N, 2)``, optional
        Level-0 points ``(x, y)`` (pixel centres); the run counts those falling inside a
        predicted nucleus. Points outside the slide are an :class:`InputError`.
    tissue : TissueMask, optional
        A precomputed tissue mask (default: :meth:`Slide.tissue_mask`).
    fingerprint : dict, optional
        Anything else that must match for a resume (e.g. the model file's size and time).
    progress : bool
        Show a progress bar.
    points_name : str
        How error messages name the points (e.g. their file).
    table : path, optional
        Also write one CSV row per nucleus (:class:`~instasam.io.tables.NucleiTableWriter`).

    Raises
    ------
    InputError
        Bad settings, no tissue, points outside the slide, a partial run with other
        settings, or a slide region that cannot be decoded.
    """
    started = time.perf_counter()
    job = start_slide_job(
        slide,
        out,
        config,
        model_mpp=getattr(predictor, "mpp", None),
        resume=resume,
        points=points,
        tissue=tissue,
        fingerprint=fingerprint,
        points_name=points_name,
        staining=corrects_stain(predictor),
    )
    pending = pending_tiles(job)
    bar = tqdm(
        total=len(job.plan.todo),
        initial=job.run.tiles_resumed,
        desc=slide.name,
        unit="tile",
        disable=not progress,
        dynamic_ncols=True,
    )
    # Resumed tiles count too: the bar shows the slide's nuclei so far, not this run's.
    found = job.resumed_nuclei
    bar.set_postfix(nuclei=found, refresh=False)
    try:
        for tile in pending:
            found += predict_tile_file(slide, predictor, job, tile)
            job.run.tiles_predicted += 1
            bar.set_postfix(nuclei=found, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    run = finish_slide_job(job, table=table)
    run.seconds = time.perf_counter() - started
    return run


@dataclass
class SlideJob:
    """A slide's run once planned: its tiles, where finished tiles go, what was resumed.

    Made by :func:`start_slide_job`; tiles are done by :func:`predict_tile_file` (in any
    order, in any process that sees the same files; doing one twice rewrites the same
    file) and the GeoJSON is assembled by :func:`finish_slide_job`. Picklable, so a
    cluster's workers can share it.
    """

    out: Path
    plan: TilePlan
    namespace: uuid.UUID
    mpp: float | None
    run: SlideRun
    owners: dict[tuple[int, int], np.ndarray]
    finished: frozenset[str] = frozenset()  # names of the tiles done when it was planned
    resumed_nuclei: int = 0
    # The slide's stain densities, for a predictor that standardises stain: every tile
    # gets the same correction (a tile's own would vary with what it holds).
    staining: tuple[float, float] | None = None

    @property
    def sidecar(self) -> Path:
        return partial_dir(self.out)


def start_slide_job(
    slide: Slide,
    out: str | os.PathLike,
    config: SlidePredictConfig | None = None,
    *,
    model_mpp: float | None = None,
    resume: bool = True,
    points: np.ndarray | None = None,
    tissue: TissueMask | None = None,
    fingerprint: dict[str, Any] | None = None,
    points_name: str = "points",
    staining: bool = False,
) -> SlideJob:
    """Plan a slide's tiles and prepare (or check, to resume) its ``OUT.partial/`` folder.

    ``model_mpp`` is the predictor's resolution, used when ``config`` sets no target;
    ``staining``: measure the slide's stain densities (:func:`slide_staining`) for a
    predictor that standardises stain. Other parameters and errors as :func:`predict_slide`.
    """
    config = config or SlidePredictConfig()
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; --out needs a .geojson file name")
    if points is not None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        check_points_inside(points, (slide.dimensions[1], slide.dimensions[0]), points_name)
    target = config.target_mpp or model_mpp or DEFAULT_TARGET_MPP
    working = slide.working_level(target, config.level)
    if not config.use_tissue_mask:
        tissue = None
    elif tissue is None:
        tissue = slide.tissue_mask()
    plan = _plan(slide, working, config, tissue)
    run = SlideRun(out=out, working=working, overlap=config.overlap)
    run.tiles_total, run.tiles_on_tissue = len(plan.tiles), len(plan.todo)
    run.tissue_megapixels = _tissue_megapixels(slide, working, plan, tissue)
    run.points = 0 if points is None else len(points)
    sidecar = partial_dir(out)
    _prepare_sidecar(sidecar, _manifest(slide, working, config, plan, fingerprint, points), resume)
    job = SlideJob(
        out=out,
        plan=plan,
        namespace=id_namespace(f"{slide.name}:{slide.dimensions[0]}x{slide.dimensions[1]}"),
        mpp=slide.mpp,
        run=run,
        owners=_point_owners(points, plan, working),
        staining=slide_staining(slide, plan) if staining and plan.todo else None,
    )
    done = [t for t in plan.todo if tile_finished(job, t)]
    job.finished = frozenset(t.name for t in done)
    run.tiles_resumed = len(done)
    job.resumed_nuclei = sum(_tile_header(_tile_file(sidecar, t))["nuclei"] for t in done)
    return job


def tile_finished(job: SlideJob, tile: Tile) -> bool:
    """Whether some run has written the tile's file (checked on disk, now)."""
    return _tile_file(job.sidecar, tile).is_file()


def pending_tiles(job: SlideJob) -> list[Tile]:
    """The job's tiles on tissue that no run had finished when the job was planned."""
    return [t for t in job.plan.todo if t.name not in job.finished]


def predict_tile_file(slide: Slide, predictor: InstancePredictor, job: SlideJob, tile: Tile) -> int:
    """Segment one tile into the job's partial folder (atomically); returns its nuclei."""
    if job.staining is not None and hasattr(predictor, "stain_source"):
        predictor = replace(predictor, stain_source=job.staining)
    header, lines = _predict_tile(
        slide, predictor, tile, job.plan, job.namespace, job.owners.get((tile.row, tile.col))
    )
    body = "\n".join([json.dumps(header), *lines]) + "\n"
    write_text_atomic(_tile_file(job.sidecar, tile), body)
    return int(header["nuclei"])


def finish_slide_job(job: SlideJob, table: str | os.PathLike | None = None) -> SlideRun:
    """Settle the seams and write the GeoJSON (and the nuclei ``table``); removes the folder.

    Every tile on tissue must be finished. Returns the job's :class:`SlideRun`.
    """
    out, run, working = job.out, job.run, job.plan.working
    files = [_tile_file(job.sidecar, t) for t in job.plan.todo]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{job.sidecar}: {len(missing)} tile(s) not finished ({missing[0]}, ...)")
    _remove_stale_assembly(out)
    candidates = {(c.tile, c.line): c for c in _seam_candidates(files, working)}
    fate = settle_seams(list(candidates.values()))
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(GeoJSONDetectionWriter(out))
        rows = None if table is None else stack.enter_context(NucleiTableWriter(table))
        for index, path in enumerate(files):
            header = _copy_tile(
                path, index, candidates, fate, writer, working, job.mpp, job.namespace, rows
            )
            run.dropped_at_edge += header["dropped_at_edge"]
            run.points_in_nuclei += header["points_in_nuclei"]
            run.largest_reach = max(run.largest_reach, header["largest_reach"])
        run.nuclei = writer.count
        if rows is not None:
            run.area_um2 = rows.spread("Area µm^2")
            run.haematoxylin_od = rows.spread("Haematoxylin OD mean")
    shutil.rmtree(job.sidecar, ignore_errors=True)
    if run.dropped_at_edge or run.largest_reach >= run.overlap / 2:
        run.notes.append(
            f"some nuclei reach {run.largest_reach:.0f} px from their centre (overlap/2 = "
            f"{run.overlap / 2:g}); {run.dropped_at_edge} cut piece(s) were dropped at tile "
            "edges. Nuclei this large can be cut or lost at tile seams: raise --overlap above "
            "the largest nucleus diameter"
        )
    return run


STAIN_SAMPLE_TILES = 12


def slide_staining(slide: Slide, plan: TilePlan) -> tuple[float, float]:
    """A slide's stain densities: the median of those of up to 12 of its tissue tiles,
    spread evenly over the plan's order, read as they are predicted."""
    todo = plan.todo
    picks = np.unique(np.linspace(0, len(todo) - 1, min(STAIN_SAMPLE_TILES, len(todo)))).astype(int)
    return reference_densities(_working_image(slide, plan.working, todo[i]) for i in picks)


def corrects_stain(predictor: InstancePredictor) -> bool:
    """Whether ``predictor`` standardises stain from its input's densities."""
    stain = getattr(predictor, "stain", None)
    return stain is not None and stain.active


def check_tissue(slide: Slide, tissue: TissueMask) -> None:
    """Refuse a slide whose tissue mask is empty (:class:`InputError`, exit status 2)."""
    if not tissue.mask.any():
        raise _no_tissue(slide, tissue)


def _no_tissue(slide: Slide, tissue: TissueMask) -> InputError:
    return InputError(
        slide.path,
        "no tissue found (the slide looks like empty glass; saturation threshold "
        f"{tissue.threshold:.2f}); pass --no-tissue-mask to process it anyway",
    )


def _plan(
    slide: Slide, working: WorkingLevel, config: SlidePredictConfig, tissue: TissueMask | None
) -> TilePlan:
    tile_level = max(1, round(config.tile / working.scale))
    overlap_level = math.ceil(config.overlap / working.scale)
    if tile_level <= overlap_level:
        raise InputError(None, f"--tile {config.tile} is too small for --overlap {config.overlap}")
    tiles = tile_grid(slide.level_dimensions[working.level], tile_level, overlap_level)
    if tissue is not None:
        todo = tiles_on_tissue(tiles, tissue, working.downsample)
        if not todo:
            raise _no_tissue(slide, tissue)
    else:
        todo = tiles
    return TilePlan(working, tiles, todo, tile_level, overlap_level, config.measure)


def _tissue_megapixels(
    slide: Slide, working: WorkingLevel, plan: TilePlan, tissue: TissueMask | None
) -> float:
    """Tissue area in model pixels (the processed tiles' cores when there is no mask)."""
    level_area = sum((t.core_x[1] - t.core_x[0]) * (t.core_y[1] - t.core_y[0]) for t in plan.todo)
    if tissue is not None:
        w, h = slide.level_dimensions[working.level]
        level_area = min(level_area, tissue.fraction * w * h)
    return level_area * working.scale**2 / 1e6


def _manifest(
    slide: Slide,
    working: WorkingLevel,
    config: SlidePredictConfig,
    plan: TilePlan,
    fingerprint: dict[str, Any] | None,
    points: np.ndarray | None,
) -> dict[str, Any]:
    digest = None if points is None else hashlib.sha1(points.tobytes()).hexdigest()
    return {
        "format": _FORMAT,
        "slide": slide.name,
        "slide_bytes": slide.path.stat().st_size,
        "dimensions": list(slide.dimensions),
        "mpp": round(slide.mpp, 6),
        "working": {k: v for k, v in asdict(working).items() if k != "downsample"},
        # The effective level and target are in "working"; how they were chosen is not.
        "config": {k: v for k, v in asdict(config).items() if k not in ("target_mpp", "level")},
        "tile_level": plan.tile_level,
        "overlap_level": plan.overlap_level,
        "tiles": [t.name for t in plan.todo],
        "fingerprint": fingerprint or {},
        "points": digest,  # tiles count the points they hold
    }


def _prepare_sidecar(sidecar: Path, manifest: dict[str, Any], resume: bool) -> None:
    """Create the partial-run folder, or check that an existing one can be resumed."""
    manifest = json.loads(json.dumps(manifest))  # the form it has once read back
    if sidecar.exists() and not resume:
        shutil.rmtree(sidecar)
    if sidecar.exists():
        try:
            previous = json.loads((sidecar / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != manifest:
            what = _first_difference(previous, manifest)
            raise InputError(
                sidecar,
                f"holds an unfinished run with other settings ({what}); pass --no-resume to "
                "start over or delete the folder",
            )
        return
    try:
        sidecar.mkdir(parents=True)
        write_text_atomic(sidecar / _MANIFEST, json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        raise InputError(sidecar, f"cannot write here ({exc.strerror or exc})") from None


def _first_difference(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable manifest"
    for key in new:
        if old.get(key) != new[key]:
            if isinstance(new[key], dict) and isinstance(old.get(key), dict):
                for sub in new[key]:
                    if old[key].get(sub) != new[key][sub]:
                        return f"{sub}: {old[key].get(sub)} then, {new[key][sub]} now"
            if key == "tiles":
                return "a different set of tiles"
            return f"{key}: {old.get(key)} then, {new[key]} now"
    return "unknown difference"


def _tile_file(sidecar: Path, tile: Tile) -> Path:
    return sidecar / f"{tile.name}.jsonl"


def _tile_header(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.loads(fh.readline())


def _remove_stale_assembly(out: Path) -> None:
    """Delete temporary GeoJSONs that a killed assembly of ``out`` left beside it.

    The assembly writes to a hidden temporary file renamed onto ``out`` at the end; a
    SIGKILL skips the clean-up, and nothing else would ever remove the file.
    """
    for stale in out.parent.glob(f".{out.stem}.*.tmp{out.suffix}"):
        stale.unlink(missing_ok=True)


def _seam_candidates(files: list[Path], working: WorkingLevel) -> list[SeamCandidate]:
    """Every tile's seam candidates (see :mod:`~instasam.predict.seams`), with their pixels."""
    candidates = []
    for index, path in enumerate(files):
        with open(path, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
            wanted = {line: (bool(owned), margin) for line, owned, margin in header["seam"]}
            if not wanted:
                continue
            for line, text in enumerate(fh):
                if line in wanted:
                    x0, y0, mask = detection_mask(json.loads(text), working.downsample)
                    owned, margin = wanted[line]
                    candidates.append(SeamCandidate(index, line, owned, margin, x0, y0, mask))
    return candidates


def _copy_tile(
    path: Path,
    index: int,
    candidates: dict[tuple[int, int], SeamCandidate],
    fate: dict[tuple[int, int], np.ndarray | None],
    writer: GeoJSONDetectionWriter,
    working: WorkingLevel,
    mpp: float | None,
    namespace: Any,
    rows: NucleiTableWriter | None = None,
) -> dict[str, Any]:
    """Stream one finished tile's features into the writer as settled; returns its header.

    Features off the seams go through as they are; a seam candidate is skipped when
    dropped, and its outline redrawn from the settled pixels when it was trimmed.
    """
    dx, dy = working.downsample
    with open(path, encoding="utf-8") as fh:
        header = json.loads(fh.readline())
        for line, text in enumerate(fh):
            candidate = candidates.get((index, line))
            if candidate is None or fate[(index, line)] is candidate.mask:  # untouched
                writer.write_encoded([text])
                if rows is not None:
                    rows.write(json.loads(text))
                continue
            mask = fate[(index, line)]
            if mask is None:
                continue
            feature = json.loads(text)
            redrawn = instance_features(
                mask.astype(np.int32),
                offset=(candidate.x0 * dx, candidate.y0 * dy),
                scale=(dx, dy),
                mpp=mpp,
                namespace=namespace,
            )[:1]
            # No image here: the stain and colour means of the untrimmed nucleus stay.
            old = feature["properties"]["measurements"]
            for f in redrawn:
                f["properties"]["measurements"] |= {k: old[k] for k in STAIN + RGB if k in old}
            writer.write_encoded([encode_feature(f) + "\n" for f in redrawn])
            if rows is not None:
                for f in redrawn:
                    rows.write(f)
    return header


def _point_owners(
    points: np.ndarray | None, plan: TilePlan, working: WorkingLevel
) -> dict[tuple[int, int], np.ndarray]:
    """Level-pixel points grouped by the tile whose core holds them."""
    if points is None or not len(points):
        return {}
    dx, dy = working.downsample
    # Level-0 pixel centres -> level pixel centres.
    level = np.column_stack([(points[:, 0] + 0.5) / dx - 0.5, (points[:, 1] + 0.5) / dy - 0.5])
    cols = np.floor(level[:, 0] + 0.5)
    rows = np.floor(level[:, 1] + 0.5)
    owners: dict[tuple[int, int], np.ndarray] = {}
    for tile in plan.todo:
        inside = (
            (cols >= tile.core_x[0])
            & (cols < tile.core_x[1])
            & (rows >= tile.core_y[0])
            & (rows < tile.core_y[1])
        )
        if inside.any():
            owners[(tile.row, tile.col)] = level[inside]
    return owners


def _predict_tile(
    slide: Slide,
    predictor: InstancePredictor,
    tile: Tile,
    plan: TilePlan,
    namespace: Any,
    points: np.ndarray | None,
) -> tuple[dict[str, Any], list[str]]:
    """One tile -> (header, encoded features of the nuclei it owns)."""
    working = plan.working
    image = _working_image(slide, working, tile)
    sx, sy = image.shape[1] / tile.width, image.shape[0] / tile.height
    labels = np.asarray(predictor.predict_instances(image))
    if labels.shape != image.shape[:2]:
        raise ValueError(f"predictor returned a {labels.shape} map for a {image.shape[:2]} tile")
    if labels.size and labels.min() < 0:
        raise ValueError("predictor returned negative ids; 0 is background, 1..N nuclei")
    if labels.size and labels.max() > labels.size:  # sparse huge ids: number them 1..N
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    labels = labels.astype(np.int32, copy=False)
    nuclei = owned_nuclei(labels, tile, (sx, sy))
    ids = sorted(nuclei.owned + nuclei.seen)  # instance_features keeps this order
    dx, dy = working.downsample
    features = instance_features(
        labels,
        ids=ids,
        offset=(tile.x * dx, tile.y * dy),
        scale=(dx / sx, dy / sy),
        mpp=slide.mpp,
        namespace=namespace,
        image=image,
        measure=plan.measure,
    )
    ex0, ey0, ex1, ey1 = exclusive_box(tile)
    owned, seam = set(nuclei.owned), []
    for line, label in enumerate(ids):
        ys, xs = nuclei.boxes[label]
        inside = (
            tile.x + xs.start / sx >= ex0
            and tile.y + ys.start / sy >= ey0
            and tile.x + xs.stop / sx <= ex1
            and tile.y + ys.stop / sy <= ey1
        )
        if label not in owned or not inside:
            seam.append([line, int(label in owned), round(nuclei.margin[label], 2)])
    hits = 0
    if points is not None:
        c = np.clip(np.round((points[:, 0] - tile.x + 0.5) * sx - 0.5), 0, labels.shape[1] - 1)
        r = np.clip(np.round((points[:, 1] - tile.y + 0.5) * sy - 0.5), 0, labels.shape[0] - 1)
        hits = int((labels[r.astype(int), c.astype(int)] > 0).sum())
    header = {
        "tile": tile.name,
        "nuclei": len(nuclei.owned),
        "dropped_at_edge": nuclei.dropped,
        "largest_reach": round(nuclei.reach, 2),
        "points_in_nuclei": hits,
        "seam": seam,  # [line, owned, margin] of nuclei another tile may also report
    }
    return header, [encode_feature(f) for f in features]


@dataclass
class TileNuclei:
    """Which nuclei of a tile's instance map it keeps, and what it noticed."""

    owned: list[int]  # ids kept (module notes' rules a and b)
    seen: list[int]  # whole nuclei whose centroid lies in a neighbour's core
    margin: dict[int, float]  # model px from the centroid to the nearest inner tile edge
    boxes: dict[int, tuple[slice, slice]]
    dropped: int = 0  # owned but cut by an inner tile edge
    reach: float = 0.0  # largest distance (model px) from an owned centroid to its pixels


def owned_nuclei(
    labels: np.ndarray, tile: Tile, scale: tuple[float, float] = (1.0, 1.0)
) -> TileNuclei:
    """The ids a tile keeps and the whole nuclei it sees but leaves to a neighbour.

    Parameters
    ----------
    labels : ndarray ``(H, W)``
        The tile's instance map, in model pixels.
    tile : Tile
        The tile (level pixels).
    scale : (float, float)
        Model pixels per level pixel, ``(x, y)``.

    Returns
    -------
    TileNuclei
        ``owned``: ids whose centroid's nearest level pixel lies in the core and that do
        not touch an inner tile edge; ``seen``: ids that touch no inner edge but whose
        centroid lies outside the core (candidates for :mod:`~instasam.predict.seams`).
    """
    h, w = labels.shape
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    result = TileNuclei([], [], {}, {})
    if not where.size:
        return result
    ids = flat[where]
    n = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=n)
    present = np.flatnonzero(counts)
    present = present[present > 0]
    cy = np.bincount(ids, weights=where // w, minlength=n)[present] / counts[present]
    cx = np.bincount(ids, weights=where % w, minlength=n)[present] / counts[present]
    sx, sy = scale
    # Model pixel centres -> level pixel centres -> nearest level pixel.
    col = np.floor(tile.x + (cx + 0.5) / sx - 0.5 + 0.5)
    row = np.floor(tile.y + (cy + 0.5) / sy - 0.5 + 0.5)
    owned = (
        (col >= tile.core_x[0])
        & (col < tile.core_x[1])
        & (row >= tile.core_y[0])
        & (row < tile.core_y[1])
    )
    inner = [
        (not tile.at_left, lambda x, y: x + 0.5),
        (not tile.at_top, lambda x, y: y + 0.5),
        (not tile.at_right, lambda x, y: w - 0.5 - x),
        (not tile.at_bottom, lambda x, y: h - 0.5 - y),
    ]
    boxes = ndimage.find_objects(labels)
    for label, is_owned, x, y in zip(present, owned, cx, cy, strict=True):
        ys, xs = boxes[label - 1]
        cut = (
            (xs.start == 0 and not tile.at_left)
            or (ys.start == 0 and not tile.at_top)
            or (xs.stop == w and not tile.at_right)
            or (ys.stop == h and not tile.at_bottom)
        )
        if cut:
            result.dropped += int(is_owned)
            continue
        label = int(label)
        result.boxes[label] = (ys, xs)
        result.margin[label] = float(min([d(x, y) for on, d in inner if on], default=max(h, w)))
        if not is_owned:
            result.seen.append(label)
            continue
        result.owned.append(label)
        reach = max(x - xs.start, xs.stop - 1 - x, y - ys.start, ys.stop - 1 - y)
        result.reach = max(result.reach, float(reach))
    return result


def _working_image(slide: Slide, working: WorkingLevel, tile: Tile) -> np.ndarray:
    """A tile's pixels at the working resolution (the predictor's input)."""
    image = slide.read(working.level, tile.x, tile.y, tile.width, tile.height)
    return resized_image(image, working.scale) if working.scale != 1.0 else image
