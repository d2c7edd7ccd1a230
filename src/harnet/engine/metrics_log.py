"""A run's metrics log: metrics.csv and, when installed, TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from harnet.utils.atomic import write_text_atomic


class MetricsLog:
    """metrics.csv (always) and TensorBoard (when installed) in the run folder; nothing when disabled
    (the ranks other than 0 of a distributed run).

    Both are logs appended to as training goes, not files replaced atomically: rewriting them whole at every
    step would cost quadratic I/O and hide a live run from TensorBoard until it ends. A kill can only leave
    an incomplete last record, never change earlier ones, and both formats detect it: a metrics.csv row is
    complete only with its newline (a resume drops a torn or too-new row, :meth:`_truncate_after`), and a
    TensorBoard event record carries its length and CRC32C, so readers skip a torn tail. The events a killed
    run logged after its checkpoint are hidden by the resumed run's ``purge_step``, so the curves show each
    step once; a new run never adds to an old run's events (see :mod:`harnet.engine.runfolder`).
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.writer: Any = None
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is not None:
            self._truncate_after(resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # Steps up to the checkpoint were logged before it was saved; the later ones run again.
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        except ImportError:
            pass

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "name", "value"])
            w.writerows([step, k, v] for k, v in values.items())
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _truncate_after(self, step: int) -> None:
        """Keep the rows up to the resumed step: the steps after it run again, and a run killed while
        appending may have left half a row."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (row_step := _row_step(line)) is not None and row_step <= step]
        write_text_atomic("".join(["step,name,value\n", *kept]), self.path)


def _row_step(line: str) -> int | None:
    """The step of a complete ``step,name,value`` row; None for a torn one."""
    fields = line.rstrip("\r\n").split(",")
    if not line.endswith("\n") or len(fields) < 3:
        return None
    try:
        float(fields[-1])
        return int(fields[0])
    except ValueError:
        return None
