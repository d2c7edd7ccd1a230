"""FPN: five 256-channel levels P3..P7 at strides 8..128, P6 built from C5 or P5 as configured."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from harnet.config.model import FPNConfig
from harnet.modeling.fpn import build_fpn, pyramid_levels

C18 = {"c3": 128, "c4": 256, "c5": 512}


def _c(channels: dict[str, int], size: int = 128) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (k, c), s in zip(channels.items(), (8, 16, 32)):
        out[k] = torch.randn(1, c, size // s, size // s, generator=g)
    return out


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_five_levels_at_strides_8_to_128(p6_from: str) -> None:
    """P3..P7 have cfg.channels channels and sizes 128/8 ... 128/128."""
    fpn = build_fpn(C18, FPNConfig(channels=64, p6_from=p6_from))  # type: ignore[arg-type]
    levels = pyramid_levels(fpn(_c(C18)))
    assert [tuple(x.shape) for x in levels] == [(1, 64, 128 // s, 128 // s) for s in (8, 16, 32, 64, 128)]


@pytest.mark.parametrize("fpn_channels", [256, 512])
@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_p6_source_is_honoured(p6_from: str, fpn_channels: int) -> None:
    """P6's conv reads C5 or P5 as asked, also when C5 has as many channels as the FPN (512 here),
    where torchvision's own channel-count rule would pick P5."""
    fpn = build_fpn(C18, FPNConfig(channels=fpn_channels, p6_from=p6_from))  # type: ignore[arg-type]
    expected_in = C18["c5"] if p6_from == "c5" else fpn_channels
    assert fpn.extra_blocks.p6.in_channels == expected_in
    seen: list[torch.Tensor] = []
    fpn.extra_blocks.p6.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    c = _c(C18)
    with torch.no_grad():
        levels = pyramid_levels(fpn(c))
    source = c["c5"] if p6_from == "c5" else levels[2]
    assert torch.equal(seen[0], source)


def test_p5_without_smoothing_is_the_1x1_lateral_of_c5() -> None:
    """The authors' P5 (``p5_smooth: false``) is the 1x1 lateral of C5 alone: no 3x3 output conv."""
    fpn = build_fpn(C18, FPNConfig(channels=64, p5_smooth=False))
    c = _c(C18)
    with torch.no_grad():
        p5 = pyramid_levels(fpn(c))[2]
        torch.testing.assert_close(p5, fpn.inner_blocks[2](c["c5"]))
    smooth = build_fpn(C18, FPNConfig(channels=64))
    assert sum(p.numel() for p in smooth.parameters()) - sum(p.numel() for p in fpn.parameters()) == 64 * 64 * 9 + 64
