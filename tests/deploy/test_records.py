"""Per-input records: settings that tell models apart, a refusal naming the setting, assembly in the
command line's order only once every input is complete, an exclusive lock between processes."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from harnet.deploy.records import (
    LOCK_NAME,
    RECORDS_DIR,
    assembled_report,
    check_settings,
    is_complete,
    model_identity,
    output_lock,
    prediction_settings,
    read_record,
    record_path,
    write_record,
)
from harnet.deploy.report import PredictReport
from harnet.deploy.tta import TTAConfig
from harnet.utils.errors import UsageError


def _settings(model: Path, score: float = 0.3, **extra: object) -> dict:
    options = {"backend": "OnnxRuntime", "score": score, "tile": None, "overlap": 0.25, "bands": None} | extra
    return prediction_settings(model, **options)  # type: ignore[arg-type]


def _report(path: str, n: int) -> PredictReport:
    report = PredictReport()
    det = {"boxes": np.arange(4 * n, dtype=np.float32).reshape(n, 4) * [1, 1, 2, 2], "scores": np.full(n, 0.5),
           "labels": np.zeros(n, dtype=np.int64), "names": ["a"] * n}
    report.add(path, det, [7], size=(40, 30))
    report.notes.append(f"{path}: a note")
    return report


def test_model_identity_follows_content_not_path(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "model.onnx", tmp_path / "y" / "model.onnx"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"weights")
    assert model_identity(a) == model_identity(b)  # the same file mounted elsewhere
    b.write_bytes(b"weightz")
    assert model_identity(a) != model_identity(b)
    folder = tmp_path / "x"
    assert model_identity(folder) == model_identity(folder) and model_identity(None) is None
    tta = _settings(a, tta=TTAConfig(scales=(1.0, 1.25)))
    assert json.loads(json.dumps(tta)) == tta  # every setting is plain JSON
    assert tta != _settings(a) and _settings(a, formats=["coco"]) != _settings(a)


def test_records_assembled_in_order_once_all_complete(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "m.onnx")
    items = [("img/b.png", "b"), ("img/a.png", "a"), ("img/c.png", "c")]
    write_record(tmp_path, "a", "img/a.png", settings, _report("img/a.png", 2))
    failed = PredictReport()
    failed.skip("img/c.png", "not an image")
    write_record(tmp_path, "c", "img/c.png", settings, failed)
    assert assembled_report(tmp_path, items, settings) is None  # b is missing
    assert is_complete(read_record(tmp_path, "a"), "img/a.png", settings)
    assert not is_complete(read_record(tmp_path, "c"), "img/c.png", settings)  # a failed input is tried again
    assert not is_complete(read_record(tmp_path, "a"), "img/a.png", _settings(tmp_path / "m.onnx", 0.5))
    write_record(tmp_path, "b", "img/b.png", settings, _report("img/b.png", 1))
    report = assembled_report(tmp_path, items, settings)
    assert report is not None
    assert report.images == ["img/b.png", "img/a.png"]
    assert [d["file_name"] for d in report.detections] == ["img/b.png", "img/a.png", "img/a.png"]
    assert report.skipped == ["img/c.png: not an image"] and report.sizes["img/a.png"] == (40, 30)
    assert report.detections == [*_report("img/b.png", 1).detections, *_report("img/a.png", 2).detections]
    record_path(tmp_path, "b").write_text("{truncat")  # unreadable: as if missing, redone
    assert read_record(tmp_path, "b") is None and assembled_report(tmp_path, items, settings) is None


def test_other_settings_refused_in_one_line(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"1")
    check_settings(tmp_path, _settings(model))  # no records yet
    write_record(tmp_path, "a", "a.png", _settings(model), _report("a.png", 1))
    check_settings(tmp_path, _settings(model))
    with pytest.raises(UsageError, match=r"score 0.3 \(this call: 0.5\)") as e:
        check_settings(tmp_path, _settings(model, score=0.5))
    assert "\n" not in str(e.value) and f"{RECORDS_DIR}/a.json" in str(e.value)
    model.write_bytes(b"2")
    with pytest.raises(UsageError, match="model file"):
        check_settings(tmp_path, _settings(model))


def _hold(folder: str, seconds: float, started: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with output_lock(Path(folder)):
        started.set()
        time.sleep(seconds)


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    context = multiprocessing.get_context("fork")
    started = context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), 1.0, started))
    holder.start()
    assert started.wait(30)
    tic = time.perf_counter()
    with output_lock(tmp_path):
        waited = time.perf_counter() - tic
    holder.join()
    assert waited > 0.3 and (tmp_path / RECORDS_DIR / LOCK_NAME).exists()
