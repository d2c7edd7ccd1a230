"""Checkpoints: atomic writes and safe (``weights_only``) loads.

A checkpoint holds only tensors and plain Python values, so ``torch.load(weights_only=True)``
can read it and a file carrying pickled code is refused. It is written to a temporary file in the
same folder and renamed over the old one, so a kill at any moment leaves either the previous or
the new checkpoint, never a torn one.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harnet.config.io import ConfigError, from_dict, merge
from harnet.config.model import HARNetConfig, resolve_model_dict, to_dict
from harnet.engine.errors import CheckpointError as CheckpointError
from harnet.engine.upgrade import saved_version, upgrade_config, upgrade_state_dict
from harnet.modeling.build import build_detector

# The atomic writes live in harnet.utils.atomic (standard library only, used by every writer); the names stay
# importable from here, where training has always found them.
from harnet.utils.atomic import TEMP_SUFFIX as TEMP_SUFFIX
from harnet.utils.atomic import atomic_file
from harnet.utils.atomic import remove_stale_temps as remove_stale_temps
from harnet.utils.atomic import write_text_atomic as write_text_atomic
from harnet.utils.errors import first_line

# Checkpoints of a run with a weight EMA (train.ema_decay): "model" holds the averaged weights (what eval,
# predict, export and init_from use), TRAIN_MODEL_KEY the raw weights the optimizer updates and EMA_UPDATES_KEY
# the number of EMA updates, so that --resume continues both exactly. Without EMA only "model" exists.
TRAIN_MODEL_KEY = "train_model"
EMA_UPDATES_KEY = "ema_updates"


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace``."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for missing, torn or unsafe files."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: no best.pt or last.pt in this run folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickling_detail(e)
        if detail.startswith("GLOBAL"):  # the file names a Python callable/class: it would run code
            raise CheckpointError(f"{path}: refused to load: it carries pickled Python code ({detail}); "
                                  "harnet checkpoints hold only tensors and plain values") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (not a plain-tensor file: {detail})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path}: not a harnet checkpoint (no 'model'/'config' entries)")
    ckpt["path"] = str(path)
    return upgrade(ckpt)


def upgrade(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of any config version in this version's config and parameter names (see
    :mod:`harnet.engine.upgrade`); :func:`load` applies it, so no other code sees an old checkpoint. One without
    a model config is left as it is (using it fails with "no model config")."""
    if not isinstance(ckpt["config"].get("model"), dict):
        return ckpt
    try:
        version = saved_version(ckpt["config"])
        ckpt["config"] = upgrade_config(ckpt["config"])
        ckpt["saved_config_version"] = version  # what the run wrote, for reports (the config is now current)
    except ConfigError as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: {e}") from None
    for key in ("model", TRAIN_MODEL_KEY):
        if isinstance(ckpt.get(key), dict):
            ckpt[key] = upgrade_state_dict(ckpt[key], version)
    return ckpt


def _unpickling_detail(error: BaseException) -> str:
    """The specific reason in torch's weights-only refusal, without its boilerplate (which varies between
    torch versions and even suggests retrying with ``weights_only=False``, exactly what must not be done
    with an untrusted file). A ``GLOBAL`` is a reference to Python code."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL " in line:
            return "GLOBAL " + line.split("GLOBAL ", 1)[1].split(". ", 1)[0].rstrip(".")
    for k, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip() or " ".join(lines[k + 1 : k + 2])
            return reason.split(". ", 1)[0].rstrip(".")
    return first_line(error)


def _saved_model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    config = ckpt.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: not a harnet checkpoint (no model config)")
    return config["model"]


# The parts of a model config that the weights do not fix: what is done before and after the network.
TEST_TIME_SECTIONS = ("inference", "transform")


def model_config(ckpt: dict[str, Any], test_time: dict[str, Any] | None = None) -> HARNetConfig:
    """The checkpoint's model config, with ``test_time`` overrides of its ``inference`` and ``transform``
    sections (e.g. the authors' Soft-NMS + voting on a run trained with hard NMS); any other model key
    would contradict the weights, so it is refused rather than ignored."""
    saved = _saved_model_config(ckpt)
    if test_time:
        if other := sorted(set(test_time) - set(TEST_TIME_SECTIONS)):
            raise ConfigError(f"model.{other[0]}: fixed by the checkpoint's weights; only model.inference.* and "
                              "model.transform.* can change after training")
        saved = merge(saved, resolve_model_dict(test_time))
    return from_dict(HARNetConfig, saved, "model")


def load_model_weights(model: nn.Module, ckpt: dict[str, Any], config: HARNetConfig, key: str = "model") -> None:
    """Load weights into ``model`` (built from ``config``), refusing a checkpoint made for another
    model config. ``key``: which state_dict entry (``TRAIN_MODEL_KEY`` for the raw training weights of a
    run with a weight EMA, see :func:`training_weights_key`)."""
    saved = _saved_model_config(ckpt)
    current = to_dict(config)
    if saved != current:
        diffs = _diff(saved, current)
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: made for a different model config; differing keys: "
            + ", ".join(f"model.{k} (checkpoint {a!r}, now {b!r})" for k, a, b in diffs[:5])
        )
    _load_state(model, ckpt, key)


def training_weights_key(ckpt: dict[str, Any]) -> str:
    """The entry holding the weights training continues from: ``TRAIN_MODEL_KEY`` if the run kept a
    weight EMA, else ``"model"``."""
    return TRAIN_MODEL_KEY if TRAIN_MODEL_KEY in ckpt else "model"


def build_model(ckpt: dict[str, Any], test_time: dict[str, Any] | None = None) -> nn.Module:
    """The checkpoint's detector (HAR-Net, or the torchvision peer) from its own config (``test_time``: see
    :func:`model_config`), with its weights.

    The pretrained backbone file (or ImageNet download) the run started from is not needed: the
    checkpoint holds every weight, so ``backbone.weights`` is cleared before building."""
    cfg = model_config(ckpt, test_time)
    cfg.backbone.weights = None
    model = build_detector(ckpt["config"].get("detector", "harnet"), cfg)
    _load_state(model, ckpt)
    return model


def _load_state(model: nn.Module, ckpt: dict[str, Any], key: str = "model") -> None:
    try:
        model.load_state_dict(ckpt[key])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit the saved model config "
                              f"({first_line(e)})") from None


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [(prefix, a, b)]


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, as weights_only-safe values."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``. The states are CPU byte tensors whatever device the checkpoint was
    loaded onto (``load(path, map_location="cuda")`` moves them; the RNG setters refuse CUDA tensors)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _tuples(x: Any) -> Any:
    """``random.setstate`` needs tuples; a round trip may hand back lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
