"""``harnet bench RUN --formats ...``: one trained checkpoint in each deployable form, measured in one process.

Per format: val AP (the checkpoint's own data, each format's full pipeline: for ``torch``, ``model(images)``
with the network as :class:`~harnet.engine.predictor.Detector` runs it (folded norms, channels_last);
for the others, :mod:`harnet.deploy`'s numpy pre/post-processing around the runtime),
network latency at a fixed square input (median, the formats interleaved so a noisy machine slows
them alike; ratios to onnxruntime fp32 are what to read), FPS of the whole pipeline on the val
images, the peak resident memory one inference adds, and the file size. The exports are made from
the checkpoint into a scratch folder; int8 is calibrated on the training images.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harnet.config.experiment import ExperimentConfig, load_experiment
from harnet.config.io import merge
from harnet.data.build import build_dataset
from harnet.deploy.formats import BENCH_FORMATS, CHECKPOINT, DEFAULT_BENCH_FORMATS, EXPORT_FORMATS, parse_bench_formats
from harnet.deploy.metadata import load_export_info
from harnet.deploy.predictor import Predictor
from harnet.deploy.preprocess import preprocess as np_preprocess
from harnet.deploy.runtime import OnnxRuntime, open_runtime
from harnet.engine import checkpoint
from harnet.engine.evaluation import evaluate_predictions
from harnet.engine.fast_inference import optimize_for_inference
from harnet.modeling.harnet import HARNet
from harnet.tools.bench import peak_memory_mb
from harnet.tools.export import RawNetwork, export_model

FORMATS = BENCH_FORMATS  # the checkpoint ("torch") and every export harnet.deploy runs


@dataclass
class RunBenchResult:
    run: str
    size: int
    threads: int
    repeats: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = ["| format | val AP | AP50 | network ms | × onnx fp32 | pipeline FPS | peak MB | file MB |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['format']} | {r['ap']:.4f} | {r['ap50']:.4f} | {r['latency_ms']:.1f} | "
                         f"{r['latency_ratio']:.2f} | {r['fps']:.1f} | {r['peak_mb'] or 0:.0f} | {r['file_mb']:.1f} |")
        return "\n".join(lines)


def _files_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def _runtime_call(detector: Predictor, images: np.ndarray) -> Callable[[], Any]:
    return lambda: detector.runtime.run(images)


def bench_run(run: str | Path, formats: Sequence[str] = DEFAULT_BENCH_FORMATS, size: int = 320,
              threads: int = 2, repeats: int = 20, warmup: int = 3, data: str | None = None, calib_count: int = 50,
              progress: Callable[[str], None] | None = None) -> RunBenchResult:
    formats = parse_bench_formats(",".join(formats))
    torch.set_num_threads(threads)
    say = progress or (lambda _: None)
    ckpt = checkpoint.load(run)
    model = checkpoint.build_model(ckpt).eval()
    assert isinstance(model, HARNet), "bench RUN measures HAR-Net checkpoints"
    data_cfg = (load_experiment(data) if data else ExperimentConfig.from_dict(merge(ckpt["config"], {}))).data
    val = build_dataset(data_cfg, "val", class_names=ckpt["class_names"])
    images = [val[i][0].as_subclass(torch.Tensor) for i in range(len(val))]
    image_ids = [int(val[i][1]["image_id"]) for i in range(len(val))]
    result = RunBenchResult(str(ckpt["path"]), size, threads, repeats)
    transform = replace(model.config.transform, test_min_size=size, test_max_size=size)
    network_input = np_preprocess([images[0].numpy()], transform).images  # one val image at size x size
    network_input = np.ascontiguousarray(np.pad(network_input, ((0, 0), (0, 0), (0, size - network_input.shape[2]),
                                                                (0, size - network_input.shape[3]))))
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        for fmt in formats:
            if fmt == CHECKPOINT:
                paths[fmt] = Path(ckpt["path"])
                continue
            say(f"exporting {fmt}")
            spec = EXPORT_FORMATS[fmt]
            calibration: list[torch.Tensor] = []
            if spec.precision == "int8":
                train = build_dataset(data_cfg, "train", class_names=ckpt["class_names"])
                calibration = [train[i][0].as_subclass(torch.Tensor) for i in range(min(calib_count, len(train)))]
            out = Path(tmp) / spec.default_name()
            export_model(model, out, spec.name, ckpt["class_names"], ckpt["category_ids"], verify=False,
                         calibration=calibration)
            paths[fmt] = out  # the model file, or the OpenVINO folder (file MB: all its files)
        # onnxruntime pools that sleep between runs: spinning ones would steal the cores of the format timed next.
        detectors = {fmt: Predictor(OnnxRuntime(p, threads, spin=False) if EXPORT_FORMATS[fmt].runtime == "onnxruntime"
                                    else open_runtime(p, threads=threads), load_export_info(p))
                     for fmt, p in paths.items() if fmt != CHECKPOINT}
        # The torch row is the network as Detector (harnet predict) runs it: folded norms, channels_last.
        fast = optimize_for_inference(copy.deepcopy(model), torch.device("cpu"))
        raw = RawNetwork(fast).eval()
        x_torch = torch.from_numpy(network_input).contiguous(memory_format=torch.channels_last)
        calls: dict[str, Callable[[], Any]] = {}
        for fmt in formats:
            calls[fmt] = (lambda: raw(x_torch)) if fmt == CHECKPOINT else _runtime_call(detectors[fmt], network_input)
        say("timing networks")
        times: dict[str, list[float]] = {fmt: [] for fmt in calls}
        with torch.inference_mode():
            for rep in range(warmup + repeats):
                for fmt, call in calls.items():
                    start = time.perf_counter()
                    call()
                    if rep >= warmup:
                        times[fmt].append((time.perf_counter() - start) * 1000)
            peaks = {fmt: peak_memory_mb(call, torch.device("cpu")) for fmt, call in calls.items()}
        latency = {fmt: statistics.median(v) for fmt, v in times.items()}
        reference = latency.get("onnx") or next(iter(latency.values()))
        for fmt in formats:
            say(f"val AP: {fmt}")
            start = time.perf_counter()
            if fmt == CHECKPOINT:
                with torch.inference_mode():
                    predictions = [fast([image])[0] for image in images]
            else:
                detections = [detectors[fmt].predict([image.numpy()])[0] for image in images]
                predictions = [{k: torch.from_numpy(np.asarray(d[k])) for k in ("boxes", "scores", "labels")}
                               for d in detections]
            seconds = time.perf_counter() - start
            stats = evaluate_predictions(val, image_ids, predictions).stats
            result.rows.append({
                "format": fmt, "ap": stats["AP"], "ap50": stats["AP50"], "latency_ms": latency[fmt],
                "latency_ratio": latency[fmt] / reference, "fps": len(images) / seconds, "peak_mb": peaks[fmt],
                "file_mb": _files_mb(paths[fmt]), "val_images": len(images),
            })
    return result
