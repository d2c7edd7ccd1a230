"""The model worker of ``harnet serve``: concurrent images run as batches of equal padded shape, every answer
goes to its own request, timed-out jobs are skipped, stop answers what is queued, a failed load answers all."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np
import pytest

from harnet.config.model import HARNetConfig
from harnet.deploy.batching import BatchWorker, batch_key
from harnet.deploy.tta import TTAConfig


class FakePredictor:
    """``detect`` answers each image with its own first pixel (so a mix-up shows) and records the batches;
    it blocks while ``gate`` is clear, so that jobs pile up behind a batch in flight."""

    def __init__(self) -> None:
        self.config = HARNetConfig()
        self.tta: TTAConfig | None = None
        self.batches: list[list[tuple[int, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def detect(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append([tuple(im.shape[-2:]) for im in images])
        return [{"scores": np.array([float(im[0, 0, 0])], dtype=np.float32)} for im in images]


def image(value: float, h: int = 64, w: int = 64) -> np.ndarray:
    return np.full((3, h, w), value, dtype=np.float32)


def started(fake: FakePredictor, **kwargs: Any) -> BatchWorker:
    worker = BatchWorker(lambda: fake, **kwargs).start()  # type: ignore[arg-type, return-value]
    assert worker.ready.wait(5)
    return worker


def test_images_waiting_behind_a_batch_run_together_each_answered_with_its_own() -> None:
    fake = FakePredictor()
    worker = started(fake, max_batch=8, max_wait=0.0)
    fake.gate.clear()
    first = worker.submit(image(0.5))
    assert fake.started.wait(5)  # the worker is inside the first batch: the next 12 queue up
    rest = [worker.submit(image(i / 100)) for i in range(12)]
    fake.gate.set()
    assert float(first.result(5)["scores"][0]) == 0.5
    assert [float(f.result(5)["scores"][0]) for f in rest] == pytest.approx([i / 100 for i in range(12)])
    assert [len(b) for b in fake.batches] == [1, 8, 4]  # max_batch caps a batch
    worker.stop(5)


def test_only_images_of_one_padded_shape_share_a_call() -> None:
    fake = FakePredictor()
    worker = started(fake, max_batch=8, max_wait=0.0)
    fake.gate.clear()
    worker.submit(image(0.0))
    assert fake.started.wait(5)
    # 64x64 and 60x60 both pad to 800x800 at the default test size (they resize to the same 800 px); 64x32 not
    futures = [worker.submit(image(0.1)), worker.submit(image(0.2, 60, 60)), worker.submit(image(0.3, 64, 32))]
    fake.gate.set()
    assert [float(f.result(5)["scores"][0]) for f in futures] == pytest.approx([0.1, 0.2, 0.3])
    assert sorted(sorted(b) for b in fake.batches[1:]) == [[(60, 60), (64, 64)], [(64, 32)]]
    worker.stop(5)


def test_the_batch_key_is_the_padded_input_at_every_tta_scale() -> None:
    fake = FakePredictor()
    assert batch_key(fake, (3, 64, 64)) == batch_key(fake, (3, 60, 60)) == ((800, 800),)  # type: ignore[arg-type]
    fake.tta = TTAConfig(scales=(1.0, 1.25), flip=True)
    assert batch_key(fake, (3, 64, 64)) == ((800, 800), (1024, 1024))  # type: ignore[arg-type]


def test_a_cancelled_job_is_skipped_and_stop_answers_every_queued_job() -> None:
    fake = FakePredictor()
    worker = started(fake, max_batch=2, max_wait=0.0)
    fake.gate.clear()
    worker.submit(image(0.0))
    assert fake.started.wait(5)
    gone = worker.submit(image(0.9))
    assert gone.cancel()  # its request timed out
    queued = [worker.submit(image(i / 10)) for i in range(5)]
    stopper = threading.Thread(target=worker.stop, args=(10,))
    stopper.start()  # stop is asked while jobs wait: they are still answered
    fake.gate.set()
    stopper.join(10)
    assert [float(f.result(0)["scores"][0]) for f in queued] == pytest.approx([i / 10 for i in range(5)])
    with pytest.raises(CancelledError):
        gone.result(0)
    assert all((64, 64) in b for b in fake.batches) and sum(len(b) for b in fake.batches) == 6


def test_a_call_runs_alone_between_batches() -> None:
    fake = FakePredictor()
    worker = started(fake, max_batch=8, max_wait=0.05)
    images = worker.submit(image(0.1))
    call: Future[str] = worker.submit_call(lambda p: f"called with {type(p).__name__}")
    assert call.result(5) == "called with FakePredictor"
    assert float(images.result(5)["scores"][0]) == pytest.approx(0.1)
    worker.stop(5)


def test_a_failed_load_answers_every_job_with_the_reason() -> None:
    reasons: list[str] = []

    def load() -> Any:
        raise ValueError("model.onnx: truncated or not an ONNX model\n(details)")

    worker = BatchWorker(load, on_load_error=reasons.append).start()
    worker.stop(5)
    assert reasons == ["model.onnx: truncated or not an ONNX model"] and worker.error == reasons[0]
    assert not worker.ready.is_set()
    with pytest.raises(RuntimeError, match="model not loaded: model.onnx: truncated"):
        worker.submit(image(0.1)).result(1)


@pytest.mark.parametrize(("kwargs", "message"), [({"max_batch": 0}, "max_batch 0"), ({"max_wait": -1.0}, "max_wait")])
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchWorker(lambda: None, **kwargs)  # type: ignore[arg-type, return-value]
