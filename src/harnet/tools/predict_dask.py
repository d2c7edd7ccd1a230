"""``harnet predict ... --dask local:N|tcp://HOST:PORT``: images and raster windows spread over dask workers.

Each worker process opens the model once (:func:`worker_predictor`, a loader cached by the model file and
its options, warmed on every worker before the first task) and then takes tasks: a whole image (its
picture written into the output folder by the worker, its detections sent back), or a run of windows of
a large raster (their detections sent back in raster pixels as
:class:`~harnet.deploy.tiling.WindowDetections`, with the overview pixels they cover). The client merges a
raster's windows with the same :func:`~harnet.deploy.tiling.merge_windows`, in the window order one process
uses, and writes the pictures, maps and per-input records exactly as :mod:`harnet.deploy.run` does, so the
outputs are a single process's. A run of windows starts on a multiple of the predictor's batch size, and a
worker cuts it into the same batches :meth:`~harnet.deploy.predictor.Predictor.predict_tiled` would: the
network sees the same batches, not merely the same windows.

Workers of a ``tcp://`` cluster read the inputs and the model, and write the pictures, at the same paths
as the client: a file system shared by all (the usual cluster set-up). Lives in tools, not deploy, because a
checkpoint's worker opens it through :func:`harnet.tools.predict.open_predictor`.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harnet.deploy.predict_files import predict_files
from harnet.deploy.predict_raster import OVERVIEW_SIDE, report_tiled, window_bar
from harnet.deploy.predictor import Predictor, TiledResult, read_windows
from harnet.deploy.raster import Overview, Raster
from harnet.deploy.report import PredictReport
from harnet.deploy.tiling import Window, WindowDetections, merge_windows, window_grid
from harnet.deploy.tta import TTAConfig
from harnet.tools.predict import open_predictor
from harnet.utils.errors import UsageError

# Window tasks per worker for one raster: several, so a slow worker does not hold up the merge, yet each
# long enough that scheduling stays a small share of it.
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to open the model: the file and :func:`open_predictor`'s options."""

    model: str
    backend: str = "auto"
    threads: int | None = None
    device: str = "auto"
    batch_size: int = 4
    tta: TTAConfig | None = None

    def key(self) -> str:
        return repr(self)


_PREDICTORS: dict[str, Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()
_RASTERS = threading.local()  # one open raster per worker thread: GDAL handles are not shared across threads


def _stamp(path: str) -> tuple[int, int]:
    """A file's modification time and size: a worker of a long-lived cluster must not keep serving a model or
    reading a raster that was replaced at the same path since it opened it."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)


def worker_predictor(spec: ModelSpec) -> Predictor:
    """The model of ``spec``, opened once per worker process and kept for every later task (per model file
    version: the cache key holds its modification time)."""
    key = f"{spec.key()} {_stamp(spec.model)}"
    with _PREDICTORS_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            for stale in [k for k in _PREDICTORS if k.startswith(f"{spec.key()} ")]:
                del _PREDICTORS[stale]  # the same model file, replaced since: not kept in memory
            predictor = _PREDICTORS[key] = open_predictor(
                spec.model, backend=spec.backend, threads=spec.threads, device=spec.device,
                batch_size=spec.batch_size, tta=spec.tta)
        return predictor


def _worker_raster(predictor: Predictor, path: str, bands: tuple[int, ...] | None) -> Raster:
    """The raster a worker thread read last, kept open: a raster's windows come in several tasks, and a
    non-8-bit raster's contrast stretch is computed when it is opened. Read for ``predictor``'s model (its bands,
    its units)."""
    key = (path, bands, _stamp(path), predictor.config.input)
    if getattr(_RASTERS, "key", None) != key:
        if (previous := getattr(_RASTERS, "raster", None)) is not None:
            previous.close()
        _RASTERS.raster, _RASTERS.key = None, None
        _RASTERS.raster, _RASTERS.key = predictor.open_raster(path, bands), key
    raster: Raster = _RASTERS.raster
    return raster


def predict_image_task(spec: ModelSpec, path: str, stem: str, out_dir: str, score_thresh: float) -> PredictReport:
    """One image on a worker: its picture written to ``out_dir``, its report returned."""
    report = PredictReport()
    predict_files(worker_predictor(spec), [Path(path)], Path(out_dir), score_thresh, report=report, stems=[stem])
    return report


Patch = tuple[int, int, int, int, np.ndarray]  # rows r0:r1, columns c0:c1 of the overview, its uint8 pixels


@dataclass
class WindowBatch:
    """What a worker returns for a run of windows: detections by window index, and what it skipped."""

    parts: list[tuple[int, WindowDetections]] = field(default_factory=list)
    empty: int = 0
    unreadable: list[str] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)


def _overview_patch(overview: Overview, window: Window) -> Patch | None:
    """The part of ``overview`` that ``window``'s pixels set (what the client pastes)."""
    r0, r1 = (int(v) for v in np.searchsorted(overview.rows, (window.y, window.y + window.height)))
    c0, c1 = (int(v) for v in np.searchsorted(overview.cols, (window.x, window.x + window.width)))
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1, overview.image[:, r0:r1, c0:c1].copy()


def predict_windows_task(spec: ModelSpec, path: str, bands: tuple[int, ...] | None, tile: int,
                         windows: Sequence[tuple[int, Window]], overview_side: int | None) -> WindowBatch:
    """A run of one raster's windows on a worker, in the batches :meth:`Predictor.predict_tiled` makes."""
    predictor = worker_predictor(spec)
    raster = _worker_raster(predictor, path, bands)
    overview = (Overview(raster.width, raster.height, overview_side, display=predictor.display) if overview_side
                else None)
    out = WindowBatch()
    for start in range(0, len(windows), predictor.batch_size):
        chunk = windows[start : start + predictor.batch_size]
        read, empty, unreadable = read_windows(raster, [window for _, window in chunk], tile, overview)
        out.empty += empty
        out.unreadable += unreadable
        ready = [(*chunk[i], image) for i, image in read]
        if overview is not None:
            out.patches += [patch for _, window, _ in ready if (patch := _overview_patch(overview, window))]
        if not ready:
            continue
        for (index, window, _), det in zip(ready, predictor.detect([image for _, _, image in ready])):
            out.parts.append((index, WindowDetections.from_window(window, det["boxes"], det["scores"],
                                                                  det["labels"], raster.width, raster.height)))
    return out


def parse_dask(text: str) -> tuple[int | None, str | None]:
    """``local:N`` -> (N, None); ``tcp://host:port`` (any scheduler address) -> (None, address)."""
    if match := re.fullmatch(r"local:(\d+)", text.strip()):
        workers = int(match[1])
        if workers < 1:
            raise UsageError(f"--dask {text}: at least one worker")
        return workers, None
    if "://" in text:
        return None, text.strip()
    raise UsageError(f"--dask {text}: expected local:N (N worker processes here) or a scheduler address "
                     "such as tcp://host:8786")


def worker_threads(text: str, threads: int | None) -> int | None:
    """The backend threads of each worker: as asked, else for ``local:N`` the cores shared out (N processes
    each with every core would fight over them), else the worker's own default."""
    workers, _ = parse_dask(text)
    if threads is not None or workers is None:
        return threads
    return max(1, (os.cpu_count() or 1) // workers)


@contextmanager
def dask_client(text: str) -> Iterator[Any]:
    """A ``distributed.Client`` on a LocalCluster of N single-threaded worker processes, or on a scheduler."""
    workers, address = parse_dask(text)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError('--dask needs dask.distributed: pip install "harnet[dask]"') from None
    if workers is not None:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
    else:
        with Client(address) as client:
            yield client


@dataclass
class DaskRunner:
    """A :class:`~harnet.deploy.run.InputRunner` over a dask client: images as one task each (yielded as
    they finish), rasters (``tile`` set) one after another, each one's windows spread over the workers."""

    client: Any
    spec: ModelSpec
    predictor: Predictor  # the client's own: class names, inference settings, window size
    out_dir: Path
    score_thresh: float
    tile: int | None = None
    overlap: float = 0.25
    bands: tuple[int, ...] | None = None
    progress: bool = False
    local: bool = False  # the workers are this call's own LocalCluster processes

    def warm(self) -> None:
        """Open the model on every worker now: a model that does not load fails here, once, and the first
        tasks do not wait for it. Our own local workers are then set to exit at once when closed."""
        self.client.run(_warm, self.spec)
        if self.local:
            self.client.run(_exit_fast)

    def __call__(self, items: Sequence[tuple[Path, str]]) -> Iterator[tuple[Path, str, PredictReport]]:
        if not items:
            return
        self.warm()
        if self.tile is not None:
            for path, stem in items:
                yield path, stem, self._raster(path, stem)
            return
        from distributed import as_completed

        futures = {self.client.submit(predict_image_task, self.spec, str(path), stem, str(self.out_dir),
                                      self.score_thresh, pure=False): (path, stem) for path, stem in items}
        for future in as_completed(futures):
            path, stem = futures[future]
            try:
                report = future.result()
            except Exception as e:  # a worker lost or a bug there: this image is reported, the rest go on
                report = PredictReport()
                report.skip(path, e)
            yield path, stem, report

    def _workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def _raster(self, path: Path, stem: str) -> PredictReport:
        """One raster: its windows in runs over the workers, merged here, its outputs written here."""
        assert self.tile is not None
        report = PredictReport()
        try:
            raster = self.predictor.open_raster(path, self.bands)
        except Exception as e:
            report.skip(path, e)
            return report
        try:
            result = self._tiled(raster, path)
            report_tiled(self.predictor, raster, path, stem, self.out_dir, result, report)
        except Exception as e:  # a raster that fails as a whole: reported, the rest still processed
            report.skip(path, e)
        finally:
            raster.close()
        return report

    def _tiled(self, raster: Raster, path: Path) -> TiledResult:
        from distributed import as_completed

        assert self.tile is not None
        predictor = self.predictor
        grid = window_grid(raster.width, raster.height, self.tile, self.overlap, predictor.min_tile)
        windows = list(enumerate(grid.windows()))
        batches = math.ceil(len(windows) / predictor.batch_size)
        per_task = predictor.batch_size * max(1, math.ceil(batches / (TASKS_PER_WORKER * self._workers())))
        futures = [self.client.submit(predict_windows_task, self.spec, str(path), self.bands, self.tile,
                                      windows[start : start + per_task], OVERVIEW_SIDE, pure=False)
                   for start in range(0, len(windows), per_task)]
        order = {future.key: k for k, future in enumerate(futures)}
        bar = window_bar(len(windows), str(path), self.progress)
        done: dict[int, WindowBatch] = {}
        try:
            for future in as_completed(futures):
                batch: WindowBatch = future.result()
                done[order[future.key]] = batch
                if bar is not None:
                    bar.update(len(batch.parts) + batch.empty + len(batch.unreadable))
        finally:
            if bar is not None:
                bar.close()
        runs = [done[k] for k in range(len(futures))]
        parts = sorted((part for run in runs for part in run.parts), key=lambda part: part[0])
        merged = merge_windows([p for _, p in parts], grid, predictor.config.inference)
        keep = merged.scores >= self.score_thresh
        detections: dict[str, Any] = {"boxes": merged.boxes[keep], "scores": merged.scores[keep],
                                      "labels": merged.labels[keep]}
        detections["names"] = [predictor.class_names[int(i)] for i in detections["labels"]]
        overview = Overview(raster.width, raster.height, OVERVIEW_SIDE)
        for run in runs:
            for r0, r1, c0, c1, pixels in run.patches:
                overview.image[:, r0:r1, c0:c1] = pixels
        return TiledResult(detections, len(windows), empty_windows=sum(run.empty for run in runs),
                           unreadable=[line for run in runs for line in run.unreadable],
                           cut_dropped=merged.cut_dropped, merged=merged.merged, overview=overview.image)


def _warm(spec: ModelSpec) -> None:
    worker_predictor(spec)


def _exit_fast() -> None:
    """At a local worker's exit, skip the interpreter's teardown: after torch is imported it can outlast the
    nanny's grace period, which then kills the worker with a warning, seconds after the work is done. The
    worker's results are returned and its files written (atomically, synced) by then; stdio is flushed.
    Registered after the model is open, so it runs before the atexit handlers the backends registered."""
    import atexit

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(leave)
