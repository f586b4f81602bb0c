"""The nuclei network's optimiser loop: warm-up + cosine, EMA, validation, resume.

Every step draws ``batch_size`` augmented crops, runs the network once on the stacked batch
(bf16 autocast where the CPU has it) and applies the paper's losses on the non-ignored
pixels: BCE + soft IoU on the foreground, ``w_dist`` x SmoothL1 on the distance maps, and
``w_grad`` x HoVer-Net's gradient loss on them where that weight is above 0.
An exponential moving average of the weights is what validation scores and what is saved.
When training ends the watershed thresholds and the outline shrink are chosen on the
validation tiles with the best model, and saved with it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from instasam.config import NetConfig, NetTrainConfig
from instasam.io.atomic import atomic_path, write_text_atomic
from instasam.losses import (
    mask_loss,
    masked_bce,
    masked_distance_loss,
    masked_gradient_loss,
    total_loss,
)
from instasam.model.sam_embedding import Embed
from instasam.model.unet import NucleiUNet, net_from_payload, save_net
from instasam.training.crops import CropTargets, LabelledTile, training_batch
from instasam.training.precision import autocast, resolve_precision
from instasam.training.validation import ValTile, score_maps, tuned_config, validation_maps

Batch = tuple[np.ndarray, list[CropTargets], np.ndarray | None]

LAST = "last.pt"
BEST = "model.pt"
# The share of a time budget kept for what is not an optimiser step (validation, the final
# threshold choice, loading): 2.6-3.4 % of the wall time of the recipe's CPU runs
# (benchmarks/results/schedule/{fill5,rim3}_*.json, wall_seconds against train_seconds).
# Kept wider, since the pace of a step drifts (another job starts on the machine).
BUDGET_RESERVE = 0.1


@dataclass
class NetTrainState:
    step: int = 0
    best_aji: float = -1.0
    best_step: int = -1
    seconds: float = 0.0
    steps: int | None = None  # None: the config's; set when fitted to its time budget


def fitted_steps(
    config: NetTrainConfig, step: int, seconds_so_far: float, seconds_per_step: float
) -> int:
    """The run's step count under ``config.max_minutes``: the steps that fit in what is
    left of the budget (less :data:`BUDGET_RESERVE`) at ``seconds_per_step``, never more
    than ``config.steps`` nor fewer than the ``step`` already taken."""
    if config.max_minutes is None:
        return config.steps
    usable = config.max_minutes * 60.0 * (1.0 - BUDGET_RESERVE) - seconds_so_far
    more = int(usable // seconds_per_step) if usable > 0 and seconds_per_step > 0 else 0
    return max(step, min(config.steps, step + more))


def learning_rate(step: int, config: NetTrainConfig) -> float:
    """Linear warm-up, then a cosine down to 1 % of ``lr``.

    The warm-up lasts ``warmup_steps``, at most a tenth of the run (short fine-tuning runs).
    """
    warmup = min(config.warmup_steps, config.steps // 10)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(1, config.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = config.lr * 1e-2
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def update_ema(ema: NucleiUNet, net: NucleiUNet, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * net``, with ``d`` ramped up over the first steps."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.mul_(d).add_(p.detach(), alpha=1.0 - d)
    for e, b in zip(ema.buffers(), net.buffers(), strict=True):
        e.copy_(b)


def freeze_batch_norm(net: torch.nn.Module) -> None:
    """Keep the BatchNorm statistics a network was trained with (fine-tuning).

    A few tiles of a new tissue give noisy batch statistics; updating the running means
    with them moved the shipped model's normalisation away from what its weights expect.
    """
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def batch_losses(
    net: NucleiUNet,
    images: np.ndarray,
    targets: list[CropTargets],
    config: NetConfig,
    precision: str,
    embeddings: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """The loss parts (``fg``, ``dist``, and ``grad`` where weighted) of one batch of
    crops (and their SAM embeddings, for the fused network)."""
    device = next(net.parameters()).device

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)

    x = tensor(images).permute(0, 3, 1, 2).float()
    sam = tensor(embeddings) if embeddings is not None else None
    with autocast(precision, device.type):
        out = net(x, sam)
    out = out.float()
    fg = tensor(np.stack([t.foreground for t in targets]))
    hv = tensor(np.stack([t.distance for t in targets]))
    weight = tensor(np.stack([t.weight for t in targets]))
    parts = {
        "fg": mask_loss(out[:, 0], fg, weight),
        "dist": masked_distance_loss(out[:, 1:3], hv, weight[:, None], kind=config.loss.dist_loss),
    }
    if config.loss.w_grad > 0:
        parts["grad"] = masked_gradient_loss(out[:, 1:3], hv, fg, weight)
    if out.shape[1] > 3:  # a centre head, taught by the points
        centres = tensor(np.stack([t.centres for t in targets]))
        inside = tensor(np.stack([t.inside for t in targets]))
        parts["centre"] = masked_bce(out[:, 3], centres, inside)
    return parts


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless training batches drawn in a loader's worker processes.

    Each worker has its own generator, seeded by the run's seed, the step the source was
    started at and the worker's number, so a run is repeatable for a given worker count but
    draws other crops than a run with none.
    """

    def __init__(self, tiles: list[LabelledTile], config: NetConfig, start: int) -> None:
        self.tiles, self.config, self.start = tiles, config, start

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.config.train.seed, self.start, worker])
        yield from _endless_batches(self.tiles, self.config, rng)


def _endless_batches(
    tiles: list[LabelledTile], config: NetConfig, rng: np.random.Generator
) -> Iterator[Batch]:
    while True:
        yield training_batch(tiles, config.train, config.augment, config.targets.hv_scaling, rng)


def _as_drawn(batch: Batch) -> Batch:
    return batch


def training_batches(
    tiles: list[LabelledTile],
    config: NetConfig,
    rng: np.random.Generator,
    workers: int = 0,
    start: int = 0,
) -> Iterator[Batch]:
    """Training batches, drawn here from ``rng`` or by ``workers`` processes.

    Drawing and augmenting crops takes ~0.1-0.2 s a batch on one core: on a CPU that is a
    small part of a step, but it would leave a GPU idle most of the time.
    """
    if workers <= 0:
        yield from _endless_batches(tiles, config, rng)
    loader = torch.utils.data.DataLoader(
        _WorkerBatches(tiles, config, start),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_drawn,
        prefetch_factor=4,
    )
    yield from loader


def train_net(
    tiles: list[LabelledTile],
    val_tiles: list[ValTile],
    run_dir: str | os.PathLike,
    config: NetConfig,
    resume: bool = False,
    progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[NetTrainState, dict[str, float]], None] | None = None,
    embed: Embed | None = None,
    device: str = "cpu",
    workers: int = 0,
) -> NetTrainState:
    """Train the nuclei network; ``RUN/model.pt`` is the best-validation EMA model.

    Parameters
    ----------
    tiles : list of LabelledTile
        Training images with their fixed labels (IGNORE where unknown), and their points
        where the network has a centre head.
    val_tiles : list of ValTile
        Validation images with ground truth; validated every ``val_every`` steps and at
        the end. Without them the final EMA model is saved with the configured thresholds.
    run_dir : path
        ``last.pt`` (resumable), ``model.pt``, ``metrics.jsonl``, ``config.json``,
        ``thresholds.json``.
    config : NetConfig
        All settings.
    resume : bool
        Continue from ``RUN/last.pt`` (same configuration required).
    init_state : dict, optional
        Starting weights (fine-tuning from a trained network).
    on_step : callable, optional
        Called after every optimiser step with the state and the step's losses.
    embed : callable, optional
        The fused network's SAM embedding of a whole image (validation tiles); the
        training tiles carry theirs.
    device : str
        ``"cpu"`` or ``"cuda"``: where the network trains. Checkpoints are read back onto
        the CPU first, so a run started on one can resume on the other.
    workers : int
        Processes that draw the training crops (0: this one, repeatable across resumes).
    """
    if config.net.centre_head and any(t.points is None for t in tiles):
        raise ValueError("a network with a centre head learns from points: give every tile them")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tc = config.train
    precision = resolve_precision(tc.precision, device=device)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    net = NucleiUNet(config.net)
    if init_state is not None:
        net.load_state_dict(init_state, strict=True)
    net.to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimiser = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    state = NetTrainState()
    if resume and (run / LAST).is_file():
        state = _restore(run / LAST, config, net, ema, optimiser, rng)
    write_text_atomic(run / "config.json", json.dumps(config.to_dict(), indent=2))
    net.train()
    if init_state is not None:
        freeze_batch_norm(net)
    ema.eval()
    schedule = replace(tc, steps=state.steps or tc.steps)  # state.steps: fitted to a budget
    bar = tqdm(total=schedule.steps, initial=state.step, disable=not progress, unit="step")
    started = time.perf_counter()
    fit = tc.max_minutes is not None and state.steps is None
    probe = _BudgetProbe(state.step) if fit else None
    sums: dict[str, float] = {}
    count = 0
    batches = training_batches(tiles, config, rng, workers, state.step)
    while state.step < schedule.steps:
        images, targets, sam = next(batches)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(state.step, schedule)
        parts = batch_losses(net, images, targets, config, precision, sam)
        loss = total_loss(parts, config.loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        update_ema(ema, net, tc.ema_decay, state.step)
        state.step += 1
        losses = {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        bar.set_postfix(loss=f"{losses['loss']:.3f}", best=f"{state.best_aji:.3f}")
        bar.update()
        if probe is not None and probe.done(state.step, tc.budget_probe_steps):
            so_far = state.seconds + time.perf_counter() - started
            pace = probe.seconds_per_step(state.step)
            state.steps = fitted_steps(tc, state.step, so_far, pace)
            schedule, probe, bar.total = replace(tc, steps=state.steps), None, state.steps
            fitted = {"fitted_steps": state.steps, "seconds_per_step": round(pace, 3)}
            _append_log(run, {"step": state.step, **fitted})
        due_val = state.step % tc.val_every == 0 or state.step == schedule.steps
        if due_val or state.step % tc.checkpoint_every == 0:
            state.seconds += time.perf_counter() - started
            started = time.perf_counter()
            record = {"step": state.step, "lr": optimiser.param_groups[0]["lr"]}
            record |= {name: total / count for name, total in sums.items()}
            if due_val and val_tiles:
                record["val"] = _validate(ema, val_tiles, config, precision, state, run, embed)
                started = time.perf_counter()  # validation is not training time
            record["seconds"] = round(state.seconds, 1)
            _save_last(run / LAST, config, net, ema, optimiser, rng, state)
            _append_log(run, record)
            sums, count = {}, 0
        if on_step is not None:
            on_step(state, losses)
    bar.close()
    _finish(run, config, ema, val_tiles, precision, state, embed, device)
    return state


class _BudgetProbe:
    """Seconds per step, timed over the steps after the first one this process takes (the
    first also builds the kernels and starts the crop workers)."""

    def __init__(self, step: int) -> None:
        self.first, self.started = step + 1, 0.0

    def done(self, step: int, probe_steps: int) -> bool:
        if step == self.first:
            self.started = time.perf_counter()
        return step >= max(probe_steps, self.first + 1)

    def seconds_per_step(self, step: int) -> float:
        return (time.perf_counter() - self.started) / (step - self.first)


def _validate(
    ema: NucleiUNet,
    val_tiles: list[ValTile],
    config: NetConfig,
    precision: str,
    state: NetTrainState,
    run: Path,
    embed: Embed | None,
) -> dict[str, float]:
    maps = validation_maps(ema, val_tiles, precision, embed)
    scores = score_maps(maps, val_tiles, config.postprocess)
    if scores["aji"] > state.best_aji:
        state.best_aji, state.best_step = scores["aji"], state.step
        save_net(run / BEST, ema, config, step=state.step, val=scores)
    return scores


def _finish(
    run: Path,
    config: NetConfig,
    ema: NucleiUNet,
    val_tiles: list[ValTile],
    precision: str,
    state: NetTrainState,
    embed: Embed | None,
    device: str,
) -> None:
    """Save the final model; with validation data, choose its thresholds there.

    Checkpoints are ranked during training at the default thresholds, where weights a few
    hundred steps apart can differ by noise alone (one run kept step 500 of 1,500 by 0.0009
    AJI, and its own best thresholds then scored 2.2 AJI below those of a network trained
    the same way). So when the best-ranked checkpoint is not the final EMA weights, both
    get their thresholds chosen and the better of the two at its own setting is kept.
    """
    if not val_tiles:
        save_net(run / BEST, ema, config, step=state.step)
        return
    payload = torch.load(run / BEST, map_location="cpu", weights_only=False)
    best, _ = net_from_payload(payload, run / BEST)
    candidates = [(payload.get("step"), best, {"val_default": payload["val"]})]
    if payload.get("step") != state.step:
        candidates.append((state.step, ema, {}))
    choices = [
        _TunedCandidate(
            step, net, extra, *tuned_config(net.to(device), config, val_tiles, precision, embed)
        )
        for step, net, extra in candidates
    ]
    kept = max(choices, key=lambda c: (c.scores["aji"], c.step))
    save_net(run / BEST, kept.net, kept.tuned, step=kept.step, val=kept.scores, **kept.extra)
    write_text_atomic(run / "thresholds.json", json.dumps(kept.table, indent=1))
    compared = [{"step": c.step, "val_aji_tuned": c.scores["aji"]} for c in choices]
    write_text_atomic(run / "checkpoint_choice.json", json.dumps(compared, indent=1))
    state.best_aji, state.best_step = kept.scores["aji"], kept.step


class _TunedCandidate(NamedTuple):
    """A checkpoint the run may keep, with its thresholds chosen on the val tiles."""

    step: int
    net: NucleiUNet
    extra: dict[str, Any]
    tuned: NetConfig
    scores: dict[str, float]
    table: list[dict[str, float]]


def _save_last(
    path: Path,
    config: NetConfig,
    net: NucleiUNet,
    ema: NucleiUNet,
    optimiser: torch.optim.Optimizer,
    rng: np.random.Generator,
    state: NetTrainState,
) -> None:
    payload = {
        "config": config.to_dict(),
        "net": net.state_dict(),
        "ema": ema.state_dict(),
        "optimiser": optimiser.state_dict(),
        "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
        "state": state.__dict__,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _restore(
    path: Path,
    config: NetConfig,
    net: NucleiUNet,
    ema: NucleiUNet,
    optimiser: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> NetTrainState:
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if payload["config"] != config.to_dict():
        raise ValueError(f"{path}: saved with a different configuration; use a new --out")
    net.load_state_dict(payload["net"])
    ema.load_state_dict(payload["ema"])
    optimiser.load_state_dict(payload["optimiser"])
    rng.bit_generator.state = payload["rng"]["numpy"]
    torch.set_rng_state(payload["rng"]["torch"])
    return NetTrainState(**payload["state"])


def _append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
