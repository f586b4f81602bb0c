"""Validation on whole tiles, and post-processing thresholds chosen on them.

The network is fully convolutional and a 1000x1000 tile is one forward pass, so validation
sees what prediction will see (no centre crops). Its maps are kept so the watershed's two
thresholds can be chosen on the validation tiles once training ends, without the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from instasam.config import PostprocessConfig
from instasam.metrics import compute_metrics, mean_metrics
from instasam.model.sam_embedding import Embed
from instasam.model.unet import NucleiUNet
from instasam.postprocess import instances_from_maps
from instasam.predict.tiles import predict_net_maps

# Foreground x marker thresholds tried; the authors' (0.7, 0.5) and HoVer-Net's
# (0.5, 0.4) are both in the grid.
FG_THRESHOLDS = (0.4, 0.5, 0.6, 0.7)
EDGE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


@dataclass
class ValTile:
    stem: str
    image: np.ndarray
    labels: np.ndarray  # ground-truth instances


def validation_maps(
    net: NucleiUNet, tiles: list[ValTile], precision: str, embed: Embed | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The network's (foreground, distance) maps of each validation tile."""
    was_training = net.training
    net.eval()
    maps = [predict_net_maps(net, t.image, precision, embed=embed) for t in tiles]
    net.train(was_training)
    return maps


def score_maps(
    maps: list[tuple[np.ndarray, np.ndarray]], tiles: list[ValTile], config: PostprocessConfig
) -> dict[str, float]:
    """Mean metrics of the post-processed maps against the tiles' ground truth."""
    results = [
        compute_metrics(t.labels, instances_from_maps(fg, hv, config))
        for (fg, hv), t in zip(maps, tiles, strict=True)
    ]
    return mean_metrics(results)


def choose_thresholds(
    maps: list[tuple[np.ndarray, np.ndarray]], tiles: list[ValTile], base: PostprocessConfig
) -> tuple[PostprocessConfig, list[dict[str, float]]]:
    """The (foreground, marker) thresholds with the best validation AJI, and every score."""
    table = []
    best, best_aji = base, -1.0
    for fg_t in FG_THRESHOLDS:
        for edge_t in EDGE_THRESHOLDS:
            config = replace(base, fg_threshold=fg_t, edge_threshold=edge_t)
            scores = score_maps(maps, tiles, config)
            table.append({"fg_threshold": fg_t, "edge_threshold": edge_t, **scores})
            if scores["aji"] > best_aji:
                best, best_aji = config, scores["aji"]
    return best, table
