"""What ``harnet predict`` writes, for every input kind and every backend: one record format, one writer.

``detections.json`` holds COCO-style records (XYWH pixel boxes, the dataset's category ids) of every image
and raster; it is written last, so a complete ``detections.json`` means a finished call. Unreadable inputs
are listed in ``skipped.txt``, never fatal to the rest. Output names come from the input stems, made
unique when two inputs share a stem (``a/ortho.tif`` and ``b/ortho.tif``), so no output replaces another.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harnet.utils.atomic import write_text_atomic
from harnet.utils.errors import first_line, one_line

# What prediction writes into its output folder, and replaces as a set when it writes there again.
PREDICT_OUTPUTS = ("*_pred.png", "detections.json", "skipped.txt", "*.gpkg", "*.geojson", "*_pred.mp4",
                   "*_detections.jsonl")


@dataclass
class PredictReport:
    detections: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    notes: list[str] = field(default_factory=list)  # "path: advice" (e.g. use --tile)

    def skip(self, path: Path | str, error: BaseException | str) -> None:
        """An unreadable file (or raster window): one line naming it, the rest still processed."""
        message = error if isinstance(error, str) else one_line(error)
        self.skipped.append(message if str(path) in message else f"{path}: {message}")

    def add(self, path: Path | str, det: dict[str, Any], category_ids: Sequence[int]) -> None:
        """One image's detections as COCO-style records (XYWH pixel boxes, the dataset's category ids)."""
        self.images.append(str(path))
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                           det["labels"].tolist(), det["names"]):
            x0, y0, x1, y1 = box
            self.detections.append({
                "file_name": str(path), "category_id": category_ids[label], "category_name": name,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })

    def write(self, out_dir: Path) -> None:
        """skipped.txt (when any) and detections.json, last, so a complete detections.json means a finished call."""
        if self.skipped:
            write_text_atomic("\n".join(self.skipped) + "\n", out_dir / "skipped.txt")
        write_text_atomic(json.dumps(self.detections, indent=1), out_dir / "detections.json")


def output_stems(paths: Sequence[Path | str]) -> list[str]:
    """The name each input's outputs get: its stem, or ``<parent>_<stem>`` (then ``-2``, ``-3``, ...) where
    two inputs share a stem, so that no input's picture or map replaces another's."""
    stems = [Path(p).stem for p in paths]
    clashes = {s for s, n in Counter(stems).items() if n > 1}
    named = [f"{Path(p).parent.name or 'input'}_{s}" if s in clashes else s for p, s in zip(paths, stems)]
    seen: Counter[str] = Counter()
    out = []
    for name in named:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def check_writable(out_dir: Path) -> None:
    """Make ``out_dir`` and prove a file can be written there, before any prediction: a read-only folder
    fails in one line naming it, not after an hour of windows naming a temp file."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".harnet-probe-"):
            pass
    except OSError as e:
        raise PermissionError(f"{out_dir}: output folder is not writable ({first_line(e)})") from None
