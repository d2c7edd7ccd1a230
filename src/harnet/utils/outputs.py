"""A tool's outputs in a folder, found and replaced as a set, so a folder never mixes two calls' files."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path


def outputs(folder: str | Path, patterns: Sequence[str]) -> list[Path]:
    """The files and folders in ``folder`` that match ``patterns`` (names or globs), sorted; [] for none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def remove_outputs(folder: str | Path, patterns: Sequence[str]) -> list[Path]:
    """Delete what :func:`outputs` finds (a tool's previous outputs, before it writes new ones, so that the
    folder never holds a mix of two runs); returns what was deleted. Nothing else in ``folder`` is touched."""
    found = outputs(folder, patterns)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return found
