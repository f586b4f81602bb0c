"""Cohorts: many slides on a Dask cluster, one nuclei table per slide and one per cohort.

Work
    The whole-slide pipeline (:mod:`instasam.predict.slides`) is cut into three kinds of
    Dask task: *plan* a slide (open it, find its tissue, lay out its tiles and prepare its
    ``<slide>.geojson.partial/`` folder), *segment a batch* of its tiles (each tile's nuclei
    written atomically to that folder, exactly as ``predict-wsi`` writes them), and
    *finish* it (settle the seams, write the GeoJSON and the nuclei table). A large slide's
    batches spread over every worker; a slide is finished as soon as its own batches are.
    Each worker process loads the model once (:func:`worker_predictor`) and keeps a few
    slides open.

Faults
    The output folder must be one every worker sees (a shared file system on a cluster).
    A tile's file is written whole or not at all and holds the same nuclei whoever writes
    it, so a task rerun after its worker died (Dask reschedules it) changes nothing, and
    the finished GeoJSON holds each nucleus once. A slide whose plan or tiles fail (a
    corrupt file, no pixel size, an unfinished run with other settings) is recorded in
    ``cohort.csv`` with the reason while the other slides go on.

Resume
    ``cohort.csv`` is rewritten (atomically) whenever a slide ends. A rerun skips every
    slide recorded there as done whose GeoJSON and table still exist, and resumes the
    others from the tiles their partial folders hold.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from instasam.errors import InputError
from instasam.io.atomic import atomic_path
from instasam.io.slides import SLIDE_SUFFIXES, Slide, open_slide
from instasam.predict import InstancePredictor
from instasam.predict.slides import (
    SlideJob,
    SlidePredictConfig,
    SlideRun,
    corrects_stain,
    finish_slide_job,
    partial_dir,
    predict_tile_file,
    start_slide_job,
    tile_finished,
)

COHORT_CSV = "cohort.csv"
COHORT_COLUMNS = (
    "slide",
    "path",
    "status",
    "reason",
    "tissue_mm2",
    "nuclei",
    "nuclei_per_mm2",
    "area_um2_median",
    "area_um2_iqr",
    "haematoxylin_od_median",
    "haematoxylin_od_iqr",
    "tiles",
    "tiles_resumed",
    "tile_seconds",
    "seconds",
    "geojson",
    "table",
)
DONE, FAILED = "done", "failed"
OPEN_SLIDES_PER_WORKER = 4
_PRIORITY = {"plan": 2, "finish": 1, "tiles": 0}  # plan every slide early, finish promptly


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort: its file, an optional pixel size, and its output name."""

    path: Path
    mpp: float | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def geojson(self, out: Path) -> Path:
        return out / f"{self.name}.geojson"

    def table(self, out: Path) -> Path:
        return out / f"{self.name}.nuclei.csv"


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: a picklable, hashable recipe (not the model itself)."""

    model: str
    precision: str = "auto"
    flips: bool = False
    threads: int = 1  # torch threads per worker; workers x threads should not exceed the cores
    device: str = "cpu"
    # Post-processing settings that replace the model's, as (name, value) pairs.
    postprocess: tuple[tuple[str, float], ...] = ()
    stain_strength: float | None = None  # None: the model's

    def __call__(self) -> InstancePredictor:
        import torch

        from instasam.predict.tiles import load_predictor

        torch.set_num_threads(self.threads)
        predictor = load_predictor(
            self.model,
            precision=self.precision,
            flips=self.flips,
            device=self.device,
            stain_strength=self.stain_strength,
            overrides=dict(self.postprocess),
        )
        return predictor


@dataclass
class CohortRow:
    """A slide's line in ``cohort.csv``."""

    slide: str
    path: str
    status: str
    reason: str = ""
    tissue_mm2: float = math.nan
    nuclei: int = 0
    nuclei_per_mm2: float = math.nan
    area_um2_median: float = math.nan
    area_um2_iqr: float = math.nan
    haematoxylin_od_median: float = math.nan
    haematoxylin_od_iqr: float = math.nan
    tiles: int = 0
    tiles_resumed: int = 0
    tile_seconds: float = 0.0  # compute time of this run's tiles, summed over workers
    seconds: float = 0.0  # wall time from the slide's plan to its files (slides interleave)
    geojson: str = ""
    table: str = ""


@dataclass
class CohortRun:
    """What :func:`predict_cohort` did."""

    rows: list[CohortRow]
    skipped: int = 0  # slides already done by an earlier run
    tiles_predicted: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CohortRow]:
        return [r for r in self.rows if r.status != DONE]


# -- what the cohort is --------------------------------------------------------------------
def cohort_slides(inputs: Iterable[str | os.PathLike]) -> list[CohortSlide]:
    """The slides named by files, folders (their slide files) and CSV manifests.

    A manifest has a ``slide`` column (paths relative to the manifest's folder) and an
    optional ``mpp`` column (empty: the slide's metadata). A listed slide that does not
    exist is kept: it fails on its own, in ``cohort.csv``, without stopping the others.

    Raises
    ------
    InputError
        A folder or manifest that does not exist or cannot be read, no slide at all, or
        two slides with the same file stem (their outputs would collide).
    """
    slides: list[CohortSlide] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
            if not found:
                raise InputError(item, "folder holds no slide (.svs, .tif, ...)")
            slides += [CohortSlide(p) for p in found]
        elif item.suffix.lower() == ".csv":
            slides += _manifest_slides(item)
        else:
            slides.append(CohortSlide(item))
    if not slides:
        raise InputError(None, "no slides given")
    seen: dict[str, Path] = {}
    for s in slides:
        if s.name in seen:
            raise InputError(s.path, f"has the same name as {seen[s.name]}; outputs would collide")
        seen[s.name] = s.path
    return slides


def _manifest_slides(path: Path) -> list[CohortSlide]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read the manifest ({exc})") from None
    if not rows or "slide" not in rows[0]:
        raise InputError(path, "a manifest needs a 'slide' column (and optionally 'mpp')")
    slides = []
    for line, row in enumerate(rows, start=2):
        name = (row.get("slide") or "").strip()
        if not name:
            raise InputError(path, f"line {line}: empty 'slide'")
        mpp_text = (row.get("mpp") or "").strip()
        try:
            mpp = float(mpp_text) if mpp_text else None
        except ValueError:
            raise InputError(path, f"line {line}: mpp {mpp_text!r} is not a number") from None
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise InputError(path, f"line {line}: mpp must be positive, got {mpp_text}")
        slide = Path(name)
        slides.append(CohortSlide(slide if slide.is_absolute() else path.parent / slide, mpp))
    return slides


# -- on the workers ------------------------------------------------------------------------
_PREDICTORS: dict[Hashable, InstancePredictor] = {}
_SLIDES: OrderedDict[tuple[str, float | None], Slide] = OrderedDict()


# A worker of an existing cluster may run several tasks at once, in threads.
_CACHE_LOCK = threading.Lock()


def worker_predictor(factory: Callable[[], InstancePredictor]) -> InstancePredictor:
    """This process's predictor for ``factory`` (hashable), loaded on first use only."""
    with _CACHE_LOCK:
        if factory not in _PREDICTORS:
            _PREDICTORS[factory] = factory()
        return _PREDICTORS[factory]


def _worker_slide(item: CohortSlide) -> Slide:
    """The slide, opened once per process; the least recently used ones are let go.

    An evicted slide is not closed here: a task in another thread may still be reading
    it, and it closes when the last reference goes.
    """
    key = (str(item.path), item.mpp)
    with _CACHE_LOCK:
        if key in _SLIDES:
            _SLIDES.move_to_end(key)
            return _SLIDES[key]
        slide = open_slide(item.path, mpp=item.mpp)
        _SLIDES[key] = slide
        while len(_SLIDES) > OPEN_SLIDES_PER_WORKER:
            _SLIDES.popitem(last=False)
        return slide


def plan_task(
    item: CohortSlide,
    out: Path,
    config: SlidePredictConfig,
    factory: Callable[[], InstancePredictor],
    fingerprint: dict[str, Any],
) -> SlideJob:
    """Open a slide, find its tissue and tiles, and prepare (or resume) its partial folder."""
    predictor = worker_predictor(factory)
    return start_slide_job(
        _worker_slide(item),
        item.geojson(out),
        config,
        model_mpp=getattr(predictor, "mpp", None),
        fingerprint=fingerprint,
        staining=corrects_stain(predictor),
    )


def tiles_task(
    item: CohortSlide,
    job: SlideJob,
    indices: Sequence[int],
    factory: Callable[[], InstancePredictor],
) -> tuple[int, float]:
    """Segment the job's tiles ``indices`` not yet finished; (tiles done, seconds)."""
    started = time.perf_counter()
    predictor = worker_predictor(factory)
    slide = _worker_slide(item)
    done = 0
    for i in indices:
        tile = job.plan.todo[i]
        if tile_finished(job, tile):  # a rerun of a task that had finished it
            continue
        predict_tile_file(slide, predictor, job, tile)
        done += 1
    return done, time.perf_counter() - started


def finish_task(item: CohortSlide, job: SlideJob, out: Path) -> SlideRun:
    """Write the slide's GeoJSON and nuclei table from its finished tiles."""
    return finish_slide_job(job, table=item.table(out))


# -- the driver ----------------------------------------------------------------------------
def predict_cohort(
    slides: Sequence[CohortSlide],
    out: str | os.PathLike,
    factory: Callable[[], InstancePredictor],
    client: Any,
    config: SlidePredictConfig | None = None,
    *,
    resume: bool = True,
    tiles_per_task: int = 8,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
) -> CohortRun:
    """Segment every slide of a cohort on a Dask cluster.

    Parameters
    ----------
    slides : sequence of CohortSlide
        From :func:`cohort_slides`.
    out : path
        Output folder (shared by every worker): ``<slide>.geojson``,
        ``<slide>.nuclei.csv`` and ``cohort.csv``.
    factory : callable
        Picklable and hashable; returns the predictor (e.g. :class:`ModelSpec`). Called
        once per worker process.
    client : distributed.Client
        The cluster to run on.
    config : SlidePredictConfig, optional
        Tiling and measurement settings, as for ``predict-wsi``.
    resume : bool
        Skip slides already done and reuse finished tiles; False starts every slide over.
    tiles_per_task : int
        Tiles segmented by one task (fewer: finer load balance; more: less overhead).
    fingerprint : dict, optional
        What else must match for a slide's finished tiles to be reused (the model file).

    Returns
    -------
    CohortRun
        One row per slide, in the order given; failed slides have ``status`` "failed"
        and a ``reason``.
    """
    if tiles_per_task < 1:
        raise InputError(None, f"--tiles-per-task must be >= 1, got {tiles_per_task}")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_rows(slides, out) if resume else {}
    todo = [s for s in slides if s.name not in done]
    if not resume:
        # Here, not in the plan task: Dask may rerun a plan (its worker died) while the
        # slide's tiles are being written, and that rerun must not delete them.
        for item in todo:
            shutil.rmtree(partial_dir(item.geojson(out)), ignore_errors=True)
    driver = _Driver(
        slides,
        out,
        factory,
        client,
        config or SlidePredictConfig(),
        tiles_per_task,
        fingerprint or {},
        done,
    )
    with tqdm(total=0, unit="tile", disable=not progress, dynamic_ncols=True) as bar:
        driver.run(todo, bar)
    run = CohortRun(rows=[driver.rows[s.name] for s in slides], skipped=len(done))
    run.tiles_predicted = driver.tiles_predicted
    write_cohort_csv(out / COHORT_CSV, run.rows)
    run.seconds = time.perf_counter() - started
    return run


def finished_rows(slides: Sequence[CohortSlide], out: Path) -> dict[str, CohortRow]:
    """The slides an earlier run recorded as done in ``cohort.csv`` whose files remain."""
    wanted = {s.name for s in slides}
    return {
        r.slide: r
        for r in read_cohort_csv(out / COHORT_CSV)
        if r.slide in wanted
        and r.status == DONE
        and Path(r.geojson).is_file()
        and Path(r.table).is_file()
    }


class _Driver:
    """Submits each slide's tasks as the previous step ends, and records how it ended."""

    def __init__(
        self,
        slides: Sequence[CohortSlide],
        out: Path,
        factory: Callable[[], InstancePredictor],
        client: Any,
        config: SlidePredictConfig,
        tiles_per_task: int,
        fingerprint: dict[str, Any],
        rows: dict[str, CohortRow],
    ) -> None:
        from distributed import as_completed

        self.slides, self.out, self.factory, self.client = slides, out, factory, client
        self.config, self.tiles_per_task, self.fingerprint = config, tiles_per_task, fingerprint
        self.rows = dict(rows)
        self.items = {s.name: s for s in slides}
        self.pool = as_completed([])
        self.what: dict[Any, tuple[str, str, int]] = {}  # future -> (step, slide, tiles)
        self.jobs: dict[str, Any] = {}  # slide -> future of its SlideJob
        self.waiting: dict[str, set[Any]] = {}  # slide -> its unfinished batches
        self.planned: dict[str, float] = {}  # slide -> when its plan came back
        self.tile_seconds: dict[str, float] = {}
        self.tiles_predicted = 0

    def run(self, todo: Sequence[CohortSlide], bar: Any) -> None:
        for item in todo:
            args = (item, self.out, self.config, self.factory, self.fingerprint)
            self.jobs[item.name] = self._submit("plan", item.name, 0, plan_task, *args)
        for future in self.pool:
            step, name, tiles = self.what.pop(future)
            if name in self.rows:  # the slide already failed; its late batches are ignored
                continue
            if future.status != "finished":
                self._fail(name, future.exception())
            elif step == "plan":
                total, resumed = self._on_plan(name, future.result())
                bar.total += total
                bar.update(resumed)
            elif step == "tiles":
                self._on_tiles(name, future)
                bar.update(tiles)
            else:
                self._on_finish(name, future.result())
            # rows holds only this cohort's slides: those ended, now or by an earlier run.
            bar.set_postfix(slides=f"{len(self.rows)}/{len(self.slides)}", refresh=False)

    def _submit(self, step: str, name: str, tiles: int, fn: Callable[..., Any], *args: Any) -> Any:
        future = self.client.submit(fn, *args, pure=False, priority=_PRIORITY[step])
        self.what[future] = (step, name, tiles)
        self.pool.add(future)
        return future

    def _on_plan(self, name: str, job: SlideJob) -> tuple[int, int]:
        """Submit the slide's batches of unfinished tiles; (tiles on tissue, finished)."""
        self.planned[name] = time.perf_counter()
        self.tile_seconds[name] = 0.0
        pending = [i for i, t in enumerate(job.plan.todo) if t.name not in job.finished]
        step = self.tiles_per_task
        item, job_future = self.items[name], self.jobs[name]
        self.waiting[name] = {
            self._submit(
                "tiles",
                name,
                len(pending[i : i + step]),
                tiles_task,
                item,
                job_future,
                pending[i : i + step],
                self.factory,
            )
            for i in range(0, len(pending), step)
        }
        if not pending:
            self._submit("finish", name, 0, finish_task, item, job_future, self.out)
        return len(job.plan.todo), len(job.plan.todo) - len(pending)

    def _on_tiles(self, name: str, future: Any) -> None:
        done, seconds = future.result()
        self.tiles_predicted += done
        self.tile_seconds[name] += seconds
        self.waiting[name].discard(future)
        if not self.waiting[name]:
            item = self.items[name]
            self._submit("finish", name, 0, finish_task, item, self.jobs[name], self.out)

    def _on_finish(self, name: str, result: SlideRun) -> None:
        seconds = time.perf_counter() - self.planned[name]
        self.rows[name] = _done_row(
            self.items[name], self.out, result, self.tile_seconds[name], seconds
        )
        self.waiting.pop(name, None)
        self.jobs.pop(name, None)
        self._record()

    def _fail(self, name: str, exc: BaseException) -> None:
        for future in self.waiting.pop(name, set()):
            future.cancel()
        self.jobs.pop(name, None)
        reason = exc.reason if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        # A cohort has no --mpp option: the pixel size of such a slide goes in a manifest.
        reason = reason.replace("pass --mpp", "give its mpp in a manifest's mpp column")
        path = str(self.items[name].path)
        self.rows[name] = CohortRow(name, path, FAILED, reason=" ".join(reason.split()))
        self._record()

    def _record(self) -> None:
        rows = [self.rows[s.name] for s in self.slides if s.name in self.rows]
        write_cohort_csv(self.out / COHORT_CSV, rows)


def _done_row(
    item: CohortSlide, out: Path, result: SlideRun, tile_seconds: float, seconds: float
) -> CohortRow:
    mm2 = result.tissue_megapixels * result.working.target_mpp**2
    area, od = result.area_um2, result.haematoxylin_od
    return CohortRow(
        slide=item.name,
        path=str(item.path),
        status=DONE,
        tissue_mm2=round(mm2, 4),
        nuclei=result.nuclei,
        nuclei_per_mm2=round(result.nuclei / mm2, 1) if mm2 > 0 else math.nan,
        area_um2_median=area.median if area else math.nan,
        area_um2_iqr=area.iqr if area else math.nan,
        haematoxylin_od_median=od.median if od else math.nan,
        haematoxylin_od_iqr=od.iqr if od else math.nan,
        tiles=result.tiles_on_tissue,
        tiles_resumed=result.tiles_resumed,
        tile_seconds=round(tile_seconds, 2),
        seconds=round(seconds, 2),
        geojson=str(item.geojson(out)),
        table=str(item.table(out)),
    )


# -- cohort.csv ----------------------------------------------------------------------------
def write_cohort_csv(path: Path, rows: Sequence[CohortRow]) -> None:
    """Write the cohort table atomically (numbers rounded, NaN as an empty cell)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COHORT_COLUMNS)
        for row in rows:
            writer.writerow([_cell(getattr(row, c)) for c in COHORT_COLUMNS])


def read_cohort_csv(path: Path) -> list[CohortRow]:
    """The rows of an earlier run's ``cohort.csv`` (none when absent or unreadable)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            records = list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []
    rows = []
    for record in records:
        try:
            rows.append(_row(record))
        except (KeyError, ValueError):
            continue  # a damaged line: that slide is simply done again
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return value


def _row(record: dict[str, str]) -> CohortRow:
    values: dict[str, Any] = {}
    for name, default in CohortRow.__dataclass_fields__.items():
        text = record[name]
        kind = default.type
        if kind == "int":
            values[name] = int(text)
        elif kind == "float":
            values[name] = float(text) if text else math.nan
        else:
            values[name] = text
    return CohortRow(**values)
