"""Typed configuration. The paper's values are the defaults, and this is the one place they live.

Numbers come from Nam et al., MICCAI 2024 and the authors' code release (see
``../shared/docs/method.md``); where the two differ the field's comment says which one
the default follows and the other is one argument away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Pseudo instance labels from point prompts (Eq. 2-4)."""

    delta: float = 0.5  # probability that counts as "claims the pixel"
    epsilon: float = 0.3  # entropy above which a pixel is ignored
    n_negatives: int = 4  # negative points per prompt, drawn from the other points
    # Paper: per-pixel rule. Authors' code: drop a whole instance that overlaps another mask.
    reject_overlapping_instances: bool = False
    # The rule F (pixels claimed by two masks are ignored); False only for the ablation.
    # The entropy rule H is switched off with epsilon = inf.
    overlap_rule: bool = True
    # How each nucleus is prompted. "auto": the backbone's own choice - boxes for
    # LiteMedSAM (trained with boxes only: adding its untrained point prompts lowered the
    # mask IoU with ground truth from 0.70 to 0.64, and the 4 negatives to 0.50, measured
    # on 8 MoNuSeg crops), the point plus negatives for SAM ViT (the paper).
    prompt: Literal["auto", "box", "points", "box+points"] = "auto"
    # Box side per nucleus, in pixels of the H&E tile: every candidate is decoded and each
    # nucleus keeps the one with the highest predicted IoU ("iou"), the lowest mean
    # entropy ("entropy"), or always ``fixed_box_size`` ("fixed"). On 8 MoNuSeg crops of
    # 4 organs (nucleus sides 11-39 px) per-nucleus "iou" over these four sizes gave a
    # mean mask IoU of 0.70, against 0.62 for the best single size used everywhere (32)
    # and 0.69 for the best size picked per crop with hindsight.
    box_sizes: tuple[int, ...] = (12, 20, 32, 48)
    box_selection: Literal["iou", "entropy", "fixed"] = "iou"
    fixed_box_size: int = 32
    # Decode each prompt on a window of the embedding around it, this many tile pixels
    # wide (None: the whole embedding, exactly as SAM). A nucleus spans a few tokens and the
    # decoder's cost grows with the tokens it attends to: on 8 MoNuSeg crops a 64-px window
    # (16 of LiteMedSAM's 64 tokens) gave mean mask IoU 0.704 against 0.700 for the whole
    # embedding, at 0.6 s instead of 21 s per crop (4 box sizes x ~40 nuclei).
    decoder_window: int | None = 64
    tile_overlap: int = 64  # pixels shared by neighbouring windows when labelling a tile
    seed: int = 0


@dataclass(frozen=True)
class VoronoiConfig:
    """Cluster + Voronoi labels (Qu et al., MIDL 2019 / TMI 2020), the point-only baseline.

    Defaults are Qu et al.'s: the paper describes the steps, the numbers are those of their
    code release (``prepare_data.py`` of huiqu18/WeaklySegPointAnno). Not theirs: the fields
    marked "ours" and the default of ``cluster_roles``. See
    :mod:`instasam.pseudo_labels.voronoi`.
    """

    distance_clip: float = 20.0  # px; the distance-to-nearest-point feature is clipped here
    colour_scale: float = 0.1  # RGB (0-255) times this: RGB / 10, a range like the distance's
    # Which k-means cluster is which. "distance": nuclei = smallest mean distance feature,
    # background = largest (issue 4's rule). "points": nuclei = the cluster holding
    # most point pixels, background = of the other two, the one with fewest pixels within
    # ``roles_radius`` of a point (the authors' code). Same nuclei cluster on all 16 Kumar
    # training tiles; "distance" picked a purer background (precision 0.947 vs 0.905).
    cluster_roles: Literal["points", "distance"] = "distance"
    roles_radius: float = 5.0  # px, for "points" (Qu et al.'s code: points dilated by disk(5))
    point_radius: float = 2.0  # Voronoi label: pixels this close to a point are nucleus
    min_nucleus_area: int = 30  # px; smaller nuclei-cluster components are dropped
    # Refinement of the nuclei cluster inside each Voronoi cell: dilate by a disk of this
    # radius, fill holes, erode by a disk of ``refine_erosion`` (a closing that also
    # shrinks the nucleus by 2 px).
    refine_dilation: float = 5.0
    refine_erosion: float = 7.0
    background_margin: float = 10.0  # px; no background pixel this close to a point
    # Ours (instance form): a cell's nucleus component that misses its point is kept only
    # when it comes this close to it (px); farther ones are IGNORE.
    max_component_gap: float = 10.0
    n_fit_pixels: int = 50_000  # ours: k-means is fitted on this many random pixels
    n_init: int = 10  # k-means++ restarts, best inertia kept (scikit-learn's old default)
    seed: int = 0


@dataclass(frozen=True)
class AdapterConfig:
    """SAM-Adapter style prompts added before every transformer block (Eq. 1)."""

    enabled: bool = True
    reduction: int = 32  # hidden width = block width / 32
    hfc_mask_ratio: float = 0.25  # area share of the zeroed low-frequency square


@dataclass(frozen=True)
class NucleiDecoderConfig:
    """Prompt-free decoder for the foreground and the two distance maps."""

    use_early_features: bool = True  # HQ-style fusion of an early encoder stage
    init_from_mask_decoder: bool = True  # start its transformer from SAM's decoder weights
    # How the two distance maps are read out of the upscaled embedding. "hypernetwork":
    # like the foreground, one token whose MLP gives per-image channel weights (SAM's and
    # the authors' form). "conv": a small dilated convolution branch (ours, default). A
    # per-image weighted sum of SAM's feature channels hardly makes a map that runs from -1
    # to 1 across every nucleus. Measured on a 512-px Kumar test crop (target std 0.53
    # inside nuclei) after Kumar runs with hypernetwork heads: L1 loss, 8 epochs: std
    # 0.001; SmoothL1, 6 epochs: std 0.07, correlation with the target 0.49. On one crop
    # with frozen features, 60 steps: correlation 0.52 (hypernetwork) vs 0.84 (conv).
    distance_head: Literal["conv", "hypernetwork"] = "conv"


@dataclass(frozen=True)
class TargetConfig:
    """Training targets derived from an instance map."""

    # "hovernet": each side of a nucleus scaled to [-1, 1] (HoVer-Net);
    # "positive_max": divided by the positive maximum only (the authors' code).
    hv_scaling: Literal["hovernet", "positive_max"] = "hovernet"


@dataclass(frozen=True)
class PostprocessConfig:
    """HoVer-Net style watershed on (foreground probability, distance maps).

    Defaults follow the authors' code; :meth:`hovernet` gives HoVer-Net's thresholds.
    """

    fg_threshold: float = 0.7
    edge_threshold: float = 0.5  # "marker" threshold on the normalised Sobel edge map
    sobel_ksize: int = 21
    min_area: int = 20  # objects smaller than this (pixels) are removed
    min_marker_area: int = 10
    marker_opening: int = 2  # radius of the disk used to open the marker mask
    smoothing_sigma: float = 1.0  # Gaussian on the edge-weighted distance before watershed
    # A foreground component without a marker: kept as one object (True) or dropped, as
    # HoVer-Net and the authors' code do (False).
    keep_unmarked: bool = True
    # Pixels taken off every nucleus's outline after the watershed (0: none, as HoVer-Net
    # and the authors). A network trained on SAM's masks draws nuclei larger than the
    # MoNuSeg annotators (benchmarks/size_bias.py); a threshold that also decides what is
    # detected cannot correct that, a shrink chosen on the validation tiles can.
    shrink: int = 0
    # Ours, for a network with a centre head (NucleiNetConfig.centre_head): "edges" seeds
    # the watershed with the cores the distance maps' edges leave (HoVer-Net); "centres"
    # with the peaks of the predicted centre map, one per nucleus found, at least
    # ``centre_distance`` px apart and of probability ``centre_threshold`` or more;
    # "edges+centres" with the edges' cores, each core that holds two or more peaks split
    # into them.
    markers: Literal["edges", "centres", "edges+centres"] = "edges"
    centre_threshold: float = 0.3
    centre_distance: int = 4

    @classmethod
    def hovernet(cls) -> PostprocessConfig:
        return cls(fg_threshold=0.5, edge_threshold=0.4, min_area=10)


@dataclass(frozen=True)
class LossConfig:
    """L = w_prompt * L_S' + w_fg * L_B + w_dist * L_D + w_grad * L_G."""

    w_prompt: float = 1.0
    w_fg: float = 1.0
    w_dist: float = 5.0
    # Ours (HoVer-Net's MSGE; the paper has none): the squared error of the distance maps'
    # derivatives over nucleus pixels (``losses.masked_gradient_loss``). Nuclei networks
    # only (:func:`nuclei_network_losses` turns it on for them); 0 leaves it out.
    w_grad: float = 0.0
    # Paper: L1. Authors' code: SmoothL1, our default. Measured on a 256-px MoNuSeg crop,
    # nuclei decoder alone on frozen LiteMedSAM features, 60 AdamW steps at 1e-4: with L1
    # the distance maps never left 0 (L1 0.0776 -> 0.0778, the loss of predicting 0: the
    # 90 % of pixels outside nuclei pull every pixel back with the same force), with
    # SmoothL1 the loss fell by a third (0.0242 -> 0.0154). A Kumar run trained with L1
    # (and hypernetwork distance heads) predicted flat distance maps.
    dist_loss: Literal["l1", "smooth_l1"] = "smooth_l1"
    # Ours: BCE of a centre head's map against Gaussians at the points (nuclei networks
    # with NucleiNetConfig.centre_head only).
    w_centre: float = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentations, applied to image and labels together."""

    scale_range: tuple[float, float] = (0.8, 1.25)
    hflip_p: float = 0.5
    affine_p: float = 0.3
    rot90_p: float = 0.5
    crop_size: int | None = None  # None: the backbone's own (224 for SAM ViT, 256 LiteMedSAM)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and schedule."""

    backbone: str = "litemedsam"
    pseudo: Literal["sam", "cv", "gt"] = "sam"
    lr: float = 1e-4
    weight_decay: float = 1e-2  # AdamW's default
    cosine_t_max: int = 20  # epochs; stepped once per epoch (the authors stepped per iteration)
    eta_min: float = 1e-7
    batch_size: int = 4  # paper; the authors' code used 1
    epochs: int = 100
    steps_per_epoch: int | None = None  # None: one pass over the training crops
    val_from_epoch: int = 30
    val_every: int = 1
    patience: int | None = None  # epochs without a better val AJI before stopping
    train_mask_decoder: bool = True  # authors' code; pseudo labels use a frozen copy
    seed: int = 0
    num_threads: int | None = None
    mpp: float | None = 0.25  # microns per pixel of the training images (MoNuSeg, 40x)
    # Nuclei per crop whose prompt masks enter L_S' (all of them still shape S').
    max_prompts_per_crop: int = 16
    # Where the foreground/distance targets come from: "adapted" = S' (the paper, for SAM
    # pseudo labels); "fixed" = the fixed labels S themselves (used for "cv" and "gt").
    targets_from: Literal["auto", "adapted", "fixed"] = "auto"
    val_crop: int | None = 512  # validate on a centred crop of each val tile (None: whole)
    checkpoint_every: int = 10  # optimiser steps between resumable checkpoints


@dataclass(frozen=True)
class PredictConfig:
    """Sliding-window inference."""

    overlap: int = 80  # pixels shared by neighbouring windows (the paper: 80 of 224)
    batch_size: int = 4


@dataclass(frozen=True)
class NucleiNetConfig:
    """The full-resolution nuclei network (:mod:`instasam.model.unet`); ours, not the paper's."""

    widths: tuple[int, ...] = (24, 48, 96, 192)  # channels per U-Net level
    # The fused design: a SAM backbone's frozen whole-image embedding (one cell per 4x4
    # px) projected and added to the U-Net's features at level ``fusion_level`` (1/4
    # resolution at level 2). None: the image-only network, which ships.
    sam_backbone: str | None = None
    fusion_level: int = 2
    # Ours: a fourth output, the probability of a nucleus centre, learned from the points
    # themselves (a Gaussian of NetTrainConfig.centre_sigma at each), which can seed the
    # watershed with one marker per nucleus (PostprocessConfig.markers). Trained with it,
    # both seeds of the recipe rose on the Kumar val tiles (AJI 58.1 / 58.5 -> 59.6 / 59.3
    # with the markers validation chose; README). Checkpoints saved before it existed
    # load without it.
    centre_head: bool = True


@dataclass(frozen=True)
class NetTrainConfig:
    """Training of the nuclei network on fixed labels (S, cluster+Voronoi or ground truth).

    Ours: the paper trains SAM's adapters and decoders (:class:`TrainConfig`). Budget and
    rates were chosen on the Kumar validation tiles (see the README's results).
    """

    # "model": a trained network's predictions checked against the points (self-training).
    labels: Literal["sam", "cv", "gt", "model"] = "sam"
    steps: int = 1500
    batch_size: int = 8
    crop_size: int = 256
    lr: float = 2e-3
    # With --init the weights are already good: on the demo crop, 30 steps at 5e-4 took the
    # seed-0 model from AJI 51.4 to 43.3, at 1e-4 to 48.5 (BatchNorm statistics frozen).
    finetune_lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100  # linear warm-up, then cosine to ``lr * 1e-2``
    ema_decay: float = 0.998  # validation and the saved model use the averaged weights
    val_every: int = 250  # optimiser steps; validation runs whenever validation data is given
    checkpoint_every: int = 50
    # Stain and colour variation: haematoxylin/eosin/DAB optical densities scaled by
    # 1 +- ``hed_scale`` and shifted by +- ``hed_shift``; brightness/contrast +- ``intensity``.
    hed_scale: float = 0.2
    hed_shift: float = 0.03
    intensity: float = 0.15
    # Lost detail: with probability ``downscale_p`` a crop is shrunk by a factor drawn from
    # ``downscale_range`` and enlarged back (bilinear both ways), as a tile scanned at a
    # lower magnification looks once resampled to the training's (``--mpp``); the nuclei
    # keep their size, so the labels are untouched. 0: off (no random draw is made).
    downscale_p: float = 0.0
    downscale_range: tuple[float, float] = (0.45, 0.9)
    # A point whose nucleus S left unlabelled says there IS a nucleus there: its
    # neighbourhood (this radius, px) is ignored instead of taught as background.
    unlabelled_point_radius: float = 8.0
    # With a radius > 0, a disk that big at such a point is taught as its nucleus (the rest
    # of the ignored disk stays ignored); 0: the point's neighbourhood is only ignored.
    unlabelled_point_fill: float = 0.0
    # Ignored pixels within this many px of one S nucleus (its uncertain rim) taught as
    # background instead (``refine.background_beside_nuclei``); 0: left ignored.
    ignored_rim_background: float = 0.0
    centre_sigma: float = 3.0  # px; the Gaussian a centre head learns at each point
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the CPU has it
    seed: int = 0
    mpp: float | None = 0.25  # microns per pixel of the training images (MoNuSeg, 40x)
    # A wall-clock budget for the run (steps, validation and the threshold choice), minutes;
    # None: none. A CPU without native bf16 takes ~3x longer a step (README), so after
    # ``budget_probe_steps`` timed steps the run's step count is cut to what fits, never
    # raised, and the cosine schedule is stretched over that count so it still ends low.
    max_minutes: float | None = None
    budget_probe_steps: int = 20


@dataclass(frozen=True)
class StainConfig:
    """Stain standardisation at prediction time (ours; the paper has none).

    Each image's haematoxylin and eosin optical densities (the 95th percentile of each,
    :mod:`instasam.stain`) are scaled toward ``reference``, those of the tiles the network
    was trained on (the median over them, which training saves), by the fraction
    ``strength`` of the way in log terms, each factor kept within ``1 / max_factor ..
    max_factor``. ``strength`` 0.25 was chosen on the Kumar and TNBC validation tiles with
    the shipped model (``benchmarks/stain_standardise.py``, README). ``reference`` None or
    ``strength`` 0: off.
    """

    reference: tuple[float, float] | None = None  # (haematoxylin, eosin)
    strength: float = 0.25
    max_factor: float = 2.0

    @property
    def active(self) -> bool:
        """Whether images are standardised at all (a reference and a strength above 0)."""
        return self.reference is not None and self.strength > 0


def nuclei_network_losses() -> LossConfig:
    """The paper's weights and HoVer-Net's gradient loss at its weight, 1: trained from the
    start with it, both seeds of the recipe rose on the Kumar val tiles (AJI 57.2 / 57.5 ->
    58.1 / 58.5) and held their test scores (README, ``benchmarks/schedule_sweep.py``)."""
    return LossConfig(w_grad=1.0)


@dataclass(frozen=True)
class NetConfig:
    """Everything a nuclei-network run needs, saved in its checkpoints."""

    net: NucleiNetConfig = field(default_factory=NucleiNetConfig)
    train: NetTrainConfig = field(default_factory=NetTrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=nuclei_network_losses)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    # The post-processing for predictions with test-time flips (``--flips``), chosen on
    # the validation tiles' flip-averaged maps, which are smoother than one pass's; None:
    # ``postprocess`` serves both.
    flips_postprocess: PostprocessConfig | None = field(
        default=None, metadata={"section": PostprocessConfig}
    )

    def postprocess_for(self, flips: bool) -> PostprocessConfig:
        """The saved post-processing for predictions with or without test-time flips."""
        if flips and self.flips_postprocess is not None:
            return self.flips_postprocess
        return self.postprocess

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        return _sections_from_dict(cls, data)


@dataclass(frozen=True)
class InstaSAMConfig:
    """Everything a run needs, saved beside its checkpoints."""

    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    voronoi: VoronoiConfig = field(default_factory=VoronoiConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    decoder: NucleiDecoderConfig = field(default_factory=NucleiDecoderConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstaSAMConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, missing keys default."""
        return _sections_from_dict(cls, data)


def _sections_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A configuration of sections from nested dicts; unknown keys are an error."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        if data[f.name] is None and "section" in f.metadata:  # an optional section, unset
            kwargs[f.name] = None
            continue
        section = f.metadata.get("section", f.default_factory)
        kwargs[f.name] = _dataclass_from_dict(section(), data[f.name])
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown configuration sections: {sorted(unknown)}")
    return cls(**kwargs)


def _dataclass_from_dict(default: Any, data: dict[str, Any]) -> Any:
    """``default`` (a section as its configuration makes it) with the fields ``data`` gives;
    a field it lacks keeps that default, e.g. the nuclei network's gradient-loss weight."""
    names = {f.name for f in fields(default)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {type(default).__name__} fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return replace(default, **values)


__all__ = [
    "AdapterConfig",
    "AugmentConfig",
    "InstaSAMConfig",
    "LossConfig",
    "NetConfig",
    "NetTrainConfig",
    "NucleiDecoderConfig",
    "NucleiNetConfig",
    "PostprocessConfig",
    "PredictConfig",
    "PseudoLabelConfig",
    "StainConfig",
    "TargetConfig",
    "TrainConfig",
    "VoronoiConfig",
    "replace",
]
