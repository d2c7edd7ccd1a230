"""``harnet serve`` as a real process on the loopback: the answers equal ``harnet predict``'s, GeoTIFFs come back
as GeoJSON, every bad request is a one-line 4xx and the server serves on, 2,000 requests at 16 concurrent are all
answered (batched: faster than one client at a time; memory flat), a timeout is a 503, SIGTERM drains."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from harnet.tools.cli import main
from harnet.tools.serve_load import (
    Call,
    bad_calls,
    free_port,
    get,
    load_test,
    multipart,
    run_load,
    sample_images,
    server_env,
    start_server,
    wait_ready,
)
from tests_support import TINY, random_checkpoint

NAMES = ["class0", "class1", "class2"]
# A 32 px RetinaNet-preset ResNet-18 (the cheapest model the configs build), few candidates: the load test
# measures the server around the network, on 2 busy cores, in seconds.
SERVED = [*TINY, "model.preset=retinanet", "model.num_classes=3", "model.transform={min_size: [32], max_size: 32}",
          "model.inference.score_thresh=0.6", "model.inference.topk_candidates=50",
          "model.inference.detections_per_img=20"]
MAX_BYTES = 100_000


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harnet.engine import checkpoint
    from harnet.tools.export import export_model

    root = tmp_path_factory.mktemp("serve")
    path = random_checkpoint(root / "model.pt", SERVED)
    model = checkpoint.build_model(checkpoint.load(path)).eval()
    export_model(model, root / "model.onnx", "onnx", NAMES, [1, 2, 3], verify=False)  # type: ignore[arg-type]
    return root / "model.onnx"


class Server:
    def __init__(self, model: Path, log: Path, *options: str) -> None:
        self.port = free_port()
        self.model = model
        self.log = log
        self.process = start_server(model, self.port, "--no-access-log", "--threads", "1", *options, log=log,
                                    env=server_env(1))
        try:
            wait_ready(self.port, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}") from None

    def post(self, body: bytes, path: str = "/predict", content_type: str = "application/octet-stream",
             ) -> tuple[int, Any]:
        result = run_load(self.port, [Call(body, path, content_type)], 1)
        answer = result.answers[0]
        assert answer.status, answer.error
        return answer.status, json.loads(answer.body)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture(scope="module")
def server(onnx_model: Path) -> Iterator[Server]:
    served = Server(onnx_model, onnx_model.parent / "server.log", "--max-bytes", str(MAX_BYTES))
    yield served
    assert served.stop() == 0, served.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, data in enumerate(sample_images(3, 48, seed=1)):
        paths.append(root / f"image{i}.png")
        paths[-1].write_bytes(data)
    return paths


def _same_records(served: list[dict[str, Any]], predicted: list[dict[str, Any]]) -> None:
    assert len(served) == len(predicted) > 0
    for s, p in zip(served, predicted):
        assert set(s) == set(p)  # the same JSON fields as detections.json
        assert (s["category_id"], s["category_name"]) == (p["category_id"], p["category_name"])
        # one float32 pipeline on both sides: only the network's batch may round differently
        np.testing.assert_allclose(s["bbox"], p["bbox"], atol=1e-3)
        assert s["score"] == pytest.approx(p["score"], abs=1e-5)


def test_answers_equal_harnet_predict_multipart_or_raw_body(server: Server, pngs: list[Path], tmp_path: Path) -> None:
    assert main(["predict", str(server.model), *map(str, pngs), "--out", str(tmp_path / "out"),
                 "--score", "0.65"]) == 0
    predicted = json.loads((tmp_path / "out" / "detections.json").read_text())
    for path in pngs:
        expected = [d for d in predicted if d["file_name"] == str(path)]
        body, content_type = multipart(path.read_bytes(), filename=path.name)
        status, answer = server.post(body, "/predict?score=0.65", content_type)
        assert status == 200, answer
        assert (answer["file_name"], answer["width"], answer["height"]) == (path.name, 48, 48)
        _same_records(answer["detections"], [{**d, "file_name": path.name} for d in expected])
        status, raw = server.post(path.read_bytes(), "/predict?score=0.65")
        assert status == 200 and raw["file_name"] == "body"
        _same_records(raw["detections"], [{**d, "file_name": "body"} for d in expected])


def test_health_is_503_until_the_model_is_loaded(onnx_model: Path, pngs: list[Path]) -> None:
    import uvicorn

    from harnet.deploy.predictor import Predictor
    from harnet.deploy.serve import ServeOptions, create_app

    gate = threading.Event()

    def load() -> Predictor:
        assert gate.wait(30)
        return Predictor.from_export(onnx_model)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load, ServeOptions()), host="127.0.0.1", port=port,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run)  # not the main thread: uvicorn leaves the signals alone
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.02)
        assert get(port, "/health") == (503, {"status": "loading"})
        refused = run_load(port, [Call(pngs[0].read_bytes())], 1).answers[0]
        assert refused.status == 503 and b"retry when GET /health answers 200" in refused.body
        assert get(port, "/metadata")[0] == 503
        gate.set()
        for _ in range(500):
            if get(port, "/health")[0] == 200:
                break
            threading.Event().wait(0.02)
        assert get(port, "/health")[0] == 200 and get(port, "/metadata")[0] == 200
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)


def test_health_and_metadata(server: Server) -> None:
    status, health = get(server.port, "/health")
    assert status == 200 and health["status"] == "ok"
    status, meta = get(server.port, "/metadata")
    assert status == 200
    assert meta["classes"] == NAMES and meta["category_ids"] == [1, 2, 3]
    assert (meta["kind"], meta["backend"], meta["precision"]) == ("onnx", "onnxruntime", "fp32")
    assert meta["input"]["short_side"] == 32 and meta["bands"] == ["red", "green", "blue"]
    assert isinstance(meta["config_version"], int)
    status, docs = get(server.port, "/openapi.json")
    assert status == 200 and "/predict" in docs["paths"]


def test_an_exported_model_is_served_without_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this system")
    assert "libtorch" not in maps.read_text()


@pytest.mark.parametrize("index", range(len(bad_calls(b"x" * 100, MAX_BYTES))))
def test_a_bad_request_is_one_line_4xx_and_the_server_serves_on(server: Server, pngs: list[Path], index: int) -> None:
    call = bad_calls(pngs[0].read_bytes(), MAX_BYTES)[index]
    status, answer = server.post(call.body, call.path, call.content_type)
    assert status == call.expect, (call.kind, answer)
    assert set(answer) == {"error"} and "\n" not in answer["error"] and answer["error"], answer
    assert server.post(pngs[0].read_bytes())[0] == 200


@pytest.mark.parametrize(("query", "message"), [
    ("tile=8", "tile 8: smaller than the model's minimum window of 32 px"),
    ("tile=64&overlap=0.99", "overlap"),
    ("tile=64&bands=1,2", "bands 1,2"),
    ("crs=native", "add tile=SIZE"),
    ("tile=64&crs=utm", "crs"),
    ("score=-1", "score"),
])
def test_a_bad_parameter_names_itself(server: Server, pngs: list[Path], query: str, message: str) -> None:
    status, answer = server.post(pngs[0].read_bytes(), f"/predict?{query}")
    assert status == 422 and message in answer["error"], answer


def test_a_geotiff_is_answered_as_geojson_as_harnet_predict_maps_it(server: Server, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("geopandas")
    rng = np.random.default_rng(3)
    pixels = (rng.random((3, 80, 100)) * 80).astype(np.uint8)
    pixels[:, 10:30, 20:35] = 220
    tif = tmp_path / "ortho.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=100, height=80, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as dst:
        dst.write(pixels)
    assert main(["predict", str(server.model), str(tif), "--tile", "32", "--out", str(tmp_path / "out"),
                 "--score", "0.65", "--no-progress"]) == 0
    expected = json.loads((tmp_path / "out" / "ortho.geojson").read_text())["features"]
    status, lonlat = server.post(tif.read_bytes(), "/predict?tile=32&score=0.65")
    assert status == 200 and lonlat["type"] == "FeatureCollection" and len(lonlat["features"]) == len(expected) > 0
    for got, want in zip(lonlat["features"], expected):
        np.testing.assert_allclose(got["geometry"]["coordinates"], want["geometry"]["coordinates"], atol=1e-7)
        assert got["properties"]["class_name"] == want["properties"]["class_name"]
    assert lonlat["harnet"]["windows"] > 1 and lonlat["harnet"]["file_name"] == "body"
    body, content_type = multipart(tif.read_bytes(), filename="ortho.tif")
    status, native = server.post(body, "/predict?tile=32&score=0.65&crs=native", content_type)
    assert status == 200 and native["crs"]["properties"]["name"] == "EPSG:32633"
    x, y = np.asarray(native["features"][0]["geometry"]["coordinates"][0]).T
    assert ((x >= 500000) & (x <= 500050) & (y >= 3999960) & (y <= 4000000)).all()


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "backend"), [("checkpoint", "torch"), ("openvino", "openvino")])
def test_every_model_kind_is_served_alike(server: Server, pngs: list[Path], tmp_path: Path, kind: str,
                                          backend: str) -> None:
    """The checkpoint the export came from (torch in the server) and an OpenVINO export answer as the ONNX does."""
    model = server.model.with_name("model.pt")
    if kind == "openvino":
        pytest.importorskip("openvino")
        from harnet.engine import checkpoint
        from harnet.tools.export import export_model

        network = checkpoint.build_model(checkpoint.load(model)).eval()
        model = export_model(network, tmp_path / "openvino", "openvino", NAMES, [1, 2, 3],  # type: ignore[arg-type]
                             verify=False).path
    other = Server(model, tmp_path / "server.log")
    try:
        meta = get(other.port, "/metadata")[1]
        assert (meta["kind"], meta["backend"]) == (kind, backend)
        for path in pngs:
            status, answer = other.post(path.read_bytes(), "/predict?score=0.65")
            assert status == 200, answer
            _same_records(answer["detections"], server.post(path.read_bytes(), "/predict?score=0.65")[1]["detections"])
    finally:
        assert other.stop() == 0


@pytest.mark.slow
def test_load_2000_requests_at_16_concurrent(onnx_model: Path, tmp_path: Path) -> None:
    """No request lost or failed, the bad ones each a 4xx; batched throughput at least 1.3x one client's;
    the server's memory over the last 500 answers within 5 % of the first 500. Figures in load.json."""
    served = Server(onnx_model, tmp_path / "server.log", "--max-bytes", str(MAX_BYTES), "--max-batch", "16")
    try:
        good = [Call(data) for data in sample_images(8, 32, seed=2)]
        bad = bad_calls(good[0].body, MAX_BYTES)
        figures = load_test(served.port, good, bad, total=2000, concurrency=16, single=100,
                            server_pid=served.process.pid)
        _, health = get(served.port, "/health")
    finally:
        code = served.stop()
    figures["server"] = health
    (tmp_path / "load.json").write_text(json.dumps(figures, indent=1))
    print(f"\nload test ({tmp_path / 'load.json'}): {json.dumps(figures)}")
    assert code == 0
    assert figures["wrong"] == [] and figures["requests"] == 2000 and figures["bad_requests"] == 100
    assert figures["mismatched"] == []  # every answer is its own image's, as alone
    assert figures["speedup"] >= 1.3, figures
    assert health["batches"] < health["images"]  # some requests did share a network call
    if figures["rss_last_over_first"] is not None:
        assert abs(figures["rss_last_over_first"] - 1) <= 0.05, figures


def test_sigterm_answers_the_requests_received_then_exits_0(onnx_model: Path, tmp_path: Path) -> None:
    # The first image waits up to 1.5 s for a batch to fill: the signal comes while all 12 are held.
    served = Server(onnx_model, tmp_path / "server.log", "--max-batch", "32", "--max-wait-ms", "1500")
    body = sample_images(1, 32)[0]
    results: list[Any] = [None] * 12

    def send(i: int) -> None:
        results[i] = run_load(served.port, [Call(body)], 1).answers[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.7)
    served.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    code = served.process.wait(30)
    log = (tmp_path / "server.log").read_text()
    assert [a.status for a in results] == [200] * 12, [(a.status, a.error) for a in results]
    assert code == 0, log[-3000:]
    assert "Traceback" not in log


def test_a_request_waiting_past_timeout_gets_503_not_a_hang(onnx_model: Path, tmp_path: Path, pngs: list[Path]
                                                            ) -> None:
    served = Server(onnx_model, tmp_path / "server.log", "--timeout", "0.0001")
    try:
        status, answer = served.post(pngs[0].read_bytes())
        assert status == 503 and "--timeout" in answer["error"], answer
        assert get(served.port, "/health")[0] == 200
    finally:
        assert served.stop() == 0


def test_a_model_that_cannot_load_ends_the_server_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model at all")
    port = free_port()
    process = start_server(broken, port, log=tmp_path / "log", env=server_env(1))
    assert process.wait(60) == 1
    errors = [line for line in (tmp_path / "log").read_text().splitlines() if line.startswith("harnet: error")]
    assert len(errors) == 1 and "model not loaded" in errors[0] and "broken.onnx" in errors[0], errors


def test_a_missing_model_is_refused_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "nowhere.onnx"]) == 2
    assert "nowhere.onnx: model not found" in capsys.readouterr().err
