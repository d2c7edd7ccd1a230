"""``harnet ablate``: the paper's ablation at any scale, over several seeds, with a same-recipe peer.

Rows: torchvision's RetinaNet built to the same recipe (the peer), our ``retinanet`` preset, each
attention alone, the hybrid, and the hybrid minus each attention. Every (row, seed) is one
``harnet train`` run in its own process and folder (``OUT/ROW/seedS``) with the same data,
schedule and seed set; a run that finished (``done.json``) is never redone, and one that was
stopped is resumed from its ``last.pt``. So the whole ablation can be killed and restarted at will,
and ``--jobs N`` runs N trainings at once (several small runs share one GPU well).

The report (``results.json``, ``results.md``, ``ap_vs_step.png``) gives mean ± sample std over
seeds of the COCO metrics (×100, as papers print them), parameters, GFLOPs and batch-1 latency,
and the deltas to the ``retinanet`` row. The evaluation is the same pycocotools call for every row.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from harnet.config.experiment import ExperimentConfig, load_experiment
from harnet.data.build import shapes_split
from harnet.engine.evaluation import STAT_NAMES
from harnet.modeling.build import build_detector
from harnet.tools.bench import median_latency_ms
from harnet.utils.atomic import write_text_atomic
from harnet.utils.complexity import count_flops

METRICS = STAT_NAMES[:6]  # AP, AP50, AP75, APs, APm, APl
BASELINE = "retinanet"


@dataclass(frozen=True)
class AblationRow:
    name: str
    overrides: tuple[str, ...]  # ``--set`` items applied on top of the experiment config
    description: str


ROWS: tuple[AblationRow, ...] = (
    AblationRow("torchvision_retinanet", ("detector=torchvision_retinanet", "model.preset=retinanet"),
                "torchvision's RetinaNet, same recipe"),
    AblationRow("retinanet", ("model.preset=retinanet",), "no attention"),
    AblationRow("spatial", ("model.preset=spatial",), "spatial attention"),
    AblationRow("channel", ("model.preset=channel",), "channel attention (cross-level GN + SE)"),
    AblationRow("aligned", ("model.preset=aligned",), "aligned attention (deformable C5)"),
    AblationRow("hybrid", ("model.preset=hybrid",), "all three + joint dual prediction"),
    AblationRow("hybrid_no_spatial", ("model.preset=hybrid", "model.spatial.enabled=false"), "hybrid - spatial"),
    AblationRow("hybrid_no_channel", ("model.preset=hybrid", "model.channel.enabled=false"), "hybrid - channel"),
    AblationRow("hybrid_no_aligned", ("model.preset=hybrid", "model.aligned.enabled=false"), "hybrid - aligned"),
    AblationRow("hybrid_no_dual", ("model.preset=hybrid", "model.dual_prediction=false"),
                "hybrid - second prediction set (all three attentions, one set)"),
)
ROW_NAMES = tuple(row.name for row in ROWS)


@dataclass(frozen=True)
class RunSpec:
    row: AblationRow
    seed: int
    run_dir: Path


def custom_row(name: str, overrides: Sequence[str]) -> AblationRow:
    """A row of the user's (``--row NAME KEY=VALUE ...``): a named variant, a recipe to compare. In its
    overrides ``{seed}`` and ``{out}`` become the run's seed and the ablation folder, so a row can start
    from another row's run of the same seed (``train.init_from={out}/retinanet/seed{seed}``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in ROW_NAMES:
        raise ValueError(f"--row {name!r}: a row needs a new name made of letters, digits, '_', '.' and '-'")
    return AblationRow(name, tuple(overrides), "custom: " + " ".join(overrides))


def select_rows(rows: Sequence[str] | None, extra: Sequence[AblationRow] = ()) -> list[AblationRow]:
    """The built-in rows named in ``rows`` (all when None, none when only custom rows are given), then ``extra``."""
    if rows is None and extra:
        rows = []
    return [r for r in ROWS if rows is None or r.name in rows] + list(extra)


def plan(out: Path, seeds: Sequence[int], rows: Sequence[str] | None = None,
         extra: Sequence[AblationRow] = ()) -> list[RunSpec]:
    """Seed-major order: if the ablation is stopped early, every row has the same seeds done."""
    chosen = select_rows(rows, extra)
    return [RunSpec(r, s, out / r.name / f"seed{s}") for s in seeds for r in chosen]


def _train_command(spec: RunSpec, config: Path, overrides: Sequence[str], device: str,
                   threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "harnet", "train", "--no-progress"]
    if (spec.run_dir / "last.pt").is_file():
        return [*command, "--resume", str(spec.run_dir)]
    # A run stopped before its first checkpoint left files (config.yaml, ...) but nothing to resume: this
    # folder is the ablation's own, so start that run over. (A training still running there keeps its lock.)
    command.append("--overwrite")
    own = [o.replace("{seed}", str(spec.seed)).replace("{out}", str(spec.run_dir.parent.parent))
           for o in spec.row.overrides]
    items = [*overrides, *own, f"train.seed={spec.seed}", f"output_dir={spec.run_dir}",
             f"train.device={device}"]
    if threads:
        items.append(f"train.threads={threads}")
    command += ["--config", str(config)]
    for item in items:
        command += ["--set", item]
    return command


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val AP) from metrics.csv; a step evaluated twice (resume) keeps its last value."""
    points: dict[int, float] = {}
    with (run_dir / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["name"] == "val/AP":
                points[int(row["step"])] = float(row["value"])
    return sorted(points.items())


def _finish(spec: RunSpec, seconds: float) -> dict[str, Any]:
    cfg = yaml.safe_load((spec.run_dir / "config.yaml").read_text())
    steps = int(cfg["train"]["max_steps"])
    final = json.loads((spec.run_dir / f"eval_step{steps}.json").read_text())
    done = {"row": spec.row.name, "seed": spec.seed, "steps": steps, "stats": final["stats"],
            "curve": _curve(spec.run_dir), "wall_seconds": seconds}
    write_text_atomic(json.dumps(done, indent=1), spec.run_dir / "done.json")  # the "finished" mark: never torn
    return done


_RUNNING: set[subprocess.Popen[bytes]] = set()
_STOPPING = threading.Event()


def _stop_children(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: no new run starts; each running training gets SIGINT, saves its checkpoint
    and exits (the next ``harnet ablate`` resumes it)."""
    _STOPPING.set()
    for process in list(_RUNNING):
        process.send_signal(signal.SIGINT)
    for process in list(_RUNNING):
        process.wait()
    raise KeyboardInterrupt


def _run_one(spec: RunSpec, config: Path, overrides: Sequence[str], device: str, threads: int | None,
             log: Callable[[str], None]) -> dict[str, Any] | None:
    done_path = spec.run_dir / "done.json"
    if done_path.is_file():
        return json.loads(done_path.read_text())
    if _STOPPING.is_set():
        return None
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    command = _train_command(spec, config, overrides, device, threads)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with (spec.run_dir / "train.log").open("a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _RUNNING.add(process)
        code = process.wait()
        _RUNNING.discard(process)
    seconds = time.perf_counter() - start
    if code != 0:
        if _STOPPING.is_set():
            log(f"{spec.row.name} seed {spec.seed}: stopped (resumes next time)")
            return None
        lines = (spec.run_dir / "train.log").read_text(errors="replace").strip().splitlines()
        log(f"{spec.row.name} seed {spec.seed}: FAILED (exit {code}): {lines[-1] if lines else ''}")
        return None
    done = _finish(spec, seconds)
    log(f"{spec.row.name} seed {spec.seed}: AP {100 * (done['stats']['AP'] or 0):.1f} ({seconds:.0f} s)")
    return done


def run_ablation(
    config: Path,
    out: Path,
    seeds: Sequence[int] = (0, 1, 2),
    rows: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    device: str = "auto",
    threads: int | None = None,
    log: Callable[[str], None] = print,
    extra: Sequence[AblationRow] = (),
) -> list[dict[str, Any]]:
    """Train and evaluate every (row, seed) not yet done; returns the finished runs' summaries."""
    data = load_experiment(config, list(overrides)).data
    if data.format == "shapes":  # generate once here, not in N concurrent runs racing on one folder
        shapes_split(data.shapes, "train")
    specs = plan(out, seeds, rows, extra)
    log(f"{len(specs)} runs ({len(specs) // max(len(seeds), 1)} rows x {len(seeds)} seeds) -> {out}, {jobs} at a time")
    _STOPPING.clear()
    previous = {sig: signal.signal(sig, _stop_children) for sig in (signal.SIGTERM, signal.SIGINT)}
    pool = ThreadPoolExecutor(max_workers=max(jobs, 1))
    try:
        futures = [pool.submit(_run_one, s, config, overrides, device, threads, log) for s in specs]
        results = [f.result() for f in futures]
    finally:
        pool.shutdown(wait=not _STOPPING.is_set(), cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [r for r in results if r is not None]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cost(run_dir: Path, device: torch.device, repeats: int) -> tuple[dict[str, float], torch.nn.Module, int]:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = ExperimentConfig.from_dict(data)
    torch.manual_seed(0)
    model = build_detector(cfg.detector, cfg.model).eval()
    size = max(cfg.model.transform.min_size)
    cost = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gflops": count_flops(model, size)}
    return cost, model.to(device), size


def summarize(out: Path, seeds: Sequence[int], rows: Sequence[str] | None = None, device: str = "cpu",
              latency_repeats: int = 10, extra: Sequence[AblationRow] = ()) -> dict[str, Any]:
    """Mean ± std per row from the finished runs, plus params/GFLOPs/latency measured here
    (latency: batch 1 at the training size, median of ``latency_repeats``, rows interleaved)."""
    dev = torch.device(device)
    summary: dict[str, Any] = {"seeds": list(seeds), "latency_device": str(dev), "rows": []}
    models: dict[str, tuple[torch.nn.Module, int]] = {}
    for spec_row in select_rows(rows, extra):
        paths = [out / spec_row.name / f"seed{s}" / "done.json" for s in seeds]
        runs = [json.loads(p.read_text()) for p in paths if p.is_file()]
        entry: dict[str, Any] = {"name": spec_row.name, "description": spec_row.description, "runs": runs}
        if runs:
            for key in METRICS:
                # pycocotools reports an undefined metric (no object of that size) as -1
                values = [100 * v for r in runs if (v := r["stats"].get(key)) is not None and v >= 0]
                entry.setdefault("mean", {})[key], entry.setdefault("std", {})[key] = (
                    _mean_std(values) if values else (None, None))
            cost, model, size = _cost(out / spec_row.name / f"seed{runs[0]['seed']}", dev, latency_repeats)
            entry.update(cost)
            models[spec_row.name] = (model, size)
        summary["rows"].append(entry)
    calls = {name: partial(model, [torch.rand(3, size, size, device=dev)]) for name, (model, size) in models.items()}
    with torch.inference_mode():
        latencies = median_latency_ms(calls, dev, latency_repeats, warmup=2)
    for entry in summary["rows"]:
        if entry["name"] in latencies:
            entry["latency_ms"] = latencies[entry["name"]]
    return summary


def _fmt(entry: dict[str, Any], key: str) -> str:
    mean, std = entry["mean"][key], entry["std"][key]
    return "-" if mean is None else f"{mean:.1f} ± {std:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    """The paper-style table, then the checks the ablation is meant to answer."""
    rows = [e for e in summary["rows"] if e["runs"]]
    base = next((e for e in rows if e["name"] == BASELINE), None)
    head = "| model | " + " | ".join(METRICS) + " | Δ AP | params (M) | GFLOPs | latency ms | seeds |"
    lines = [head, "|" + "---|" * (len(METRICS) + 6)]
    for e in rows:
        delta = "-" if base is None else f"{e['mean']['AP'] - base['mean']['AP']:+.1f}"
        cost = f"{e['params_m']:.2f} | {e['gflops']:.1f} | {e['latency_ms']:.1f}"
        lines.append(f"| {e['name']} | " + " | ".join(_fmt(e, k) for k in METRICS)
                     + f" | {delta} | {cost} | {len(e['runs'])} |")
    lines.append(f"\nmean ± sample std over seeds {summary['seeds']}; latency: batch 1 on {summary['latency_device']}.")
    if base is not None:
        lines.append("\nChecks:")
        for e in rows:
            if e["name"] == BASELINE:
                continue
            delta = e["mean"]["AP"] - base["mean"]["AP"]
            if e["name"] == "hybrid":
                verdict = "meets" if delta >= 2.0 else "misses"
                lines.append(f"- hybrid vs retinanet: {delta:+.1f} AP ({verdict} the +2.0 target)")
            elif e["name"] == "torchvision_retinanet":
                ok = -delta >= -max(e["std"]["AP"], base["std"]["AP"])
                lines.append(f"- retinanet vs torchvision's: {-delta:+.1f} AP "
                             f"({'at least its AP within seed std' if ok else 'BELOW it by more than the seed std'})")
            else:
                ok = delta >= -e["std"]["AP"]
                lines.append(f"- {e['name']}: {delta:+.1f} AP vs retinanet "
                             f"({'not below it by more than its std' if ok else 'BELOW by more than its std'})")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Val AP vs step per row: mean over seeds, shaded ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for e in summary["rows"]:
        curves = [dict(map(tuple, r["curve"])) for r in e["runs"]]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        values = [[100 * c[s] for c in curves] for s in steps]
        mean = [statistics.fmean(v) for v in values]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        style = "--" if e["name"] == "torchvision_retinanet" else "-"
        (line,) = ax.plot(steps, mean, style, marker="o", markersize=3, label=e["name"])
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.12)
    ax.set_xlabel("training step")
    ax.set_ylabel("val AP (COCO, x100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path, summary: dict[str, Any], title: str) -> None:
    write_text_atomic(json.dumps(summary, indent=1), out / "results.json")
    write_text_atomic(f"## {title}\n\n{markdown(summary)}\n", out / "results.md")
    plot(summary, out / "ap_vs_step.png", title)
