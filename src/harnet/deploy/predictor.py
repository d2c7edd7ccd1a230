"""The one prediction pipeline: numpy pre-processing, any backend's network, numpy decoding and suppression.

Every model file runs through :class:`Predictor`: a ``Runtime`` (:mod:`harnet.deploy.runtime` for ONNX and
OpenVINO, :mod:`harnet.engine.torch_runtime` for a checkpoint) only maps a normalised, padded batch to
``(cls_logits, box_deltas)``; resizing, anchors, top-k, (Soft-)NMS, box voting, test-time augmentation and
the tiling of large rasters are the same code whatever runs the network, so an int8 export on a drone
and a checkpoint on a workstation differ only by the network's own numbers. Nothing here imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harnet.config.model import InferenceConfig
from harnet.deploy.anchors import anchors_per_level, grid_anchors, level_shapes
from harnet.deploy.image_bands import read_for_model
from harnet.deploy.metadata import ExportInfo, load_export_info
from harnet.deploy.postprocess import select_candidates, suppress
from harnet.deploy.preprocess import Batch, preprocess, to_input_pixels
from harnet.deploy.raster import Overview, Raster, display_image, open_raster
from harnet.deploy.runtime import Backend, Runtime, open_runtime
from harnet.deploy.tiling import MIN_TILE, Window, WindowDetections, merge_windows, window_grid
from harnet.deploy.tta import TTAConfig, flip_boxes, tta_inference
from harnet.utils.errors import one_line
from harnet.utils.image_decode import BadImageError, _decode, open_image

# An image this many times the model's test size (long side) is shrunk enough for objects to vanish.
TILE_HINT_RATIO = 2.0

Detections = dict[str, Any]  # boxes (n, 4) float32 XYXY input pixels, scores (n,), labels (n,) int64, names


def load_image(path: str | Path) -> np.ndarray:
    """An ordinary image file as float32 CHW RGB in [0, 1], decoded exactly as the datasets decode it (what an
    RGB model reads; :meth:`Predictor.load_image` reads a file for any model)."""
    with open_image(path) as image:
        return np.ascontiguousarray(_decode(image, path).transpose(2, 0, 1))


def candidates(cls_logits: np.ndarray, box_deltas: np.ndarray, batch: Batch, info: ExportInfo,
               cfg: InferenceConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The network's outputs for ``batch`` -> per image (boxes in input-image pixels, scores, labels) before
    suppression: per-level score threshold, top-k, decoding and clipping."""
    height, width = batch.images.shape[-2:]
    per_level = anchors_per_level(level_shapes(height, width), info.config.anchors.num_anchors)
    n = batch.images.shape[0]
    if cls_logits.shape[:2] != (n, sum(per_level)) or box_deltas.shape[:2] != (n, sum(per_level)):
        raise ValueError(f"outputs {cls_logits.shape} / {box_deltas.shape} do not fit a {batch.images.shape} batch "
                         f"(expected {sum(per_level)} anchors): is the model file the one its metadata describes?")
    splits = np.cumsum(per_level)[:-1]
    anchors = np.split(grid_anchors(info.config.anchors, (height, width)), splits)
    out = []
    for logits, deltas, resized, original in zip(cls_logits, box_deltas, batch.image_sizes, batch.original_sizes):
        boxes, scores, labels = select_candidates(np.split(logits, splits), np.split(deltas, splits), anchors,
                                                  resized, cfg)
        out.append((to_input_pixels(boxes, resized, original), scores, labels))
    return out


def postprocess_raw(cls_logits: np.ndarray, box_deltas: np.ndarray, batch: Batch,
                    info: ExportInfo) -> list[dict[str, np.ndarray]]:
    """The network's outputs for ``batch`` -> per image ``boxes`` (input-image pixels), ``scores``, ``labels``.

    Boxes are mapped back before suppression: suppression compares boxes with each other only, and the
    mapping is a per-axis scale, so IoUs change by float rounding alone."""
    cfg = info.config.inference
    return [suppress(b, s, lab, cfg) for b, s, lab in candidates(cls_logits, box_deltas, batch, info, cfg)]


@dataclass
class TiledResult:
    """Detections of a whole raster in its pixels, and what the tiling did."""

    detections: Detections
    windows: int
    empty_windows: int = 0  # entirely nodata: not sent to the network
    unreadable: list[str] = field(default_factory=list)  # one line per window that could not be read
    cut_dropped: int = 0
    merged: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # read, preprocess, network, postprocess, merge
    overview: np.ndarray | None = None  # with ``overview_side``: the raster scaled down, uint8 (3, h, w) to draw


class Predictor:
    """``Predictor(runtime, info).predict([image])`` -> ``[{"boxes", "scores", "labels", "names"}]``.

    ``runtime`` runs the network (:class:`~harnet.deploy.runtime.Runtime`); ``info`` holds the model config,
    class names and ids (an export's metadata, or a checkpoint's). Images are float32 CHW arrays of the model's
    input (``config.input``: RGB in [0, 1] by default) or file paths, read as the model reads them
    (:meth:`load_image`). ``tta`` pools the candidates of flipped and rescaled views before one suppression.
    """

    def __init__(self, runtime: Runtime, info: ExportInfo, batch_size: int = 4, tta: TTAConfig | None = None) -> None:
        self.runtime = runtime
        self.info = info
        self.config = info.config
        self.class_names = info.class_names
        self.category_ids = info.category_ids
        self.batch_size = batch_size
        self.tta = tta
        # Where prediction spends its time, summed over calls (predict_tiled reports its own share).
        self.seconds: dict[str, float] = {"preprocess": 0.0, "network": 0.0, "postprocess": 0.0}

    @classmethod
    def from_export(cls, model: str | Path, backend: Backend = "auto", threads: int | None = None,
                    batch_size: int = 4, tta: TTAConfig | None = None) -> Predictor:
        """An exported ``.onnx`` or OpenVINO IR (``.xml`` or its folder) run by onnxruntime or OpenVINO."""
        return cls(open_runtime(model, backend, threads), load_export_info(model), batch_size, tta)

    def load_image(self, path: str | Path) -> np.ndarray:
        """An image file as this model reads it (:func:`~harnet.deploy.image_bands.read_for_model`): its bands,
        in its units, nodata as NaN; a file that does not fit the model is a one-line error naming it."""
        return read_for_model(path, self.config.input)

    def open_raster(self, path: str | Path, bands: Sequence[int] | None = None) -> Raster:
        """A raster read window by window for this model (``bands``: others than the model's own)."""
        return open_raster(path, bands, self.config.input)

    def display(self, image: np.ndarray) -> np.ndarray:
        """Pixels as this model reads them -> (3, h, w) in [0, 1] to draw
        (:func:`~harnet.deploy.raster.display_image`)."""
        return display_image(image, self.config.input, self.config.transform)

    @property
    def min_tile(self) -> int:
        """The smallest window tiled prediction uses: one cell of the network's padding unit."""
        return max(MIN_TILE, int(self.config.transform.size_divisible))

    def tile_hint(self, size: Sequence[int]) -> str | None:
        """Advice for an image of ``size`` (h, w) much larger than the model's test size, else None."""
        short, _ = self.config.transform.test_sizes
        if max(int(v) for v in size) <= TILE_HINT_RATIO * short:
            return None
        return (f"{int(size[1])}x{int(size[0])} px shrunk to the model's {short} px test size; objects may vanish: "
                "predict it in windows with --tile SIZE (the size of the training tiles)")

    def _views(self, images: Sequence[np.ndarray]) -> list[tuple[bool, Batch, np.ndarray, np.ndarray]]:
        """The network stage: every view of the batch (one without test-time augmentation; flips x scales
        with it) pre-processed and run -> (flipped, batch, cls_logits, box_deltas)."""
        flips: tuple[bool, ...] = (False,)
        scales: tuple[float, ...] = (1.0,)
        if self.tta is not None:
            flips, scales = ((False, True) if self.tta.flip else (False,)), self.tta.scales
        out = []
        for flip in flips:
            views = [np.ascontiguousarray(im[..., ::-1]) for im in images] if flip else list(images)
            for scale in scales:
                start = time.perf_counter()
                batch = preprocess(views, self.config.transform, scale)
                middle = time.perf_counter()
                logits, deltas = self.runtime.run(batch.images)
                self.seconds["preprocess"] += middle - start
                self.seconds["network"] += time.perf_counter() - middle
                out.append((flip, batch, logits, deltas))
        return out

    def _decode(self, widths: Sequence[int],
                views: list[tuple[bool, Batch, np.ndarray, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """The post-processing stage: each view's candidates (flipped back), pooled per image, suppressed once."""
        start = time.perf_counter()
        inference = self.config.inference
        pooled: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in widths]
        for flip, batch, logits, deltas in views:
            for i, (boxes, scores, labels) in enumerate(candidates(logits, deltas, batch, self.info, inference)):
                pooled[i].append((flip_boxes(boxes, widths[i]) if flip else boxes, scores, labels))
        if self.tta is not None:
            inference = tta_inference(self.tta, inference)
        out = []
        for image_views in pooled:
            boxes, scores, labels = (np.concatenate(part) for part in zip(*image_views))
            out.append(suppress(boxes, scores, labels, inference))
        self.seconds["postprocess"] += time.perf_counter() - start
        return out

    def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Float CHW images of one batch -> detections in their pixels, every score kept (the model's
        ``final_score_thresh`` aside). With test-time augmentation every view's candidates (flipped back)
        are pooled before the one suppression; without it there is one view."""
        return self._decode([int(im.shape[-1]) for im in images], self._views(images))

    def _named(self, det: dict[str, np.ndarray], score_thresh: float) -> Detections:
        keep = det["scores"] >= score_thresh
        kept: Detections = {k: v[keep] for k, v in det.items()}
        kept["names"] = [self.class_names[int(i)] for i in kept["labels"]]
        return kept

    def predict(self, images: Sequence[np.ndarray | str | Path], score_thresh: float = 0.0) -> list[Detections]:
        """One image at a time, each at its own padded size (a batch of different sizes would pad every
        image to the largest, which changes nothing in the detections but costs time)."""
        results = []
        for item in images:
            image = self.load_image(item) if isinstance(item, (str, Path)) else np.asarray(item, dtype=np.float32)
            (det,) = self.detect([image])
            results.append(self._named(det, score_thresh))
        return results

    def predict_tiled(self, raster: Raster, tile: int, overlap: float, score_thresh: float = 0.0,
                      progress: Callable[[int], None] | None = None,
                      overview_side: int | None = None) -> TiledResult:
        """Detections of ``raster`` window by window (:mod:`harnet.deploy.tiling`), in the raster's pixels.

        Windows that are entirely nodata are not sent to the network; a window that cannot be read (a
        corrupt block, a file truncated on disk) is listed in ``unreadable`` and the others are still
        predicted. ``progress`` is called with the number of windows done after each batch. With
        ``overview_side``, ``result.overview`` is the raster at most that many px on its long side, made
        from the windows as they are read (:class:`~harnet.deploy.raster.Overview`), as a picture to draw
        (:meth:`display`)."""
        grid = window_grid(raster.width, raster.height, tile, overlap, self.min_tile)
        windows = grid.windows()
        result = TiledResult({}, len(windows))
        overview = Overview(raster.width, raster.height, overview_side, display=self.display) if overview_side else None
        parts: list[WindowDetections] = []
        seconds = {"read": 0.0, "preprocess": 0.0, "network": 0.0, "postprocess": 0.0, "merge": 0.0}
        before = dict(self.seconds)

        def decode(ready: list[Window], views: list[tuple[bool, Batch, np.ndarray, np.ndarray]]) -> None:
            for window, det in zip(ready, self._decode([tile] * len(ready), views)):
                parts.append(WindowDetections.from_window(window, det["boxes"], det["scores"], det["labels"],
                                                          raster.width, raster.height))

        # Two stages in flight: while the network runs on one batch of windows, the previous batch is decoded
        # and suppressed in a worker thread (onnxruntime, OpenVINO and torch release the GIL while they run),
        # so the numpy post-processing fills the cores the network leaves idle.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: Future[None] | None = None
            for start in range(0, len(windows), self.batch_size):
                chunk = windows[start : start + self.batch_size]
                tic = time.perf_counter()
                read, empty, unreadable = read_windows(raster, chunk, tile, overview)
                result.empty_windows += empty
                result.unreadable += unreadable
                ready = [(chunk[i], image) for i, image in read]
                seconds["read"] += time.perf_counter() - tic
                views = self._views([image for _, image in ready]) if ready else None
                if pending is not None:
                    pending.result()
                pending = pool.submit(decode, [w for w, _ in ready], views) if views is not None else None
                if progress is not None:
                    progress(len(chunk))
            if pending is not None:
                pending.result()
        for key in ("preprocess", "network", "postprocess"):
            seconds[key] = self.seconds[key] - before[key]
        tic = time.perf_counter()
        merged = merge_windows(parts, grid, self.config.inference)
        seconds["merge"] = time.perf_counter() - tic
        result.detections = self._named({"boxes": merged.boxes, "scores": merged.scores, "labels": merged.labels},
                                        score_thresh)
        result.cut_dropped, result.merged, result.seconds = merged.cut_dropped, merged.merged, seconds
        result.overview = overview.image if overview is not None else None
        return result


def read_windows(raster: Raster, windows: Sequence[Window], tile: int, overview: Overview | None = None,
                 ) -> tuple[list[tuple[int, np.ndarray]], int, list[str]]:
    """The pixels of each window worth predicting, as (its position in ``windows``, pixels zero-padded to
    ``tile``), each also added to ``overview``; and the count of all-nodata windows skipped and the one-line
    errors of the unreadable ones. One reading rule for :meth:`Predictor.predict_tiled` and the dask workers."""
    ready, empty, unreadable = [], 0, []
    for i, window in enumerate(windows):
        try:
            image = raster.read(window)
        except BadImageError as e:
            unreadable.append(one_line(e))
            continue
        if image is None:
            empty += 1
            continue
        if overview is not None:
            overview.add(window, image)
        ready.append((i, _padded(image, tile)))
    return ready, empty, unreadable


def _padded(image: np.ndarray, tile: int) -> np.ndarray:
    """A window smaller than the tile (a raster narrower than one) zero-padded bottom/right to the tile, so
    the model sees it at the scale of a whole tile."""
    h, w = image.shape[-2:]
    if h >= tile and w >= tile:
        return image
    out = np.zeros((image.shape[0], max(h, tile), max(w, tile)), dtype=np.float32)
    out[:, :h, :w] = image
    return out

