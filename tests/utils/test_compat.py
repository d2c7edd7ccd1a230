"""The wrappers of private torch/torchvision names give the numbers of their public or hand-written
reference, and every private name they rely on exists in the installed versions (an upgrade that removes
one fails here, not in the middle of a training run)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNetRegressionHead
from torchvision.ops import generalized_box_iou_loss
from torchvision.transforms import v2

from harnet.utils import compat


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


def test_the_private_names_relied_on_exist() -> None:
    assert compat.missing_private_names() == []
    assert hasattr(RetinaNetRegressionHead(8, 1), "_loss_type")
    assert hasattr(v2.RandomPhotometricDistort, compat.MAKE_PARAMS)
    expected = "make_params" if _version(torchvision.__version__) >= (0, 21) else "_get_params"
    assert expected == compat.MAKE_PARAMS


def test_missing_private_names_reports_a_removed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "PRIVATE_NAMES", (*compat.PRIVATE_NAMES, ("torch", "_no_such_name"),
                                                  ("torch._no_such_module", "x")))
    assert compat.missing_private_names() == ["torch._no_such_name", "torch._no_such_module.x"]


ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0], [2.0, 4.0, 6.0, 20.0]])
BOXES = torch.tensor([[1.0, 1.0, 11.0, 12.0], [4.0, 6.0, 28.0, 14.0], [3.0, 3.0, 6.0, 18.0]])
DELTAS = torch.tensor([[0.1, -0.2, 0.05, 0.3], [0.0, 0.4, -0.1, 0.0], [-0.3, 0.1, 0.2, -0.2]])


def _encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """RetinaNet's box targets (weights 1): centre offsets in anchor sizes, log size ratios."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    return torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=1)


def _decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    x, y = anchors[:, 0] + aw / 2 + deltas[:, 0] * aw, anchors[:, 1] + ah / 2 + deltas[:, 1] * ah
    w, h = aw * torch.exp(deltas[:, 2]), ah * torch.exp(deltas[:, 3])
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=1)


def _giou_loss(a: Tensor, b: Tensor) -> Tensor:
    """Summed 1 - GIoU of box pairs, by hand."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(dim=1), (b[:, 2:] - b[:, :2]).prod(dim=1)
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(dim=1)
    return (1 - (inter / union - (hull - union) / hull)).sum()


@pytest.mark.parametrize("beta", [1.0, 0.11])
def test_box_loss_equals_the_hand_formulas(beta: float) -> None:
    coder = compat.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    target = _encode(BOXES, ANCHORS)
    diff = (DELTAS - target).abs()
    l1 = compat.box_loss("l1", coder, ANCHORS, BOXES, DELTAS)
    torch.testing.assert_close(l1, diff.sum())
    smooth = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum()
    torch.testing.assert_close(compat.box_loss("smooth_l1", coder, ANCHORS, BOXES, DELTAS, beta=beta), smooth)
    giou = compat.box_loss("giou", coder, ANCHORS, BOXES, DELTAS)
    torch.testing.assert_close(giou, _giou_loss(_decode(DELTAS, ANCHORS), BOXES))
    torch.testing.assert_close(giou, generalized_box_iou_loss(_decode(DELTAS, ANCHORS), BOXES, reduction="sum"))


@pytest.mark.parametrize("kind", ["l1", "smooth_l1", "giou"])
def test_set_retinanet_box_loss_changes_torchvisions_head_loss(kind: str) -> None:
    head = RetinaNetRegressionHead(8, 1)
    compat.set_retinanet_box_loss(head, kind)
    matched = torch.tensor([0, 1, 2, -1])
    anchors = torch.cat([ANCHORS, torch.tensor([[0.0, 0.0, 4.0, 4.0]])])
    deltas = torch.cat([DELTAS, torch.ones(1, 4)])
    got = head.compute_loss([{"boxes": BOXES}], {"bbox_regression": deltas[None]}, [anchors], [matched])
    want = compat.box_loss(kind, head.box_coder, ANCHORS, BOXES, DELTAS) / 3
    torch.testing.assert_close(got, want)
    if kind == "l1":
        torch.testing.assert_close(got, (DELTAS - _encode(BOXES, ANCHORS)).abs().sum() / 3)


def test_set_retinanet_box_loss_refuses_a_head_without_the_attribute() -> None:
    with pytest.raises(RuntimeError, match="_loss_type"):
        compat.set_retinanet_box_loss(nn.Conv2d(1, 1, 1), "giou")


@pytest.mark.parametrize("fused", [True, False])
def test_foreach_lerp_and_copy_equal_the_formulas(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused (torch's private foreach kernels) and fallback (per-tensor public ops) give the same values."""
    if not fused:
        monkeypatch.delattr(torch, "_foreach_lerp_")
        monkeypatch.delattr(torch, "_foreach_copy_")
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g, dtype=torch.float64)]
    b = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g, dtype=torch.float64)]
    before = [t.clone() for t in a]
    compat.foreach_lerp_(a, b, 0.3)
    for got, start, end in zip(a, before, b):
        torch.testing.assert_close(got, start + (end - start) * 0.3)
    ints = [torch.zeros(2, dtype=torch.long)]
    compat.foreach_copy_(ints, [torch.tensor([7, 9])])
    assert ints[0].tolist() == [7, 9]


def test_make_params_override_is_what_the_transform_calls() -> None:
    """A ``make_params`` override through the compat helpers runs on this torchvision, and drawing the parent's
    parameters through :func:`parent_make_params` gives exactly the parent transform's output."""
    calls: list[dict[str, Any]] = []

    @compat.make_params_override
    class Recording(v2.RandomPhotometricDistort):
        def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
            params = compat.parent_make_params(Recording, self, flat_inputs)
            calls.append(params)
            return params

    image = torch.rand(3, 8, 8)
    torch.manual_seed(0)
    got = Recording(p=1.0)(image)
    torch.manual_seed(0)
    want = v2.RandomPhotometricDistort(p=1.0)(image)
    assert len(calls) == 1 and "channel_permutation" in calls[0]
    torch.testing.assert_close(got, want)


def test_norm_bases_cover_every_batch_and_instance_norm() -> None:
    batch = [nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.LazyBatchNorm2d()]
    instance = [nn.InstanceNorm1d(2), nn.InstanceNorm2d(2), nn.InstanceNorm3d(2), nn.LazyInstanceNorm2d()]
    assert all(isinstance(m, compat.BatchNormBase) for m in batch)
    assert all(isinstance(m, compat.InstanceNormBase) for m in instance)
    others = [nn.GroupNorm(1, 2), nn.LayerNorm(2), *instance]
    assert not any(isinstance(m, compat.BatchNormBase) for m in others)


def test_reexported_classes_work() -> None:
    """BoxCoder round-trips, Matcher matches by IoU, IntermediateLayerGetter returns the named children."""
    coder = compat.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(coder.decode_single(coder.encode_single(BOXES, ANCHORS), ANCHORS), BOXES)
    matcher = compat.Matcher(0.5, 0.4, allow_low_quality_matches=False)
    assert matcher(torch.tensor([[0.9, 0.45, 0.1]])).tolist() == [0, -2, -1]
    body = nn.Sequential()
    body.add_module("a", nn.Identity())
    body.add_module("b", nn.Flatten())
    out = compat.IntermediateLayerGetter(body, {"a": "first", "b": "second"})(torch.ones(2, 3, 1))
    assert list(out) == ["first", "second"] and out["second"].shape == (2, 3)
