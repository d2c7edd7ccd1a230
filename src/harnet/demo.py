"""``harnet demo``: the main job on the built-in data, end to end, in a few CPU minutes.

Generates the shapes dataset, trains the hybrid HAR-Net, evaluates it with COCO AP and draws its
detections on a few validation images.
"""

from __future__ import annotations

import time
from pathlib import Path

from harnet.data.build import shapes_split
from harnet.detector import Detector
from harnet.experiment import builtin_config, load_experiment
from harnet.predict import predict_files
from harnet.train import train


def run_demo(out: Path = Path("runs/demo"), threads: int | None = None, overrides: tuple[str, ...] = ()) -> float:
    """Run the demo into ``out``; returns the final val AP. A previous demo run there is replaced, the way
    ``harnet train --overwrite`` replaces a run (its files are deleted first; the generated data is kept: it
    is deterministic). A demo still running there is not touched: its run folder is locked."""
    start = time.perf_counter()
    sets = [f"output_dir={out / 'run'}", f"data.shapes.root={out / 'data'}", *overrides]
    if threads:
        sets.append(f"train.threads={threads}")
    cfg = load_experiment(builtin_config("demo"), sets)
    print(f"[demo] data: {cfg.data.shapes.root} ({cfg.data.shapes.num_images} synthetic images)")
    print(f"[demo] training the {cfg.model.preset_name} model for {cfg.train.max_steps} steps ...")
    result = train(cfg, overwrite=True)
    assert result.final is not None
    print(result.final.table())
    val_dir, _ = shapes_split(cfg.data.shapes, "val")
    detector = Detector.from_checkpoint(result.run_dir / "last.pt", device=cfg.train.device)
    pictures = out / "predictions"
    predict_files(detector, sorted(val_dir.glob("*.png"))[:6], pictures, score_thresh=0.3)
    minutes = (time.perf_counter() - start) / 60
    ap = result.final.stats["AP"]
    print(f"[demo] AP@[.5:.95] = {ap:.3f} on {len(detector.class_names)} classes, in {minutes:.1f} min")
    print(f"[demo] run folder: {result.run_dir}  pictures: {pictures}")
    return ap
