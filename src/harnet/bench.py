"""``harnet bench``: every preset against torchvision's RetinaNet, measured in one process.

Machines like ours are noisy, so absolute times mean little on their own: every model is timed
in the same process, interleaved (one repetition of each model in turn), and reported both in
absolute terms and as a ratio to torchvision's RetinaNet with the same backbone, anchors and
image size. Weights are random: with the 0.01 classification prior no box passes the 0.05 score
threshold, so latency is the network plus a near-empty post-processing for every model alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from harnet.complexity import count_flops
from harnet.config import PRESETS, HARNetConfig
from harnet.model import HARNet
from harnet.torchvision_compat import torchvision_retinanet_config

TORCHVISION = "torchvision_retinanet"


@dataclass
class BenchResult:
    """Per model: params, GFLOPs and median times per image size; ratios to torchvision's."""

    device: str
    threads: int
    backbone: str
    repeats: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        head = "| model | size | params (M) | GFLOPs | latency ms | × tv | train step ms | × tv |"
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            train = "-" if r["train_ms"] is None else f"{r['train_ms']:.0f}"
            train_ratio = "-" if r["train_ratio"] is None else f"{r['train_ratio']:.2f}"
            lines.append(
                f"| {r['model']} | {r['size']} | {r['params_m']:.2f} | {r['gflops']:.1f} | {r['latency_ms']:.0f}"
                f" | {r['latency_ratio']:.2f} | {train} | {train_ratio} |"
            )
        return "\n".join(lines)


def build_models(backbone: str, size: int, num_classes: int) -> dict[str, nn.Module]:
    """torchvision's RetinaNet and each preset on the same backbone, anchors and image size."""
    base = torchvision_retinanet_config(num_classes=num_classes, min_size=size, max_size=size,
                                        backbone_norm="frozen_bn", trainable_layers=5)
    base.backbone.name = backbone  # type: ignore[assignment]
    tv_backbone = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5,
                                      returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    models: dict[str, nn.Module] = {
        TORCHVISION: RetinaNet(tv_backbone, num_classes, min_size=size, max_size=size)
    }
    for name in PRESETS:
        cfg = HARNetConfig.preset(name, **{k: getattr(base, k) for k in (
            "num_classes", "backbone", "fpn", "anchors", "head", "loss", "inference", "transform")})
        models[name] = HARNet(cfg)
    return models


def time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def run_benchmark(
    backbone: str = "resnet50",
    sizes: tuple[int, ...] = (320, 512, 800),
    repeats: int = 10,
    warmup: int = 2,
    train_size: int | None = 512,
    device: str = "cpu",
    threads: int | None = None,
    num_classes: int = 80,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Latency (batch 1, median of ``repeats`` after ``warmup``) at each size, and one training
    step (batch 2, SGD) at ``train_size``, every model interleaved within each measurement."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    result = BenchResult(str(dev), torch.get_num_threads(), backbone, repeats)
    for size in sizes:
        torch.manual_seed(0)
        models = {k: m.to(dev).eval() for k, m in build_models(backbone, size, num_classes).items()}
        image = [torch.rand(3, size, size, device=dev)]
        times: dict[str, list[float]] = {k: [] for k in models}
        with torch.inference_mode():
            for rep in range(warmup + repeats):
                for name, model in models.items():
                    ms = time_ms(lambda model=model, image=image: model(image), dev)
                    if rep >= warmup:
                        times[name].append(ms)
        train_times = _train_times(models, size, dev, repeats, warmup) if size == train_size else {}
        tv_latency = statistics.median(times[TORCHVISION])
        tv_train = statistics.median(train_times[TORCHVISION]) if train_times else None
        for name, model in models.items():
            latency = statistics.median(times[name])
            train = statistics.median(train_times[name]) if train_times else None
            result.rows.append({
                "model": name, "size": size,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "gflops": count_flops(model.cpu(), size), "latency_ms": latency,
                "latency_ratio": latency / tv_latency, "train_ms": train,
                "train_ratio": None if train is None or tv_train is None else train / tv_train,
            })
            model.to(dev)
        if progress:
            progress(f"size {size} done")
    return result


def _train_times(
    models: dict[str, nn.Module], size: int, dev: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """One SGD step on a batch of 2 with two boxes each; a few repetitions, interleaved."""
    images = [torch.rand(3, size, size, device=dev) for _ in range(2)]
    box = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]], device=dev) * size
    targets = [{"boxes": box, "labels": torch.tensor([1, 2], device=dev)} for _ in range(2)]
    optimizers = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    n = max(3, repeats // 3)  # training steps are ~10x an inference; a third of the repeats suffice
    for rep in range(min(warmup, 1) + n):
        for name, model in models.items():
            model.train()

            def step(model: nn.Module = model, opt: torch.optim.Optimizer = optimizers[name]) -> None:
                loss = sum(model(images, targets).values())
                opt.zero_grad()
                loss.backward()  # type: ignore[union-attr]
                opt.step()

            ms = time_ms(step, dev)
            model.eval()
            if rep >= min(warmup, 1):
                times[name].append(ms)
    return times
