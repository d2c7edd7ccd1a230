"""``harnet serve MODEL``: the prediction pipeline over HTTP (FastAPI + uvicorn, the ``[serve]`` extra).

A line camera, a labelling tool or a web map asks a model over HTTP; without this, users wrap a detector
in their own web app, one model copy per worker process and no batching. Here one
:class:`~harnet.deploy.batching.BatchWorker` owns the model, loaded once, in the background (``/health``
answers 503 until it is ready), and batches the images of concurrent requests.

* ``POST /predict``: an image as the multipart field ``file`` or as the raw body; ``score`` (default 0.3).
  The answer holds the same detection records as ``harnet predict``'s ``detections.json``. With
  ``tile=SIZE`` (and ``overlap``, ``bands``) the body is predicted window by window as a raster; a
  georeferenced one (a GeoTIFF) is answered as GeoJSON in lon/lat, or in its own CRS with ``crs=native``.
* ``GET /health``, ``GET /metadata`` (classes, model kind and backend, input size, bands, config version);
  OpenAPI docs at ``/docs``.
* Every refused request is a 4xx with ``{"error": "<one line naming the problem>"}``: a body over
  ``max_bytes`` (413), a file that is not an image, truncated, above the pixel limit or a decompression
  bomb (422, :mod:`harnet.utils.image_decode`'s checks, as ``harnet predict`` applies them), a missing
  field or a bad or unknown parameter (422). A request that waits for the model longer than ``timeout``
  seconds gets 503. The server serves on after each.
* SIGTERM drains: uvicorn stops accepting connections and waits for the requests it has; the worker
  answers every job queued; then the process exits 0.

Nothing here imports torch: a checkpoint's model is loaded by the ``load`` callable the command line gives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from harnet.config.experiment import CONFIG_VERSION
from harnet.deploy.batching import BatchWorker
from harnet.deploy.predictor import Detections, Predictor, TiledResult
from harnet.deploy.raster import parse_bands
from harnet.deploy.report import PredictReport
from harnet.deploy.tiling import check_tile
from harnet.utils.errors import one_line
from harnet.utils.image_decode import BadImageError

DEFAULT_SCORE = 0.3  # harnet predict's default
PREDICT_PARAMS = ("score", "tile", "overlap", "bands", "crs")
BODY_NAME = "body"  # the file name records carry for a raw body without a name
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


@dataclass
class ServeOptions:
    """Limits and batching of one server (the ``harnet serve`` options)."""

    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_bytes: int = 50 * 1024 * 1024
    timeout: float = 30.0
    model: str = ""  # what /metadata names as the model


class RequestError(Exception):
    """A request that cannot be answered: its status and one line naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def named(det: dict[str, np.ndarray], score_thresh: float, class_names: list[str]) -> Detections:
    """Raw detections -> those at or above ``score_thresh``, with class names (as ``Predictor.predict``)."""
    keep = det["scores"] >= score_thresh
    kept: Detections = {k: v[keep] for k, v in det.items()}
    kept["names"] = [class_names[int(i)] for i in kept["labels"]]
    return kept


def records(name: str, det: Detections, category_ids: list[int], size: tuple[int, int]) -> list[dict[str, Any]]:
    """``detections.json`` records of one image, made by the one writer ``harnet predict`` uses."""
    report = PredictReport()
    report.add(name, det, category_ids, size=size)
    return report.detections


def model_metadata(predictor: Predictor, options: ServeOptions) -> dict[str, Any]:
    """What a client needs to know about the served model (``GET /metadata``)."""
    info = predictor.info.info
    transform = predictor.config.transform
    short, long = transform.test_sizes
    kind = info.get("export_format") or ("checkpoint" if "checkpoint" in info else "export")
    precision = info.get("precision", {})
    return {
        "model": options.model,
        "kind": kind,
        "backend": predictor.runtime.name,
        "precision": precision.get("precision", "fp32") if isinstance(precision, dict) else str(precision),
        "classes": list(predictor.class_names),
        "category_ids": list(predictor.category_ids),
        "input": {"short_side": short, "max_size": long, "size_divisible": int(transform.size_divisible),
                  "image_mean": list(transform.image_mean), "image_std": list(transform.image_std)},
        "bands": ["red", "green", "blue"],
        "min_tile": predictor.min_tile,
        "config_version": CONFIG_VERSION,
        "tta": predictor.tta is not None,
        "batching": {"max_batch": options.max_batch, "max_wait_ms": options.max_wait_ms},
        "limits": {"max_bytes": options.max_bytes, "timeout_s": options.timeout},
    }


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``max_bytes``: from Content-Length
    before reading anything, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"body of {int(declared)} bytes is over the server's limit of {max_bytes} "
                                "bytes (harnet serve --max-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"body over the server's limit of {max_bytes} bytes (harnet serve --max-bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's own cache: request.form() parses these bytes instead of the spent stream
    return body


async def upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """(the file's bytes, its name): the multipart field ``file``, else the raw body."""
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if not body:
            raise RequestError(422, "empty body: send an image as the body or as the multipart field 'file'")
        return body, BODY_NAME
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as e:  # a malformed multipart body, or more files than one
        raise RequestError(422, f"unreadable multipart body ({one_line(e)})") from None
    try:
        field = form.get("file")
        if field is None or isinstance(field, str):
            fields = ", ".join(sorted(form.keys())) or "none"
            raise RequestError(422, "multipart body has no file field 'file' (fields sent: " + fields + ")")
        data = await field.read()
        return data, Path(field.filename or BODY_NAME).name
    finally:
        await form.close()


def _suffix(data: bytes, name: str) -> str:
    """The temp file's suffix: the upload's own, else ``.tif`` for TIFF bytes (GDAL reads those by window)."""
    suffix = Path(name).suffix.lower()
    if suffix:
        return suffix
    return ".tif" if data[:4] in TIFF_MAGIC else ".upload"  # PIL reads any name; GDAL claims some suffixes


def _in_temp_file(data: bytes, name: str, use: Callable[[Path], Any]) -> Any:
    """``use(path)`` of ``data`` written to a temp file (the decoders and GDAL read paths); errors name
    ``name``, not the temp file."""
    fd, tmp = tempfile.mkstemp(prefix="harnet-serve-", suffix=_suffix(data, name))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return use(Path(tmp))
        except (BadImageError, FileNotFoundError, ValueError) as e:
            raise RequestError(422, one_line(e).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)


def create_app(load: Callable[[], Predictor], options: ServeOptions,
               on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The FastAPI app; ``load()`` runs once, in the model worker, when the app starts."""
    worker = BatchWorker(load, options.max_batch, options.max_wait_ms / 1000.0, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        # uvicorn comes here after the requests in flight are answered; jobs still queued are answered too.
        await run_in_threadpool(worker.stop)

    app = FastAPI(title="harnet", summary="HAR-Net object detection", lifespan=lifespan)
    app.state.worker = worker

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        value = f" (got {first['input']!r})" if "input" in first and first["input"] is not None else ""
        return _error(422, f"{where}: {first.get('msg', 'invalid')}{value}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the model is loaded; 503 while it loads (or if it failed to)."""
        if worker.ready.is_set():
            return JSONResponse({"status": "ok", "queued": worker.pending, "images": worker.images,
                                 "batches": worker.batches, "model_busy_s": round(worker.busy, 3)})
        if worker.error is not None:
            return JSONResponse({"status": "failed", "error": worker.error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        """The served model: classes, kind and backend, input size, bands, config version."""
        return JSONResponse(model_metadata(_predictor(), options))

    def _predictor() -> Predictor:
        if worker.predictor is None or not worker.ready.is_set():
            raise RequestError(503, f"model not loaded: {worker.error}" if worker.error else "model is loading; "
                                    "retry when GET /health answers 200")
        return worker.predictor

    async def _wait(future: Any) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), options.timeout)
        except TimeoutError:
            raise RequestError(503, f"no answer from the model within {options.timeout:g} s (harnet serve "
                                    "--timeout); the server is overloaded, retry later") from None

    @app.post("/predict")
    async def predict(
        request: Request,
        score: float = Query(DEFAULT_SCORE, ge=0.0, le=1.0, description="keep detections scoring at least this"),
        tile: int | None = Query(None, ge=1, description="predict the body as a raster in windows of SIZE px"),
        overlap: float = Query(0.25, ge=0.0, lt=1.0, description="with tile: window overlap, a fraction"),
        bands: str | None = Query(None, description="with tile: 1-based raster bands shown as RGB, e.g. 1,2,3"),
        crs: Literal["lonlat", "native"] = Query("lonlat", description="with tile: GeoJSON in lon/lat or the "
                                                                       "raster's own CRS"),
    ) -> JSONResponse:
        """Detections of one image (multipart field ``file`` or the raw body) as ``detections.json``
        records; with ``tile``, of a raster predicted in windows (GeoJSON when it is georeferenced)."""
        unknown = sorted(set(request.query_params) - set(PREDICT_PARAMS))
        if unknown:
            raise RequestError(422, f"unknown query parameter {unknown[0]!r} (expected: {', '.join(PREDICT_PARAMS)})")
        predictor = _predictor()
        data, name = await upload(request, options.max_bytes)
        if tile is None:
            if bands is not None or "crs" in request.query_params or "overlap" in request.query_params:
                raise RequestError(422, "bands, overlap and crs apply to tiled prediction: add tile=SIZE")
            image = await run_in_threadpool(_in_temp_file, data, name, predictor.load_image)
            det = await _wait(worker.submit(image))
            size = (int(image.shape[-1]), int(image.shape[-2]))
            kept = named(det, score, predictor.class_names)
            body: dict[str, Any] = {"file_name": name, "width": size[0], "height": size[1],
                                    "detections": records(name, kept, predictor.category_ids, size)}
            if (hint := predictor.tile_hint(image.shape[-2:])) is not None:
                body["note"] = hint.replace("--tile SIZE", "tile=SIZE")
            return JSONResponse(body)
        try:
            check_tile(tile, overlap, predictor.min_tile)
            band_list = parse_bands(bands)
        except ValueError as e:
            raise RequestError(422, str(e).replace("--", "")) from None
        return await _tiled(predictor, data, name, tile, overlap, band_list, score, crs)

    async def _tiled(predictor: Predictor, data: bytes, name: str, tile: int, overlap: float,
                     bands: tuple[int, ...] | None, score: float, crs: str) -> JSONResponse:
        def run(path: Path) -> tuple[TiledResult, Any, int, int]:
            raster = predictor.open_raster(path, bands)
            try:
                future = worker.submit_call(lambda p: p.predict_tiled(raster, tile, overlap, score))
                result = future.result(timeout=None)
                return result, raster, raster.width, raster.height
            finally:
                raster.close()

        # The raster stays open while the worker reads its windows; this thread waits for it (the request's
        # timeout does not cut a raster the model is already reading).
        result, raster, width, height = await run_in_threadpool(_in_temp_file, data, name, run)
        det = result.detections
        summary = {"file_name": name, "width": width, "height": height, "windows": result.windows,
                   "empty_windows": result.empty_windows, "unreadable_windows": len(result.unreadable)}
        if raster.crs is None or raster.transform is None:
            summary["note"] = (raster.georef_note or "no CRS") + "; detections in pixels"
            summary["detections"] = records(name, det, predictor.category_ids, (width, height))
            return JSONResponse(summary)
        return JSONResponse(await run_in_threadpool(geojson, det, predictor, raster.crs, raster.transform, crs,
                                                    summary), media_type="application/geo+json")

    return app


def geojson(det: Detections, predictor: Predictor, crs: str, transform: Any, target: str,
            summary: dict[str, Any]) -> dict[str, Any]:
    """A FeatureCollection of the boxes as polygons (:func:`~harnet.deploy.geo_output.detections_frame`), in
    lon/lat (RFC 7946) or, with ``target="native"``, in the raster's CRS (named in a ``crs`` member)."""
    from harnet.deploy.geo_output import detections_frame, geo_available, lonlat_problem

    if not geo_available():
        raise RequestError(422, 'the raster has a CRS, but the server lacks geopandas and pyogrio for GeoJSON '
                                '(pip install "harnet[geo]")')
    frame = detections_frame(det, predictor.class_names, crs, transform)
    frame["category_id"] = [predictor.category_ids[int(k)] for k in frame["label"]]
    if target == "lonlat":
        if (problem := lonlat_problem(crs)) is not None:
            raise RequestError(422, f"no lon/lat GeoJSON: {problem}; ask crs=native")
        frame = frame.to_crs(4326)
    collection: dict[str, Any] = json.loads(frame.to_json(drop_id=True))
    if target == "native":
        from pyproj import CRS

        native = CRS.from_user_input(crs)
        epsg = native.to_epsg()
        collection["crs"] = {"type": "name", "properties": {"name": f"EPSG:{epsg}" if epsg else native.to_wkt()}}
    collection["harnet"] = summary
    return collection


def run_server(load: Callable[[], Predictor], options: ServeOptions, host: str = "127.0.0.1", port: int = 8000,
               access_log: bool = True, log_level: str = "info") -> int:
    """Serve until SIGTERM or Ctrl-C; 0 after a drained shutdown, 1 when the model could not be loaded."""
    import uvicorn

    failed: list[str] = []
    server: uvicorn.Server | None = None

    def load_failed(message: str) -> None:
        failed.append(message)
        if server is not None:
            server.should_exit = True  # nothing could ever be answered

    app = create_app(load, options, load_failed)
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level=log_level,
                            timeout_graceful_shutdown=int(options.timeout) + 5, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has drained; with this handler in place SIGTERM
    # ends in a return (status 0) instead of killing the process that just shut down cleanly.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        with suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)
    if failed:
        raise RuntimeError(f"model not loaded: {failed[0]}")
    return 0
