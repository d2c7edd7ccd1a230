"""HAR-Net: RetinaNet with spatial, channel and aligned attention, learned jointly.

backbone (+ aligned attention on C4/C5) -> FPN P3-P7 -> head (towers with channel/spatial
attention, one or two prediction sets) -> focal loss in training, decoded detections in eval.
The model follows torchvision's detection contract, resizing and normalising inside
(:meth:`HARNet.preprocess`, the one image geometry that test-time augmentation, explain and export reuse).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from harnet.config.model import AlignedAttentionConfig, HARNetConfig, tower_norm
from harnet.modeling.anchors import anchors_per_level, build_anchor_generator
from harnet.modeling.attention.aligned import DeformableBottleneck
from harnet.modeling.attention.channel import CrossLevelSE
from harnet.modeling.attention.maps import AttentionMaps
from harnet.modeling.attention.spatial import SpatialAttention
from harnet.modeling.backbone.resnet import build_backbone
from harnet.modeling.fpn import build_fpn, pyramid_levels
from harnet.modeling.head import HARNetHead, Prediction, Predictor, SecondPredictionSet, Tower
from harnet.modeling.losses import DetectionLoss
from harnet.modeling.postprocess import DenseOutputs, build_box_coder
from harnet.modeling.preprocess import Targets, original_sizes, padded_size, preprocess, to_input_pixels
from harnet.modeling.pyramid import NUM_LEVELS


def build_aligned_attention(cfg: AlignedAttentionConfig, channels: dict[str, int]) -> nn.ModuleDict:
    """One deformable bottleneck per stage in ``cfg.stages`` (empty when aligned attention is off)."""
    blocks = nn.ModuleDict()
    if cfg.enabled:
        for stage in cfg.stages:
            blocks[stage] = DeformableBottleneck(
                channels[stage], mid_channels=cfg.mid_channels, deform_groups=cfg.deform_groups,
                gn_groups=cfg.gn_groups, out_scale_init=cfg.out_scale_init, out_relu=cfg.out_relu,
            )
    return blocks


def build_head(cfg: HARNetConfig) -> HARNetHead:
    """The head with the attentions ``cfg`` switches on (each attention module ``None`` when off).

    The parts are built in a fixed order (spatial attention, SE, towers, predictors, set 2), so a seed
    gives the same weights."""
    ch, spatial, channel, head = cfg.fpn.channels, cfg.spatial, cfg.channel, cfg.head
    norm, groups, norm_convs = tower_norm(cfg)
    spatial_module = None
    if spatial.enabled:
        spatial_module = SpatialAttention(
            ch, NUM_LEVELS, channels=spatial.channels, rates=spatial.rates, coarse_rates=spatial.coarse_rates,
            gn_groups=spatial.gn_groups if spatial.group_norm else None, mode=spatial.mode,
        )
    se = None
    if channel.enabled and channel.se != "none":
        se = CrossLevelSE(ch, NUM_LEVELS, channel.se_hidden), CrossLevelSE(ch, NUM_LEVELS, channel.se_hidden)

    def tower() -> Tower:
        return Tower(ch, head.num_convs, norm, groups, head.conv_init, head.last_norm_scale, norm_convs)

    cls_tower, box_tower = tower(), tower()
    predictor = Predictor(ch, cfg.anchors.num_anchors, cfg.num_classes, head.prior_probability, head.conv_init)
    set2 = None
    if cfg.dual_prediction:
        set2 = SecondPredictionSet(ch, cfg.anchors.num_anchors, cfg.num_classes, head.prior_probability,
                                   head.conv_init, extra_norm=(norm if norm != "none" else "gn") if head.set2_norm
                                   else "none", gn_groups=groups)
    return HARNetHead(cls_tower=cls_tower, box_tower=box_tower, predictor=predictor, spatial=spatial_module, se=se,
                      se_on="set2" if channel.se == "set2" else "towers", set2=set2,
                      set2_after_mask=head.set2_after_mask)


class HARNet(nn.Module):
    """The detector. ``model(images, targets)`` -> losses in train mode; ``model(images)`` ->
    ``[{"boxes", "scores", "labels"}]`` in input-image pixels in eval mode.

    ``images`` is a list of float CHW tensors in [0, 1] of any sizes; ``targets`` a list of dicts
    with ``boxes`` (n, 4) XYXY pixels and ``labels`` (n,) int64 in ``0..num_classes-1``.

    The parts are passed in (as torchvision's ``RetinaNet`` takes its backbone, anchor generator and
    head); :func:`build_harnet` builds all of them from a config. A part left out is built from
    ``config`` the same way, so ``HARNet(cfg)`` equals ``build_harnet(cfg)`` and ``HARNet(cfg, backbone=my_body)``
    swaps one part (``my_body`` returns ``{"c3", "c4", "c5"}`` and has ``out_channels``).
    """

    def __init__(
        self,
        config: HARNetConfig | None = None,
        *,
        backbone: nn.Module | None = None,
        aligned: nn.ModuleDict | None = None,
        fpn: nn.Module | None = None,
        head: HARNetHead | None = None,
    ) -> None:
        super().__init__()
        cfg = config or HARNetConfig()
        self.config = cfg
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone, cfg.input.channels)
        channels = self.backbone.out_channels
        self.aligned = aligned if aligned is not None else build_aligned_attention(cfg.aligned, channels)
        self.fpn = fpn if fpn is not None else build_fpn(channels, cfg.fpn)
        self.head = head if head is not None else build_head(cfg)
        self.anchor_generator = build_anchor_generator(cfg.anchors)
        self.box_coder = build_box_coder()
        self.loss = DetectionLoss(cfg.loss, self.box_coder)

    def preprocess(self, images: list[Tensor], targets: Targets | None = None,
                   scale: float = 1.0) -> tuple[ImageList, Targets | None]:
        """Float CHW images in [0, 1] (and targets) -> the normalised, padded batch the network runs on,
        with each image's resized size (and the targets' boxes resized with it).

        The model's one image geometry (as detectron2's ``DenseDetector.preprocess_image``): train mode
        draws a short side from ``transform.min_size``, eval mode uses ``transform.test_sizes`` times
        ``scale`` (test-time augmentation). ``forward``, test-time augmentation, explain and export all
        call it, so their sizes cannot differ.
        """
        return preprocess(self.config.transform, images, targets, training=self.training, scale=scale)

    def features(self, images: Tensor, readouts: dict[str, Any] | None = None) -> list[Tensor]:
        """Normalised, padded batch -> [P3, ..., P7]. ``readouts`` (see :meth:`attention_maps`) receives
        ``"offsets"``: each aligned block's sampling offsets of this pass."""
        c: OrderedDict[str, Tensor] = self.backbone(images)
        for stage, block in self.aligned.items():
            if isinstance(block, DeformableBottleneck):
                c[stage], offsets = block.forward_with_offsets(c[stage])
                if readouts is not None:
                    readouts.setdefault("offsets", {})[stage] = offsets
            else:  # a block passed in by the caller: no offsets to report
                c[stage] = block(c[stage])
        return pyramid_levels(self.fpn(c))

    def forward_raw(self, images: Tensor) -> list[Prediction]:
        """Batch tensor (already normalised and padded) -> raw prediction sets. Used by export."""
        return self.head(self.features(images))

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("HARNet in train mode needs targets; call model.eval() to predict")
            _check_targets(targets, self.config.num_classes)
        originals = original_sizes(images)
        image_list, targets = self.preprocess(images, targets)
        if not self.training:
            return self.detect(image_list, originals)
        assert targets is not None
        features = self.features(image_list.tensors)
        sets = self.head(features)
        anchors, per_level = self.anchors(image_list, features)
        return self.compute_loss(sets, targets, anchors, per_level)

    def detect(self, image_list: ImageList, originals: list[tuple[int, int]],
               readouts: dict[str, Any] | None = None) -> list[dict[str, Tensor]]:
        """Preprocessed batch -> detections in the pixels of the input images (``originals``)."""
        dense = self.dense_outputs(image_list, readouts)
        detections = dense.detections(self.box_coder, self.config.inference)
        return to_input_pixels(detections, image_list.image_sizes, originals)

    def attention_maps(self, images: list[Tensor]) -> AttentionMaps:
        """``model(images)`` in eval mode (same preprocessing, network and detections) that also returns
        what each attention computed: the spatial masks, the aligned blocks' offsets and the SE channel
        weights of that very pass, with the batch geometry to map them onto the images."""
        if self.training:
            raise ValueError("attention_maps reads a prediction; call model.eval() first")
        originals = original_sizes(images)
        image_list, _ = self.preprocess(images)
        readouts: dict[str, Any] = {}
        detections = self.detect(image_list, originals, readouts)
        return AttentionMaps(
            detections, list(image_list.image_sizes), originals, padded_size(image_list),
            spatial=readouts.get("spatial", []), offsets=readouts.get("offsets", {}),
            channel=readouts.get("channel", {}),
        )

    def anchors(self, image_list: ImageList, features: list[Tensor]) -> tuple[list[Tensor], list[int]]:
        """Anchors of every image, and the number of anchors on each level."""
        anchors = self.anchor_generator(image_list, features)
        per_level = anchors_per_level([x.shape[-2:] for x in features], self.config.anchors.num_anchors)
        return anchors, per_level

    def dense_outputs(self, image_list: ImageList, readouts: dict[str, Any] | None = None) -> DenseOutputs:
        """Normalised, padded batch -> what decoding needs (test-time logits and deltas, anchors, sizes).

        The one path from features to decoded candidates: ``forward`` in eval mode and test-time
        augmentation call it, and export decodes the same :class:`DenseOutputs`. ``readouts``: see
        :meth:`attention_maps`.
        """
        features = self.features(image_list.tensors, readouts)
        cls_logits, box_deltas = merge_prediction_sets(self.head(features, readouts))
        anchors, per_level = self.anchors(image_list, features)
        return DenseOutputs(cls_logits, box_deltas, anchors, per_level, image_list.image_sizes)

    def compute_loss(
        self, sets: list[Prediction], targets: list[dict[str, Tensor]], anchors: list[Tensor],
        num_anchors_per_level: list[int] | None = None,
    ) -> dict[str, Tensor]:
        """Loss of each prediction set; with two sets (hybrid) each is weighted 0.5."""
        matched = self.loss.match(targets, anchors)
        weight = 1.0 / len(sets)
        losses: dict[str, Tensor] = {}
        for i, (cls_logits, box_deltas) in enumerate(sets):
            suffix = "" if i == 0 else f"_{i + 1}"
            for name, value in self.loss(targets, cls_logits, box_deltas, anchors, matched,
                                         num_anchors_per_level).items():
                losses[name + suffix] = value * weight
        return losses


def merge_prediction_sets(sets: list[Prediction]) -> Prediction:
    """Test-time logits and deltas: the hybrid's two prediction sets averaged, one set as is.

    Shared by ``forward``, test-time augmentation and export so that all three decode the same numbers.
    """
    if len(sets) == 1:
        return sets[0]
    return torch.stack([s[0] for s in sets]).mean(0), torch.stack([s[1] for s in sets]).mean(0)


def _check_targets(targets: list[dict[str, Tensor]], num_classes: int) -> None:
    """Fail early with a readable message instead of deep inside the matcher."""
    for i, t in enumerate(targets):
        boxes = t.get("boxes")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: 'boxes' must be a float tensor of shape (n, 4)")
        if "labels" not in t or t["labels"].shape[0] != boxes.shape[0]:
            raise ValueError(f"target {i}: 'labels' must be an int64 tensor with one label per box")
        labels = t["labels"]
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8):
            raise ValueError(f"target {i}: 'labels' must be an integer tensor, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            # A negative label would silently index the last class; too large fails deep in the loss.
            raise ValueError(f"target {i}: labels must be in 0..{num_classes - 1}, got {labels.tolist()}")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            j = int(torch.where(degenerate)[0][0])
            raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} has non-positive width or height")


def build_harnet(cfg: HARNetConfig) -> HARNet:
    """The one place a config becomes a network: each part built from its section, then passed to
    :class:`HARNet` (as torchvision's ``retinanet_resnet50_fpn`` does for ``RetinaNet``). The parts are
    built in a fixed order (backbone, aligned attention, FPN, head), so a seed gives the same weights."""
    backbone = build_backbone(cfg.backbone, cfg.input.channels)
    aligned = build_aligned_attention(cfg.aligned, backbone.out_channels)
    fpn = build_fpn(backbone.out_channels, cfg.fpn)
    head = build_head(cfg)
    return HARNet(cfg, backbone=backbone, aligned=aligned, fpn=fpn, head=head)
