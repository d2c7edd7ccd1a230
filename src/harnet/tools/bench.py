"""``harnet bench``: every preset against torchvision's RetinaNet, measured in one process.

Machines like ours are noisy, so absolute times mean little on their own: every model is timed
in the same process, interleaved (one repetition of each model in turn), and reported both in
absolute terms and as a ratio to torchvision's RetinaNet with the same backbone, anchors and
image size. Weights are random: with the 0.01 classification prior no box passes the 0.05 score
threshold, so latency is the network plus a near-empty post-processing for every model alike.
"""

from __future__ import annotations

import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from harnet.config.model import PRESETS, HARNetConfig
from harnet.modeling.harnet import build_harnet
from harnet.modeling.torchvision_compat import torchvision_retinanet_config
from harnet.modeling.torchvision_peer import build_torchvision_retinanet
from harnet.utils.complexity import count_flops

TORCHVISION = "torchvision_retinanet"


@dataclass
class BenchResult:
    """Per model: params, GFLOPs and median times per image size; ratios to torchvision's."""

    device: str
    threads: int
    backbone: str
    repeats: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    device_name: str = ""  # the CPU or GPU model
    torch_version: str = torch.__version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        head = ("| model | size | precision | params (M) | GFLOPs | latency ms | × tv | peak MB | train step ms | × tv"
                " | train peak MB |")
        lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]

        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        for r in self.rows:
            lines.append(
                f"| {r['model']} | {r['size']} | {r.get('precision', 'fp32')} | {r['params_m']:.2f} | {r['gflops']:.1f}"
                f" | {r['latency_ms']:.1f} | {r['latency_ratio']:.2f} | {fmt(r.get('peak_mb'), '.0f')}"
                f" | {fmt(r['train_ms'], '.0f')} | {fmt(r['train_ratio'], '.2f')}"
                f" | {fmt(r.get('train_peak_mb'), '.0f')} |"
            )
        return "\n".join(lines)


def build_models(backbone: str, size: int, num_classes: int, only: str | None = None) -> dict[str, nn.Module]:
    """torchvision's RetinaNet and each preset (or just ``only``) on the same backbone, anchors and
    image size."""
    base = torchvision_retinanet_config(num_classes=num_classes, min_size=size, max_size=size,
                                        backbone_norm="frozen_bn", trainable_layers=5)
    base.backbone.name = backbone  # type: ignore[assignment]
    models: dict[str, nn.Module] = {}
    if only in (None, TORCHVISION):
        models[TORCHVISION] = build_torchvision_retinanet(base)  # the ablation's peer, the same builder
    for name in [p for p in PRESETS if only in (None, p)]:
        cfg = HARNetConfig.preset(name, **{k: getattr(base, k) for k in (
            "num_classes", "backbone", "fpn", "anchors", "head", "loss", "inference", "transform")})
        models[name] = build_harnet(cfg)
    return models


def time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def median_latency_ms(calls: Mapping[str, Callable[[], Any]], device: torch.device, repeats: int,
                      warmup: int) -> dict[str, float]:
    """Median time of each call over ``repeats`` after ``warmup``, the calls interleaved (one of each
    in turn) so that a noisy machine slows them all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(warmup + repeats):
        for name, fn in calls.items():
            ms = time_ms(fn, device)
            if rep >= warmup:
                times[name].append(ms)
    return {name: statistics.median(values) for name, values in times.items()}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Memory ``fn`` needs above what is already allocated (activations, workspaces, gradients).

    CUDA: the caching allocator's peak. CPU: the process's peak resident set (Linux VmHWM, reset
    through /proc/self/clear_refs); ``None`` where that is not available.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_kb("VmRSS:")
        fn()
        return (_rss_kb("VmHWM:") - base) / 1024
    except (OSError, StopIteration):
        return None


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _batch(size: int, dev: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Two random images with two boxes each: the training-step input."""
    images = [torch.rand(3, size, size, device=dev) for _ in range(2)]
    box = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]], device=dev) * size
    return images, [{"boxes": box, "labels": torch.tensor([1, 2], device=dev)} for _ in range(2)]


def _cpu_peak_child(backbone: str, size: int, num_classes: int, name: str, train: bool, threads: int) -> float | None:
    """In a fresh process: memory one inference (or forward + backward) needs above the model."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_models(backbone, size, num_classes, only=name)[name]
    cpu = torch.device("cpu")
    if train:
        images, targets = _batch(size, cpu)
        model.train()
        return peak_memory_mb(lambda: sum(model(images, targets).values()).backward(), cpu)  # type: ignore[union-attr]
    model.eval()
    with torch.inference_mode():
        return peak_memory_mb(lambda: model([torch.rand(3, size, size)]), cpu)


def cpu_peak_memory(backbone: str, size: int, num_classes: int, names: list[str], train: bool,
                    threads: int) -> dict[str, float | None]:
    """CPU peak memory per model, each measured in its own fresh process: within one process the
    allocator reuses what earlier models freed, so the peak resident set would hide their needs."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        peaks = pool.starmap(_cpu_peak_child, [(backbone, size, num_classes, n, train, threads) for n in names])
    return dict(zip(names, peaks))


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
    amp: bool = True,
    memory: bool = True,
) -> BenchResult:
    """Latency (batch 1, median of ``repeats`` after ``warmup``) and peak memory at each size, and
    one training step (batch 2, SGD) at ``train_size``, every model interleaved within each
    measurement. On CUDA, timings are synchronised and, with ``amp``, repeated under fp16 autocast
    (the training loop's AMP), reported as separate rows with ratios within each precision.
    Peak memory: CUDA allocator peaks; on CPU (``memory``) the peak resident set of each model in
    a fresh process (inference; forward + backward for training)."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    result = BenchResult(str(dev), torch.get_num_threads(), backbone, repeats, device_name=_device_name(dev))
    precisions = ("fp32", "amp") if amp and dev.type == "cuda" else ("fp32",)
    for size in sizes:
        torch.manual_seed(0)
        models = {k: m.to(dev).eval() for k, m in build_models(backbone, size, num_classes).items()}
        gflops = {name: count_flops(model, size) for name, model in models.items()}
        image = [torch.rand(3, size, size, device=dev)]
        for precision in precisions:
            autocast = torch.autocast(dev.type, dtype=torch.float16, enabled=precision == "amp")
            calls = {name: partial(model, image) for name, model in models.items()}
            peaks: dict[str, float | None] = {}
            with torch.inference_mode(), autocast:
                latencies = median_latency_ms(calls, dev, repeats, warmup)
                if dev.type == "cuda":
                    peaks = {name: peak_memory_mb(call, dev) for name, call in calls.items()}
            if dev.type == "cpu" and memory:
                peaks = cpu_peak_memory(backbone, size, num_classes, list(models), False, result.threads)
            train = _train_times(models, size, dev, repeats, warmup, precision == "amp") if size == train_size else {}
            if train and dev.type == "cpu" and memory:
                train_peaks = cpu_peak_memory(backbone, size, num_classes, list(models), True, result.threads)
                train = {name: (train[name][0], train_peaks[name]) for name in train}
            tv_latency = latencies[TORCHVISION]
            tv_train = statistics.median(train[TORCHVISION][0]) if train else None
            for name, model in models.items():
                latency = latencies[name]
                train_ms = statistics.median(train[name][0]) if train else None
                result.rows.append({
                    "model": name, "size": size, "precision": precision,
                    "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                    "gflops": gflops[name], "latency_ms": latency, "latency_ratio": latency / tv_latency,
                    "peak_mb": peaks.get(name), "train_ms": train_ms,
                    "train_ratio": None if train_ms is None or tv_train is None else train_ms / tv_train,
                    "train_peak_mb": train[name][1] if train else None,
                })
        if progress:
            progress(f"size {size} done")
    return result


def _train_times(
    models: dict[str, nn.Module], size: int, dev: torch.device, repeats: int, warmup: int, amp: bool = False
) -> dict[str, tuple[list[float], float | None]]:
    """Per model: times of one SGD step on a batch of 2 with two boxes each (a few repetitions,
    interleaved) and the step's peak memory. ``amp``: fp16 autocast + GradScaler, as in training."""
    images, targets = _batch(size, dev)
    optimizers = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for k, m in models.items()}
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    times: dict[str, list[float]] = {k: [] for k in models}
    peaks: dict[str, float | None] = {}
    n = max(3, repeats // 3)  # training steps are ~10x an inference; a third of the repeats suffice
    last = min(warmup, 1) + n + (dev.type == "cuda")  # on CUDA one more step, for its memory peak
    for rep in range(last):
        for name, model in models.items():
            model.train()

            def step(model: nn.Module = model, opt: torch.optim.Optimizer = optimizers[name]) -> None:
                with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                    loss = sum(model(images, targets).values())
                opt.zero_grad()
                scaler.scale(loss).backward()  # type: ignore[arg-type]
                scaler.step(opt)
                scaler.update()

            if rep == min(warmup, 1) + n:  # the extra CUDA step: memory only
                peaks[name] = peak_memory_mb(step, dev)
            else:
                ms = time_ms(step, dev)
                if rep >= min(warmup, 1):
                    times[name].append(ms)
            model.eval()
    return {name: (times[name], peaks.get(name)) for name in models}
