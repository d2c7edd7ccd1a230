"""Which image files a command line names: files, folders (their images, sorted) and globs, as
``harnet predict`` reads them."""

from __future__ import annotations

import glob
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted), globs expanded. Missing -> error."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)
        elif any(ch in item for ch in "*?["):
            paths += sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
        else:
            raise FileNotFoundError(f"{item}: no such file, folder or matching glob")
    return paths
