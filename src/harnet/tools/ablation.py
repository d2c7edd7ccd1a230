"""``harnet ablate``: the paper's ablation at any scale, over several seeds, with a same-recipe peer.

Rows: torchvision's RetinaNet built to the same recipe (the peer), our ``retinanet`` preset, each
attention alone, the hybrid, and the hybrid minus each attention. Every (row, seed) is one
:func:`harnet.engine.trainer.train` in its own child process (``multiprocessing``'s spawn context: a
fresh interpreter, as ``harnet train`` would be) and folder (``OUT/ROW/seedS``, its output in
``train.log``) with the same data, schedule and seed set; a run that finished (``done.json``, written
from the child's :class:`~harnet.engine.trainer.TrainResult`) is never redone, and one that was stopped
is resumed from its ``last.pt``. So the whole ablation can be killed and restarted at will, and
``--jobs N`` runs N trainings at once (several small runs share one GPU well). A row that starts from
another row's run (:attr:`AblationRow.init_from_row`; ``--row NAME ... train.init_from={out}/ROW/seed{seed}``:
the paper's two-phase recipe) is queued after every independent run and waits for the one it needs.

``soft_nms=True`` (``--soft-nms``) also scores every finished HAR-Net run with the authors' test recipe
(Gaussian Soft-NMS + box voting, :data:`AUTHORS_TEST_RECIPE`) in ``RUN/soft_nms``, right after its
training, so that both recipes are reported for the same weights (torchvision's RetinaNet has hard NMS only).

The report (``results.json``, ``results.md``, ``ap_vs_step.png``) gives mean ± sample std over
seeds of the COCO metrics (×100, as papers print them), parameters, GFLOPs and batch-1 latency,
and the deltas to the ``retinanet`` row. The evaluation is the same pycocotools call for every row.
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import yaml

from harnet.config.experiment import ExperimentConfig, load_experiment
from harnet.config.model import inference_recipe
from harnet.data.build import shapes_split
from harnet.engine.evaluation import STAT_NAMES, EvalResult
from harnet.engine.hooks import TrainerHook
from harnet.engine.inference import evaluate_checkpoint
from harnet.engine.trainer import Trainer, train
from harnet.engine.upgrade import upgrade_config
from harnet.modeling.build import build_detector
from harnet.tools.ablation_rows import ROW_NAMES, ROWS, AblationRow
from harnet.tools.bench import median_latency_ms
from harnet.utils.atomic import write_text_atomic
from harnet.utils.complexity import count_flops
from harnet.utils.errors import one_line

METRICS = STAT_NAMES[:6]  # AP, AP50, AP75, APs, APm, APl
BASELINE = "retinanet"
# The authors' test recipe (configs/inference/authors.yaml), applied to a run's saved config.
AUTHORS_TEST_RECIPE = ("model.inference=authors",)
SOFT_NMS_DIR = "soft_nms"
_DEPENDENCY = re.compile(r"\{out\}/([A-Za-z0-9][A-Za-z0-9_.-]*)/seed\{seed\}")




@dataclass(frozen=True)
class RunSpec:
    row: AblationRow
    seed: int
    run_dir: Path
    after: Path | None = None  # the run this one starts from (its row's ``init_from_row``, same seed)


def custom_row(name: str, overrides: Sequence[str]) -> AblationRow:
    """A row of the user's (``--row NAME KEY=VALUE ...``): a named variant, a recipe to compare. In its
    overrides ``{seed}`` and ``{out}`` become the run's seed and the ablation folder; an override
    ``train.init_from={out}/ROW/seed{seed}`` (start from another row's run of the same seed) becomes the
    row's :attr:`AblationRow.init_from_row`, so that the run waits for that one."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in ROW_NAMES:
        raise ValueError(f"--row {name!r}: a row needs a new name made of letters, digits, '_', '.' and '-'")
    own, init_from_row = [], None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "train.init_from" and (match := _DEPENDENCY.fullmatch(value.strip())):
            init_from_row = match.group(1)
        else:
            own.append(item)
    if init_from_row == name:
        raise ValueError(f"--row {name!r}: train.init_from names the row's own runs")
    return AblationRow(name, tuple(own), "custom: " + " ".join(overrides), init_from_row)


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
    specs = [RunSpec(r, s, out / r.name / f"seed{s}", dependency(r, s, out)) for s in seeds
             for r in select_rows(rows, extra)]
    return sorted(specs, key=lambda spec: spec.after is not None)


def dependency(row: AblationRow, seed: int, out: Path) -> Path | None:
    """The run folder that ``row``'s run of ``seed`` starts from, if any."""
    return None if row.init_from_row is None else out / row.init_from_row / f"seed{seed}"


@dataclass(frozen=True)
class TrainJob:
    """One training as its child process gets it (picklable, for the spawn context)."""

    run_dir: Path
    config: Path  # the experiment YAML; on resume the run's own config.yaml
    overrides: tuple[str, ...]
    resume: bool  # continue from last.pt; else a new run, replacing the files of one stopped before its first


def train_job(spec: RunSpec, config: Path, overrides: Sequence[str], device: str, threads: int | None) -> TrainJob:
    """Resume a run with a checkpoint; start any other over: a run stopped before its first checkpoint left
    files (config.yaml, ...) but nothing to resume, and this folder is the ablation's own (a training
    still running there keeps its lock)."""
    if (spec.run_dir / "last.pt").is_file():
        return TrainJob(spec.run_dir, spec.run_dir / "config.yaml", (f"output_dir={spec.run_dir}",), resume=True)
    out = spec.run_dir.parent.parent
    own = [o.replace("{seed}", str(spec.seed)).replace("{out}", str(out)) for o in spec.row.overrides]
    if spec.after is not None:
        own.append(f"train.init_from={spec.after}")
    items = [*overrides, *own, f"train.seed={spec.seed}", f"output_dir={spec.run_dir}", f"train.device={device}"]
    if threads:
        items.append(f"train.threads={threads}")
    return TrainJob(spec.run_dir, config, tuple(items), resume=False)


CURVE_FILE = "ap_curve.json"


class APCurve(TrainerHook):
    """(step, val AP) of every evaluation of a run, kept in ``RUN/ap_curve.json`` so that a resumed run's
    curve has its earlier sessions' points too; a step evaluated again (resumed from an earlier checkpoint)
    keeps its last value. A run stopped before this file existed starts from its metrics log."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.path = run_dir / CURVE_FILE
        self.points: dict[int, float] = {}
        if resume and self.path.is_file():
            self.points = {int(step): float(ap) for step, ap in json.loads(self.path.read_text())}
        elif resume and (run_dir / "metrics.csv").is_file():
            self.points = dict(_curve_from_metrics(run_dir))

    def after_eval(self, trainer: Trainer, result: EvalResult) -> None:
        self.points[trainer.step] = result.stats["AP"]
        write_text_atomic(json.dumps(self.curve()), self.path)

    def curve(self) -> list[tuple[int, float]]:
        return sorted(self.points.items())


def _curve_from_metrics(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val AP) from metrics.csv; a step evaluated twice (resume) keeps its last value."""
    points: dict[int, float] = {}
    with (run_dir / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["name"] == "val/AP":
                points[int(row["step"])] = float(row["value"])
    return sorted(points.items())


def _train(job: TrainJob) -> dict[str, Any]:
    """The child's training: what ``done.json`` records of it, from its :class:`TrainResult`."""
    upgrade = upgrade_config if job.resume else None
    cfg = load_experiment(job.config, list(job.overrides), upgrade=upgrade)
    curve = APCurve(job.run_dir, job.resume)
    result = train(cfg, resume=job.resume, progress=False, overwrite=not job.resume, hooks=[curve])
    if result.final is None:
        raise RuntimeError(f"{job.run_dir}: training returned no final evaluation")
    print(result.final.table())
    print(f"run folder: {result.run_dir}  (best AP {result.best_ap:.4f}, {result.stopped_by} reached)")
    return {"steps": result.step, "stats": result.final.stats, "curve": curve.curve(),
            "stopped_by": result.stopped_by, "train_seconds": result.train_seconds}


def _score_soft_nms(run_dir: Path, out: Path, device: str) -> None:
    """The child's evaluation of a finished run with :data:`AUTHORS_TEST_RECIPE` (as ``harnet eval``)."""
    report = evaluate_checkpoint(run_dir, overrides=AUTHORS_TEST_RECIPE, device=device, out=out)
    print(report.result.table())


def _child_main(fn: Callable[..., Any], args: tuple[Any, ...], log_file: Path, conn: Connection) -> None:
    """A child process: ``fn(*args)`` with its output appended to ``log_file``; sends ``("ok", value)`` or
    ``("error", one line)`` back. Stopped by SIGINT (the ablation forwards its stop to it) even when it
    inherited SIGINT ignored (an ablation started in the background by a script): exit 130, as Ctrl-C."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = 0
    try:
        conn.send(("ok", fn(*args)))
    except KeyboardInterrupt as e:
        print(f"harnet: {one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        code = 130
    except Exception as e:
        print(f"harnet: error: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        conn.send(("error", one_line(e)))
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


def _stopped(code: int | None, stopping: bool = False) -> bool:
    """Whether a child's exit means "stopped", not "failed": the ablation is stopping, or the child got the
    stop signal itself (``timeout`` signals the whole process group, so a child can exit before the ablation
    has noticed it is stopping): killed by a signal, or a training's interrupted-and-saved exit (130)."""
    return stopping or code is None or code < 0 or code == 130


class Ablation:
    """One :func:`run_ablation` call's shared state: its worker threads (one per job slot, each waiting on a
    child process) and its signal handler see the same stop flag, children and unfinished runs."""

    def __init__(self, planned: frozenset[Path], log: Callable[[str], None]) -> None:
        self.planned, self.log = planned, log
        self.stopping = threading.Event()
        self.unfinished: set[Path] = set()  # runs of this call that failed or were stopped: their dependants skip
        self._running: set[BaseProcess] = set()
        self._lock = threading.Lock()  # taken by worker threads and the handler (main thread) only

    def stop(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: no new run starts, and each running child gets SIGINT (a training saves its
        checkpoint and exits; the next ``harnet ablate`` resumes it). The first signal also raises
        ``KeyboardInterrupt`` in the main thread, which then waits for the children to end."""
        first = not self.stopping.is_set()
        with self._lock:
            self.stopping.set()
            for process in self._running:
                if process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):  # ended, not yet collected by its thread
                        os.kill(process.pid, signal.SIGINT)
        if first:
            raise KeyboardInterrupt

    def wait_for(self, spec: RunSpec) -> bool:
        """False when the run must not start: the ablation is stopping, or the run it starts from will
        never finish (not part of this ablation, failed or stopped)."""
        while not self.stopping.is_set():
            if spec.after is None or (spec.after / "done.json").is_file():
                return True
            if spec.after not in self.planned or spec.after in self.unfinished:
                self.log(f"{spec.row.name} seed {spec.seed}: skipped: it starts from {spec.after}, which has not "
                         "finished")
                self.unfinished.add(spec.run_dir)
                return False
            time.sleep(1.0)
        return False

    def run_child(self, fn: Callable[..., Any], args: tuple[Any, ...], log_file: Path) -> tuple[int | None, Any]:
        """``fn(*args)`` in a spawned child process: (exit code, its message), (None, None) if not started
        because the ablation is stopping."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_child_main, args=(fn, args, log_file, send))
        with self._lock:  # a stop either comes before the start or sees the process
            if self.stopping.is_set():
                return None, None
            process.start()
            self._running.add(process)
        send.close()
        try:
            message = receive.recv()
        except EOFError:  # ended without a word: interrupted or killed
            message = None
        process.join()
        with self._lock:
            self._running.discard(process)
        return process.exitcode, message

    def run_one(self, spec: RunSpec, config: Path, overrides: Sequence[str], device: str, threads: int | None,
                soft_nms: bool = False) -> dict[str, Any] | None:
        done_path = spec.run_dir / "done.json"
        if done_path.is_file():
            done = json.loads(done_path.read_text())
        else:
            if not self.wait_for(spec):
                return None
            spec.run_dir.mkdir(parents=True, exist_ok=True)
            job = train_job(spec, config, overrides, device, threads)
            start = time.perf_counter()
            code, message = self.run_child(_train, (job,), spec.run_dir / "train.log")
            seconds = time.perf_counter() - start
            if code != 0 or message is None or message[0] != "ok":
                self.unfinished.add(spec.run_dir)
                if message is None and _stopped(code, self.stopping.is_set()):
                    self.log(f"{spec.row.name} seed {spec.seed}: stopped (resumes next time)")
                    return None
                why = message[1] if message is not None else f"see {spec.run_dir / 'train.log'}"
                self.log(f"{spec.row.name} seed {spec.seed}: FAILED (exit {code}): {why}")
                return None
            done = {"row": spec.row.name, "seed": spec.seed, **message[1], "wall_seconds": seconds}
            write_text_atomic(json.dumps(done, indent=1), done_path)  # the "finished" mark: never torn
            self.log(f"{spec.row.name} seed {spec.seed}: AP {100 * (done['stats']['AP'] or 0):.1f} ({seconds:.0f} s)")
        if soft_nms:
            self.score_soft_nms(spec, device)
        return done

    def score_soft_nms(self, spec: RunSpec, device: str) -> None:
        """Score the finished run with :data:`AUTHORS_TEST_RECIPE`, once (kept in ``RUN/soft_nms``)."""
        out = spec.run_dir / SOFT_NMS_DIR
        saved = yaml.safe_load((spec.run_dir / "config.yaml").read_text())
        if (out / "metrics.json").is_file() or saved.get("detector", "harnet") != "harnet":
            return
        out.mkdir(parents=True, exist_ok=True)
        code, message = self.run_child(_score_soft_nms, (spec.run_dir, out, device),
                                       spec.run_dir / f"{SOFT_NMS_DIR}.log")
        if code != 0 and not (message is None and _stopped(code, self.stopping.is_set())):
            self.log(f"{spec.row.name} seed {spec.seed}: Soft-NMS scoring FAILED "
                     f"(see {spec.run_dir / SOFT_NMS_DIR}.log)")


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
    """Train and evaluate every (row, seed) not yet done; returns the finished runs' summaries.

    SIGINT and SIGTERM stop it (see :meth:`Ablation.stop`) whatever this process inherited, when called
    from the main thread (only that one can set handlers); the previous handlers come back afterwards."""
    data = load_experiment(config, list(overrides)).data
    if data.format == "shapes":  # generate once here, not in N concurrent runs racing on one folder
        shapes_split(data.shapes, "train")
    specs = plan(out, seeds, rows, extra)
    log(f"{len(specs)} runs ({len(specs) // max(len(seeds), 1)} rows x {len(seeds)} seeds) -> {out}, {jobs} at a time")
    ablation = Ablation(frozenset(spec.run_dir for spec in specs), log)
    on_main_thread = threading.current_thread() is threading.main_thread()
    stop_signals = (signal.SIGTERM, signal.SIGINT) if on_main_thread else ()
    previous = {sig: signal.signal(sig, ablation.stop) for sig in stop_signals}
    pool = ThreadPoolExecutor(max_workers=max(jobs, 1))
    try:
        futures = [pool.submit(ablation.run_one, s, config, overrides, device, threads, soft_nms) for s in specs]
        results = [f.result() for f in futures]
    finally:
        # After a stop: the runs not started are dropped, and the running ones end (saved) before this returns.
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
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
            if (start := dependency(spec_row, runs[0]["seed"], out)) and (start / "done.json").is_file():
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
