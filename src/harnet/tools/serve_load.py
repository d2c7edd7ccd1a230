"""A load generator for ``harnet serve``: a served model as a real process, and many clients against it.

Used by the load test (tests/tools/test_serve_load.py) and ``benchmarks/serve_load.py``. Standard library only
(``http.client`` with one keep-alive connection per client thread), so it measures the server, not a client
library. Latency is per request from send to the last byte of the answer; throughput is requests over wall
time; the server's resident memory is read from ``/proc`` after every answer (Linux; elsewhere none).
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Call:
    """One request to send and the status it must get."""

    body: bytes
    path: str = "/predict"
    content_type: str = "application/octet-stream"
    expect: int = 200
    kind: str = "image"


@dataclass
class Answer:
    index: int
    kind: str
    status: int  # 0: no answer (connection error)
    expect: int
    seconds: float
    body: bytes
    error: str = ""


@dataclass
class LoadResult:
    answers: list[Answer]
    wall: float
    concurrency: int
    rss: list[tuple[int, int]] = field(default_factory=list)  # (answers so far, server RSS bytes)

    @property
    def wrong(self) -> list[Answer]:
        """Answers without the expected status (a lost request has status 0)."""
        return [a for a in self.answers if a.status != a.expect]

    def latencies_ms(self, kind: str | None = "image") -> list[float]:
        return sorted(a.seconds * 1000 for a in self.answers if kind is None or a.kind == kind)

    def percentile(self, q: float, kind: str | None = "image") -> float:
        values = self.latencies_ms(kind)
        return float(np.percentile(values, q)) if values else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.answers) / self.wall

    def rss_mean(self, first: int, last: int) -> float | None:
        """Mean server RSS (bytes) over the answers numbered ``first``..``last - 1``."""
        values = [rss for done, rss in self.rss if first < done <= last]
        return statistics.fmean(values) if values else None

    def summary(self, window: int = 500) -> dict[str, Any]:
        n = len(self.answers)
        first, last = self.rss_mean(0, window), self.rss_mean(n - window, n)
        return {
            "requests": n, "concurrency": self.concurrency, "wall_s": round(self.wall, 3),
            "throughput_rps": round(self.throughput, 2), "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2), "wrong": len(self.wrong),
            "rss_first_mb": None if first is None else round(first / 2**20, 2),
            "rss_last_mb": None if last is None else round(last / 2**20, 2),
            "rss_last_over_first": None if not first or last is None else round(last / first, 4),
        }


# --- the server process ----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_server(model: str | Path, port: int, *options: str, log: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m harnet serve MODEL --port PORT OPTIONS`` on 127.0.0.1; its output goes to ``log`` (a pipe
    nobody reads would block the server once full)."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen([sys.executable, "-m", "harnet", "serve", str(model), "--host", "127.0.0.1",
                                 "--port", str(port), *options], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``path`` -> (status, JSON body); (0, reason) when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except OSError as e:
        return 0, str(e)
    finally:
        conn.close()


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Seconds until ``GET /health`` answers 200; an error naming the server's state when it does not."""
    start = time.monotonic()
    status, body = 0, None
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"harnet serve exited with status {process.returncode} before it was ready")
        status, body = get(port, "/health")
        if status == 200:
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError(f"harnet serve not ready after {timeout:g} s (last /health: {status} {body})")


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux ``/proc``); None where that cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --- requests --------------------------------------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images(count: int, size: int = 64, seed: int = 0) -> list[bytes]:
    """``count`` random RGB PNGs of ``size`` px with a few bright rectangles (something to detect)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = (rng.random((size, size, 3)) * 80).astype(np.uint8)
        for _ in range(3):
            x, y = rng.integers(0, size - size // 4, 2)
            w, h = rng.integers(size // 8, size // 4, 2)
            image[y : y + h, x : x + w] = rng.integers(150, 255, 3)
        images.append(png_bytes(image))
    return images


def multipart(data: bytes, field_name: str = "file", filename: str = "image.png") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field -> (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` with no pixel data behind it: tiny on the wire, huge
    when decoded (what a decompression bomb looks like to a header check)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
            + len(idat).to_bytes(4, "big") + b"IDAT" + idat + zlib.crc32(b"IDAT" + idat).to_bytes(4, "big"))


def bad_calls(good_png: bytes, max_bytes: int) -> list[Call]:
    """One request of each kind the server must refuse with a 4xx (and go on serving)."""
    wrong_field, wrong_type = multipart(good_png, field_name="image")
    return [
        Call(b"\x00" * (max_bytes + 1), expect=413, kind="over max-bytes"),
        Call(png_header(9000, 9000), expect=422, kind="over the pixel limit"),
        Call(png_header(30000, 30000), expect=422, kind="decompression bomb"),
        Call(b"this is not an image", expect=422, kind="not an image"),
        Call(good_png[: len(good_png) // 2], expect=422, kind="truncated"),
        Call(wrong_field, content_type=wrong_type, expect=422, kind="wrong field"),
        Call(good_png, path="/predict?score=abc", expect=422, kind="bad parameter"),
        Call(good_png, path="/predict?scor=0.5", expect=422, kind="unknown parameter"),
    ]


# --- the clients -----------------------------------------------------------------------------------


def run_load(port: int, calls: Sequence[Call], concurrency: int, server_pid: int | None = None,
             timeout: float = 60.0) -> LoadResult:
    """Send every call once, ``concurrency`` at a time (each client thread keeps its connection alive)."""
    answers: list[Answer | None] = [None] * len(calls)
    rss: list[tuple[int, int]] = []
    lock = threading.Lock()
    order = itertools.count()
    done = itertools.count(1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while (i := next(order)) < len(calls):
                call = calls[i]
                start = time.perf_counter()
                status, body, error = 0, b"", ""
                try:
                    conn.request("POST", call.path, body=call.body, headers={"Content-Type": call.content_type})
                    response = conn.getresponse()
                    status, body = response.status, response.read()
                except (OSError, http.client.HTTPException) as e:
                    error = f"{type(e).__name__}: {e}"
                    conn.close()
                answers[i] = Answer(i, call.kind, status, call.expect, time.perf_counter() - start, body, error)
                memory = rss_bytes(server_pid) if server_pid is not None else None
                with lock:
                    finished = next(done)
                    if memory is not None:
                        rss.append((finished, memory))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"client-{k}") for k in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return LoadResult([a for a in answers if a is not None], wall, concurrency, rss)


def interleave(good: Sequence[Call], bad: Sequence[Call], total: int, every: int) -> list[Call]:
    """``total`` calls: the good ones in turn, with the bad ones (in turn) as every ``every``-th."""
    out = []
    g, b = itertools.cycle(good), itertools.cycle(bad)
    for i in range(total):
        out.append(next(b) if bad and i % every == every - 1 else next(g))
    return out


def server_env(threads: int = 1) -> dict[str, str]:
    """The environment of a served model: this interpreter's harnet first on the path, ``threads`` OpenMP
    threads (the runtimes read it)."""
    import harnet

    src = str(Path(harnet.__file__).resolve().parents[1])
    paths = [src, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": str(threads)}


# --- the load test: one client vs many, interleaved --------------------------------------------------


def load_test(port: int, good: Sequence[Call], bad: Sequence[Call], total: int = 2000, concurrency: int = 16,
              single: int = 100, rounds: int = 2, bad_every: int = 20, server_pid: int | None = None,
              window: int = 500, warmup: int = 200) -> dict[str, Any]:
    """``total`` requests at ``concurrency`` (the ``bad`` ones as every ``bad_every``-th) against ``single``
    good requests from one client, in ``rounds`` alternating parts (the machine's other load drifts; both
    sides see it alike), after ``warmup`` good requests at ``concurrency`` that are not counted. Returns the
    figures and, under ``"wrong"``, every answer without its expected status.

    Latency percentiles are over the good requests; throughput over all. ``rss_last_over_first``: the
    server's mean RSS over the last ``window`` concurrent answers over that of the first ``window``. Why the
    warm-up: a runtime's memory arena grows the first time it meets each batch size (1 to ``--max-batch``),
    which is not a leak; measured warm, a leak is what would still grow."""
    calls = interleave(good, bad, total, bad_every)
    alone = interleave(good, [], single, 1)
    if warmup:
        run_load(port, interleave(good, [], warmup, 1), concurrency, None)
    parts_many, parts_one = [], []
    for r in range(rounds):
        parts_one.append(run_load(port, alone[r * single // rounds : (r + 1) * single // rounds], 1, server_pid))
        parts_many.append(run_load(port, calls[r * total // rounds : (r + 1) * total // rounds], concurrency,
                                   server_pid))
    many, one = merge(parts_many), merge(parts_one)
    reference = {alone[a.index % len(alone)].body: a.body for a in reversed(one.answers) if a.status == 200}
    figures = many.summary(window)
    figures["single_client"] = {k: v for k, v in one.summary(window).items() if not k.startswith("rss")}
    figures["speedup"] = round(many.throughput / one.throughput, 3)
    figures["bad_requests"] = sum(1 for a in many.answers if a.expect != 200)
    figures["wrong"] = [f"#{a.index} {a.kind}: expected {a.expect}, got {a.status} "
                        f"{(a.error or a.body[:200].decode(errors='replace'))}" for a in [*many.wrong, *one.wrong]]
    figures["mismatched"] = [f"#{a.index}: {why}" for a in many.answers if a.status == 200 and a.expect == 200
                             and (why := differs(a.body, reference.get(calls[a.index].body)))]
    return figures


def differs(answer: bytes, reference: bytes | None, atol: float = 1e-3) -> str | None:
    """Why a concurrent answer is not the one its image got alone (another image's detections, a lost box),
    else None; boxes within ``atol`` px and scores within ``atol`` (a batch may round the network's
    sums differently)."""
    if reference is None:
        return "no single-client answer to compare with"
    got, want = json.loads(answer)["detections"], json.loads(reference)["detections"]
    if len(got) != len(want):
        return f"{len(got)} detections, {len(want)} alone"
    for g, w in zip(got, want):
        if g["category_id"] != w["category_id"] or not np.allclose(g["bbox"], w["bbox"], atol=atol) \
                or abs(g["score"] - w["score"]) > atol:
            return f"{g} differs from {w}"
    return None


def merge(parts: Sequence[LoadResult]) -> LoadResult:
    """Several runs of consecutive slices of one call list as one: answers (their index into the whole list)
    and RSS samples numbered on, wall times added."""
    answers: list[Answer] = []
    rss: list[tuple[int, int]] = []
    for part in parts:
        rss += [(len(answers) + done, value) for done, value in part.rss]
        answers += [replace(a, index=len(answers) + a.index) for a in part.answers]
    return LoadResult(answers, sum(p.wall for p in parts), parts[0].concurrency, rss)
