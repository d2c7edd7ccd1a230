"""harnet's hybrid (ImageNet-pretrained EfficientNet-Lite0, config ``trees_cpu`` or ``--config``) vs ultralytics
YOLO11n trained from scratch, for the same CPU wall-clock budget on the real aerial trees tiles (issue #12).

    python3 -m venv /tmp/yolo-venv && /tmp/yolo-venv/bin/pip install torch torchvision ultralytics pycocotools
    python benchmarks/trees_vs_yolo.py --data data/trees --minutes 8 --threads 1
    python benchmarks/trees_vs_yolo.py --data data/trees --minutes 8 --threads 1 --config trees   # full 400 px

Why it is built this way:

* Both trainings run at the same time, each in its own process with ``OMP_NUM_THREADS`` and torch threads
  set to ``--threads``, so that both see the same (shared, noisy) machine load rather than one of them
  getting a quiet machine. harnet's is a ``multiprocessing`` (spawn) child that calls
  ``harnet.engine.trainer.train`` itself.
* YOLO bounds itself: ultralytics' ``time`` argument (hours) re-plans its epochs and schedule after every
  epoch and stops at the budget. harnet's ``train.max_minutes`` bounds its training loop the same way, but
  its learning-rate schedule is in steps, so its run starts as a probe of 11 steps whose step and final
  evaluation times a trainer hook records; the probe's run is then resumed (no step thrown away) with a
  ``max_steps`` that ends at the budget, its learning-rate drops at 80 % and 95 % of it and ~4 evaluations,
  and ``train.max_minutes`` set so that its training loop (probe included: the budget counts over resumes)
  ends in time for the final evaluation before the deadline. Should the steps run slower than the probe's
  (it overlaps YOLO's start-up, so they are usually faster), the budget ends the run cleanly, with its final
  evaluation, before ``max_steps``.
* Both are scored by pycocotools on the same val annotation file: harnet by its own COCO evaluation, YOLO by
  predicting every val image (conf 0.001, IoU 0.6, 100 detections) into a COCO results file. The final weights
  of both are also scored with each one's own test-time augmentation (harnet ``eval --tta``, YOLO
  ``augment=True``), reported beside the comparison, not in it.
* ultralytics never touches the network: YOLO11n is built from ``yolo11n.yaml`` (no weights), with
  ``pretrained=False``, ``amp=False`` (the AMP check downloads yolo11n.pt), ``plots=False`` (plots fetch a
  font), ``YOLO_OFFLINE=1``, a private ``YOLO_CONFIG_DIR`` with ``sync`` off, and, where ``unshare -rn``
  works, a network namespace with no interface at all. The YOLO side runs in its own venv (``--yolo-python``)
  so that harnet's stays clean; this file is also that side's worker (``--yolo-worker``), using only the
  standard library, ultralytics and pycocotools there.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

IMGSZ = 416  # the 400 px tiles rounded up to YOLO's stride of 32
PROBE_STEPS = 11  # the probe's steps; its final evaluation times an evaluation
WARMUP_STEPS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock training budget of each model")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each training")
    p.add_argument("--config", default="trees_cpu", help="harnet's config (a built-in name or a YAML file)")
    p.add_argument("--data", default="data/trees", help="trees in COCO format (converted here if missing)")
    p.add_argument("--out", default="runs/trees_vs_yolo")
    p.add_argument("--results", default="docs/results/trees_vs_yolo.json", help="JSON; the .md goes beside it")
    p.add_argument("--yolo-python", default="/tmp/yolo-venv/bin/python", help="python of the ultralytics venv")
    p.add_argument("--no-netns", action="store_true", help="do not run YOLO inside `unshare -rn`")
    p.add_argument("--yolo-worker", metavar="JSON", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data


def coco_paths(data: Path) -> dict[str, Path]:
    return {"train_images": data / "train", "train_annotations": data / "annotations/instances_train.json",
            "val_images": data / "val", "val_annotations": data / "annotations/instances_val.json"}


def ensure_trees(data: Path) -> None:
    if not all(p.exists() for p in coco_paths(data).values()):
        subprocess.run([sys.executable, "-m", "harnet", "data", "trees", "--out", str(data)], check=True)


def coco_to_yolo(data: Path, out: Path) -> Path:
    """images/{train,val} (copies: ultralytics finds labels by rewriting /images/ to /labels/ in the path),
    labels/{train,val}/*.txt (class cx cy w h, normalised) and data.yaml; returns data.yaml."""
    paths = coco_paths(data)
    if out.exists():
        shutil.rmtree(out)
    names: dict[int, str] = {}
    for split in ("train", "val"):
        coco = json.loads(paths[f"{split}_annotations"].read_text())
        cats = sorted(c["id"] for c in coco["categories"])
        index = {cid: i for i, cid in enumerate(cats)}
        names = {index[c["id"]]: c["name"] for c in coco["categories"]}
        rows: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for a in coco["annotations"]:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = a["bbox"]
            iw, ih = sizes[a["image_id"]]
            rows[a["image_id"]].append(f"{index[a['category_id']]} {(x + w / 2) / iw:.6f} {(y + h / 2) / ih:.6f} "
                                       f"{w / iw:.6f} {h / ih:.6f}")
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for im in coco["images"]:
            shutil.copy2(paths[f"{split}_images"] / im["file_name"], out / "images" / split / im["file_name"])
            label = out / "labels" / split / f"{Path(im['file_name']).stem}.txt"
            label.write_text("".join(f"{r}\n" for r in rows[im["id"]]))
    yaml = out / "data.yaml"  # JSON is YAML
    yaml.write_text(json.dumps({"path": str(out.resolve()), "train": "images/train", "val": "images/val",
                                "names": names}, indent=1) + "\n")
    return yaml


# ---------------------------------------------------------------------------------------------- YOLO worker


def yolo_worker(spec: dict[str, Any]) -> None:
    """Runs in the ultralytics venv: train YOLO11n from scratch for the budget, then score best.pt and
    last.pt with pycocotools on the val annotation file. Writes spec["result"]."""
    import torch

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    import ultralytics
    from ultralytics import YOLO, settings
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads  # select_device() resets torch's threads to this on CPU
    settings.update({"sync": False})
    out = Path(spec["out"])
    marks: dict[str, Any] = {"epoch_ends": []}

    def on_train_start(trainer: Any) -> None:
        torch.set_num_threads(threads)
        marks["start"] = time.time()
        marks["torch_threads"] = torch.get_num_threads()

    def on_fit_epoch_end(trainer: Any) -> None:
        marks["epoch_ends"].append([trainer.epoch + 1, time.time(), trainer.epochs])

    model = YOLO("yolo11n.yaml")
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    t0 = time.time()
    metrics = model.train(data=spec["data_yaml"], time=spec["minutes"] / 60, imgsz=IMGSZ, batch=8, workers=0,
                          device="cpu", pretrained=False, amp=False, plots=False, project=str(out), name="train",
                          exist_ok=True, seed=0, verbose=False)
    t1 = time.time()
    weights = out / "train" / "weights"
    ends = marks["epoch_ends"][:-1] if len(marks["epoch_ends"]) > 1 else marks["epoch_ends"]  # last: final eval
    result: dict[str, Any] = {
        "ultralytics": ultralytics.__version__, "torch": torch.__version__, "torch_threads": marks["torch_threads"],
        "wall_minutes": (t1 - t0) / 60, "epoch_loop_minutes": (ends[-1][1] - marks["start"]) / 60,
        "epochs": ends[-1][0], "planned_epochs": ends[-1][2],
        "iterations": ends[-1][0] * math.ceil(spec["num_train"] / 8),
        "ultralytics_best_mAP50_95": float(metrics.box.map), "ultralytics_best_mAP50": float(metrics.box.map50),
    }
    for name in ("best", "last"):
        result[name] = coco_eval_yolo(YOLO(str(weights / f"{name}.pt")), spec, out / f"detections_{name}.json")
    result["last_tta"] = coco_eval_yolo(YOLO(str(weights / "last.pt")), spec, out / "detections_last_tta.json",
                                        augment=True)
    Path(spec["result"]).write_text(json.dumps(result, indent=1) + "\n")


def coco_eval_yolo(model: Any, spec: dict[str, Any], detections: Path, augment: bool = False) -> dict[str, float]:
    """pycocotools AP of ``model`` on the val tiles; ``augment``: ultralytics' own test-time augmentation
    (flips and scales 1 / 0.83 / 0.67)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(spec["val_annotations"])
    cat = sorted(gt.getCatIds())
    dets = []
    for img in gt.loadImgs(sorted(gt.getImgIds())):
        r = model.predict(str(Path(spec["val_images"]) / img["file_name"]), imgsz=IMGSZ, conf=0.001, iou=0.6,
                          max_det=100, device="cpu", verbose=False, augment=augment)[0]
        for (x1, y1, x2, y2), s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
            dets.append({"image_id": img["id"], "category_id": cat[int(c)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": s})
    detections.write_text(json.dumps(dets))
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "num_detections": 0}
    ev = COCOeval(gt, gt.loadRes(str(detections)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2]),
            "num_detections": len(dets)}


# ---------------------------------------------------------------------------------------------- harnet


def harnet_overrides(data: Path, out: Path, threads: int, sets: dict[str, Any]) -> list[str]:
    """``--set`` items of harnet's run: the trees data, the run folder, threads and ``sets``."""
    overrides = {**{f"data.{k}": str(v) for k, v in coco_paths(data).items()}, "output_dir": str(out),
                 "train.threads": threads, "train.log_every": 1, "train.checkpoint_every": 0, **sets}
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in overrides.items()]


def _timestamps_hook() -> Any:
    """A :class:`harnet.engine.hooks.TrainerHook` (built in the harnet child, which alone imports harnet) that
    writes down the wall-clock time of every step's end and of every evaluation, with its stats."""
    from harnet.engine.hooks import TrainerHook

    class Timestamps(TrainerHook):
        def __init__(self) -> None:
            self.step_time: dict[int, float] = {}
            self.evals: list[tuple[int, float, dict[str, float]]] = []  # (step, time, COCO stats)

        def after_step(self, trainer: Any, values: dict[str, float]) -> None:
            self.step_time[trainer.step] = time.time()

        def after_eval(self, trainer: Any, result: Any) -> None:
            self.evals.append((trainer.step, time.time(), {k: v for k, v in result.stats.items() if v is not None}))

    return Timestamps()


def harnet_child(data: Path, out: Path, threads: int, t0: float, deadline: float, config: str, log: Path,
                 result_path: Path) -> None:
    """The harnet side, in its own process: a probe of PROBE_STEPS steps, then its run resumed with a plan that
    ends at ``deadline`` (``train.max_minutes`` as the hard stop), then the final weights scored with TTA.
    Writes its summary to ``result_path``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from harnet.config.experiment import config_path, load_experiment
    from harnet.engine.checkpoint import upgrade_saved_model_config
    from harnet.engine.inference import evaluate_checkpoint
    from harnet.engine.trainer import train
    from harnet.engine.tta import PAPER_SCALES, TTAConfig

    budget_minutes = (deadline - t0) / 60
    clock = _timestamps_hook()
    probe_sets = {"train.max_steps": PROBE_STEPS, "train.lr_steps": [1_000_000], "train.warmup_steps": WARMUP_STEPS,
                  "train.eval_every": 0, "train.max_minutes": budget_minutes}
    cfg = load_experiment(config_path(config), harnet_overrides(data, out, threads, probe_sets))
    probe = train(cfg, progress=False, overwrite=True, hooks=[clock])
    st = clock.step_time
    # Step time from steps 3..PROBE_STEPS (the first builds lazily); the final evaluation follows the last step.
    step_s = (st[probe.step] - st[2]) / (probe.step - 2)
    eval_s = max(0.0, clock.evals[-1][1] - st[probe.step])
    setup_s = max(0.0, st[1] - t0 - step_s)
    probe_info = {"steps": probe.step, "step_seconds": step_s, "eval_seconds": eval_s, "setup_seconds": setup_s,
                  "train_seconds": probe.train_seconds}
    # What is left for the training loop: the deadline less the resume's setup and the final evaluation.
    loop_left = deadline - time.time() - setup_s - eval_s
    plan = plan_steps(probe.step, loop_left, step_s, eval_s)
    plan["train.max_minutes"] = max(probe.train_seconds + loop_left, probe.train_seconds + step_s) / 60
    overrides = harnet_overrides(data, out, threads, plan)
    cfg = load_experiment(out / "config.yaml", overrides, upgrade=upgrade_saved_model_config)
    result = train(cfg, resume=True, progress=False, hooks=[clock])
    end = time.time()
    # The final weights again with test-time augmentation (flips and scales 1.0 / 1.25, merged by Soft-NMS +
    # voting), to compare with YOLO's own (augment=True) on the same weights.
    tta = evaluate_checkpoint(out / "last.pt", tta=TTAConfig(scales=PAPER_SCALES, flip=True),
                              out=out.parent / "harnet_eval_tta").result.stats
    evals = {step: stats for step, _, stats in clock.evals}  # a step evaluated twice keeps its last
    best_step, best = max(evals.items(), key=lambda e: e[1]["AP"])
    last = evals[result.step]
    summary = {"wall_minutes": (end - t0) / 60, "steps": result.step, "max_steps": plan["train.max_steps"],
               "stopped_by": result.stopped_by, "train_minutes": result.train_seconds / 60,
               "probe": probe_info, "schedule": plan, "overrides": overrides,
               "last": {"AP": last["AP"], "AP50": last["AP50"], "AP75": last.get("AP75")},
               "best": {"AP": best["AP"], "AP50": best["AP50"], "AP75": best.get("AP75"), "step": best_step},
               "last_tta": {"AP": tta["AP"], "AP50": tta["AP50"], "AP75": tta.get("AP75")},
               "curve": [[s, v["AP"]] for s, v in sorted(evals.items())]}
    result_path.write_text(json.dumps(summary, indent=1) + "\n")


def run_harnet(data: Path, out: Path, threads: int, t0: float, deadline: float, loads: list[float],
               config: str) -> dict[str, Any]:
    """:func:`harnet_child` in a spawned process with ``threads`` threads, while this one samples the load."""
    out.parent.mkdir(parents=True, exist_ok=True)
    result_path = out.parent / "harnet_result.json"
    result_path.unlink(missing_ok=True)
    log = out.parent / "harnet.log"
    os.environ.update(thread_env(threads))  # inherited by the child: its libraries read them at import
    child = multiprocessing.get_context("spawn").Process(
        target=harnet_child, args=(data, out, threads, t0, deadline, config, log, result_path))
    child.start()
    try:
        while child.is_alive():
            child.join(0.5)
            loads.append(os.getloadavg()[0])
    except BaseException:
        child.terminate()
        raise
    if child.exitcode != 0 or not result_path.is_file():
        raise RuntimeError(f"harnet exited with {child.exitcode}; see {log}")
    return dict(json.loads(result_path.read_text()))


def plan_steps(done: int, seconds_left: float, step_s: float, eval_s: float) -> dict[str, Any]:
    """max_steps that fills ``seconds_left`` with ~4 evaluations, lr drops at 80 and 95 %, warmup <= 10 %
    (at least the steps already warmed)."""
    max_steps = done + max(1, int((seconds_left - 4 * eval_s) / step_s))
    return {"train.max_steps": max_steps, "train.warmup_steps": min(WARMUP_STEPS, max(done, max_steps // 10)),
            "train.lr_steps": [round(0.8 * max_steps), round(0.95 * max_steps)],
            "train.eval_every": max(1, math.ceil(max_steps / 4))}


# ---------------------------------------------------------------------------------------------- main


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


def times(ratio: float | None) -> str:
    return "∞ (YOLO AP 0)" if ratio is None else f"{ratio:.2f}x"


def markdown(r: dict[str, Any]) -> str:
    h, y = r["harnet"], r["yolo"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"## trees: harnet hybrid (pretrained EfficientNet-Lite0) vs YOLO11n from scratch, {r['minutes']:g} min "
        f"of CPU each, {r['threads']} thread(s) each, both at once", "",
        "| model | init | trained (min) | steps / epochs | AP best | AP50 best | AP last | AP50 last |",
        "|---|---|---|---|---|---|---|---|",
        f"| harnet hybrid (`{r.get('config', 'trees')}`) | ImageNet EfficientNet-Lite0 | {h['wall_minutes']:.2f} | "
        f"{h['steps']} steps (batch {r.get('batch_size', 4)}) | {pct(h['best']['AP'])} | {pct(h['best']['AP50'])} | "
        f"{pct(h['last']['AP'])} | {pct(h['last']['AP50'])} |",
        f"| YOLO11n (`yolo11n.yaml`) | scratch | {y['wall_minutes']:.2f} | {y['epochs']} epochs, {y['iterations']} "
        f"iters (batch 8) | {pct(y['best']['AP'])} | {pct(y['best']['AP50'])} | {pct(y['last']['AP'])} | "
        f"{pct(y['last']['AP50'])} |", "",
        f"AP ratio harnet / YOLO (best): **{times(r['ratio_best'])}**, (last): {times(r['ratio_last'])}; target ≥ 2x: "
        f"**{'met' if r['target_met'] else 'missed'}**.", "",
        "With test-time augmentation on both sides (the final weights; not the target's comparison): harnet "
        f"`--tta` (flips, scales 1.0 / 1.25, Soft-NMS + voting) {pct(h['last_tta']['AP'])} AP "
        f"({pct(h['last_tta']['AP50'])} AP50), YOLO `augment=True` (flips, scales 1 / 0.83 / 0.67) "
        f"{pct(y['last_tta']['AP'])} ({pct(y['last_tta']['AP50'])}): {times(r['ratio_last_tta'])}.", "",
        f"COCO AP@[.5:.95] / AP50 in %, pycocotools on the same {r['num_val']} val tiles. Best: harnet's best "
        "evaluation / YOLO's best.pt (both picked on this val set); last: the final weights. Trained minutes: wall "
        "clock of each training process, setup and evaluations included (harnet: probe + resume, to its last "
        "evaluation). ultralytics' "
        f"own mAP50-95 of best.pt: {pct(y['ultralytics_best_mAP50_95'])}. harnet step "
        f"{h['probe']['step_seconds']:.2f} s, eval {h['probe']['eval_seconds']:.1f} s. "
        "Load average (1 min) before / during / after: "
        f"{r['load_before'][0]:.2f} / {r['load_during_mean']:.2f} / {r['load_after'][0]:.2f} on {r['cpus']} CPUs.",
        "", f"`{r['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.yolo_worker:
        yolo_worker(json.loads(args.yolo_worker))
        return 0
    import torch

    from harnet.config.experiment import config_path, load_experiment

    batch_size = load_experiment(config_path(args.config)).train.batch_size
    data, out = Path(args.data), Path(args.out)
    ensure_trees(data)
    out.mkdir(parents=True, exist_ok=True)
    data_yaml = coco_to_yolo(data, out / "yolo_data")
    paths = coco_paths(data)
    num_train = len(json.loads(paths["train_annotations"].read_text())["images"])
    num_val = len(json.loads(paths["val_annotations"].read_text())["images"])
    yolo_out = (out / "yolo").resolve()
    shutil.rmtree(yolo_out, ignore_errors=True)
    yolo_out.mkdir(parents=True)
    spec = {"threads": args.threads, "minutes": args.minutes, "out": str(yolo_out),
            "data_yaml": str(data_yaml.resolve()), "num_train": num_train,
            "val_images": str(paths["val_images"].resolve()),
            "val_annotations": str(paths["val_annotations"].resolve()), "result": str(yolo_out / "result.json")}
    netns = not args.no_netns and shutil.which("unshare") is not None and \
        subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    yolo_cmd = [*(["unshare", "-rn"] if netns else []), args.yolo_python, str(Path(__file__).resolve()),
                "--yolo-worker", json.dumps(spec)]
    yolo_env = {**thread_env(args.threads), "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(yolo_out / "config"),
                "YOLO_VERBOSE": "false"}

    load_before = os.getloadavg()
    loads: list[float] = []
    t0 = time.time()
    deadline = t0 + 60 * args.minutes
    with (out / "yolo.log").open("w") as ylog:
        yolo = subprocess.Popen(yolo_cmd, stdout=ylog, stderr=subprocess.STDOUT, env=yolo_env, cwd=yolo_out)
        try:
            harnet = run_harnet(data, out / "harnet", args.threads, t0, deadline, loads, args.config)
        except BaseException:
            yolo.terminate()
            raise
        while yolo.poll() is None:
            time.sleep(1)
            if time.time() < deadline:
                loads.append(os.getloadavg()[0])
    if yolo.returncode != 0:
        raise SystemExit(f"YOLO worker exited with {yolo.returncode}; see {out / 'yolo.log'}")
    load_after = os.getloadavg()
    y = json.loads(Path(spec["result"]).read_text())

    def ratio(a: float, b: float) -> float | None:  # None (JSON null): YOLO's AP is 0
        return a / b if b > 0 else None

    result: dict[str, Any] = {
        "what": f"harnet hybrid (config {args.config}, ImageNet-pretrained EfficientNet-Lite0) vs ultralytics YOLO11n "
                "from scratch, same CPU wall-clock budget, trained concurrently, pycocotools on the same val split",
        "config": args.config, "batch_size": batch_size,
        "minutes": args.minutes, "threads": args.threads, "imgsz_yolo": IMGSZ, "num_train": num_train,
        "num_val": num_val, "harnet": harnet, "yolo": y,
        "ratio_best": ratio(harnet["best"]["AP"], y["best"]["AP"]),
        "ratio_last": ratio(harnet["last"]["AP"], y["last"]["AP"]),
        "ratio_last_tta": ratio(harnet["last_tta"]["AP"], y["last_tta"]["AP"]),
        "load_before": load_before, "load_after": load_after,
        "load_during_mean": sum(loads) / len(loads) if loads else None, "cpus": os.cpu_count(),
        "yolo_network": "none (unshare -rn) + YOLO_OFFLINE=1" if netns else "YOLO_OFFLINE=1",
        "torch_harnet": torch.__version__, "python": platform.python_version(), "machine": platform.processor(),
        "command": shlex.join(["python", *sys.argv]),
    }
    result["target_met"] = harnet["best"]["AP"] > 0 and (result["ratio_best"] or math.inf) >= 2.0
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=1, default=str) + "\n")
    results.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"AP ratio harnet/YOLO: best {times(result['ratio_best'])}, last {times(result['ratio_last'])} "
          f"(target 2x {'met' if result['target_met'] else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
