"""An evaluation with known kinds of error on real image files, for the report tests (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harnet.data.records import coco_from_dict
from harnet.engine.evaluation import evaluate_coco
from harnet.engine.inference import CheckpointEval


def synthetic_detections(gt: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Detections a mediocre model could give: most objects found (jittered), some as another class, some
    poorly placed, some twice, some missed, and false detections on the background."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        roll = rng.random()
        if roll < 0.12:
            continue  # missed
        cat = ann["category_id"] if roll > 0.22 else int(rng.choice([c for c in cats if c != ann["category_id"]]))
        jitter = rng.normal(0, 0.06 if roll > 0.3 else 0.35, 4) * [w, h, w, h]
        score = float(np.clip(rng.normal(0.75 if roll > 0.3 else 0.45, 0.15), 0.06, 0.99))
        dets.append({"image_id": ann["image_id"], "category_id": cat, "score": score,
                     "bbox": [x + jitter[0], y + jitter[1], max(2.0, w + jitter[2]), max(2.0, h + jitter[3])]})
        if rng.random() < 0.1:  # duplicate
            dets.append({**dets[-1], "score": score * 0.8, "bbox": [v + 1.0 for v in dets[-1]["bbox"]]})
    for image_id, (width, height) in sizes.items():
        for _ in range(int(rng.integers(0, 3))):
            w, h = rng.uniform(0.08, 0.3, 2) * [width, height]
            dets.append({"image_id": image_id, "category_id": int(rng.choice(cats)),
                         "score": float(rng.uniform(0.06, 0.8)),
                         "bbox": [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), w, h]})
    return dets


def synthetic_evaluation(shapes_root: Path, out: Path, split: str = "val", seed: int = 0) -> CheckpointEval:
    """A :class:`CheckpointEval` as ``harnet eval`` makes it, of synthetic detections on a shapes split."""
    gt = json.loads((shapes_root / "annotations" / f"instances_{split}.json").read_text())
    dets = synthetic_detections(gt, seed)
    names = [c["name"] for c in gt["categories"]]
    cats = [c["id"] for c in gt["categories"]]
    ids = [im["id"] for im in gt["images"]]
    result = evaluate_coco(coco_from_dict(gt), dets, names, cats, image_ids=ids)
    out.mkdir(parents=True, exist_ok=True)
    result.save_json(out / "metrics.json")
    run = {"checkpoint": str(out.parent / "best.pt"), "step": 1200, "config_version": 3, "saved_config_version": 3,
           "split": split, "num_images": len(ids), "device": "cpu", "tta": None, "tile": None, "overlap": None,
           "overrides": [], "harnet_version": "test",
           "data": {"format": "shapes", "root": str(shapes_root), "num_images": len(ids), "size": 64,
                    "difficulty": "easy"},
           "model": {"detector": "harnet", "preset": "hybrid", "backbone": "resnet18", "num_classes": len(names),
                     "test_min_size": 64, "test_max_size": 64, "nms": "nms", "score_thresh": 0.05,
                     "detections_per_img": 100}}
    paths = {im["id"]: shapes_root / split / im["file_name"] for im in gt["images"]}
    return CheckpointEval(result, out, None, gt, dets, ids, paths, names, cats, run)
