"""Run folders: one run per folder, one process per run.

A run folder is the record of one run: its config, metrics, evaluations and weights must all come from
that run, or nothing tells which run made which weights. Two guards keep it so (both taken by training
before it writes anything into the folder):

* **A lock** (``.lock``, JSON with host, PID and start time) for as long as a ``harnet train`` (or
  ``--resume``) uses the folder; under ``torchrun`` rank 0 holds it for the job. The lock is an
  ``flock`` on that file, so the kernel drops it when its process dies however it dies (``kill -9``
  included; forked children such as data-loader workers close their copy): the file a killed run leaves
  behind is recognised as stale and taken over, with a line saying so. A lock naming another host is
  refused instead (this machine cannot tell whether that process lives, and some shared file systems do
  not carry locks between hosts): the message says which file to delete once that run is known to be over.
* **No silent reuse**: a new run into a folder that already holds one is refused, naming the ways on
  (``--resume FOLDER``, another ``output_dir``, or ``--overwrite``, which first deletes the old run's
  own files, :data:`RUN_FILES`, so nothing stale stays beside the new ones; other files are kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harnet.config.io import ConfigError
from harnet.engine.errors import TrainingError
from harnet.utils.atomic import TEMP_SUFFIX, remove_stale_temps
from harnet.utils.outputs import outputs, remove_outputs

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock falls back to checking the PID it names
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
# Everything a run (and the tools run on it with their default outputs) writes into its folder: what makes
# a folder "hold a run", and all that --overwrite deletes. ``train.log`` (harnet ablate's log of the
# training process) is not in it: ablate appends to it across resumes and restarts.
RUN_FILES = (
    "last.pt", "best.pt", "config.yaml", "metrics.csv", "skipped.txt", "skipped.json", "done.json",
    "eval_step*.json", "tensorboard", "eval_val", "eval_train",
    "model.onnx", "model.onnx.json", "model.torchscript.pt", "model.torchscript.pt.json",
)  # fmt: skip
# A holder that died while processes it forked still hold the lock (they should not: see _close_in_child):
# such children usually exit within seconds of their parent, so wait this long before calling the folder busy.
ORPHAN_WAIT_S = 15.0
# Lock descriptors this process holds. A forked child (a data-loader worker) closes its copies, so that the
# lock dies with the process that took it, not with the last of its workers.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunExistsError(ConfigError):
    """A new run was pointed at a folder that holds another run (a usage error: exit status 2)."""


class RunLockedError(RuntimeError):
    """Another live process (or one this machine cannot check) uses the run folder."""


def run_files(run_dir: str | Path) -> list[Path]:
    """The files and folders of a run in ``run_dir`` (see :data:`RUN_FILES`), sorted; [] for none."""
    return outputs(run_dir, RUN_FILES)


def refuse_or_clear(run_dir: Path, overwrite: bool, log: Callable[[str], None]) -> None:
    """For a new run: refuse a folder that holds a run, or with ``overwrite`` delete that run's files."""
    found = run_files(run_dir)
    if not found:
        return
    if not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        resume = (f"continue it with --resume {run_dir}, " if (run_dir / "last.pt").is_file()
                  else "it never saved last.pt, so it cannot be resumed; ")
        raise RunExistsError(f"{run_dir}: already holds a run ({names}); {resume}choose a new output_dir "
                             "(--set output_dir=...), or start over with --overwrite (deletes that run's files)")
    remove_outputs(run_dir, [*RUN_FILES, f".*{TEMP_SUFFIX}"])
    log(f"harnet: {run_dir}: --overwrite: deleted the previous run's {len(found)} files")


class RunLock:
    """The lock on a run folder, held until :meth:`release` (also on garbage collection and at exit)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        _HELD.add(fd)
        self._finalizer = weakref.finalize(self, _release, path, fd, os.getpid())

    def release(self) -> None:
        """Delete the lock file (if it is still this lock's) and drop the lock. Idempotent."""
        self._finalizer()

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _release(path: Path, fd: int, owner: int) -> None:
    if os.getpid() != owner:  # a forked child: its copy of the descriptor is already closed
        return
    _HELD.discard(fd)
    # Delete before unlocking: a process that opened this file meanwhile then finds it replaced (see acquire).
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()
    os.close(fd)


def acquire(run_dir: str | Path, log: Callable[[str], None] | None = None) -> RunLock:
    """Lock ``run_dir`` for this process (creating the folder), or raise :class:`RunLockedError`.

    Raises ``OSError`` when the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    say = log or (lambda message: print(message, file=sys.stderr))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if not _try_lock(fd):
                holder = _holder(path)
                if _local_and_dead(holder) and time.monotonic() < deadline:
                    os.close(fd)
                    time.sleep(0.2)
                    continue
                raise RunLockedError(_busy_message(run_dir, holder))
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    _take(run_dir, path, fd, say)
                    return RunLock(path, fd)
            os.close(fd)  # the holder released (deleted the file) between our open and our lock: again
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _try_lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _take(run_dir: Path, path: Path, fd: int, log: Callable[[str], None]) -> None:
    """We hold the flock: check what a previous holder left in the file, then write ourselves in."""
    previous = _parse(os.pread(fd, 4096, 0))
    if previous is not None:
        if previous.get("host") != socket.gethostname():
            raise RunLockedError(f"{run_dir}: locked by process {previous.get('pid')} on host {previous.get('host')} "
                                 f"since {previous.get('started')}, which this machine cannot check; if that run "
                                 f"is over, delete {path} and retry")
        if fcntl is None and _alive(previous.get("pid")):
            raise RunLockedError(_busy_message(run_dir, previous))
        log(f"harnet: {run_dir}: taking over the stale lock of process {previous.get('pid')} "
            f"(started {previous.get('started')}), which no longer runs (killed?)")
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
    data = (json.dumps(me) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _holder(path: Path) -> dict[str, Any] | None:
    """The lock file's content; a holder that has its lock but not yet written itself in gets a moment."""
    for _ in range(10):
        with contextlib.suppress(OSError):
            if (holder := _parse(path.read_bytes())) is not None:
                return holder
        time.sleep(0.05)
    return None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _local_and_dead(holder: dict[str, Any] | None) -> bool:
    return holder is not None and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))


def _busy_message(run_dir: Path, holder: dict[str, Any] | None) -> str:
    if holder is None:
        return f"{run_dir}: in use by another harnet process (lock {run_dir / LOCK_NAME})"
    who = f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
    if _local_and_dead(holder):
        return (f"{run_dir}: locked by {who}, which is gone but whose child processes (data-loader workers?) "
                "still hold the lock; stop them, then retry")
    return f"{run_dir}: in use by another harnet run ({who}); wait for it to end or stop it, or use another output_dir"


MIN_FREE_BYTES = 200 * 2**20


def claim(run_dir: Path, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Take the run folder for this run before anything is written into it, or fail saying why.

    Locks it (another live run there is refused, a killed one's lock taken over), refuses a new run into a
    folder that holds one unless ``overwrite`` (which deletes that run's files first), and fails if the
    folder cannot be written or the disk is nearly full. Also removes the temporary files of a checkpoint
    write that a killed run left behind.
    """
    try:
        lock = acquire(run_dir)  # creating the lock file is the write test
    except OSError as e:
        raise TrainingError(f"{run_dir}: output folder is not writable ({e.strerror or e})") from None
    try:
        if not resume:
            refuse_or_clear(run_dir, overwrite, lambda message: print(message, file=sys.stderr))
        remove_stale_temps(run_dir)
        free = shutil.disk_usage(run_dir).free
        if free < MIN_FREE_BYTES:
            raise TrainingError(f"{run_dir}: only {free // 2**20} MiB free on disk; need at least "
                                f"{MIN_FREE_BYTES // 2**20} MiB for checkpoints")
    except BaseException:
        lock.release()
        raise
    return lock
