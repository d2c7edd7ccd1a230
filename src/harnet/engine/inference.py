"""Run a model over a dataset: detections (training-time and final eval), and a checkpoint's evaluation."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from harnet import __version__
from harnet.config.experiment import DataConfig, ExperimentConfig, load_experiment
from harnet.config.io import ConfigError, merge, parse_overrides
from harnet.data.build import build_dataset
from harnet.data.issues import write_issues
from harnet.data.loader import collate_fn
from harnet.deploy.raster import ArrayRaster
from harnet.deploy.tiling import DEFAULT_OVERLAP
from harnet.engine import checkpoint
from harnet.engine.device import resolve_device
from harnet.engine.evaluation import EVAL_OUTPUTS, EvalResult, evaluate_predictions, to_coco_results
from harnet.engine.torch_runtime import torch_predictor
from harnet.engine.tta import TTAConfig, tta_predict
from harnet.utils.atomic import write_text_atomic
from harnet.utils.outputs import remove_outputs


@torch.inference_mode()
def predict_dataset(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 2, num_workers: int = 0,
    tta: TTAConfig | None = None, tile: int | None = None, overlap: float = DEFAULT_OVERLAP,
) -> tuple[list[int], list[dict[str, Tensor]]]:
    """Detections for every image of ``dataset`` (in its order): (image ids, per-image dicts on CPU).
    With ``tta``, each batch goes through test-time augmentation instead of one forward pass; with ``tile``,
    each image is predicted in windows of that size by the prediction pipeline
    (:meth:`harnet.deploy.predictor.Predictor.predict_tiled`, as ``harnet predict --tile``)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                        num_workers=num_workers)
    tiled = None
    if tile is not None:
        classes = range(int(model.config.num_classes))  # type: ignore[union-attr, arg-type]  # names unused: labels
        tiled = torch_predictor(model, [str(c) for c in classes], list(classes), device, batch_size, tta,
                                optimize=False)
    image_ids: list[int] = []
    predictions: list[dict[str, Tensor]] = []
    try:
        for images, targets in loader:
            batch = [img.to(device) for img in images]
            if tiled is not None:
                assert tile is not None
                outputs = []
                for img in images:
                    det = tiled.predict_tiled(ArrayRaster(img.numpy()), tile, overlap).detections
                    outputs.append({k: torch.from_numpy(det[k]) for k in ("boxes", "scores", "labels")})
            else:
                outputs = tta_predict(model, batch, tta) if tta is not None else model(batch)
            image_ids += [int(t["image_id"]) for t in targets]
            predictions += [{k: v.cpu() for k, v in out.items()} for out in outputs]
    finally:
        model.train(was_training)
    return image_ids, predictions


@dataclass
class CheckpointEval:
    """What :func:`evaluate_checkpoint` measured and where it wrote it, with what an evaluation report needs:
    the COCO ground truth (instances dict), the detections (COCO results), the images scored and their files,
    and what was evaluated (:func:`run_info`)."""

    result: EvalResult
    out: Path  # holds metrics.json and detections.json (COCO results format)
    issues: str | None  # a one-line summary of skipped data, None when there was none
    ground_truth: dict[str, Any] = field(default_factory=dict, repr=False)
    detections: list[dict[str, Any]] = field(default_factory=list, repr=False)
    image_ids: list[int] = field(default_factory=list, repr=False)
    image_paths: dict[int, Path] = field(default_factory=dict, repr=False)
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)


def evaluate_checkpoint(
    path: str | Path, split: str = "val", *, data: str | None = None, overrides: Sequence[str] = (),
    skip_bad: bool = False, device: str = "auto", tta: TTAConfig | None = None, out: str | Path | None = None,
    tile: int | None = None, overlap: float = DEFAULT_OVERLAP,
    report: Callable[[CheckpointEval], None] | None = None,
) -> CheckpointEval:
    """COCO metrics of a checkpoint on ``split`` of its own data (or of the experiment ``data`` names), written to
    ``out`` (default: ``eval_<split>`` beside the checkpoint) as metrics.json and detections.json.

    With ``tile``, every image (e.g. a whole orthomosaic) is predicted in windows, as ``harnet predict --tile``.
    ``overrides`` (``KEY=VALUE``) change the data (``data.*``) and the test-time model settings
    (``model.inference.*``, ``model.transform.*``); any other key is refused, never silently ignored.
    ``report`` is called with the evaluation before metrics.json is written, to add files to the folder
    (``harnet eval --report``): metrics.json still marks a complete set."""
    tree = parse_overrides(list(overrides))
    if other := sorted(set(tree) - {"data", "model"}):
        raise ConfigError(f"{other[0]}: not used by an evaluation; it takes data.*, model.inference.* and "
                          "model.transform.*")
    ckpt = checkpoint.load(path)
    model = checkpoint.build_model(ckpt, tree.get("model"))
    data_cfg = (load_experiment(data, list(overrides)) if data else
                ExperimentConfig.from_dict(merge(ckpt["config"], tree))).data
    data_cfg.skip_bad = data_cfg.skip_bad or skip_bad
    dataset = build_dataset(data_cfg, split, class_names=ckpt["class_names"], classes_from=f"checkpoint {ckpt['path']}",
                            model_input=checkpoint.model_config(ckpt).input)
    if dataset.class_names != ckpt["class_names"]:
        raise ConfigError(f"dataset classes {dataset.class_names} differ from the checkpoint's "
                          f"{ckpt['class_names']}")
    dev = resolve_device(device)
    model.to(dev)
    ids, preds = predict_dataset(model, dataset, dev, tta=tta, tile=tile, overlap=overlap)
    result = evaluate_predictions(dataset, ids, preds)
    folder = Path(out) if out else Path(ckpt["path"]).parent / f"eval_{split}"
    # The previous evaluation's outputs go as a set (none stays beside the new ones); each new file is written
    # atomically, metrics.json last, so that it is there only when the set is complete.
    remove_outputs(folder, EVAL_OUTPUTS)
    issues = write_issues(folder, {split: dataset.issues})
    detections = to_coco_results(ids, preds, dataset.category_ids)
    write_text_atomic(json.dumps(detections), folder / "detections.json")
    run = run_info(ckpt, data_cfg, split, len(dataset), data=data, overrides=overrides, device=str(dev), tta=tta,
                   tile=tile, overlap=overlap)
    run["model"] = model_info(ckpt, tree.get("model"))
    evaluation = CheckpointEval(result, folder, issues, dataset.coco.dataset, detections, ids,
                                {r.image_id: r.path for r in dataset.records}, list(dataset.class_names),
                                list(dataset.category_ids), run)
    if report is not None:
        report(evaluation)
    result.save_json(folder / "metrics.json")
    return evaluation


def model_info(ckpt: dict[str, Any], test_time: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model of a checkpoint in a few words: detector, preset, backbone, classes, test size and recipe."""
    cfg = checkpoint.model_config(ckpt, test_time)
    transform, inference = cfg.transform, cfg.inference
    return {"detector": ckpt["config"].get("detector", "harnet"), "preset": cfg.preset_name,
            "backbone": cfg.backbone.name, "num_classes": cfg.num_classes,
            "test_min_size": transform.test_min_size or transform.min_size[-1],
            "test_max_size": transform.test_max_size or transform.max_size,
            "nms": inference.nms, "score_thresh": inference.score_thresh,
            "detections_per_img": inference.detections_per_img}


def run_info(ckpt: dict[str, Any], data_cfg: DataConfig, split: str, num_images: int, *, data: str | None,
             overrides: Sequence[str], device: str, tta: TTAConfig | None, tile: int | None,
             overlap: float) -> dict[str, Any]:
    """What an evaluation evaluated, for its report: the checkpoint (file, training step, config version as
    saved and as read), the data (format and files, or the shapes generator's settings) and how it was run."""
    if data_cfg.format == "shapes":
        source: dict[str, Any] = {"format": "shapes", "root": data_cfg.shapes.root,
                                  "num_images": data_cfg.shapes.num_images, "size": data_cfg.shapes.size,
                                  "difficulty": data_cfg.shapes.difficulty}
    else:
        source = {"format": data_cfg.format, "images": getattr(data_cfg, f"{split}_images"),
                  "annotations": getattr(data_cfg, f"{split}_annotations")}
    return {
        "checkpoint": ckpt["path"], "step": ckpt.get("step"), "best_ap": ckpt.get("best_ap"),
        "config_version": ckpt["config"].get("config_version"),
        "saved_config_version": ckpt.get("saved_config_version", ckpt["config"].get("config_version")),
        "split": split, "data": (source | {"experiment": data}) if data else source, "num_images": num_images,
        "overrides": list(overrides), "device": device,
        "tta": None if tta is None else {"scales": list(tta.scales), "flip": tta.flip, "merge": tta.merge},
        "tile": tile, "overlap": overlap if tile is not None else None, "harnet_version": __version__,
    }
