"""The export's JSON metadata (written by ``harnet export`` beside the model), read without torch.

It holds everything the runtime needs around the network: class names and ids, the model config
(transform, anchors, inference recipe) and, for quantised or portable exports, how they were made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harnet.config.io import from_dict
from harnet.config.model import HARNetConfig


@dataclass
class ExportInfo:
    config: HARNetConfig
    class_names: list[str]
    category_ids: list[int]
    info: dict[str, Any]


def model_file(path: str | Path) -> Path:
    """The model file of ``path``: the file itself, or the one ``.xml`` of an OpenVINO IR folder."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise FileNotFoundError(f"{path}: expected one OpenVINO .xml model in the folder, found {len(xmls)}")
        return xmls[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return path


def metadata_path(path: str | Path) -> Path:
    """``<model file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_export_info(path: str | Path) -> ExportInfo:
    """Metadata of the model at ``path`` (a model file, an OpenVINO folder, or the JSON itself)."""
    path = Path(path)
    meta = path if path.suffix == ".json" else metadata_path(model_file(path))
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: export metadata not found (written by harnet export beside the model)")
    info = json.loads(meta.read_text())
    config = from_dict(HARNetConfig, info["model"], "model")
    return ExportInfo(config, list(info["class_names"]), [int(c) for c in info["category_ids"]], info)
