"""Atomic file writes: a reader (or a run killed at any moment) sees the old file or the new one, never half.

Every file harnet writes as a result (checkpoints, ``config.yaml``, ``eval_step*.json``, ``metrics.json``,
``detections.json``, ``skipped.*``, prediction images) goes through :func:`atomic_file`: it is written to a
temporary file in the same folder, flushed to disk, and renamed over the target (``os.replace`` is atomic
within a file system). Standard library only, so the data layer can use it without importing torch models.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them.

    A ``KeyboardInterrupt`` raised inside ``torch.save`` leaves its zip writer half-way, and closing it
    then raises a ``RuntimeError`` that replaces the interrupt: Ctrl-C (or SIGTERM, which training turns
    into the same interrupt) during a checkpoint write would end the run with an obscure error instead
    of a clean save. A signal inherited as ignored (SIGINT of a job started with ``cmd &`` in a script)
    stays ignored, and one whose handler was set outside Python (which could not be put back) is left
    alone. Only the main thread can set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    held = {sig: handler for sig, handler in previous.items() if handler not in (signal.SIG_IGN, None)}
    for sig in held:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(received):  # type: ignore[assignment]
        handler = held[sig]
        if callable(handler):
            handler(sig, None)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
        elif handler == signal.SIG_DFL and sig == signal.SIGINT:
            raise KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(sig)  # the default action, now that the file is complete


def _new_file_mode() -> int:
    """The permissions ``open()`` would give a new file (0o666 less the umask); ``mkstemp`` makes 0o600,
    which would hide results from the rest of a team sharing a machine."""
    try:
        with open("/proc/self/status") as f:  # Linux: read the umask without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A temp file beside ``path`` that replaces it (after fsync) only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            if hasattr(os, "fchmod"):  # not on Windows
                os.fchmod(fd, _new_file_mode())
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text_atomic(text: str, path: str | Path) -> None:
    """Replace a text file (config.yaml, a JSON result) atomically, like checkpoints."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))


def remove_stale_temps(folder: str | Path) -> None:
    """Delete the temp files of atomic writes that a killed process never finished (``.name.*.tmp``)."""
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
