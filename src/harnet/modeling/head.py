"""Classification and box subnets shared across pyramid levels, with the attentions plugged in.

Without attention this is torchvision's RetinaNetHead: two towers of ``num_convs`` 3x3 convs +
ReLU, then a conv to ``A*K`` class logits and one to ``A*4`` box deltas. The attentions change it
in three places only:

- channel attention normalises the tower convs with cross-level GN (the towers' ``norm``) and scales
  with a cross-level SE (one for the class branch, one for the box branch), placed on the towers'
  outputs or on set 2's (``se_on``);
- spatial attention multiplies both towers' outputs of a level by that level's mask;
- the hybrid adds a second prediction set, :class:`SecondPredictionSet`. As in the authors' files it
  branches from the *masked* towers: one more shared 3x3 conv + ReLU (no norm) -> SE -> its own
  predictors. The first set predicts from the masked towers directly, so the mask feeds both sets and
  is trained by both losses.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from harnet.modeling.norm import LevelNormName, build_level_norm

Prediction = tuple[Tensor, Tensor]  # (N, sum HWA, K) logits, (N, sum HWA, 4) deltas
ConvInit = Literal["normal", "msra"]
SEPlacement = Literal["towers", "set2"]


def prior_bias(probability: float) -> float:
    """Classification bias so that every anchor starts at ``probability`` foreground."""
    return -math.log((1 - probability) / probability)


def init_conv(conv: nn.Conv2d, init: ConvInit) -> None:
    """RetinaNet's gaussian std 0.01, or msra (He, fan-in, as Caffe's ``msra`` filler); zero bias."""
    if init == "msra":
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    else:
        nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class Tower(nn.Module):
    """``num_convs`` x (3x3 conv -> norm -> ReLU), weights shared by all levels.

    ``norm`` is ``"none"`` (RetinaNet), ``"gn"`` (GroupNorm per level) or ``"cross_level_gn"``
    (statistics over all levels at once); ``norm_convs`` limits it to the first that many convs (the
    authors' channel-only file normalises convs 1-3; the rest keep a bias and go straight to the ReLU).
    ``last_norm_scale`` is the initial scale of the last norm (the authors' hybrid starts it at 0.1).
    """

    def __init__(self, channels: int, num_convs: int, norm: LevelNormName = "none", gn_groups: int = 32,
                 conv_init: ConvInit = "normal", last_norm_scale: float = 1.0, norm_convs: int | None = None) -> None:
        super().__init__()
        self.norm = norm  # its name; the modules come from build_level_norm
        self.norms = nn.ModuleList()
        for _ in range(num_convs if norm_convs is None else min(norm_convs, num_convs)):
            level_norm = build_level_norm(norm, channels, gn_groups)
            if level_norm is None:
                break
            self.norms.append(level_norm)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=i >= len(self.norms)) for i in range(num_convs)
        )
        for conv in self.convs:
            init_conv(conv, conv_init)
        if len(self.norms):
            nn.init.constant_(self.norms[-1].weight, last_norm_scale)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        for i, conv in enumerate(self.convs):
            levels = [conv(x) for x in levels]
            levels = self.norms[i](levels, relu=True) if i < len(self.norms) else [x.relu_() for x in levels]
        return levels


class Predictor(nn.Module):
    """Final class-logit and box-delta convs; outputs flattened in (H, W, A) order per level."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 conv_init: ConvInit = "normal") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for conv in (self.cls_logits, self.bbox_reg):
            init_conv(conv, conv_init)
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


class SecondPredictionSet(nn.Module):
    """The hybrid's set 2: per branch one more 3x3 conv shared by the levels + ReLU, then its own
    predictors. ``extra_norm`` (not the authors') normalises that conv like the towers: without a norm its
    output starts about 10x smaller than the normalised towers' and set 2 learns later than set 1.
    The SE that scales the extra conv's output belongs to the head (``se_on="set2"``)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 conv_init: ConvInit = "normal", extra_norm: LevelNormName = "none", gn_groups: int = 32) -> None:
        super().__init__()

        def extra() -> nn.Module:
            if extra_norm != "none":
                return Tower(channels, 1, extra_norm, gn_groups, conv_init)
            return nn.Conv2d(channels, channels, 3, padding=1)

        self.cls_conv, self.box_conv = extra(), extra()
        for conv in (self.cls_conv, self.box_conv):  # both built, then both initialised: a seed's weights
            if isinstance(conv, nn.Conv2d):
                init_conv(conv, conv_init)
        self.predictor = Predictor(channels, num_anchors, num_classes, prior_probability, conv_init)

    def extra(self, cls_feats: list[Tensor], box_feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The extra conv (+ norm) + ReLU of each branch."""
        def run(module: nn.Module, levels: list[Tensor]) -> list[Tensor]:
            return module(levels) if isinstance(module, Tower) else [module(x).relu_() for x in levels]

        return run(self.cls_conv, cls_feats), run(self.box_conv, box_feats)


class HARNetHead(nn.Module):
    """Both towers, the spatial/channel attentions and one or two prediction sets.

    The parts are passed in (each attention ``None`` when off) and built by
    :func:`harnet.modeling.harnet.build_head`, so the head knows nothing of harnet's config classes:
    ``spatial`` has ``masks(levels)`` and ``reweight(feats, masks)``; ``cls_se``/``box_se`` map a list of
    levels to the re-weighted list and scale the towers' outputs (``se_on="towers"``) or set 2's extra
    conv outputs (``se_on="set2"``).
    """

    def __init__(
        self,
        *,
        cls_tower: Tower,
        box_tower: Tower,
        predictor: Predictor,
        spatial: nn.Module | None = None,
        se: tuple[nn.Module, nn.Module] | None = None,
        se_on: SEPlacement = "towers",
        set2: SecondPredictionSet | None = None,
        set2_after_mask: bool = True,
    ) -> None:
        super().__init__()
        if se is not None and se_on == "set2" and set2 is None:
            raise ValueError("se_on='set2' needs a second prediction set")
        # Registration order = parameter order, which optimizer states and checkpoints rely on.
        self.cls_tower, self.box_tower = cls_tower, box_tower
        self.spatial = spatial
        self.cls_se: nn.Module | None = se[0] if se is not None else None
        self.box_se: nn.Module | None = se[1] if se is not None else None
        self.se_on = se_on
        self.predictor = predictor
        self.set2 = set2
        # False: set 2 from the unmasked towers (config version 0's wiring, kept so its weights predict).
        self.set2_after_mask = set2_after_mask

    def _se(self, cls_feats: list[Tensor], box_feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if self.cls_se is not None and self.box_se is not None:
            return self.cls_se(cls_feats), self.box_se(box_feats)
        return cls_feats, box_feats

    def forward(self, features: list[Tensor], readouts: dict[str, Any] | None = None) -> list[Prediction]:
        """FPN levels -> one prediction set, or two for the hybrid (joint learning).

        ``readouts``, when given, receives what the attentions computed in this pass (for explain):
        ``"spatial"``, the mask of each level, and ``"channel"``, the SE channel weights of each branch
        (``{"classification", "box"}`` -> (N, C)), taken from the inputs the SE modules scale.
        """

        def read_se(cls_in: list[Tensor], box_in: list[Tensor]) -> None:
            if readouts is not None:
                for branch, se, levels in (("classification", self.cls_se, cls_in), ("box", self.box_se, box_in)):
                    if se is not None:
                        readouts.setdefault("channel", {})[branch] = se.weights(levels)

        cls_feats = self.cls_tower(features)
        box_feats = self.box_tower(features)
        if self.se_on == "towers":
            read_se(cls_feats, box_feats)
            cls_feats, box_feats = self._se(cls_feats, box_feats)
        unmasked = cls_feats, box_feats
        if self.spatial is not None:
            masks = self.spatial.masks(features)
            if readouts is not None:
                readouts["spatial"] = masks
            cls_feats = self.spatial.reweight(cls_feats, masks)
            box_feats = self.spatial.reweight(box_feats, masks)
        sets = [self.predictor(cls_feats, box_feats)]
        if self.set2 is not None:
            cls2, box2 = self.set2.extra(*((cls_feats, box_feats) if self.set2_after_mask else unmasked))
            if self.se_on == "set2":
                read_se(cls2, box2)
                cls2, box2 = self._se(cls2, box2)
            sets.append(self.set2.predictor(cls2, box2))
        return sets
