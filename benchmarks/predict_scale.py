"""Many inputs on one machine (issue #29 item 2): one ``harnet predict`` process against ``--dask local:2``
against two ``--shard`` processes run at once, on the same inputs, wall time from the command's start to
its ``detections.json`` (process start, imports and model loading included: what a user waits for).

Two workloads: a folder of ``--images`` generated images (``--image-size`` px, random pixels), predicted
whole, and one generated ``--raster`` px square 3-band GeoTIFF predicted with ``--tile``. Every mode writes
into a fresh folder and the ``detections.json`` of the two 2-process modes are compared byte for byte
(``equal``), and against the single process's within float rounding (``single_close``: same count, scores
within 1e-5): a backend's arithmetic depends on its thread count (torch on the CPU: the last bits of some
scores, which can reorder ties), and the single process runs with twice the threads.

Threads are shared fairly: the single process gets ``--threads`` (default: every core), each of the two
dask workers and each of the two shards half of them. The modes run in turn A B C, then C B A for each
further repeat, so that a slow spell of a shared machine hits all of them; every time is reported and the
ratio to the single process is that of the medians.

    python benchmarks/predict_scale.py --model model.onnx --images 64 --raster 4000 --tile 400 \\
        --work /tmp/predict_scale --out docs/results/predict_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
MODES = ("single", "dask local:2", "2 shards")


def make_inputs(work: Path, images: int, image_size: int, raster: int) -> dict[str, Path]:
    """The generated inputs under ``work`` (kept between runs of the script with the same sizes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    found: dict[str, Path] = {}
    if images:
        folder = work / f"images_{images}x{image_size}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for i in range(images):
                pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i:04d}.png")
        found["images"] = folder
    if raster:
        path = work / f"raster_{raster}.tif"
        if not path.exists():
            import rasterio
            from rasterio.transform import from_origin

            with rasterio.open(path, "w", driver="GTiff", width=raster, height=raster, count=3, dtype="uint8",
                               crs="EPSG:32633", transform=from_origin(500000.0, 4000000.0, 0.1, 0.1),
                               tiled=True, blockxsize=256, blockysize=256, compress="deflate") as ds:
                for row in range(0, raster, 256):
                    rows = min(256, raster - row)
                    ds.write(rng.integers(0, 256, (3, rows, raster), dtype=np.uint8),
                             window=rasterio.windows.Window(0, row, raster, rows))
        found["raster"] = path
    return found


def command(model: str, inputs: Path, out: Path, threads: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "harnet.tools.cli", "predict", model, str(inputs), "--out", str(out),
            "--threads", str(threads), "--no-progress", *extra]


def run_mode(mode: str, model: str, inputs: Path, out: Path, threads: int, extra: list[str]) -> float:
    """Wall seconds of one mode into a fresh ``out``; a failed command stops the benchmark with its stderr."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    half = max(1, threads // 2)
    if mode == "single":
        commands = [command(model, inputs, out, threads, extra)]
    elif mode == "dask local:2":
        commands = [command(model, inputs, out, half, [*extra, "--dask", "local:2"])]
    else:
        commands = [command(model, inputs, out, half, [*extra, "--shard", f"{k}/2"]) for k in (1, 2)]
    tic = time.perf_counter()
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    for process, c in zip(processes, commands):
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(c)} failed ({process.returncode}):\n{err}")
    seconds = time.perf_counter() - tic
    if not (out / "detections.json").is_file():
        raise SystemExit(f"{mode}: no detections.json in {out}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="any model file harnet predict takes")
    p.add_argument("--images", type=int, default=32, help="generated images (0: skip)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--raster", type=int, default=2000, help="side of the generated GeoTIFF in px (0: skip)")
    p.add_argument("--tile", type=int, default=400)
    p.add_argument("--score", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="of the single process (halved for 2)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three modes (A B C, C B A, ...)")
    p.add_argument("--work", default="/tmp/predict_scale")
    p.add_argument("--out", help="results JSON (and a .md table beside it)")
    args = p.parse_args()
    work = Path(args.work)
    inputs = make_inputs(work, args.images, args.image_size, args.raster)
    results: dict[str, Any] = {
        "model": args.model, "threads": args.threads, "cpus": os.cpu_count(), "machine": platform.processor(),
        "python": platform.python_version(), "images": args.images, "image_size": args.image_size,
        "raster": args.raster, "tile": args.tile, "repeats": args.repeats, "workloads": {},
    }
    for workload, path in inputs.items():
        extra = ["--score", str(args.score), *(["--tile", str(args.tile)] if workload == "raster" else [])]
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else reversed(MODES):
                out = work / f"out_{workload}_{mode.replace(' ', '_').replace(':', '')}"
                seconds = run_mode(mode, args.model, path, out, args.threads, extra)
                times[mode].append(seconds)
                print(f"{workload} {mode}: {seconds:.2f} s", file=sys.stderr, flush=True)
        outs = [work / f"out_{workload}_{mode.replace(' ', '_').replace(':', '')}" for mode in MODES]
        found = [json.loads((o / "detections.json").read_text()) for o in outs]
        scores = [np.sort([d["score"] for d in dets]) for dets in found]
        medians = {mode: statistics.median(t) for mode, t in times.items()}
        results["workloads"][workload] = {
            "input": str(path), "seconds": times, "median": medians,
            "speedup": {mode: medians["single"] / medians[mode] for mode in MODES},
            "equal": (outs[1] / "detections.json").read_bytes() == (outs[2] / "detections.json").read_bytes(),
            "single_close": all(len(v) == len(scores[0]) and bool(np.allclose(v, scores[0], rtol=0, atol=1e-5))
                                for v in scores[1:]),
            "detections": len(found[0]),
        }
    table = ["| workload | " + " | ".join(MODES) + " | dask = shards | = single (rounding) |",
             "|---" * (len(MODES) + 3) + "|"]
    for workload, r in results["workloads"].items():
        cells = [f"{r['median'][m]:.1f} s ({r['speedup'][m]:.2f}x)" for m in MODES]
        same = ["yes" if r[key] else "NO" for key in ("equal", "single_close")]
        table.append(f"| {workload} | " + " | ".join(cells) + f" | {same[0]} | {same[1]} |")
    text = "\n".join(table)
    print(json.dumps(results, indent=1))
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
