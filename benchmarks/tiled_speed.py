"""Tiled prediction of a large raster with every backend (issue #26, items 3 and 4): speed, memory, the
per-window time split before and after the numpy post-processing and merge, and the mosaic AP.

One run measures, for a checkpoint (PyTorch) and its exports (ONNX fp32, ONNX int8, OpenVINO):

* **speed and memory**: a ``--size`` px square 3-band uint8 GeoTIFF (the trees val mosaic of
  :mod:`tiled_trees` repeated; deflate, 256 px blocks) predicted with ``--tile 400 --overlap 0.25`` through
  :func:`harnet.deploy.predict_raster.predict_rasters` (what ``harnet predict MODEL RASTER --tile`` runs,
  with its overview picture, GeoPackage and GeoJSON, and ``detections.json``), each backend in a child
  process of its own so that its peak RSS (the child's ``VmHWM``; not ``ru_maxrss``, which Linux carries
  across exec) is its own. The backends run in turn twice, A B C D then D C B A, so that a slow spell of a
  shared machine hits all of them; both runs and their median are reported, and Mpx/s as a ratio to torch;
* **the per-window time split**: ``TiledResult.seconds`` (read, network, post-processing, merge) of each
  child, per window; and, in this process on the torch backend, the previous post-processing (Soft-NMS and
  voting as copied in :mod:`postprocess_speed`) against the current one on the raw outputs of
  ``--capture`` real windows of the raster, and the previous merge (:mod:`tiling_merge_speed`'s copy)
  against the current one on the torch child's real per-window detections, interleaved with the network
  on the same windows;
* **AP** on the 1600 x 1200 mosaic (its COCO annotations from :func:`tiled_trees.build_mosaic`) per backend
  at tile 400, overlap 0.25 and 0 (the cut-box rule's effect: at overlap 0 it never applies).

The results are written to ``--out`` (JSON) after each measurement and, at the end, a markdown table
beside it.

    python benchmarks/tiled_speed.py --run RUN --data data/trees --onnx model.onnx --int8 model.int8.onnx \\
        --openvino openvino/ --work /tmp/tiled_speed --out docs/results/tiled_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiled_trees  # the mosaic, its AP and the large raster

TILE, OVERLAP = 400, 0.25

# One backend's tiled prediction of the large raster, the real path. The wrappers only keep references
# (the TiledResult, the windows' detections handed to the merge) and read the clock around the call.
CHILD = r"""
import json, pickle, sys, time
from pathlib import Path

import harnet.deploy.predictor as predictor_module
from harnet.deploy.predict_raster import predict_rasters
from harnet.tools.predict import open_predictor


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


model, tif, out, tile, overlap, threads, parts_file = sys.argv[1:8]
tic = time.perf_counter()
predictor = open_predictor(model, threads=int(threads), device="cpu")
load_s = time.perf_counter() - tic
after_load = {"rss_mb": status("VmRSS"), "hwm_mb": status("VmHWM")}
captured = {}
tiled = predictor.predict_tiled


def timed_tiled(*args, **kwargs):
    tic = time.perf_counter()
    captured["result"] = tiled(*args, **kwargs)
    captured["tiled_s"] = time.perf_counter() - tic
    return captured["result"]


merge = predictor_module.merge_windows


def kept_merge(parts, grid, cfg):
    captured["parts"], captured["grid"] = list(parts), grid
    return merge(parts, grid, cfg)


predictor.predict_tiled = timed_tiled
predictor_module.merge_windows = kept_merge
Path(out).mkdir(parents=True, exist_ok=True)
tic = time.perf_counter()
report = predict_rasters(predictor, [Path(tif)], Path(out), 0.3, int(tile), float(overlap))
report.write(Path(out))
seconds = time.perf_counter() - tic
result = captured["result"]
peak = status("VmHWM")
if parts_file != "-":
    with open(parts_file, "wb") as f:
        pickle.dump({"parts": captured["parts"], "grid": captured["grid"]}, f)
print(json.dumps({
    "backend": predictor.runtime.name, "load_s": load_s, "seconds": seconds, "tiled_s": captured["tiled_s"],
    "split_s": result.seconds, "windows": result.windows, "detections_score0.3": len(report.detections),
    "cut_dropped": result.cut_dropped, "merged": result.merged, "skipped": report.skipped,
    "after_load": after_load, "peak_rss_mb": peak,
}))
"""


def machine() -> dict[str, Any]:
    """The CPU (lscpu's model name), its cores, and the versions of every runtime measured."""
    import onnxruntime
    import openvino
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", "?").strip(), "cpus": os.cpu_count(),
            "avx512_vnni": "avx512_vnni" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def run_child(model: str, tif: Path, out: Path, threads: int, parts_file: Path | None) -> dict[str, Any]:
    child = subprocess.run([sys.executable, "-c", CHILD, model, str(tif), str(out), str(TILE), str(OVERLAP),
                            str(threads), str(parts_file) if parts_file else "-"],
                           capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"{model}: child failed\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def speed_rounds(backends: dict[str, str], tif: Path, size: int, work: Path, threads: int, parts_file: Path,
                 result: dict, out: Path) -> None:
    """Each backend twice, A B C D then D C B A, a child process each; results saved after each run."""
    names = list(backends)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    result["speed"] = {"raster": f"{size} x {size} x 3 uint8 GeoTIFF, deflate, 256 px blocks", "tile": TILE,
                       "overlap": OVERLAP, "threads": threads, "score": 0.3, "order": [names, names[::-1]],
                       "runs": runs}
    mpx = size * size / 1e6
    for order in (names, names[::-1]):
        for name in order:
            keep = parts_file if name == "torch" and not parts_file.exists() else None
            measured = run_child(backends[name], tif, work / f"out_{name}", threads, keep)
            measured["Mpx_per_s"] = mpx / measured["seconds"]
            measured["tiled_Mpx_per_s"] = mpx / measured["tiled_s"]
            runs[name].append(measured)
            print(f"[speed] {name}: {measured['Mpx_per_s']:.3f} Mpx/s, {measured['detections_score0.3']} det, "
                  f"peak {measured['peak_rss_mb']:.0f} MB, split {measured['split_s']}", flush=True)
            save(result, out)
    summary = {}
    for name, values in runs.items():
        split = {k: statistics.median(r["split_s"][k] for r in values) for k in values[0]["split_s"]}
        windows = values[0]["windows"]
        summary[name] = {
            "Mpx_per_s_runs": [round(r["Mpx_per_s"], 4) for r in values],
            "Mpx_per_s": statistics.median(r["Mpx_per_s"] for r in values),
            "tiled_Mpx_per_s": statistics.median(r["tiled_Mpx_per_s"] for r in values),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in values),
            "detections_score0.3": values[0]["detections_score0.3"],
            "windows": windows,
            "per_window_ms": {k: 1000 * v / windows for k, v in split.items()},
            "other_per_window_ms": 1000 * (statistics.median(r["tiled_s"] for r in values) - sum(split.values()))
            / windows,
        }
    for name in summary:
        summary[name]["ratio_to_torch"] = summary[name]["Mpx_per_s"] / summary["torch"]["Mpx_per_s"]
    result["speed"]["summary"] = summary
    save(result, out)


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` rounds, the calls in turn so that load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(warmup + repeats):
        for name, fn in calls.items():
            tic = time.perf_counter()
            fn()
            if rep >= warmup:
                times[name].append(time.perf_counter() - tic)
    return times


def before_after(run: str, tif: Path, parts_file: Path, threads: int, capture: int, repeats: int) -> dict[str, Any]:
    """On the torch backend, in this process: network, post-processing old/new (the raw outputs of the
    first ``capture`` windows of the raster, batches as ``predict_tiled`` makes them) and merge old/new (the
    torch child's per-window detections of the whole raster)."""
    import postprocess_speed as pps
    import tiling_merge_speed as tms

    from harnet.deploy.postprocess import suppress
    from harnet.deploy.predictor import _padded, candidates
    from harnet.deploy.preprocess import preprocess
    from harnet.deploy.raster import open_raster
    from harnet.deploy.tiling import merge_windows, window_grid
    from harnet.tools.predict import open_predictor

    predictor = open_predictor(run, threads=threads, device="cpu")
    info, cfg = predictor.info, predictor.config.inference
    raster = open_raster(tif)
    windows = window_grid(raster.width, raster.height, TILE, OVERLAP, predictor.min_tile).windows()[:capture]
    images = [_padded(raster.read(w), TILE) for w in windows]  # type: ignore[arg-type]
    raster.close()
    batches = [preprocess(images[k : k + predictor.batch_size], predictor.config.transform)
               for k in range(0, len(images), predictor.batch_size)]
    raw = [predictor.runtime.run(b.images) for b in batches]

    def network() -> None:
        for b in batches:
            predictor.runtime.run(b.images)

    def post(old: bool) -> list[list[dict[str, np.ndarray]]]:
        found = []
        for (logits, deltas), b in zip(raw, batches):
            found.append([pps.old_np_suppress(*c, cfg) if old else suppress(*c, cfg)
                          for c in candidates(logits, deltas, b, info, cfg)])
        return found

    new_out, old_out = post(False), post(True)
    agree = True
    for new_batch, old_batch in zip(new_out, old_out):
        for n, o in zip(new_batch, old_batch):
            try:
                pps.check_same(n, o, "window")
            except AssertionError:
                agree = False
    candidates_per_window = [len(c[1]) for (lg, dl), b in zip(raw, batches) for c in candidates(lg, dl, b, info, cfg)]
    times = interleaved({"network": network, "postprocess_new": lambda: post(False),
                         "postprocess_old": lambda: post(True)}, repeats)
    with open(parts_file, "rb") as f:
        kept = pickle.load(f)
    parts, grid = kept["parts"], kept["grid"]
    merged_new = merge_windows(parts, grid, cfg)
    (_, old_scores, _, old_merged), old_cut, _ = tms.old_whole(grid, parts, cfg)
    merge_times = interleaved({"merge_new": lambda: merge_windows(parts, grid, cfg),
                               "merge_old": lambda: tms.old_whole(grid, parts, cfg)}, max(2, repeats // 2))
    per_window = {k: 1000 * statistics.median(v) / len(windows) for k, v in times.items()}
    per_window.update({k: 1000 * statistics.median(v) / len(parts) for k, v in merge_times.items()})
    return {
        "windows_postprocess": len(windows), "batch_size": predictor.batch_size,
        "candidates_per_window_median": statistics.median(candidates_per_window),
        "detections_per_window_median": statistics.median(len(d["scores"]) for b in new_out for d in b),
        "postprocess_old_new_agree": agree,
        "windows_merge": len(parts), "boxes_merge": int(sum(len(p.scores) for p in parts)),
        "merge_new": {"cut_dropped": merged_new.cut_dropped, "merged": merged_new.merged,
                      "out": len(merged_new.scores)},
        "merge_old": {"cut_dropped": old_cut, "merged": old_merged, "out": len(old_scores)},
        "recipe": {"nms": cfg.nms, "soft_nms_sigma": cfg.soft_nms_sigma, "box_voting_iou": cfg.box_voting_iou,
                   "final_score_thresh": cfg.final_score_thresh, "detections_per_img": cfg.detections_per_img},
        "per_window_ms": per_window,
        "speedup": {"postprocess": per_window["postprocess_old"] / per_window["postprocess_new"],
                    "merge": per_window["merge_old"] / per_window["merge_new"]},
        "post_plus_merge_over_network": {
            "old": (per_window["postprocess_old"] + per_window["merge_old"]) / per_window["network"],
            "new": (per_window["postprocess_new"] + per_window["merge_new"]) / per_window["network"]},
        "repeats": repeats,
    }


def accuracy(backends: dict[str, str], data: Path, work: Path, threads: int) -> dict[str, Any]:
    """AP of every backend on the mosaic, tile 400, overlap 0.25 and 0; torch's per-tile AP too."""
    from harnet.tools.predict import open_predictor

    png, _, ann, tiles = tiled_trees.build_mosaic(data, work / "mosaic")
    out: dict[str, Any] = {"mosaic": "4 x 3 trees val tiles, 1600 x 1200 px", "tile": TILE}
    for name, model in backends.items():
        predictor = open_predictor(model, threads=threads, device="cpu")
        row: dict[str, Any] = {}
        variants = {f"overlap{o}": tiled_trees.tiled(predictor, png, TILE, o) for o in (OVERLAP, 0.0)}
        if name == "torch":
            variants["per_tile"] = tiled_trees.per_tile(predictor, tiles)
        for key, det in variants.items():
            row[key] = {"AP": tiled_trees.coco_ap(ann, det, predictor.category_ids), "detections": len(det["boxes"]),
                        "duplicates_iou0.7_score0.3": tiled_trees.duplicates(det)}
        row["AP_overlap_minus_0"] = row[f"overlap{OVERLAP}"]["AP"] - row["overlap0.0"]["AP"]
        out[name] = row
        print(f"[AP] {name}: {row}", flush=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Tiled prediction per backend ({m['cpu']}, {result['threads']} threads)", "",
             f"`{result['command']}`", "",
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, openvino {m['openvino']}, numpy {m['numpy']}.", ""]
    speed = result.get("speed", {}).get("summary")
    ap = result.get("accuracy", {})
    if speed:
        lines += [f"{result['speed']['raster']}, tile {TILE}, overlap {OVERLAP}, through `predict_rasters` (overview, "
                  "GeoPackage, GeoJSON, detections.json); a child process per run, runs A B C D then D C B A.", "",
                  "| backend | Mpx/s (run 1, run 2) | median | ratio to torch | peak RSS MB | detections >= 0.3 "
                  f"| mosaic AP (overlap {OVERLAP}) | mosaic AP (overlap 0) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in speed.items():
            a = ap.get(name, {})
            ap25 = f"{a[f'overlap{OVERLAP}']['AP']:.4f}" if a else "-"
            ap0 = f"{a['overlap0.0']['AP']:.4f}" if a else "-"
            runs = ", ".join(f"{v:.3f}" for v in s["Mpx_per_s_runs"])
            lines.append(f"| {name} | {runs} | {s['Mpx_per_s']:.3f} | {s['ratio_to_torch']:.2f} | "
                         f"{s['peak_rss_mb']:.0f} | {s['detections_score0.3']} | {ap25} | {ap0} |")
        lines += ["", "Per window (ms, median of the two runs; `other`: pre-processing and the windows' "
                  "bookkeeping, timed by no key of `TiledResult.seconds`):", "",
                  "| backend | read | network | post-processing | merge | other | post + merge / network |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in speed.items():
            w = s["per_window_ms"]
            lines.append(f"| {name} | {w['read']:.1f} | {w['network']:.1f} | {w['postprocess']:.1f} | "
                         f"{w['merge']:.2f} | {s['other_per_window_ms']:.1f} | "
                         f"{(w['postprocess'] + w['merge']) / w['network']:.3f} |")
    ba = result.get("before_after")
    if ba:
        w = ba["per_window_ms"]
        lines += ["", f"Before / after on the torch backend, one process, interleaved: post-processing on the raw "
                  f"outputs of {ba['windows_postprocess']} windows (median {ba['candidates_per_window_median']} "
                  f"candidates, {ba['detections_per_window_median']} detections a window; old and new agree: "
                  f"{ba['postprocess_old_new_agree']}), merge on the torch run's {ba['windows_merge']} windows "
                  f"({ba['boxes_merge']} boxes).", "",
                  "| per window, ms | network | post-processing | merge | post + merge / network |",
                  "|---|---|---|---|---|",
                  f"| before | {w['network']:.1f} | {w['postprocess_old']:.2f} | {w['merge_old']:.2f} | "
                  f"{ba['post_plus_merge_over_network']['old']:.3f} |",
                  f"| after | {w['network']:.1f} | {w['postprocess_new']:.2f} | {w['merge_new']:.2f} | "
                  f"{ba['post_plus_merge_over_network']['new']:.3f} |",
                  "", f"Merge counts: old rule cut {ba['merge_old']['cut_dropped']}, merged "
                  f"{ba['merge_old']['merged']}, out {ba['merge_old']['out']}; new rule cut "
                  f"{ba['merge_new']['cut_dropped']}, merged {ba['merge_new']['merged']}, "
                  f"out {ba['merge_new']['out']}."]
    if ap.get("torch", {}).get("per_tile"):
        t = ap["torch"]
        lines += ["", f"Mosaic AP, torch: per tile {t['per_tile']['AP']:.4f}, overlap 0 {t['overlap0.0']['AP']:.4f}, "
                  f"overlap {OVERLAP} {t[f'overlap{OVERLAP}']['AP']:.4f} ({t['AP_overlap_minus_0']:+.4f})."]
    targets = result.get("targets")
    if targets:
        lines += ["", "| target | value | met |", "|---|---|---|"]
        lines += [f"| {k} | {v['value']:.3f} | {v['met']} |" for k, v in targets.items()]
    return "\n".join(lines) + "\n"


def targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    speed = result.get("speed", {}).get("summary", {})
    if "onnx_int8" in speed:
        v = speed["onnx_int8"]["ratio_to_torch"]
        out["int8 Mpx/s / torch Mpx/s >= 2"] = {"value": v, "met": v >= 2}
    ap = result.get("accuracy", {})
    if "onnx_int8" in ap and "onnx_fp32" in ap:
        v = ap["onnx_int8"][f"overlap{OVERLAP}"]["AP"] - ap["onnx_fp32"][f"overlap{OVERLAP}"]["AP"]
        out["int8 AP - fp32 AP (abs <= 0.01)"] = {"value": v, "met": abs(v) <= 0.01}
    if "torch" in speed:
        w = speed["torch"]["per_window_ms"]
        v = (w["postprocess"] + w["merge"]) / w["network"]
        out["torch (post + merge) / network <= 0.5"] = {"value": v, "met": v <= 0.5}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder or checkpoint (the torch backend)")
    parser.add_argument("--data", required=True, help="the trees data (harnet data trees --out DIR)")
    parser.add_argument("--onnx", help="ONNX fp32 export")
    parser.add_argument("--int8", help="ONNX int8 export")
    parser.add_argument("--openvino", help="OpenVINO IR (.xml or folder)")
    parser.add_argument("--work", default="/tmp/tiled_speed")
    parser.add_argument("--out", default="docs/results/tiled_speed.json")
    parser.add_argument("--size", type=int, default=4000, help="side of the large raster")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--capture", type=int, default=48, help="windows whose raw outputs time post-processing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "before_after", "accuracy"])
    args = parser.parse_args()

    backends = {"torch": args.run, "onnx_fp32": args.onnx, "onnx_int8": args.int8, "openvino": args.openvino}
    backends = {k: v for k, v in backends.items() if v}
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                              "machine": machine(), "threads": args.threads, "models": backends}
    if out.exists():  # parts skipped in this call keep their earlier results
        previous = json.loads(out.read_text())
        result.update({k: previous[k] for k in args.skip if k in previous})
    save(result, out)
    png, _, _, _ = tiled_trees.build_mosaic(Path(args.data), work / "mosaic")
    tif = work / f"large{args.size}.tif"
    if not tif.exists():
        from PIL import Image

        tiled_trees.large_raster(np.asarray(Image.open(png).convert("RGB")), tif, args.size)
    parts_file = work / "torch_parts.pkl"
    if "speed" not in args.skip:
        parts_file.unlink(missing_ok=True)
        speed_rounds(backends, tif, args.size, work, args.threads, parts_file, result, out)
    if "before_after" not in args.skip:
        result["before_after"] = before_after(args.run, tif, parts_file, args.threads, args.capture, args.repeats)
        print(f"[before/after] {json.dumps(result['before_after'])}", flush=True)
        save(result, out)
    if "accuracy" not in args.skip:
        result["accuracy"] = accuracy(backends, Path(args.data), work, args.threads)
        save(result, out)
    result["targets"] = targets(result)
    save(result, out)
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
