"""One model worker for a server: a thread that owns the :class:`~harnet.deploy.predictor.Predictor` and runs
the images of concurrent requests as batches.

Why one thread: the network's runtime already uses every core it is given, a second copy of the model would
double the memory, and torch, onnxruntime and OpenVINO release the GIL while they run, so the event loop
that parses requests keeps going beside it. Why batches: a network call has a fixed cost (dispatch, the
runtime's thread start-up, the post-processing's per-call numpy overhead) that a batch of images pays once.

Requests put jobs on a queue and wait on a :class:`~concurrent.futures.Future`. The worker takes the first
job, then whatever else arrives within ``max_wait`` seconds, up to ``max_batch`` images; images whose padded
network input has the same shape run as one ``Predictor.detect`` call (padding one image to another's shape
would cost time for nothing), so every answer is the one the image gets alone. A job cancelled before it
runs (its request timed out) is skipped. Other work that needs the model (a tiled raster) runs as one job
of its own, between batches. :meth:`BatchWorker.stop` answers every job already queued, then ends the thread.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from harnet.deploy.predictor import Predictor
from harnet.deploy.preprocess import resized_size
from harnet.utils.errors import one_line


@dataclass
class _Job:
    future: Future[Any]
    image: np.ndarray | None = None  # an image for Predictor.detect, or
    call: Callable[[Predictor], Any] | None = None  # any other use of the model, run alone


def batch_key(predictor: Predictor, shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The padded network input shape of an image of ``shape`` (..., h, w), at every test-time scale: images
    with equal keys give one padded batch exactly as each gives alone."""
    cfg = predictor.config.transform
    short, long = cfg.test_sizes
    d = float(cfg.size_divisible)
    scales = predictor.tta.scales if predictor.tta is not None else (1.0,)
    key = []
    for scale in scales:
        h, w = resized_size(int(shape[-2]), int(shape[-1]), round(short * scale), round(long * scale))
        key.append((int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)))
    return tuple(key)


class BatchWorker:
    """``BatchWorker(load, max_batch, max_wait).start()``: ``load()`` runs in the worker thread (a server can
    answer health checks while a model loads); then :meth:`submit` an image, :meth:`submit_call` anything else.

    ``ready`` is set once the model is loaded; ``error`` holds the one-line reason when loading failed (every
    job is then answered with it). ``on_load_error`` is called with that line from the worker thread."""

    def __init__(self, load: Callable[[], Predictor], max_batch: int = 8, max_wait: float = 0.002,
                 on_load_error: Callable[[str], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch}: must be at least 1")
        if max_wait < 0:
            raise ValueError(f"max_wait {max_wait}: must be at least 0")
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.ready = threading.Event()
        self.error: str | None = None
        self.predictor: Predictor | None = None
        self.batches = 0  # network calls made for submitted images
        self.images = 0  # images answered
        self.busy = 0.0  # seconds spent running the model (its utilisation, over wall time)
        self._load = load
        self._on_load_error = on_load_error
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # a call job that arrived while a batch was being gathered
        self._thread = threading.Thread(target=self._run, name="harnet-model", daemon=True)

    def start(self) -> BatchWorker:
        self._thread.start()
        return self

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken by the worker (approximate, as any queue size)."""
        return self._queue.qsize()

    def submit(self, image: np.ndarray) -> Future[dict[str, np.ndarray]]:
        """``Predictor.detect`` of one float CHW image, in a batch with others: its raw detections (every score)."""
        future: Future[dict[str, np.ndarray]] = Future()
        self._put(_Job(future, image=image))
        return future

    def submit_call(self, call: Callable[[Predictor], Any]) -> Future[Any]:
        """``call(predictor)`` in the worker thread, alone (e.g. ``predict_tiled`` of a raster)."""
        future: Future[Any] = Future()
        self._put(_Job(future, call=call))
        return future

    def _put(self, job: _Job) -> None:
        if self.error is not None:  # the model never loaded: answer at once, nothing would take the job
            job.future.set_exception(RuntimeError(f"model not loaded: {self.error}"))
        else:
            self._queue.put(job)

    def stop(self, timeout: float | None = None) -> None:
        """Answer every job queued so far, then end the worker thread (waits up to ``timeout`` seconds)."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.predictor = self._load()
        except BaseException as e:
            self.error = one_line(e)
            if self._on_load_error is not None:
                self._on_load_error(self.error)
            self._fail_all(RuntimeError(f"model not loaded: {self.error}"))
            return
        self.ready.set()
        while True:
            job = self._held if self._held is not None else self._queue.get()
            self._held = None
            if job is None:
                break
            if job.call is not None:
                self._run_call(job)
                continue
            jobs, stop = self._gather(job)
            self._run_batch(jobs)
            if stop:
                break
        self._drain_rest()

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and the image jobs arriving within ``max_wait``, up to ``max_batch``; True when the stop
        marker came (after these jobs, nothing else was queued)."""
        jobs = [first]
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if job.call is not None:
                self._held = job
                break
            jobs.append(job)
        return jobs, False

    def _run_batch(self, jobs: list[_Job]) -> None:
        """One network call per key among the jobs whose requests still wait."""
        assert self.predictor is not None
        groups: dict[Hashable, list[_Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():  # False: cancelled (its request timed out)
                assert job.image is not None
                groups.setdefault(batch_key(self.predictor, job.image.shape), []).append(job)
        for group in groups.values():
            start = time.perf_counter()
            try:
                detections = self.predictor.detect([job.image for job in group])  # type: ignore[misc]
            except Exception as e:
                for job in group:
                    job.future.set_exception(e)
                continue
            finally:
                self.busy += time.perf_counter() - start
            self.batches += 1
            self.images += len(group)
            for job, det in zip(group, detections):
                job.future.set_result(det)

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call(self.predictor))  # type: ignore[misc, arg-type]
        except BaseException as e:
            job.future.set_exception(e)

    def _drain_rest(self) -> None:
        """After the stop marker: jobs queued behind it (a request racing the shutdown) are still answered."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            if job.call is not None:
                self._run_call(job)
            else:
                self._run_batch([job])

    def _fail_all(self, error: BaseException) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
