"""Checkpoints: atomic writes and safe (``weights_only``) loads.

A checkpoint holds only tensors and plain Python values, so ``torch.load(weights_only=True)``
can read it and a file carrying pickled code is refused. It is written to a temporary file in the
same folder and renamed over the old one, so a kill at any moment leaves either the previous or
the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from harnet.config import HARNetConfig, to_dict
from harnet.configio import from_dict
from harnet.detectors import build_detector

TEMP_SUFFIX = ".tmp"
# Checkpoints of a run with a weight EMA (train.ema_decay): "model" holds the averaged weights (what eval,
# predict, export and init_from use), TRAIN_MODEL_KEY the raw weights the optimizer updates and EMA_UPDATES_KEY
# the number of EMA updates, so that --resume continues both exactly. Without EMA only "model" exists.
TRAIN_MODEL_KEY = "train_model"
EMA_UPDATES_KEY = "ema_updates"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or made for another model."""


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them.

    A ``KeyboardInterrupt`` raised inside ``torch.save`` leaves its zip writer half-way, and closing it
    then raises a ``RuntimeError`` that replaces the interrupt: Ctrl-C (or SIGTERM, which training turns
    into the same interrupt) during a checkpoint write would end the run with an obscure error instead
    of a clean save. Only the main thread can set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    deferred = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in deferred}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(received):
        handler = previous[sig]
        if callable(handler):
            handler(sig, None)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
        elif handler == signal.SIG_DFL and sig == signal.SIGINT:
            raise KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(sig)  # the default action, now that the file is complete


@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A temp file beside ``path`` that replaces it (after fsync) only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace``."""
    with _atomic_file(Path(path)) as f:
        torch.save(obj, f)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Replace a small text file (config.yaml, metrics.csv) atomically, like checkpoints."""
    with _atomic_file(Path(path)) as f:
        f.write(text.encode("utf-8"))


def remove_stale_temps(folder: str | Path) -> None:
    """Delete the temp files of atomic writes that a killed process never finished (``.name.*.tmp``)."""
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


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
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a harnet checkpoint (no 'model'/'config' entries)")
    ckpt["path"] = str(path)
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
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _saved_model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    config = ckpt.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: not a harnet checkpoint (no model config)")
    return config["model"]


def model_config(ckpt: dict[str, Any]) -> HARNetConfig:
    return from_dict(HARNetConfig, _saved_model_config(ckpt), "model")


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


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """The checkpoint's detector (HAR-Net, or the torchvision peer) from its own config, with its weights.

    The pretrained backbone file (or ImageNet download) the run started from is not needed: the
    checkpoint holds every weight, so ``backbone.weights`` is cleared before building."""
    cfg = model_config(ckpt)
    cfg.backbone.weights = None
    model = build_detector(ckpt["config"].get("detector", "harnet"), cfg)
    _load_state(model, ckpt)
    return model


def _load_state(model: nn.Module, ckpt: dict[str, Any], key: str = "model") -> None:
    try:
        model.load_state_dict(ckpt[key])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit the saved model config "
                              f"({_first_line(e)})") from None


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [(prefix, a, b)]


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, as weights_only-safe values."""
    np_state = np.random.get_state()
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
