"""``harnet predict RUN clip.mp4``: detections on every frame of a video file, camera or stream.

Decoding and encoding go through PyAV (``pip install 'harnet[video]'``), which reads files, V4L2
cameras (``--source 0`` is ``/dev/video0``) and network streams (``rtsp://``, ``http://``) alike. Each
frame's detections are appended to a JSON-lines file as soon as the frame is done and the annotated
frame is encoded right away, so a stream that breaks off (a truncated file, a dropped connection)
leaves every frame before the break written; the break itself is reported as one line naming the
source and the frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harnet.deploy.draw import draw_detections
from harnet.deploy.predictor import Predictor
from harnet.utils.errors import one_line

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
VIDEO_EXTRA = "pip install 'harnet[video]'"


def is_video_source(item: str) -> bool:
    """A video file (by suffix), a camera index (``0``) or a stream URL (``scheme://...``)."""
    return item.isdigit() or "://" in item or Path(item).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise RuntimeError(f"video prediction needs PyAV: {VIDEO_EXTRA}") from None
    return av


def open_source(source: str) -> Any:
    """A PyAV input container for a file, camera index or URL."""
    av = _av()
    if source.isdigit():
        return av.open(f"/dev/video{source}", format="v4l2")
    if "://" not in source and not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such video file")
    try:
        container = av.open(source)
    except Exception as e:
        raise ValueError(f"{source}: not a video FFmpeg can read ({one_line(e)})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{source}: no video stream (audio or data only)")
    return container


def output_stem(source: str) -> str:
    """The name the outputs of ``source`` get: the file's stem, ``camera0`` or ``stream``."""
    if source.isdigit():
        return f"camera{source}"
    if "://" in source:
        return "stream"
    return Path(source).stem


@dataclass
class VideoReport:
    """What a video prediction wrote, how fast it ran, and where it stopped early (``error``)."""

    frames: int
    detections: int
    seconds: float
    video_path: Path | None
    jsonl_path: Path | None
    error: str | None = None
    source: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _Writer:
    """The annotated video, opened at the first frame (its size and rate are known only then)."""

    def __init__(self, path: Path, rate: Any) -> None:
        self.path, self.rate = path, rate
        self.container: Any = None
        self.stream: Any = None

    def write(self, rgb: np.ndarray) -> None:
        av = _av()
        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # yuv420p needs even sides
        if self.container is None:
            self.container = av.open(str(self.path), mode="w")
            try:
                self.stream = self.container.add_stream("libx264", rate=self.rate)
            except Exception:  # an FFmpeg build without x264
                self.stream = self.container.add_stream("mpeg4", rate=self.rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()


def predict_video(predictor: Predictor, source: str, out_dir: Path | None, score_thresh: float,
                  max_frames: int | None = None, stem: str | None = None) -> VideoReport:
    """Run ``predictor`` on each frame of ``source``; with ``out_dir``, write ``<stem>_pred.mp4`` (the
    frames with their detections drawn, at the source's size) and ``<stem>_detections.jsonl`` (one line
    per frame: ``frame``, ``time`` in seconds, ``boxes`` XYXY pixels, ``scores``, ``labels``, ``names``).

    A decoding error ends the run early: what was written stays, ``error`` says which frame failed."""
    container = open_source(source)
    stem = stem or output_stem(source)
    video_path = jsonl_path = None
    writer: _Writer | None = None
    lines = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        video_path, jsonl_path = out_dir / f"{stem}_pred.mp4", out_dir / f"{stem}_detections.jsonl"
        stream = container.streams.video[0]
        writer = _Writer(video_path, stream.average_rate or stream.guessed_rate or 25)
        lines = jsonl_path.open("w")
    frames = detections = 0
    error = None
    start = time.perf_counter()
    try:
        decoded = container.decode(video=0)
        while max_frames is None or frames < max_frames:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except Exception as e:  # a corrupt or truncated stream: stop, keep what was written
                error = f"{source}: frame {frames}: {one_line(e)}"
                break
            rgb = frame.to_ndarray(format="rgb24")
            image = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
            (det,) = predictor.predict([image], score_thresh)
            detections += len(det["scores"])
            if lines is not None and writer is not None:
                seconds = float(frame.time) if frame.time is not None else None
                lines.write(json.dumps({
                    "frame": frames, "time": seconds, "boxes": det["boxes"].tolist(),
                    "scores": det["scores"].tolist(), "labels": det["labels"].tolist(), "names": det["names"],
                }) + "\n")
                lines.flush()
                drawn = draw_detections(image, det["boxes"], det["labels"].tolist(), det["scores"].tolist(),
                                        predictor.class_names, min_size=0)
                writer.write(np.asarray(drawn))
            frames += 1
    finally:
        seconds = time.perf_counter() - start
        container.close()
        if lines is not None:
            lines.close()
        if writer is not None:
            writer.close()
    return VideoReport(frames, detections, seconds, video_path, jsonl_path, error, source)
