"""The paper's training: adapters, mask decoder and nuclei decoder on SAM's embedding.

The fixed labels S of each tile come from :mod:`instasam.training.labels`. Each step
draws augmented crops; per crop
the adapted encoder feeds (a) the trained mask decoder, prompted with the crop's points,
whose masks learn S (L_S') and whose rule-filtered output S' gives the targets, and
(b) the nuclei decoder, which learns the foreground (L_B) and distance maps (L_D).
Crops are processed one at a time and their gradients accumulated to the batch size: on
a CPU that is as fast as a stacked batch and needs a quarter of the memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from instasam import IGNORE
from instasam.augment import apply_to_image, apply_to_labels, points_in_crop, random_transform
from instasam.config import InstaSAMConfig
from instasam.io.atomic import write_text_atomic
from instasam.losses import mask_loss, masked_distance_loss, total_loss
from instasam.metrics import compute_metrics, mean_metrics
from instasam.model.instasam import (
    InstaSAM,
    build_model,
    image_to_tensor,
    read_checkpoint,
    save_checkpoint,
)
from instasam.predict.tiles import predict_instances
from instasam.pseudo_labels.sam import (
    prompt_logits,
    window_labels,
)
from instasam.targets import hv_maps

LAST = "last.pt"
BEST = "model.pt"


@dataclass
class TrainingTile:
    """One training image with its points and fixed labels S."""

    stem: str
    image: np.ndarray
    points: np.ndarray
    fixed: np.ndarray  # S: IGNORE / 0 / k = nucleus of points[k - 1]
    box_sides: np.ndarray  # (N,) box side per point chosen when S was made (NaN: none)


@dataclass
class ValTile:
    stem: str
    image: np.ndarray
    labels: np.ndarray


@dataclass
class Crop:
    """An augmented crop: image, S resampled, and the points inside with their ids."""

    image: np.ndarray
    fixed: np.ndarray
    points: np.ndarray
    ids: np.ndarray
    box_sides: np.ndarray


# -- crops and losses ----------------------------------------------------------------------
def sample_crop(
    tile: TrainingTile, size: int, config: InstaSAMConfig, rng: np.random.Generator
) -> Crop:
    """One augmented crop of ``tile`` (image, S, points)."""
    transform = random_transform(tile.fixed.shape, size, config.augment, rng)
    points, index = points_in_crop(tile.points, transform)
    zoom = 1.0 / math.sqrt(abs(np.linalg.det(transform.matrix[:, :2])))
    return Crop(
        image=apply_to_image(tile.image, transform),
        fixed=apply_to_labels(tile.fixed, transform, fill=IGNORE),
        points=points,
        ids=index + 1,
        box_sides=tile.box_sides[index] * zoom,
    )


def targets_from_adapted(config: InstaSAMConfig) -> bool:
    choice = config.train.targets_from
    return config.train.pseudo == "sam" if choice == "auto" else choice == "adapted"


def crop_losses(
    model: InstaSAM, crop: Crop, config: InstaSAMConfig, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """The loss parts for one crop (``prompt``, ``fg``, ``dist``)."""
    encoded = model.encode(image_to_tensor(crop.image), adapt=True)
    maps = model.to_crop(model.nuclei_maps(encoded))[0]
    fixed = torch.from_numpy(crop.fixed).long()
    points = torch.from_numpy(crop.points).float()
    sides = torch.from_numpy(crop.box_sides).float()
    ids = torch.from_numpy(crop.ids).long()
    parts: dict[str, torch.Tensor] = {}
    if len(points) and config.loss.w_prompt > 0:
        k = min(len(points), config.train.max_prompts_per_crop)
        chosen = torch.from_numpy(rng.choice(len(points), size=k, replace=False))
        logits, _ = prompt_logits(
            model,
            encoded.embedding,
            points[chosen],
            config.pseudo_labels,
            frozen=False,
            box_sides=sides[chosen],
        )
        logits = model.to_crop(logits[:, None])[:, 0]
        target = (fixed[None] == ids[chosen, None, None]).float()
        weight = (fixed != IGNORE).float()[None].expand_as(target)
        parts["prompt"] = mask_loss(logits, target, weight)
    target_map = fixed
    if targets_from_adapted(config) and len(points):
        with torch.no_grad():
            logits, _ = prompt_logits(
                model,
                encoded.embedding,
                points,
                config.pseudo_labels,
                frozen=False,
                box_sides=sides,
            )
            probs = torch.sigmoid(model.to_crop(logits[:, None])[:, 0])
            target_map = window_labels(probs, ids, config.pseudo_labels)
            target_map[fixed == IGNORE] = IGNORE  # outside the tile: unknown
    target_np = target_map.numpy().astype(np.int32)
    weight = torch.from_numpy((target_np != IGNORE).astype(np.float32))
    fg = torch.from_numpy((target_np > 0).astype(np.float32))
    hv = torch.from_numpy(hv_maps(target_np, scaling=config.targets.hv_scaling))
    parts["fg"] = mask_loss(maps[:1], fg[None], weight[None])
    parts["dist"] = masked_distance_loss(maps[1:], hv, weight[None], kind=config.loss.dist_loss)
    return parts


# -- validation ----------------------------------------------------------------------------
def centre_crop(array: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return array
    h, w = array.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return array[y : y + size, x : x + size]


def validate(model: InstaSAM, tiles: list[ValTile], config: InstaSAMConfig) -> dict[str, float]:
    """Mean metrics of the current model on the validation tiles (centre crops)."""
    model.eval()
    results = []
    for tile in tiles:
        image = centre_crop(tile.image, config.train.val_crop)
        pred = predict_instances(model, image, config.predict, config.postprocess)
        results.append(compute_metrics(centre_crop(tile.labels, config.train.val_crop), pred))
    model.train()
    return mean_metrics(results)


# -- the loop ------------------------------------------------------------------------------
def trainable_parameters(model: InstaSAM) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimiser(model: InstaSAM, config: InstaSAMConfig):
    optimiser = torch.optim.AdamW(
        trainable_parameters(model), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=config.train.cosine_t_max, eta_min=config.train.eta_min
    )
    return optimiser, scheduler


def default_steps_per_epoch(tiles: list[TrainingTile], crop: int, batch: int) -> int:
    """Enough crops to cover the training tiles' area once."""
    area = sum(t.image.shape[0] * t.image.shape[1] for t in tiles)
    return max(1, math.ceil(area / (crop * crop) / batch))


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimiser steps completed in the current epoch
    global_step: int = 0
    best_aji: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    seconds: float = 0.0


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def _restore_rng(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])


def _save_last(run: Path, model, optimiser, scheduler, state: TrainState, rng, epoch_sums) -> None:
    save_checkpoint(
        run / LAST,
        model,
        optimiser=optimiser.state_dict(),
        scheduler=scheduler.state_dict(),
        train_state=state.__dict__,
        rng=_rng_state(rng),
        epoch_sums=epoch_sums,
    )


def _append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def train(
    tiles: list[TrainingTile],
    val_tiles: list[ValTile],
    run_dir: str | os.PathLike,
    config: InstaSAMConfig,
    model: InstaSAM | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[TrainState, dict[str, float]], None] | None = None,
) -> TrainState:
    """Train on ``tiles``; keep the best-validation checkpoint as ``RUN/model.pt``.

    Parameters
    ----------
    tiles : list of TrainingTile
        Training images with points and fixed labels (see :func:`load_fixed_labels`).
    val_tiles : list of ValTile
        Labelled validation images; without them the last epoch is kept as the model.
    run_dir : path
        Output folder: ``last.pt`` (resumable), ``model.pt`` (best), ``metrics.jsonl``,
        ``config.json``.
    config : InstaSAMConfig
        All settings.
    model : InstaSAM, optional
        A prebuilt model (e.g. the one that made the fixed labels).
    resume : bool
        Continue from ``RUN/last.pt`` (same config required).
    on_step : callable, optional
        Called after every optimiser step with the state and the step's losses.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tc = config.train
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = model or build_model(config)
    model.train()
    optimiser, scheduler = make_optimiser(model, config)
    state = TrainState()
    epoch_sums: dict[str, float] = {}
    if resume and (run / LAST).is_file():
        payload = read_checkpoint(run / LAST)
        if payload["config"] != config.to_dict():
            raise ValueError(f"{run / LAST}: saved with a different configuration; use a new --out")
        model.load_state_dict(payload["state"], strict=False)
        optimiser.load_state_dict(payload["optimiser"])
        scheduler.load_state_dict(payload["scheduler"])
        state = TrainState(**payload["train_state"])
        _restore_rng(rng, payload["rng"])
        epoch_sums = payload.get("epoch_sums", {})
    write_text_atomic(run / "config.json", json.dumps(config.to_dict(), indent=2))
    crop = model.crop_size
    steps = tc.steps_per_epoch or default_steps_per_epoch(tiles, crop, tc.batch_size)
    weights = np.array([t.image.shape[0] * t.image.shape[1] for t in tiles], dtype=np.float64)
    weights /= weights.sum()
    while state.epoch < tc.epochs:
        started = time.perf_counter()
        bar = tqdm(
            total=steps,
            initial=state.step_in_epoch,
            desc=f"epoch {state.epoch + 1}/{tc.epochs}",
            disable=not progress,
            unit="step",
        )
        while state.step_in_epoch < steps:
            optimiser.zero_grad(set_to_none=True)
            losses: dict[str, float] = {}
            for _ in range(tc.batch_size):
                tile = tiles[rng.choice(len(tiles), p=weights)]
                parts = crop_losses(model, sample_crop(tile, crop, config, rng), config, rng)
                loss = total_loss(parts, config.loss) / tc.batch_size
                loss.backward()
                for name, value in {"loss": loss * tc.batch_size, **parts}.items():
                    losses[name] = losses.get(name, 0.0) + value.item() / tc.batch_size
            optimiser.step()
            state.step_in_epoch += 1
            state.global_step += 1
            for name, value in losses.items():
                epoch_sums[name] = epoch_sums.get(name, 0.0) + value
            bar.set_postfix(loss=f"{losses['loss']:.3f}")
            bar.update()
            if state.step_in_epoch % tc.checkpoint_every == 0 and state.step_in_epoch < steps:
                state.seconds += time.perf_counter() - started
                started = time.perf_counter()
                _save_last(run, model, optimiser, scheduler, state, rng, epoch_sums)
            if on_step is not None:  # after the checkpoint: a callback that stops loses nothing
                on_step(state, losses)
        bar.close()
        scheduler.step()
        state.epoch += 1
        record = {
            "epoch": state.epoch,
            "step": state.global_step,
            "lr": optimiser.param_groups[0]["lr"],
            **{name: total / steps for name, total in epoch_sums.items()},
        }
        epoch_sums = {}
        state.step_in_epoch = 0
        improved = False
        # A run shorter than the paper's validation start still validates its last epoch,
        # so that model.pt is always the best validated model when validation data is given.
        first_val = min(tc.val_from_epoch, tc.epochs)
        due = state.epoch % tc.val_every == 0 or state.epoch == tc.epochs
        if val_tiles and state.epoch >= first_val and due:
            val = validate(model, val_tiles, config)
            record["val"] = val
            if val["aji"] > state.best_aji:
                state.best_aji, state.best_epoch = val["aji"], state.epoch
                state.epochs_without_improvement = 0
                improved = True
            else:
                state.epochs_without_improvement += 1
        elif not val_tiles:
            improved = True  # no validation data: the latest model is the model
        state.seconds += time.perf_counter() - started
        record["seconds"] = round(state.seconds, 1)
        if improved:
            save_checkpoint(run / BEST, model, epoch=state.epoch, val=record.get("val"))
        _save_last(run, model, optimiser, scheduler, state, rng, epoch_sums)
        _append_log(run, record)
        if tc.patience is not None and state.epochs_without_improvement >= tc.patience:
            break
    if not (run / BEST).is_file():
        save_checkpoint(run / BEST, model, epoch=state.epoch)
    return state
