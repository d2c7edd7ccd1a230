"""Bad data bookkeeping: the one place that decides between "stop with an error" and "skip, count, list".

Real annotation files are messy. Every dataset parser reports each problem it finds to an
:class:`IssueLog`. By default (``skip_bad=False``) the first real problem stops everything with a one-line
error naming the file and the problem, so that a broken dataset is noticed before hours of training.
With ``skip_bad=True`` (``harnet train/eval --skip-bad``) the offending item is left out, and the log
keeps the file, the problem and what was done, which :func:`write_issues` lists in the run folder.

Harmless defects that have one right answer are not errors in either mode; they are fixed and still
listed, so silently broken annotation files become visible:

* a box with no area (zero/negative width or height) or lying entirely outside its image is dropped
  (``dropped box``); a box partly outside is clipped to the image (not listed: routine);
* ``iscrowd=1`` (COCO) and ``difficult`` (VOC) objects are not training targets but stay in the
  ground truth as crowd regions, so COCOeval neither rewards nor penalises detections on them;
* an image without annotations is kept as a negative example.

What is skipped is always a whole image, not one of its objects: training on an image whose broken
object was removed would teach the detector that the object is background. An annotation that points to
no image is skipped alone. Problems with the file as a whole (malformed JSON, duplicate ids) stay fatal.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harnet.utils.atomic import write_text_atomic
from harnet.utils.errors import one_line

SKIPPED_IMAGE = "skipped image"
SKIPPED_ANNOTATION = "skipped annotation"
SKIPPED_ROW = "skipped row"  # a CSV row that names no image
DROPPED_BOX = "dropped box"


class BadDataError(ValueError):
    """A dataset problem the user must fix (or skip with ``--skip-bad``); the message names the file."""


def read_json(path: Path) -> Any:
    """The JSON of an annotation file; a missing, malformed or not UTF-8 file is one line naming it (every
    JSON format reads its file through here, so they fail alike)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BadDataError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise BadDataError(f"{path}: not UTF-8 text") from None


@dataclass(frozen=True)
class DataIssue:
    """One problem: the file it is in (with ``:line`` for CSV), what is wrong, and what was done."""

    file: str
    problem: str
    action: str

    def line(self) -> str:
        return f"{self.action}: {self.file}: {self.problem}"


@dataclass
class IssueLog:
    """Collects :class:`DataIssue` s; :meth:`bad` raises instead unless ``skip_bad``."""

    skip_bad: bool = False
    items: list[DataIssue] = field(default_factory=list)

    def bad(self, file: str | Path, problem: str, action: str = SKIPPED_IMAGE,
            error: type[Exception] = BadDataError) -> None:
        """A real problem: raise ``error("file: problem")``, or record it when skipping bad data."""
        if not self.skip_bad:
            raise error(f"{file}: {problem}")
        self.items.append(DataIssue(str(file), problem, action))

    def reject(self, error: Exception, file: str | Path, action: str = SKIPPED_IMAGE) -> None:
        """Like :meth:`bad` for an exception whose message already names ``file``: re-raise or record."""
        if not self.skip_bad:
            raise error
        text, prefix = one_line(error), f"{file}: "
        self.items.append(DataIssue(str(file), text.removeprefix(prefix), action))

    def dropped(self, file: str | Path, problem: str) -> None:
        """A harmless defect that was fixed by dropping one box; recorded in both modes."""
        self.items.append(DataIssue(str(file), problem, DROPPED_BOX))

    def counts(self) -> dict[str, int]:
        return dict(Counter(item.action for item in self.items))

    def summary(self) -> str:
        """``"1 dropped box, 2 skipped images"``, or ``""`` when nothing happened."""
        return ", ".join(f"{n} {_plural(action, n)}" for action, n in sorted(self.counts().items()))


def write_issues(folder: str | Path, logs: dict[str, IssueLog]) -> str:
    """Write ``skipped.json`` and ``skipped.txt`` listing every issue per split; return a summary line.

    Stale lists from an earlier run in the same folder are removed when nothing is left to report. Each file
    is replaced atomically.
    """
    folder = Path(folder)
    entries = [{"split": split, **asdict(item)} for split, log in logs.items() for item in log.items]
    json_path, text_path = folder / "skipped.json", folder / "skipped.txt"
    if not entries:
        json_path.unlink(missing_ok=True)
        text_path.unlink(missing_ok=True)
        return ""
    counts = {split: log.counts() for split, log in logs.items() if log.items}
    write_text_atomic(json.dumps({"counts": counts, "items": entries}, indent=1), json_path)
    lines = [f"{e['split']}: {e['action']}: {e['file']}: {e['problem']}\n" for e in entries]
    write_text_atomic("".join(lines), text_path)
    parts = [f"{split}: {log.summary()}" for split, log in logs.items() if log.items]
    return f"data issues ({'; '.join(parts)}), listed in {text_path}"


def _plural(noun: str, n: int) -> str:
    if n == 1:
        return noun
    return noun + ("es" if noun.endswith("x") else "s")
