"""Real aerial tree-crown data, converted from the sample files shipped in the ``deepforest`` wheel.

The ``deepforest`` package (MIT license) ships a few annotated RGB aerial images (NEON sites) under
``deepforest/data/``, annotated as VOC XML and/or CSV ``image_path,xmin,ymin,xmax,ymax,label``. That is
a small, freely redistributable, single-class real-world detection set that needs no account or large
download, which makes it the real-data counterpart of the synthetic shapes.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torchvision import ops

from harnet.data.coco_writer import GeneratedDataset, Split, coco_annotation, dataset_paths, write_splits
from harnet.data.csv_dataset import parse_csv_annotations
from harnet.data.image_io import pil_to_rgb_array
from harnet.data.records import clip_valid_boxes
from harnet.data.voc import IMAGE_EXTENSIONS, parse_voc_xml

_DATA_PREFIX = "deepforest/data/"
# A box cut by a tile edge is kept (clipped) only if at least this fraction of its area is inside.
_MIN_INSIDE = 0.5


@dataclass
class _Source:
    """One annotation file's boxes for one image inside the wheel."""

    annotation: str  # zip member the boxes came from
    image: str  # zip member of the image
    boxes: list[tuple[float, float, float, float]]
    rank: int  # 0 for XML, 1 for CSV: the tie-break when two files annotate an image equally


def _download_wheel(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "deepforest"]
    hint = "download it yourself (pip download --no-deps deepforest) and pass wheel=PATH (--wheel PATH)"
    try:
        subprocess.run(
            [*command, "-d", str(directory)], check=True, capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        last = detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__
        raise RuntimeError(f"could not download the deepforest wheel ({last}); {hint}") from exc
    wheels = sorted(directory.glob("deepforest-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip did not produce a deepforest wheel in {directory}; {hint}")
    return wheels[-1]


def _resolve_image(names: set[str], folder: str, filename: str) -> str | None:
    """Zip member for ``filename``; the same stem with another image extension if that is what ships."""
    exact = f"{folder}{PurePosixPath(filename).name}"
    if exact in names:
        return exact
    stem = PurePosixPath(filename).stem
    for candidate in sorted(n for n in names if n.startswith(folder) and PurePosixPath(n).stem == stem):
        if PurePosixPath(candidate).suffix.lower() in IMAGE_EXTENSIONS:
            return candidate
    return None


def _collect_sources(archive: zipfile.ZipFile, label: str) -> dict[str, _Source]:
    """Pick one annotation file per image, keyed by image stem.

    The wheel annotates some images several times (XML and CSV, PNG and TIF copies of the same scene,
    a partial CSV next to a full XML). Using the source with the most boxes avoids both duplicated
    boxes and partial labels; grouping by stem keeps two encodings of one scene from landing in
    different splits. Files that are not annotations (e.g. ``classes.csv``) fail to parse and are skipped.
    """
    names = set(archive.namelist())
    candidates: list[_Source] = []
    for name in sorted(names):
        if not name.startswith(_DATA_PREFIX):
            continue
        folder = name[: name.rindex("/") + 1]
        source = f"{label}:{name}"
        per_image: dict[str, list[tuple[float, float, float, float]]] = {}
        try:
            if name.endswith(".xml"):
                ann = parse_voc_xml(archive.read(name), source)
                if ann.filename is None:
                    continue
                per_image[ann.filename] = [obj.box for obj in ann.objects]
                rank = 0
            elif name.endswith(".csv"):
                for row in parse_csv_annotations(archive.read(name).decode("utf-8").splitlines(), source):
                    per_image.setdefault(row.image, []).extend([row.box] if row.box is not None else [])
                rank = 1
            else:
                continue
        except (ValueError, UnicodeDecodeError):
            continue
        for filename, boxes in per_image.items():
            image = _resolve_image(names, folder, filename)
            if image is not None and boxes:
                candidates.append(_Source(annotation=name, image=image, boxes=boxes, rank=rank))

    chosen: dict[str, _Source] = {}
    for candidate in sorted(candidates, key=lambda c: (-len(c.boxes), c.rank, c.annotation)):
        chosen.setdefault(PurePosixPath(candidate.image).stem, candidate)
    return chosen


def _tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins covering ``length``; the last tile is shifted back to end at the border (overlap)
    rather than padded, so every tile is real image content of the full tile size."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile), length - tile]


def _choose_val_sources(tiles: dict[str, int], val_fraction: float, seed: int) -> set[str]:
    """The proper, non-empty subset of sources whose tile count is closest to ``val_fraction`` of all
    tiles (exhaustive for up to 16 sources, greedy by size beyond); ``seed`` orders the ties."""
    if val_fraction <= 0 or len(tiles) < 2:
        return set()
    order = [sorted(tiles)[i] for i in np.random.default_rng(seed).permutation(len(tiles))]
    target = val_fraction * sum(tiles.values())
    if len(order) > 16:
        chosen: list[str] = []
        for stem in sorted(order, key=lambda s: -tiles[s]):
            if sum(tiles[s] for s in chosen) + tiles[stem] <= target or not chosen:
                chosen.append(stem)
        return set(chosen[: len(order) - 1])
    subsets = (
        [order[i] for i in range(len(order)) if mask >> i & 1] for mask in range(1, 2 ** len(order) - 1)
    )
    return set(min(subsets, key=lambda subset: abs(sum(tiles[s] for s in subset) - target)))


def convert_trees(
    out_dir: str | Path,
    wheel: str | Path | None = None,
    tile: int = 400,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> GeneratedDataset:
    """Convert deepforest's annotated sample images into a tiled, single-class COCO dataset.

    ``wheel`` is a local ``deepforest-*.whl``; when ``None`` it is fetched with ``pip download`` into a
    temporary folder (a ``RuntimeError`` explains how to pass one if that fails). Images and annotations
    are read straight from the zip. All tree labels (``Tree``, ``Alive``, ``Dead``) become the one
    category ``tree``.

    Images larger than ``tile`` are cut into ``tile`` x ``tile`` crops; boxes are clipped to the crop and
    kept when at least half of their area is inside. Crops without any kept box are skipped: in these
    sources an empty region is more likely unannotated than tree-free.

    The train/val split is by *source image*, never by tile: neighbouring, overlapping tiles of one
    scene are strongly correlated, so splitting tiles would leak validation content into training.
    The sources are few and very unequal (the wheel's largest scene gives 40 tiles, two others one
    each), so a split that counts sources would leave one tile to validate on. Instead the validation
    sources are the set whose *tile* count is closest to ``val_fraction`` of all tiles (never none and
    never all when there are two or more sources); ties are broken by a ``seed``-shuffled order. Layout
    and return value are as for :func:`~harnet.data.shapes.generate_shapes`.
    """
    if tile < 16 or not 0.0 <= val_fraction < 1.0:
        raise ValueError("need tile >= 16 and 0 <= val_fraction < 1")
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="harnet-deepforest-") as tmp:
            return _convert(_download_wheel(Path(tmp)), Path(out_dir), tile, val_fraction, seed)
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"deepforest wheel not found: {wheel}")
    return _convert(wheel, Path(out_dir), tile, val_fraction, seed)


def _convert(wheel: Path, out_dir: Path, tile: int, val_fraction: float, seed: int) -> GeneratedDataset:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel}: not a wheel (zip) file") from None
    with archive:
        sources = _collect_sources(archive, str(wheel))
        if not sources:
            raise ValueError(f"{wheel}: no annotated images under {_DATA_PREFIX}")
        stems = sorted(sources)
        tiles = {}
        for stem in stems:
            with Image.open(io.BytesIO(archive.read(sources[stem].image))) as image:
                width, height = image.size
            tiles[stem] = len(_tile_starts(height, tile)) * len(_tile_starts(width, tile))
        val_stems = _choose_val_sources(tiles, val_fraction, seed)

        train_dir, val_dir, _, _ = dataset_paths(out_dir)
        splits: dict[str, Split] = {"train": ([], []), "val": ([], [])}
        image_id = 0
        for stem in stems:
            source = sources[stem]
            with Image.open(io.BytesIO(archive.read(source.image))) as image:
                pixels = (pil_to_rgb_array(image) * 255.0 + 0.5).astype(np.uint8)
            height, width = pixels.shape[:2]
            raw = torch.tensor(source.boxes, dtype=torch.float32).reshape(-1, 4)
            boxes, keep = clip_valid_boxes(raw, width, height)
            boxes = boxes[keep]
            areas = ops.box_area(boxes)
            split = "val" if stem in val_stems else "train"
            images, annotations = splits[split]
            safe_stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
            for y0 in _tile_starts(height, tile):
                for x0 in _tile_starts(width, tile):
                    tile_w, tile_h = min(tile, width - x0), min(tile, height - y0)
                    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
                    clipped = ops.clip_boxes_to_image(shifted, (tile_h, tile_w))
                    inside = ops.box_area(clipped) >= _MIN_INSIDE * areas
                    if not bool(inside.any()):
                        continue
                    image_id += 1
                    file_name = f"{safe_stem}_x{x0}_y{y0}.png"
                    crop = Image.fromarray(np.ascontiguousarray(pixels[y0 : y0 + tile_h, x0 : x0 + tile_w]))
                    crop.save((train_dir if split == "train" else val_dir) / file_name, format="PNG")
                    images.append({"id": image_id, "file_name": file_name, "width": tile_w, "height": tile_h})
                    for box in clipped[inside].tolist():
                        annotations.append(coco_annotation(len(annotations) + 1, image_id, 1, box))

    categories = [{"id": 1, "name": "tree", "supercategory": "plant"}]
    return write_splits(out_dir, splits, categories, f"deepforest sample tree crowns ({wheel.name})")
