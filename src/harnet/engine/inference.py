"""Run a model over a dataset: detections (training-time and final eval), and a checkpoint's evaluation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from harnet.config.experiment import ExperimentConfig, load_experiment
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
    """What :func:`evaluate_checkpoint` measured and where it wrote it."""

    result: EvalResult
    out: Path  # holds metrics.json and detections.json (COCO results format)
    issues: str | None  # a one-line summary of skipped data, None when there was none


def evaluate_checkpoint(
    path: str | Path, split: str = "val", *, data: str | None = None, overrides: Sequence[str] = (),
    skip_bad: bool = False, device: str = "auto", tta: TTAConfig | None = None, out: str | Path | None = None,
    tile: int | None = None, overlap: float = DEFAULT_OVERLAP,
) -> CheckpointEval:
    """COCO metrics of a checkpoint on ``split`` of its own data (or of the experiment ``data`` names), written to
    ``out`` (default: ``eval_<split>`` beside the checkpoint) as metrics.json and detections.json.

    With ``tile``, every image (e.g. a whole orthomosaic) is predicted in windows, as ``harnet predict --tile``.
    ``overrides`` (``KEY=VALUE``) change the data (``data.*``) and the test-time model settings
    (``model.inference.*``, ``model.transform.*``); any other key is refused, never silently ignored."""
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
    write_text_atomic(json.dumps(to_coco_results(ids, preds, dataset.category_ids)), folder / "detections.json")
    result.save_json(folder / "metrics.json")
    return CheckpointEval(result, folder, issues)
