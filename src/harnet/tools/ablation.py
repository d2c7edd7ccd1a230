"""``harnet ablate``: the paper's ablation at any scale, over several seeds, with a same-recipe peer.

Rows: torchvision's RetinaNet built to the same recipe (the peer), our ``retinanet`` preset, each
attention alone, the hybrid, and the hybrid minus each attention. Every (row, seed) is one
``harnet train`` run in its own process and folder (``OUT/ROW/seedS``) with the same data,
schedule and seed set; a run that finished (``done.json``) is never redone, and one that was
stopped is resumed from its ``last.pt``. So the whole ablation can be killed and restarted at will,
and ``--jobs N`` runs N trainings at once (several small runs share one GPU well). A row that starts
from another row's run (``train.init_from={out}/retinanet/seed{seed}``: the paper's two-phase recipe)
is queued after every independent run and waits for the one it needs.

``soft_nms=True`` (``--soft-nms``) also scores every finished HAR-Net run with the authors' test recipe
(Gaussian Soft-NMS + box voting, :data:`AUTHORS_TEST_RECIPE`) in ``RUN/soft_nms``, right after its
training, so that both recipes are reported for the same weights (torchvision's RetinaNet has hard NMS only).

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
from harnet.config.model import inference_recipe
from harnet.data.build import shapes_split
from harnet.engine.evaluation import STAT_NAMES
from harnet.modeling.build import build_detector
from harnet.tools.bench import median_latency_ms
from harnet.utils.atomic import write_text_atomic
from harnet.utils.complexity import count_flops

METRICS = STAT_NAMES[:6]  # AP, AP50, AP75, APs, APm, APl
BASELINE = "retinanet"
# The authors' test recipe (configs/inference/authors.yaml), applied to a run's saved config.
AUTHORS_TEST_RECIPE = ("model.inference=authors",)
SOFT_NMS_DIR = "soft_nms"
_DEPENDENCY = re.compile(r"\{out\}/([A-Za-z0-9][A-Za-z0-9_.-]*)/seed\{seed\}")


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
    AblationRow("hybrid_no_spatial", ("model.preset=hybrid_no_spatial",), "hybrid - spatial"),
    AblationRow("hybrid_no_channel", ("model.preset=hybrid_no_channel",), "hybrid - channel"),
    AblationRow("hybrid_no_aligned", ("model.preset=hybrid_no_aligned",), "hybrid - aligned"),
    AblationRow("hybrid_no_dual", ("model.preset=hybrid_no_dual",),
                "hybrid - set 2 (its extra conv, SE and predictors: one prediction set)"),
)
ROW_NAMES = tuple(row.name for row in ROWS)


@dataclass(frozen=True)
class RunSpec:
    row: AblationRow
    seed: int
    run_dir: Path
    after: Path | None = None  # the run this one starts from (``{out}/ROW/seed{seed}`` in its overrides)


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
    """Seed-major order: if the ablation is stopped early, every row has the same seeds done. Runs that
    start from another run come after all the others, so that waiting for it never holds a job slot
    that an independent run could use."""
    specs = [RunSpec(r, s, out / r.name / f"seed{s}", _dependency(r, s, out)) for s in seeds
             for r in select_rows(rows, extra)]
    return sorted(specs, key=lambda spec: spec.after is not None)


def _dependency(row: AblationRow, seed: int, out: Path) -> Path | None:
    for override in row.overrides:
        if match := _DEPENDENCY.search(override):
            return out / match.group(1) / f"seed{seed}"
    return None


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
_ENDED_UNFINISHED: set[Path] = set()  # runs of this call that failed or were stopped: their dependants skip


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
             log: Callable[[str], None], planned: frozenset[Path] = frozenset(),
             soft_nms: bool = False) -> dict[str, Any] | None:
    done_path = spec.run_dir / "done.json"
    if done_path.is_file():
        done = json.loads(done_path.read_text())
    else:
        if not _wait_for(spec, planned, log):
            return None
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        command = _train_command(spec, config, overrides, device, threads)
        start = time.perf_counter()
        code = _call(command, spec.run_dir / "train.log", threads)
        seconds = time.perf_counter() - start
        if code != 0:
            _ENDED_UNFINISHED.add(spec.run_dir)
            if _stopped(code):
                log(f"{spec.row.name} seed {spec.seed}: stopped (resumes next time)")
                return None
            lines = (spec.run_dir / "train.log").read_text(errors="replace").strip().splitlines()
            log(f"{spec.row.name} seed {spec.seed}: FAILED (exit {code}): {lines[-1] if lines else ''}")
            return None
        done = _finish(spec, seconds)
        log(f"{spec.row.name} seed {spec.seed}: AP {100 * (done['stats']['AP'] or 0):.1f} ({seconds:.0f} s)")
    if soft_nms:
        _score_soft_nms(spec, device, log)
    return done


def _wait_for(spec: RunSpec, planned: frozenset[Path], log: Callable[[str], None]) -> bool:
    """False when the run must not start: the ablation is stopping, or the run it starts from will
    never finish (not part of this ablation, failed or stopped)."""
    while not _STOPPING.is_set():
        if spec.after is None or (spec.after / "done.json").is_file():
            return True
        if spec.after not in planned or spec.after in _ENDED_UNFINISHED:
            log(f"{spec.row.name} seed {spec.seed}: skipped: it starts from {spec.after}, which has not finished")
            _ENDED_UNFINISHED.add(spec.run_dir)
            return False
        time.sleep(1.0)
    return False


def _call(command: list[str], log_file: Path, threads: int | None) -> int:
    """Run one child process (stopped with the ablation), its output appended to ``log_file``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with log_file.open("a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _RUNNING.add(process)
        code = process.wait()
        _RUNNING.discard(process)
    return code


def _stopped(code: int) -> bool:
    """Whether a child's exit means "stopped", not "failed": the ablation is stopping, or the child got the
    stop signal itself (``timeout`` signals the whole process group, so a child can exit before this process
    has set ``_STOPPING``): killed by a signal, or a training's interrupted-and-saved exit (130)."""
    return _STOPPING.is_set() or code < 0 or code == 130


def _score_soft_nms(spec: RunSpec, device: str, log: Callable[[str], None]) -> None:
    """``harnet eval`` of the finished run with :data:`AUTHORS_TEST_RECIPE`, once (kept in ``RUN/soft_nms``)."""
    out = spec.run_dir / SOFT_NMS_DIR
    saved = yaml.safe_load((spec.run_dir / "config.yaml").read_text())
    if (out / "metrics.json").is_file() or saved.get("detector", "harnet") != "harnet" or _STOPPING.is_set():
        return
    command = [sys.executable, "-m", "harnet", "eval", str(spec.run_dir), "--device", device, "--out", str(out)]
    for item in AUTHORS_TEST_RECIPE:
        command += ["--set", item]
    out.mkdir(parents=True, exist_ok=True)
    if (code := _call(command, spec.run_dir / f"{SOFT_NMS_DIR}.log", None)) != 0 and not _stopped(code):
        log(f"{spec.row.name} seed {spec.seed}: Soft-NMS scoring FAILED (see {spec.run_dir / SOFT_NMS_DIR}.log)")


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
    soft_nms: bool = False,
) -> list[dict[str, Any]]:
    """Train and evaluate every (row, seed) not yet done; returns the finished runs' summaries."""
    data = load_experiment(config, list(overrides)).data
    if data.format == "shapes":  # generate once here, not in N concurrent runs racing on one folder
        shapes_split(data.shapes, "train")
    specs = plan(out, seeds, rows, extra)
    log(f"{len(specs)} runs ({len(specs) // max(len(seeds), 1)} rows x {len(seeds)} seeds) -> {out}, {jobs} at a time")
    _STOPPING.clear()
    _ENDED_UNFINISHED.clear()
    planned = frozenset(spec.run_dir for spec in specs)
    previous = {sig: signal.signal(sig, _stop_children) for sig in (signal.SIGTERM, signal.SIGINT)}
    pool = ThreadPoolExecutor(max_workers=max(jobs, 1))
    try:
        futures = [pool.submit(_run_one, s, config, overrides, device, threads, log, planned, soft_nms)
                   for s in specs]
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
    (latency: batch 1 at the training size, median of ``latency_repeats``, rows interleaved; 0 skips it,
    e.g. on a machine busy with other trainings, where it would mean nothing)."""
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
            soft = [100 * json.loads(path.read_text())["stats"]["AP"] for r in runs
                     if (path := out / spec_row.name / f"seed{r['seed']}" / SOFT_NMS_DIR / "metrics.json").is_file()]
            if soft:
                mean, std = _mean_std(soft)
                entry["soft_nms_AP"] = {"mean": mean, "std": std, "seeds": len(soft)}
            if (start := _dependency(spec_row, runs[0]["seed"], out)) and (start / "done.json").is_file():
                entry["starts_from"] = {"row": start.parent.name,
                                        "steps": json.loads((start / "done.json").read_text())["steps"]}
            cost, model, size = _cost(out / spec_row.name / f"seed{runs[0]['seed']}", dev, latency_repeats)
            entry.update(cost)
            models[spec_row.name] = (model, size)
        summary["rows"].append(entry)
    calls = {name: partial(model, [torch.rand(3, size, size, device=dev)]) for name, (model, size) in models.items()}
    with torch.inference_mode():
        latencies = median_latency_ms(calls, dev, latency_repeats, warmup=2) if latency_repeats > 0 else {}
    for entry in summary["rows"]:
        if entry["name"] in latencies:
            entry["latency_ms"] = latencies[entry["name"]]
    return summary


def _fmt(entry: dict[str, Any], key: str) -> str:
    mean, std = entry["mean"][key], entry["std"][key]
    return "-" if mean is None else f"{mean:.1f} ± {std:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    """The paper-style table, then the checks the ablation is meant to answer. AP under the authors' test
    recipe (Soft-NMS + voting) gets its own column when any run was scored with it."""
    rows = [e for e in summary["rows"] if e["runs"]]
    base = next((e for e in rows if e["name"] == BASELINE), None)
    soft = any("soft_nms_AP" in e for e in rows)
    head = "| model | " + " | ".join(METRICS) + " | Δ AP |"
    head += " AP Soft-NMS + voting | Δ |" if soft else ""
    lines = [head + " params (M) | GFLOPs | latency ms | seeds |", "|" + "---|" * (len(METRICS) + 6 + 2 * soft)]
    for e in rows:
        cells = [_fmt(e, k) for k in METRICS] + [_delta(e, base, "AP")]
        if soft:
            cells += [_soft_fmt(e), _delta(e, base, "soft_nms_AP")]
        latency = f"{e['latency_ms']:.1f}" if "latency_ms" in e else "-"
        cells += [f"{e['params_m']:.2f}", f"{e['gflops']:.1f}", latency, str(len(e["runs"]))]
        lines.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    lines.append(f"\nmean ± sample std over seeds {summary['seeds']}; latency: batch 1 on {summary['latency_device']}.")
    if soft:
        authors = inference_recipe("authors")
        lines.append("Soft-NMS + voting: the same weights scored with the authors' test recipe "
                     f"(Gaussian Soft-NMS σ {authors['soft_nms_sigma']}, box voting IoU {authors['box_voting_iou']}, "
                     f"final score {authors['final_score_thresh']}); its seed count in brackets.")
    if base is not None:
        lines.append("\nChecks:")
        by_name = {e["name"]: e for e in rows}
        for e in rows:
            if e["name"] == BASELINE:
                continue
            if control := by_name.get(e["name"] + "_control"):  # a recipe against its same-budget control
                lines.append(f"- {e['name']} vs {control['name']}: {_delta(e, control, 'AP')} AP")
            delta = e["mean"]["AP"] - base["mean"]["AP"]
            if e["name"] == "hybrid":
                verdict = "meets" if delta >= 2.0 else "misses"
                line = f"- hybrid vs retinanet: {delta:+.1f} AP ({verdict} the +2.0 target)"
                if "soft_nms_AP" in e and "soft_nms_AP" in base:
                    line += f"; with Soft-NMS + voting {_delta(e, base, 'soft_nms_AP')}"
                lines.append(line)
            elif e["name"] == "torchvision_retinanet":
                ok = -delta >= -max(e["std"]["AP"], base["std"]["AP"])
                lines.append(f"- retinanet vs torchvision's: {-delta:+.1f} AP "
                             f"({'at least its AP within seed std' if ok else 'BELOW it by more than the seed std'})")
            else:
                ok = delta >= -e["std"]["AP"]
                lines.append(f"- {e['name']}: {delta:+.1f} AP vs retinanet "
                             f"({'not below it by more than its std' if ok else 'BELOW by more than its std'})")
    return "\n".join(lines)


def _ap(entry: dict[str, Any], key: str) -> float | None:
    return entry["mean"]["AP"] if key == "AP" else entry.get(key, {}).get("mean")


def _delta(entry: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    mine, theirs = _ap(entry, key), None if base is None else _ap(base, key)
    return "-" if mine is None or theirs is None else f"{mine - theirs:+.1f}"


def _soft_fmt(entry: dict[str, Any]) -> str:
    soft = entry.get("soft_nms_AP")
    return "-" if soft is None else f"{soft['mean']:.1f} ± {soft['std']:.1f} ({soft['seeds']})"


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Val AP vs step per row: mean over seeds, shaded ± std. A row that starts from another row's run
    (two-phase) is drawn from where that run ended."""
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
        label, offset = e["name"], 0
        if start := e.get("starts_from"):
            label, offset = f"{e['name']} (from {start['row']} at step {start['steps']})", start["steps"]
        x = [offset + s for s in steps]
        (line,) = ax.plot(x, mean, style, marker="o", markersize=3, label=label)
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
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
