"""Classification and box subnets shared across pyramid levels, with the attentions plugged in.

Without attention this is torchvision's RetinaNetHead: two towers of ``num_convs`` 3x3 convs +
ReLU, then a conv to ``A*K`` class logits and one to ``A*4`` box deltas. The attentions change it
in three places only:

- channel attention normalises each tower conv with cross-level GN and scales the tower output by
  a cross-level SE (one for the class branch, one for the box branch);
- spatial attention multiplies both towers' outputs of a level by that level's mask;
- ``dual_prediction`` (hybrid) adds a second prediction set: tower -> one more shared conv + ReLU
  -> SE -> its own predictors. The first set keeps the spatially re-weighted towers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harnet.channel_attention import CrossLevelGroupNorm, CrossLevelSE
from harnet.config import HARNetConfig, prior_bias
from harnet.spatial_attention import SpatialAttention

NUM_LEVELS = 5
Prediction = tuple[Tensor, Tensor]  # (N, sum HWA, K) logits, (N, sum HWA, 4) deltas


class Tower(nn.Module):
    """``num_convs`` x (3x3 conv -> norm -> ReLU), weights shared by all levels.

    ``norm`` is ``None`` (RetinaNet), ``"gn"`` (GroupNorm per level) or ``"cross_level_gn"``.
    """

    def __init__(self, channels: int, num_convs: int, norm: str | None, gn_groups: int = 32) -> None:
        super().__init__()
        self.norm = norm
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm is None) for _ in range(num_convs)
        )
        self.norms = nn.ModuleList()
        if norm == "cross_level_gn":
            self.norms.extend(CrossLevelGroupNorm(gn_groups, channels) for _ in range(num_convs))
        elif norm == "gn":
            self.norms.extend(nn.GroupNorm(gn_groups, channels) for _ in range(num_convs))
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        for i, conv in enumerate(self.convs):
            levels = [conv(x) for x in levels]
            if self.norm == "cross_level_gn":
                levels = self.norms[i](levels, relu=True)
            elif self.norm == "gn":
                levels = [self.norms[i](x).relu_() for x in levels]
            else:
                levels = [x.relu_() for x in levels]
        return levels


class Predictor(nn.Module):
    """Final class-logit and box-delta convs; outputs flattened in (H, W, A) order per level."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, prior_probability: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for conv in (self.cls_logits, self.bbox_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior_probability))

    @staticmethod
    def _flatten(levels: list[Tensor], width: int) -> Tensor:
        out = []
        for x in levels:
            n, _, h, w = x.shape
            out.append(x.view(n, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, width))
        return torch.cat(out, dim=1)

    def forward(self, cls_feats: list[Tensor], box_feats: list[Tensor]) -> Prediction:
        logits = self._flatten([self.cls_logits(x) for x in cls_feats], self.num_classes)
        deltas = self._flatten([self.bbox_reg(x) for x in box_feats], 4)
        return logits, deltas


class HARNetHead(nn.Module):
    """Both towers, the spatial/channel attentions and one or two prediction sets."""

    def __init__(self, cfg: HARNetConfig) -> None:
        super().__init__()
        ch, num_anchors = cfg.fpn.channels, cfg.anchors.num_anchors
        channel = cfg.channel
        norm = None
        if channel.enabled and channel.cross_level_gn:
            norm = "cross_level_gn"
        elif channel.enabled or cfg.head.group_norm:
            norm = "gn"
        self.cls_tower = Tower(ch, cfg.head.num_convs, norm, channel.gn_groups)
        self.box_tower = Tower(ch, cfg.head.num_convs, norm, channel.gn_groups)
        self.spatial = SpatialAttention(ch, NUM_LEVELS, cfg.spatial) if cfg.spatial.enabled else None
        use_se = channel.enabled and channel.se
        self.cls_se = CrossLevelSE(ch, NUM_LEVELS, channel.se_hidden) if use_se else None
        self.box_se = CrossLevelSE(ch, NUM_LEVELS, channel.se_hidden) if use_se else None
        self.predictor = Predictor(ch, num_anchors, cfg.num_classes, cfg.head.prior_probability)
        self.dual = cfg.dual_prediction
        if self.dual:
            self.cls_extra = nn.Conv2d(ch, ch, 3, padding=1)
            self.box_extra = nn.Conv2d(ch, ch, 3, padding=1)
            for conv in (self.cls_extra, self.box_extra):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
            self.predictor2 = Predictor(ch, num_anchors, cfg.num_classes, cfg.head.prior_probability)

    def forward(self, features: list[Tensor]) -> list[Prediction]:
        """FPN levels -> one prediction set, or two for the hybrid (joint learning)."""
        cls_feats = self.cls_tower(features)
        box_feats = self.box_tower(features)
        if self.dual:
            cls2 = [self.cls_extra(x).relu_() for x in cls_feats]
            box2 = [self.box_extra(x).relu_() for x in box_feats]
            if self.cls_se is not None and self.box_se is not None:
                cls2, box2 = self.cls_se(cls2), self.box_se(box2)
        elif self.cls_se is not None and self.box_se is not None:
            cls_feats, box_feats = self.cls_se(cls_feats), self.box_se(box_feats)
        if self.spatial is not None:
            masks = self.spatial.masks(features)
            cls_feats = self.spatial.reweight(cls_feats, masks)
            box_feats = self.spatial.reweight(box_feats, masks)
        sets = [self.predictor(cls_feats, box_feats)]
        if self.dual:
            sets.append(self.predictor2(cls2, box2))
        return sets
