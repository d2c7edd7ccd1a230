"""Channel attention is cross-level: GN statistics and SE weights are shared by all pyramid levels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harnet.config.model import HARNetConfig
from harnet.modeling.attention.channel import CrossLevelGroupNorm, CrossLevelSE
from harnet.modeling.harnet import build_head

SIZES = ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))  # P3..P7 of a 64 px image


def _levels(n: int = 2, c: int = 8, seed: int = 0, positive: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    levels = [torch.randn(n, c, h, w, generator=g) * (i + 1) + i for i, (h, w) in enumerate(SIZES)]
    return [x.abs() + 0.1 for x in levels] if positive else levels


def _gn(groups: int = 4, channels: int = 8) -> CrossLevelGroupNorm:
    gn = CrossLevelGroupNorm(groups, channels)
    with torch.no_grad():
        gn.weight.copy_(torch.linspace(0.5, 2.0, channels))
        gn.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    return gn


def test_cross_level_gn_equals_direct_pooled_statistics() -> None:
    """Output = affine((x - mean) / sqrt(var + eps)), mean/var per (image, group) over ALL levels."""
    gn, levels = _gn(), _levels()
    out = gn(levels)
    n, c = levels[0].shape[:2]
    groups, cpg = gn.num_groups, c // gn.num_groups
    for i in range(n):
        for g in range(groups):
            chans = slice(g * cpg, (g + 1) * cpg)
            pooled = torch.cat([x[i, chans].flatten() for x in levels])
            mean, var = pooled.mean(), pooled.var(unbiased=False)
            for x, y in zip(levels, out):
                expected = (x[i, chans] - mean) / torch.sqrt(var + gn.eps)
                expected = expected * gn.weight[chans, None, None] + gn.bias[chans, None, None]
                torch.testing.assert_close(y[i, chans], expected, atol=1e-5, rtol=1e-5)
    relu_out = gn(levels, relu=True)
    for y, r in zip(out, relu_out):
        torch.testing.assert_close(r, y.clamp_min(0))


def test_cross_level_gn_one_level_changes_every_level() -> None:
    """Perturbing only P7 changes the normalised output of P3..P7 (statistics are shared)."""
    gn, levels = _gn(), _levels()
    before = gn(levels)
    changed = [x.clone() for x in levels]
    changed[-1] = changed[-1] + 5.0
    after = gn(changed)
    for level, (a, b) in enumerate(zip(before, after)):
        assert not torch.allclose(a, b, atol=1e-4), f"level {level} did not change"


def test_cross_level_gn_differs_from_per_level_gn() -> None:
    """A plain GroupNorm applied level by level gives different values (levels differ in scale)."""
    gn, levels = _gn(), _levels()
    out = gn(levels)
    for x, y in zip(levels[:3], out[:3]):
        plain = F.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
        assert not torch.allclose(plain, y, atol=1e-3)


def test_cross_level_se_one_weight_vector_for_all_levels() -> None:
    """out / in is the same (N, C) vector at every position of every level, = sigmoid(fc(pooled))."""
    torch.manual_seed(0)
    se = CrossLevelSE(channels=8, num_levels=5, hidden=4)
    levels = _levels(positive=True)
    out = se(levels)
    w = se.weights(levels)
    assert w.shape == (2, 8) and bool(((w > 0) & (w < 1)).all())
    pooled = torch.cat([x.mean(dim=(2, 3)) for x in levels], dim=1)
    torch.testing.assert_close(w, torch.sigmoid(se.fc(pooled)))
    for x, y in zip(levels, out):
        ratio = y / x
        torch.testing.assert_close(ratio, w[:, :, None, None].expand_as(ratio), atol=1e-6, rtol=1e-5)
    # The weights look at every level: changing P7 alone changes the scaling of P3.
    changed = [*levels[:-1], levels[-1] * 3.0]
    assert not torch.allclose(se(changed)[0], out[0])


def test_head_cls_and_box_branches_have_their_own_se() -> None:
    """The channel preset's head: cross-level GN in both towers, two distinct SE modules, both used."""
    torch.manual_seed(0)
    cfg = HARNetConfig.preset("channel", num_classes=3)
    cfg.fpn.channels = 32
    cfg.channel.gn_groups = 8
    head = build_head(cfg)
    assert head.cls_se is not None and head.box_se is not None and head.cls_se is not head.box_se
    for a, b in zip(head.cls_se.parameters(), head.box_se.parameters()):
        assert a.data_ptr() != b.data_ptr()
        assert not torch.equal(a, b)
    assert all(isinstance(m, CrossLevelGroupNorm) for m in head.cls_tower.norms)
    assert all(isinstance(m, CrossLevelGroupNorm) for m in head.box_tower.norms)
    calls: list[str] = []
    head.cls_se.register_forward_hook(lambda *_: calls.append("cls"))
    head.box_se.register_forward_hook(lambda *_: calls.append("box"))
    head(_levels(c=32, seed=3))
    assert sorted(calls) == ["box", "cls"]
