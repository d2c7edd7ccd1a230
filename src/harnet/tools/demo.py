"""``harnet demo``: the main job on the built-in data, end to end, in a few CPU minutes.

Generates the shapes dataset, trains the hybrid HAR-Net, evaluates it with COCO AP (a short table:
AP, AP50, AP75, per-class AP), plots the training curves and draws its detections on a few
validation images.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

from harnet.config.experiment import builtin_config, load_experiment
from harnet.data.build import shapes_split
from harnet.deploy.run import Inputs, predict_inputs
from harnet.engine.torch_runtime import load_predictor
from harnet.engine.trainer import train


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """A run's ``metrics.csv`` (``step,name,value`` rows) as name -> [(step, value), ...] in file order."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                point = int(row["step"]), float(row["value"])
            except (KeyError, TypeError, ValueError):
                continue  # a torn last row of a killed run
            series[row["name"]].append(point)
    return dict(series)


def plot_curves(metrics_csv: str | Path, out: str | Path, title: str = "") -> Path:
    """Two panels from a run's metrics.csv: the training loss (total and its parts) vs step, and val AP,
    AP50, AP75 vs step. matplotlib's object API with the Agg canvas: no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = read_metrics(metrics_csv)
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    loss_ax, ap_ax = fig.subplots(1, 2)
    losses = sorted(k for k in series if k.startswith("train/") and k != "train/skipped_nonfinite")
    for name in sorted(losses, key=lambda k: k != "train/loss"):  # the total first, drawn thicker
        steps, values = zip(*series[name])
        total = name == "train/loss"
        loss_ax.plot(steps, values, lw=2 if total else 1, alpha=1 if total else 0.7, label=name.removeprefix("train/"))
    loss_ax.set(xlabel="training step", ylabel="loss", title="training loss")
    for name in ("val/AP", "val/AP50", "val/AP75"):
        if name in series:
            steps, values = zip(*series[name])
            ap_ax.plot(steps, values, marker="o", lw=2 if name == "val/AP" else 1, label=name.removeprefix("val/"))
    ap_ax.set(xlabel="training step", ylabel="COCO AP", title="validation AP", ylim=(0, 1))
    for ax in (loss_ax, ap_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def run_demo(out: Path = Path("runs/demo"), threads: int | None = None, overrides: tuple[str, ...] = ()) -> float:
    """Run the demo into ``out``; returns the final val AP. A previous demo run there is replaced, the way
    ``harnet train --overwrite`` replaces a run (its files are deleted first; the generated data is kept: it
    is deterministic). A demo still running there is not touched: its run folder is locked. Writes
    ``out/curves.png`` and ``out/predictions/``."""
    start = time.perf_counter()
    sets = [f"output_dir={out / 'run'}", f"data.shapes.root={out / 'data'}", *overrides]
    if threads:
        sets.append(f"train.threads={threads}")
    cfg = load_experiment(builtin_config("demo"), sets)
    print(f"[demo] data: {cfg.data.shapes.root} ({cfg.data.shapes.num_images} synthetic images)")
    print(f"[demo] training the {cfg.model.preset_name} model for {cfg.train.max_steps} steps ...")
    result = train(cfg, overwrite=True)
    assert result.final is not None
    train_minutes = (time.perf_counter() - start) / 60
    print(result.final.summary_table())
    curves = plot_curves(result.run_dir / "metrics.csv", out / "curves.png",
                         f"harnet demo: {cfg.model.preset_name}, {cfg.model.backbone.name}")
    val_dir, _ = shapes_split(cfg.data.shapes, "val")
    predictor = load_predictor(result.run_dir / "last.pt", device=cfg.train.device)
    pictures = out / "predictions"
    predict_inputs(predictor, Inputs(images=sorted(val_dir.glob("*.png"))[:6]), pictures, score_thresh=0.3)
    minutes = (time.perf_counter() - start) / 60
    ap = result.final.stats["AP"]
    print(f"[demo] AP@[.5:.95] = {ap:.3f} on {len(predictor.class_names)} classes, in {minutes:.1f} min "
          f"(training and evaluation {train_minutes:.1f} min)")
    print(f"[demo] run folder: {result.run_dir}  curves: {curves}  pictures: {pictures}")
    return ap
