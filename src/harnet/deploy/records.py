"""Per-input result records: how several ``harnet predict`` processes (``--shard K/N``, a rerun after a kill,
dask workers) fill ONE output folder, and how ``detections.json`` is assembled from them.

Why records: one call used to hold every detection in memory and write ``detections.json`` at its end, so
two processes writing into one folder replaced each other's file, and a killed call lost everything. Now
each input's result (its COCO records, its size, its notes and skip lines) is written to
``records/<stem>.json`` atomically as soon as the input is done, after its picture and maps: a record that
exists is complete, and a process killed at any moment leaves at most a hidden temp file. A rerun into the
same folder skips the inputs whose records are complete; inputs that failed are tried again.

A record holds the settings that made it (:func:`prediction_settings`: the model file's identity, score,
tile, overlap, bands, TTA, formats). A call whose settings differ from a record's refuses in one line
naming the setting, before any model runs: silently reusing another model's detections would be wrong, and
deleting another shard's work on a guess would be worse (a plain call without ``--shard`` still starts
afresh, as before).

``detections.json`` (and ``skipped.txt``, ``--format`` files) is assembled from the records of every input
of the command line, in the command line's order, under an exclusive lock (``fcntl.flock`` on
:data:`LOCK_NAME` in ``records/``), by any process that finds them all complete: the last shard to finish
writes it, and it is identical to one process's. While inputs are missing none of these files exist, so
nothing incomplete looks finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harnet.deploy.annotation_formats import PREDICTION_FILES
from harnet.deploy.report import PredictReport
from harnet.utils.atomic import write_text_atomic
from harnet.utils.errors import UsageError
from harnet.utils.outputs import remove_outputs

RECORDS_DIR = "records"
LOCK_NAME = ".lock"  # in RECORDS_DIR: kept (a lock file removed while another process waits on it locks nothing)
RECORD_VERSION = 1
# What is assembled from the records, and removed while an input's record is missing.
ASSEMBLED_OUTPUTS = ("detections.json", "skipped.txt", *PREDICTION_FILES.values())
HASH_CHUNK = 1 << 20

Settings = dict[str, Any]


def model_identity(model: str | Path | None) -> dict[str, Any] | None:
    """What tells two model files apart: a file's name, size and SHA-256 (the same on every machine, whatever
    path it is mounted at); a folder (a run folder, an OpenVINO IR folder) by each file's name, size and
    modification time (hashing every checkpoint of a run folder would take longer than predicting)."""
    if model is None:
        return None
    path = Path(model)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        return {"name": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"name": path.name, "files": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def prediction_settings(model: str | Path | None, *, backend: str, score: float, tile: int | None, overlap: float,
                        bands: Sequence[int] | None, tta: Any = None, formats: Sequence[str] = ()) -> Settings:
    """Everything that changes an input's outputs, as JSON values (``tta``: a TTAConfig dataclass or None).
    Threads, devices, shards and dask workers are left out: they change how fast, not what."""
    return _jsonable({
        "version": RECORD_VERSION, "model": model_identity(model), "backend": backend, "score": float(score),
        "tile": tile, "overlap": float(overlap) if tile is not None else None,
        "bands": list(bands) if bands is not None else None,
        "tta": dataclasses.asdict(tta) if dataclasses.is_dataclass(tta) and not isinstance(tta, type) else tta,
        "formats": sorted(formats),
    })


def _jsonable(settings: Settings) -> Settings:
    """``settings`` as it reads back from a record (tuples become lists)."""
    return json.loads(json.dumps(settings))


def record_path(out_dir: Path, stem: str) -> Path:
    return out_dir / RECORDS_DIR / f"{stem}.json"


def write_record(out_dir: Path, stem: str, path: Path | str, settings: Settings, report: PredictReport) -> None:
    """The result of one input (``report`` holds that input alone), atomically: call it after the input's
    picture and maps are written, so a record means the input is complete."""
    done = str(path) in report.images
    record = {
        "input": str(path), "status": "done" if done else "failed", "settings": settings,
        "size": list(report.sizes[str(path)]) if done else None, "detections": report.detections,
        "skipped": report.skipped, "notes": report.notes,
    }
    write_text_atomic(json.dumps(record), record_path(out_dir, stem))


def read_record(out_dir: Path, stem: str) -> dict[str, Any] | None:
    """The record of ``stem``, or None when there is none (or it cannot be read: it is then redone)."""
    try:
        record = json.loads(record_path(out_dir, stem).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _difference(found: Settings, wanted: Settings) -> str:
    for key in wanted:
        if found.get(key) != wanted[key]:
            name = "model file" if key == "model" else key
            return f"{name} {json.dumps(found.get(key))} (this call: {json.dumps(wanted[key])})"
    return "settings differ"


def check_settings(out_dir: Path, settings: Settings) -> None:
    """A one-line :class:`UsageError` when a record in ``out_dir`` was made with other settings."""
    wanted = _jsonable(settings)
    folder = out_dir / RECORDS_DIR
    if not folder.is_dir():
        return
    for file in sorted(folder.glob("*.json")):
        record = read_record(out_dir, file.stem)
        if record is not None and record.get("settings") != wanted:
            raise UsageError(f"{out_dir}: holds results made with {_difference(record.get('settings') or {}, wanted)} "
                             f"({file.relative_to(out_dir)}); predict into another --out, or run without --shard to "
                             "start this folder afresh")


def is_complete(record: dict[str, Any] | None, path: Path | str, settings: Settings) -> bool:
    """True for a record of ``path`` made with ``settings`` whose input was predicted (a failed one is retried)."""
    return (record is not None and record.get("status") == "done" and record.get("input") == str(path)
            and record.get("settings") == _jsonable(settings))


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``out_dir`` between processes (blocking), for checking and assembling; where
    ``fcntl`` is missing (Windows) no lock: run the shards one after the other there."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    (out_dir / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    with open(out_dir / RECORDS_DIR / LOCK_NAME, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def assembled_report(out_dir: Path, items: Sequence[tuple[Path | str, str]],
                     settings: Settings) -> PredictReport | None:
    """Every input's record joined in the order of ``items`` ((input, stem) of the whole command line) into one
    report, or None while an input has no record made with ``settings`` (done or failed)."""
    wanted = _jsonable(settings)
    report = PredictReport()
    for path, stem in items:
        record = read_record(out_dir, stem)
        if record is None or record.get("input") != str(path) or record.get("settings") != wanted:
            return None
        if record.get("status") == "done":
            report.images.append(str(path))
            width, height = record["size"]
            report.sizes[str(path)] = (int(width), int(height))
        report.detections += record.get("detections", [])
        report.skipped += record.get("skipped", [])
        report.notes += record.get("notes", [])
    return report


def remove_assembled(out_dir: Path) -> None:
    """Remove ``detections.json`` and the other assembled files: while an input is missing, nothing looks finished."""
    remove_outputs(out_dir, ASSEMBLED_OUTPUTS)
