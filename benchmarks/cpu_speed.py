"""CPU inference speed (issue #21): harnet's own network as ``Detector`` loads it vs onnxruntime fp32,
and the hybrid's latency and FLOPs ratios to RetinaNet.

Two measurements, each in one process with the variants interleaved (A, B, C, A, B, C, ...) and
medians taken, because the machine is shared and noisy:

1. ``demo``: the demo checkpoint's network (hybrid, EfficientNet-Lite0) on a normalised
   (1, 3, S, S) batch: plain PyTorch (``Detector.from_checkpoint(..., optimize=False)`` without the
   sampled deformable conv), ``Detector.from_checkpoint`` as shipped (folded norms, channels_last,
   sampled deformable conv), and the same network exported to ONNX under onnxruntime (CPU, fp32).
   Also the end-to-end ``Detector.predict`` of one image, plain vs optimised.
2. ``hybrid``: random-weight ResNet-18 ``retinanet`` and ``hybrid`` presets at 512 px, full
   ``model([image])``, the hybrid with torchvision's deformable conv and with the sampled one; GFLOPs
   from :func:`harnet.utils.complexity.count_flops`.

    python benchmarks/cpu_speed.py --checkpoint runs/demo/run --size 320 --threads 2 \
        --out docs/results/cpu_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harnet import Detector
from harnet.modeling.attention import deform_sampling
from harnet.tools.bench import _device_name, build_models
from harnet.tools.export import RawNetwork, export_onnx
from harnet.utils.complexity import count_flops

_SAMPLING = deform_sampling.use_sampling


def sampling(on: bool) -> None:
    """Switch the sampled deformable conv on (its own rule) or off (torchvision's op everywhere)."""
    deform_sampling.use_sampling = _SAMPLING if on else (lambda x: False)  # type: ignore[assignment]


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median and quartiles (ms) of each call, the calls run in turn so that load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(warmup + repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            ms = (time.perf_counter() - start) * 1000
            if rep >= warmup:
                times[name].append(ms)
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        out[name] = {"median_ms": statistics.median(values), "q1_ms": q[0], "q3_ms": q[2]}
    return out


def bench_demo(checkpoint: str, size: int, threads: int, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    test_time = {"test_min_size": size, "test_max_size": size}
    plain = Detector.from_checkpoint(checkpoint, device="cpu", optimize=False)
    fast = Detector.from_checkpoint(checkpoint, device="cpu")
    for det in (plain, fast):
        det.model.config.transform.test_min_size = test_time["test_min_size"]
        det.model.config.transform.test_max_size = test_time["test_max_size"]
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(1, 3, size, size, generator=g)
    batch_cl = batch.contiguous(memory_format=torch.channels_last)
    image = torch.rand(3, size, size, generator=g)
    plain_net, fast_net = RawNetwork(plain.model).eval(), RawNetwork(fast.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "net.onnx"
        export_onnx(plain.model, onnx_path, size=(size, size))  # type: ignore[arg-type]
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into torch's turn
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {"images": batch.numpy()}

    def plain_call() -> Any:
        sampling(False)
        return plain_net(batch)

    def fast_call() -> Any:
        sampling(True)
        return fast_net(batch_cl)

    def plain_predict() -> Any:
        sampling(False)
        return plain.predict(image)

    def fast_predict() -> Any:
        sampling(True)
        return fast.predict(image)

    with torch.inference_mode():
        reference = plain_call()
        diff = max(float((a - b).abs().max()) for a, b in zip(fast_call(), reference))
        ort_diff = max(float((torch.from_numpy(a) - b).abs().max()) for a, b in zip(session.run(None, feed), reference))
        network = interleaved({"pytorch_plain": plain_call, "pytorch_detector": fast_call,
                               "onnxruntime": lambda: session.run(None, feed)}, repeats, warmup=3)
        predict = interleaved({"predict_plain": plain_predict, "predict_detector": fast_predict}, repeats, warmup=2)
    sampling(True)
    ort_ms = network["onnxruntime"]["median_ms"]
    return {
        "checkpoint": checkpoint, "size": size, "network": network, "predict": predict,
        "ratio_to_onnxruntime": {k: v["median_ms"] / ort_ms for k, v in network.items()},
        "predict_speedup": predict["predict_plain"]["median_ms"] / predict["predict_detector"]["median_ms"],
        "max_abs_diff_detector_vs_plain": diff, "max_abs_diff_onnxruntime_vs_plain": ort_diff,
    }


def bench_hybrid(size: int, repeats: int) -> dict[str, Any]:
    models = build_models("resnet18", size, 80)
    retinanet, hybrid = models["retinanet"].eval(), models["hybrid"].eval()
    gflops = {"retinanet": count_flops(retinanet, size), "hybrid": count_flops(hybrid, size)}
    image = [torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))]

    def run(model: torch.nn.Module, sampled: bool) -> Callable[[], Any]:
        def call() -> Any:
            sampling(sampled)
            return model(image)
        return call

    with torch.inference_mode():
        times = interleaved({"retinanet": run(retinanet, True), "hybrid_torchvision_deform": run(hybrid, False),
                             "hybrid": run(hybrid, True)}, repeats, warmup=2)
    sampling(True)
    base = times["retinanet"]["median_ms"]
    return {"size": size, "backbone": "resnet18", "gflops": gflops,
            "flops_ratio": gflops["hybrid"] / gflops["retinanet"], "latency": times,
            "latency_ratio": {k: v["median_ms"] / base for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/demo/run")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--hybrid-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip", choices=["demo", "hybrid"], action="append", default=[])
    parser.add_argument("--out", default="docs/results/cpu_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"device_name": _device_name(torch.device("cpu")), "threads": args.threads,
                              "repeats": args.repeats, "torch_version": torch.__version__}
    if "demo" not in args.skip:
        result["demo"] = bench_demo(args.checkpoint, args.size, args.threads, args.repeats)
        print(json.dumps(result["demo"]["ratio_to_onnxruntime"]), flush=True)
    if "hybrid" not in args.skip:
        result["hybrid"] = bench_hybrid(args.hybrid_size, args.repeats)
        print(json.dumps(result["hybrid"]["latency_ratio"]), result["hybrid"]["flops_ratio"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
