"""The export's JSON metadata, read without torch: inside the model file, or in the ``.json`` beside it.

It holds everything the runtime needs around the network: class names and ids, the model config
(transform, anchors, inference recipe) and, for quantised or portable exports, how they were made.
``harnet export`` writes it into the model file itself (under the key ``harnet``: the ONNX model's
``metadata_props``, the OpenVINO IR's ``rt_info``, the TorchScript archive's extra files), so that the
one file is enough, and the same JSON beside it (``<model file>.json``) for readers from before that.

Each is read by parsing only what is needed: the ONNX file's top-level protobuf fields (seeking past the
graph, so neither the ``onnx`` package nor a runtime session is needed), the IR's XML (not its weights),
the archive's table of contents.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harnet.config.io import from_dict
from harnet.config.model import HARNetConfig
from harnet.deploy.formats import model_file as model_file
from harnet.utils.errors import one_line

METADATA_KEY = "harnet"  # the key of the embedded JSON in every format
TORCHSCRIPT_EXTRA = "harnet.json"  # the TorchScript archive's extra file

# ONNX ModelProto's top-level fields (onnx.proto3) whose wire type is checked; others are skipped unread.
_ONNX_VARINT_FIELDS = {1, 5}  # ir_version, model_version
_ONNX_BYTES_FIELDS = {2, 3, 4, 6, 7, 8, 14}  # producer, domain, doc_string, graph, opset_import, metadata_props
_ONNX_GRAPH, _ONNX_METADATA_PROPS = 7, 14
_ONNX_FIELD_NAMES = {1: "ir_version", 7: "the graph", 8: "opset_import", 14: "metadata_props"}


@dataclass
class ExportInfo:
    config: HARNetConfig
    class_names: list[str]
    category_ids: list[int]
    info: dict[str, Any]


def metadata_path(path: str | Path) -> Path:
    """``<model file>.json``: the sidecar metadata file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_export_info(path: str | Path) -> ExportInfo:
    """Metadata of the model at ``path`` (a model file, an OpenVINO folder, or the sidecar JSON itself).

    The metadata embedded in the model file wins over the sidecar ``<model file>.json``: the embedded
    copy cannot be separated from the weights it describes, and the sidecar is only read when the model
    holds none (an export from before harnet embedded it). Missing files and models without metadata are
    ``FileNotFoundError``, unreadable ones ``ValueError``, each naming the file."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: export metadata not found")
        return _parse(_read_text(path), path)
    file = model_file(path)
    text = embedded_metadata(file)
    if text is not None:
        return _parse(text, file)
    sidecar = metadata_path(file)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{file}: no harnet export metadata: none inside the model and no {sidecar.name} "
                                "beside it (harnet export writes both)")
    return _parse(_read_text(sidecar), sidecar)


def embedded_metadata(file: Path) -> str | None:
    """The JSON text ``harnet export`` embedded in the model ``file``; None if it holds none.
    A file that is not the model its suffix says is a ``ValueError`` naming it."""
    suffix = file.suffix.lower()
    if suffix == ".onnx":
        return onnx_metadata_props(file).get(METADATA_KEY)
    if suffix == ".xml":
        return openvino_rt_info(file)
    if suffix in (".pt", ".pth"):
        return torchscript_extra(file)
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: export metadata is not UTF-8 text ({e.reason})") from None


def _parse(text: str, source: Path) -> ExportInfo:
    try:
        info = json.loads(text)
        config = from_dict(HARNetConfig, info["model"], "model")
        return ExportInfo(config, list(info["class_names"]), [int(c) for c in info["category_ids"]], info)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: export metadata is not valid JSON ({e})") from None
    except KeyError as e:
        raise ValueError(f"{source}: export metadata lacks {e}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: unusable export metadata ({one_line(e)})") from None


# --- ONNX: the top-level fields of the ModelProto, read by seeking ----------------------------------


class _Corrupt(Exception):
    """Where and why the protobuf stream stopped making sense."""


def _varint(stream: IO[bytes]) -> int:
    value = 0
    for shift in range(0, 70, 7):
        byte = stream.read(1)
        if not byte:
            raise _Corrupt("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise _Corrupt("a varint longer than 10 bytes")


def _fields(stream: IO[bytes], size: int, length_field: set[int] | None = None,
            names: dict[int, str] | None = None) -> Iterator[tuple[int, int, bytes | None]]:
    """``(field number, wire type, value)`` per top-level field of the message in ``stream``'s next ``size``
    bytes: length-delimited fields in ``length_field`` (None: all) as their bytes, others skipped (None).
    ``names``: how errors call the fields."""
    end = stream.tell() + size
    while stream.tell() < end:
        key = _varint(stream)
        number, wire = key >> 3, key & 7
        field = (names or {}).get(number, f"field {number}")
        if number == 0:
            raise _Corrupt("field number 0")
        value: bytes | None = None
        if wire == 0:
            _varint(stream)
        elif wire in (1, 5):
            stream.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        elif wire == 2:
            n = _varint(stream)
            if stream.tell() + n > end:
                raise _Corrupt(f"{field} runs {stream.tell() + n - end} bytes past the end")
            if length_field is None or number in length_field:
                value = stream.read(n)
            else:
                stream.seek(n, io.SEEK_CUR)
        else:
            raise _Corrupt(f"{field} has wire type {wire}")
        if stream.tell() > end:
            raise _Corrupt(f"{field} runs past the end")
        yield number, wire, value


def onnx_metadata_props(file: Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model ``file``, reading only its top-level fields (the graph is
    skipped with a seek). A truncated or non-ONNX file is a ``ValueError`` naming it."""
    size = file.stat().st_size
    props: dict[str, str] = {}
    seen: set[int] = set()
    with file.open("rb") as stream:
        try:
            for number, wire, value in _fields(stream, size, {_ONNX_METADATA_PROPS}, _ONNX_FIELD_NAMES):
                expected = 0 if number in _ONNX_VARINT_FIELDS else 2 if number in _ONNX_BYTES_FIELDS else wire
                if wire != expected:
                    raise _Corrupt(f"{_ONNX_FIELD_NAMES.get(number, f'field {number}')} has wire type {wire}")
                seen.add(number)
                if value is not None:
                    entry = {n: v for n, _, v in _fields(io.BytesIO(value), len(value))}
                    props[(entry.get(1) or b"").decode()] = (entry.get(2) or b"").decode()
        except _Corrupt as e:
            raise ValueError(f"{file}: truncated or not an ONNX model ({size} bytes; {e})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{file}: corrupt ONNX model (metadata_props not UTF-8)") from None
    if _ONNX_GRAPH not in seen or 1 not in seen:
        raise ValueError(f"{file}: not an ONNX model (no {'graph' if 1 in seen else 'ir_version'}; {size} bytes)")
    return props


# --- OpenVINO IR and TorchScript ----------------------------------------------------------------


def openvino_rt_info(xml: Path) -> str | None:
    """``rt_info/harnet`` of the OpenVINO IR ``xml`` (set by ``harnet export``), else the ONNX metadata
    OpenVINO's converter copied to ``rt_info/framework/harnet`` (an IR converted from harnet's ONNX)."""
    try:
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as e:
        raise ValueError(f"{xml}: not an OpenVINO IR (unreadable XML: {e})") from None
    if root.tag != "net":
        raise ValueError(f"{xml}: not an OpenVINO IR (root element <{root.tag}>, expected <net>)")
    for where in (f"rt_info/{METADATA_KEY}", f"rt_info/framework/{METADATA_KEY}"):
        element = root.find(where)
        if element is not None and element.get("value") is not None:
            return element.get("value")
    return None


def torchscript_extra(file: Path) -> str | None:
    """The ``harnet.json`` extra file of a TorchScript archive (a zip); None in another archive (a
    checkpoint). A file that is no zip archive is a ``ValueError`` naming it."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}")]
            return archive.read(names[0]).decode() if names else None
    except (zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a TorchScript archive ({one_line(e)})") from None
