"""Validation on whole tiles, and post-processing thresholds chosen on them.

The network is fully convolutional and a 1000x1000 tile is one forward pass, so validation
sees what prediction will see (no centre crops). Its maps are kept so the watershed's
thresholds, its seeds (the edges' cores or a centre head's peaks) and the outline shrink
can be chosen on the validation tiles once training ends, without the model.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from instasam.config import NetConfig, PostprocessConfig, StainConfig
from instasam.io.images import list_images, read_rgb
from instasam.io.labels import find_label_file, read_label_map
from instasam.metrics import compute_metrics, mean_metrics
from instasam.model.sam_embedding import Embed
from instasam.model.unet import NucleiUNet
from instasam.postprocess import instances_for_settings
from instasam.predict.tiles import predict_net_maps
from instasam.stain import standardise_stain

# Foreground x marker thresholds tried; the authors' (0.7, 0.5) and HoVer-Net's
# (0.5, 0.4) are both in the grid.
FG_THRESHOLDS = (0.4, 0.5, 0.6, 0.7)
EDGE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
# Pixels taken off each outline (PostprocessConfig.shrink): none, or one for a network that
# learned SAM's larger outlines.
SHRINKS = (0, 1)
# Peak thresholds tried in place of the marker threshold, for a network with a centre head.
CENTRE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


@dataclass
class ValTile:
    stem: str
    image: np.ndarray
    labels: np.ndarray  # ground-truth instances


def val_tiles_in(folder: Path) -> list[ValTile]:
    """The tiles of a prepared folder (``images/`` and ``labels/``) with their ground truth."""
    return [
        ValTile(p.stem, read_rgb(p), read_label_map(find_label_file(folder / "labels", p.stem)))
        for p in list_images(folder / "images")
    ]


def standardised_tiles(tiles: list[ValTile], stain: StainConfig) -> list[ValTile]:
    """``tiles`` as the network's predictor sees them: stain standardised by its rule."""
    return [replace(t, image=standardise_stain(t.image, stain)) for t in tiles]


def validation_maps(
    net: NucleiUNet,
    tiles: list[ValTile],
    precision: str,
    embed: Embed | None = None,
    flips: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The network's (foreground, distance) maps of each validation tile (averaged over
    the four flips with ``flips``)."""
    was_training = net.training
    net.eval()
    maps = [predict_net_maps(net, t.image, precision, flips, embed=embed) for t in tiles]
    net.train(was_training)
    return maps


def score_maps(
    maps: list[tuple[np.ndarray, np.ndarray]], tiles: list[ValTile], config: PostprocessConfig
) -> dict[str, float]:
    """Mean metrics of the post-processed maps against the tiles' ground truth."""
    return grid_scores(maps, tiles, [config])[0]


def choose_thresholds(
    maps: list[tuple[np.ndarray, np.ndarray]],
    tiles: list[ValTile],
    base: PostprocessConfig,
    workers: int | None = None,
) -> tuple[PostprocessConfig, list[dict[str, float]]]:
    """The (foreground, marker, shrink) setting with the best validation AJI, and every score.

    Maps with a centre channel also try the centre map's peaks as markers, alone or
    splitting the edges' markers, at each of :data:`CENTRE_THRESHOLDS`. Ties go to the first
    setting tried, so to no shrink and to the edges' markers. ``workers``: tiles scored at
    once (:func:`grid_scores`).
    """
    settings = grid_settings(maps)
    configs = [replace(base, **s) for s in settings]
    scores = grid_scores(maps, tiles, configs, workers)
    table = [{**s, **row} for s, row in zip(settings, scores, strict=True)]
    return configs[_best_row(table)], table


def grid_scores(
    maps: list[tuple[np.ndarray, np.ndarray]],
    tiles: list[ValTile],
    configs: list[PostprocessConfig],
    workers: int | None = None,
) -> list[dict[str, float]]:
    """Each setting's mean metrics over the tiles, the settings sharing their stages
    (:func:`instasam.postprocess.instances_for_settings`). ``workers`` tiles are scored at
    once, in threads (default: torch's thread count, idle while the grid runs; the Kumar val
    tiles' grid took 33 s on 2 threads, 56 s on one). The scores do not depend on it."""
    workers = torch.get_num_threads() if workers is None else workers
    jobs = [(fg, hv, tile.labels) for (fg, hv), tile in zip(maps, tiles, strict=True)]

    def scored(job: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[dict[str, float]]:
        return tile_scores(*job, configs)

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
            per_tile = list(pool.map(scored, jobs))
    else:
        per_tile = [scored(job) for job in jobs]
    return [mean_metrics([rows[i] for rows in per_tile]) for i in range(len(configs))]


def tile_scores(
    fg: np.ndarray, hv: np.ndarray, labels: np.ndarray, configs: list[PostprocessConfig]
) -> list[dict[str, float]]:
    """The metrics of each setting's nuclei on one tile against its ground truth."""
    rows: list[dict[str, float]] = [{}] * len(configs)
    for i, instances in instances_for_settings(fg, hv, configs):
        rows[i] = compute_metrics(labels, instances)
    return rows


def _best_row(table: list[dict[str, float]]) -> int:
    """The index of the first row of the best AJI (``max`` keeps the first of equals)."""
    return max(range(len(table)), key=lambda i: table[i]["aji"])


def grid_settings(maps: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """The grid's settings for ``maps``: centre markers too where every map has a centre
    channel."""
    return _settings(with_centres=all(hv.shape[0] == 3 for _, hv in maps))


def _settings(with_centres: bool) -> list[dict]:
    markers = [{"markers": "edges", "edge_threshold": t} for t in EDGE_THRESHOLDS]
    if with_centres:
        markers += [{"markers": "centres", "centre_threshold": t} for t in CENTRE_THRESHOLDS]
        markers += [
            {"markers": "edges+centres", "edge_threshold": e, "centre_threshold": t}
            for e in EDGE_THRESHOLDS
            for t in CENTRE_THRESHOLDS
        ]
    return [
        {"fg_threshold": fg_t, **marker, "shrink": shrink}
        for shrink in SHRINKS
        for fg_t in FG_THRESHOLDS
        for marker in markers
    ]


def tuned_config(
    net: NucleiUNet,
    config: NetConfig,
    tiles: list[ValTile],
    precision: str,
    embed: Embed | None = None,
    flips: bool = False,
    workers: int | None = None,
) -> tuple[NetConfig, dict[str, float], list[dict[str, float]]]:
    """``config`` with the post-processing chosen on ``tiles`` for ``net`` (with
    ``flips``: its ``flips_postprocess``, chosen on the flip-averaged maps); the chosen
    setting's validation scores; every setting's scores. ``workers``: tiles scored at once
    (:func:`grid_scores`)."""
    maps = validation_maps(net, tiles, precision, embed, flips)
    chosen, table = choose_thresholds(maps, tiles, config.postprocess_for(flips), workers)
    tuned = replace(config, **{"flips_postprocess" if flips else "postprocess": chosen})
    return tuned, chosen_scores(table), table


def chosen_scores(table: list[dict[str, float]]) -> dict[str, float]:
    """The scores of the setting :func:`choose_thresholds` chose, read off its table by the
    same rule instead of post-processing every tile again."""
    setting_keys = {f.name for f in fields(PostprocessConfig)}
    return {k: v for k, v in table[_best_row(table)].items() if k not in setting_keys}
