"""Built-in synthetic detection dataset of coloured shapes, for smoke tests and quick experiments.

It exists so that the whole pipeline (training, evaluation, attention ablations) can be exercised in
minutes on a CPU without downloading anything, at two levels:

* ``"easy"``: 1-6 well separated, high-contrast shapes on a plain noisy background. A working detector
  should reach high AP quickly; if it does not, something in the pipeline is broken.
* ``"hard"``: textured backgrounds (gradients, stripes, blotches), clutter lines and blobs, partial
  occlusion, many small objects, low-contrast objects, and unannotated look-alikes (ellipses,
  rectangles, 4-point stars, T shapes, broken rings, trapezoids). Classifying a small ellipse vs.
  circle or rectangle vs. square is genuinely ambiguous, so AP stays well below saturation and there is
  room to measure what the attention modules add.

Each shape is drawn from exact polygon geometry, supersampled 4x for anti-aliasing, and its box is the
tight box of that geometry. Occluded objects keep their full box (as in COCO); an object more than 70%
hidden is drawn but not annotated. Every image has its own random stream seeded by
``(seed, difficulty, index)``, so the same seed gives byte-identical files, and changing ``num_images``
does not change the images that both runs share.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from harnet.data.coco_writer import GeneratedDataset, Split, coco_annotation, dataset_paths, write_splits

Difficulty = Literal["easy", "hard"]
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
_DISTRACTORS = ("ellipse", "rectangle", "thin_star", "tee", "broken_ring", "trapezoid")
_DIFFICULTY_CODE = {"easy": 0, "hard": 1}

_SUPERSAMPLE = 4
_CIRCLE_VERTICES = 48
# An object with less than this fraction of its pixels visible is not annotated (COCO-like ignore).
_MIN_VISIBLE = 0.3
# Object diameter as a fraction of the image side, per scale band.
_SCALE_BANDS = ((0.06, 0.12), (0.12, 0.25), (0.25, 0.42))


@dataclass(frozen=True)
class _Level:
    """Every knob that separates easy from hard, in one place."""

    objects: tuple[int, int]  # inclusive range of annotated objects per image
    scale_probs: tuple[float, float, float]  # small / medium / large
    overlap: bool  # allow objects to overlap (and occlude each other)
    distractors: tuple[int, int]
    lines: tuple[int, int]
    blobs: tuple[int, int]
    min_contrast: float  # minimum RGB distance between an object and the background under it
    noise: tuple[float, float]  # per-pixel Gaussian noise std range


_LEVELS = {
    "easy": _Level((1, 6), (0.2, 0.45, 0.35), False, (0, 0), (0, 0), (0, 0), 0.35, (0.01, 0.03)),
    "hard": _Level((2, 10), (0.5, 0.35, 0.15), True, (1, 4), (1, 5), (0, 3), 0.12, (0.02, 0.07)),
}

# A geometry is a list of (polygon (N, 2) in x, y pixel coordinates, fill?) drawn in order;
# ``fill=False`` cuts a hole (the inside of a ring).
Parts = list[tuple[np.ndarray, bool]]


def _rotate(points: np.ndarray, cx: float, cy: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def _radial(radii: np.ndarray, theta: float, cx: float, cy: float) -> np.ndarray:
    """Polygon with vertex ``k`` at radius ``radii[k]``, evenly spaced in angle, starting at ``theta``."""
    angles = theta + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _plus(r: float, w: float, arms: int) -> np.ndarray:
    """Centred plus sign (arm length ``r``, half-width ``w``); ``arms=3`` leaves out the top arm: a T."""
    points = [(r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w)]
    points += [(-w, -w), (-w, -r), (w, -r), (w, -w)] if arms == 4 else []
    return np.array(points, dtype=np.float64)


def _make_geometry(kind: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> Parts:
    """Exact polygons of a shape of circumradius ``r``; classes and distractors alike."""
    theta = rng.uniform(0, 2 * math.pi)
    circle = np.full(_CIRCLE_VERTICES, r)
    if kind == "circle":
        return [(_radial(circle, 0.0, cx, cy), True)]
    if kind == "square":
        return [(_radial(np.full(4, r), theta, cx, cy), True)]
    if kind == "triangle":
        return [(_radial(np.full(3, r), theta, cx, cy), True)]
    if kind in ("star", "thin_star"):
        points = 5 if kind == "star" else 4
        inner = rng.uniform(0.38, 0.5)
        return [(_radial(np.tile([r, r * inner], points), theta, cx, cy), True)]
    if kind in ("cross", "tee"):
        arms = 4 if kind == "cross" else 3
        return [(_rotate(_plus(r, r * rng.uniform(0.22, 0.34), arms), cx, cy, theta), True)]
    if kind == "ring":
        hole = _radial(circle * rng.uniform(0.45, 0.65), 0.0, cx, cy)
        return [(_radial(circle, 0.0, cx, cy), True), (hole, False)]
    if kind == "broken_ring":
        # One polygon (outer arc, then inner arc back) so that the gap is part of the exact geometry.
        half_gap = rng.uniform(0.35, 0.8)
        angles = theta + np.linspace(half_gap, 2 * math.pi - half_gap, _CIRCLE_VERTICES)
        radii = np.concatenate([np.full_like(angles, r), np.full_like(angles, r * rng.uniform(0.45, 0.65))])
        angles = np.concatenate([angles, angles[::-1]])
        return [(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1), True)]
    if kind == "ellipse":
        angles = 2 * math.pi * np.arange(_CIRCLE_VERTICES) / _CIRCLE_VERTICES
        local = np.stack([r * np.cos(angles), r * rng.uniform(0.5, 0.8) * np.sin(angles)], axis=1)
        return [(_rotate(local, cx, cy, theta), True)]
    if kind == "rectangle":
        a = r / math.sqrt(2)
        b = a * rng.uniform(0.45, 0.78)
        local = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        return [(_rotate(local, cx, cy, theta), True)]
    if kind == "trapezoid":
        apex, left, right = _radial(np.full(3, r), theta, cx, cy)
        keep = 1.0 - rng.uniform(0.3, 0.5)
        return [(np.stack([left, right, right + (apex - right) * keep, left + (apex - left) * keep]), True)]
    raise ValueError(f"unknown shape kind {kind!r}")


def _box(parts: Parts) -> np.ndarray:
    """Tight XYXY box of the filled polygons (holes never extend a shape)."""
    points = np.concatenate([poly for poly, fill in parts if fill])
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def _rasterize(parts: Parts, size: int) -> tuple[int, int, np.ndarray] | None:
    """Anti-aliased coverage of ``parts`` as ``(y0, x0, alpha)``, alpha in [0, 1], cropped to the image.

    Only the shape's own neighbourhood is drawn, at ``_SUPERSAMPLE`` x resolution and box-averaged
    down, which keeps generation fast and edges smooth without blurring the geometry.
    """
    box = _box(parts)
    x0, y0 = max(math.floor(box[0]) - 1, 0), max(math.floor(box[1]) - 1, 0)
    x1, y1 = min(math.ceil(box[2]) + 1, size), min(math.ceil(box[3]) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = Image.new("L", ((x1 - x0) * _SUPERSAMPLE, (y1 - y0) * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, fill in parts:
        # PIL fills sub-pixels floor(lo)..floor(hi) inclusively: at most one sub-pixel (1/4 px) too much,
        # split evenly between both sides without a shift, so box centres stay unbiased.
        scaled = (poly - [x0, y0]) * _SUPERSAMPLE
        draw.polygon([tuple(p) for p in scaled.tolist()], fill=255 if fill else 0)
    high = np.asarray(canvas, dtype=np.float32).reshape(y1 - y0, _SUPERSAMPLE, x1 - x0, _SUPERSAMPLE)
    alpha = high.mean(axis=(1, 3)) / 255.0
    return (y0, x0, alpha) if alpha.sum() > 0 else None


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.35, 1.0), rng.uniform(0.25, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _easy_background(rng: np.random.Generator, size: int) -> np.ndarray:
    value = rng.uniform(0.05, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 0.95)
    colour = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.25), value)
    return np.broadcast_to(np.array(colour, dtype=np.float32), (size, size, 3)).copy()


def _hard_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two colours, plus (randomly) stripes and low-frequency blotches."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / math.sqrt(2) + 0.5
    start, end = _random_colour(rng), _random_colour(rng)
    image = start + (end - start) * ramp[..., None]
    if rng.random() < 0.6:
        period = rng.uniform(3, 20) / size
        phase_angle = rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * (xx * math.cos(phase_angle) + yy * math.sin(phase_angle)) / period)
        image = image + rng.uniform(0.05, 0.25) * wave[..., None] * (_random_colour(rng) - 0.5)
    if rng.random() < 0.7:
        cells = int(rng.integers(3, 12))
        channels = []
        for _ in range(3):
            grid = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32))
            channels.append(np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC)))
        image = image + rng.uniform(0.1, 0.3) * np.stack(channels, axis=2)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _line(rng: np.random.Generator, size: int) -> Parts:
    length = rng.uniform(0.2, 0.8) * size
    half_width = rng.uniform(0.5, 1.5)
    cx, cy = rng.uniform(0, size, 2)
    local = np.array(
        [
            [-length / 2, -half_width],
            [length / 2, -half_width],
            [length / 2, half_width],
            [-length / 2, half_width],
        ]
    )
    return [(_rotate(local, cx, cy, rng.uniform(0, 2 * math.pi)), True)]


def _blob(rng: np.random.Generator, size: int) -> Parts:
    """Lumpy closed curve: a circle with strong low-order harmonics, so it never reads as a class."""
    r = rng.uniform(0.05, 0.15) * size
    angles = 2 * math.pi * np.arange(32) / 32
    radii = np.ones(32)
    for order in (2, 3, 4):
        radii += rng.uniform(0.12, 0.3) * np.cos(order * angles + rng.uniform(0, 2 * math.pi))
    cx, cy = rng.uniform(0, size, 2)
    return [(_radial(r * np.clip(radii, 0.2, None), 0.0, cx, cy), True)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(
    kind: str, rng: np.random.Generator, size: int, level: _Level, placed: list[np.ndarray], crowd: bool
) -> Parts | None:
    """Sample a fully visible-in-frame position for one shape, or ``None`` after too many tries.

    Easy levels keep a 2-pixel gap between boxes. Hard levels instead place some objects right next to
    an existing one, which is what produces partial occlusion, and only reject near-duplicates.
    """
    band = rng.choice(3, p=level.scale_probs)
    r = max(rng.uniform(*_SCALE_BANDS[band]) * size / 2, 3.0)
    for _ in range(30):
        if crowd and placed and rng.random() < 0.4:
            other = placed[int(rng.integers(len(placed)))]
            ocx, ocy = (other[0] + other[2]) / 2, (other[1] + other[3]) / 2
            distance = rng.uniform(0.5, 1.0) * ((other[2] - other[0]) / 2 + r)
            angle = rng.uniform(0, 2 * math.pi)
            cx, cy = ocx + distance * math.cos(angle), ocy + distance * math.sin(angle)
        else:
            cx, cy = rng.uniform(r, size - r, 2)
        parts = _make_geometry(kind, float(cx), float(cy), r, rng)
        box = _box(parts)
        if box[0] < 0 or box[1] < 0 or box[2] > size or box[3] > size:
            continue
        if crowd:
            if all(_iou(box, other) < 0.5 for other in placed):
                return parts
        elif all(
            box[0] > o[2] + 2 or box[2] < o[0] - 2 or box[1] > o[3] + 2 or box[3] < o[1] - 2 for o in placed
        ):
            return parts
    return None


def _paint(
    image: np.ndarray,
    layer: tuple[int, int, np.ndarray],
    colour: np.ndarray,
    shade: float,
    rng: np.random.Generator,
) -> None:
    """Alpha-composite a flat (or, with ``shade`` > 0, linearly shaded) colour in place."""
    y0, x0, alpha = layer
    h, w = alpha.shape
    patch = np.broadcast_to(colour, (h, w, 3))
    if shade > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(h, w)
        patch = np.clip(patch + shade * (ramp - ramp.mean())[..., None], 0.0, 1.0)
    region = image[y0 : y0 + h, x0 : x0 + w]
    region += (patch - region) * alpha[..., None]


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, level: _Level) -> np.ndarray:
    """A colour at least ``min_contrast`` away from the mean background under the shape."""
    colour = _random_colour(rng)
    for _ in range(20):
        if np.linalg.norm(colour - under) >= level.min_contrast:
            break
        colour = _random_colour(rng)
    return colour


def render_shapes_image(
    rng: np.random.Generator, size: int, difficulty: Difficulty
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image. Returns ``(uint8 (size, size, 3), [(label, xyxy box), ...])``."""
    level = _LEVELS[difficulty]
    hard = difficulty == "hard"
    image = _hard_background(rng, size) if hard else _easy_background(rng, size)

    objects: list[tuple[Parts, int | None]] = []  # (geometry, label or None for distractors)
    placed: list[np.ndarray] = []
    for _ in range(int(rng.integers(level.objects[0], level.objects[1] + 1))):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        parts = _place(SHAPE_CLASSES[label], rng, size, level, placed, crowd=level.overlap)
        if parts is not None:
            objects.append((parts, label))
            placed.append(_box(parts))
    for _ in range(int(rng.integers(level.distractors[0], level.distractors[1] + 1))):
        kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
        parts = _place(kind, rng, size, level, [], crowd=True)
        if parts is not None:
            objects.append((parts, None))
    order = rng.permutation(len(objects)) if hard else np.arange(len(objects))

    clutter = [_line(rng, size) for _ in range(int(rng.integers(level.lines[0], level.lines[1] + 1)))]
    clutter += [_blob(rng, size) for _ in range(int(rng.integers(level.blobs[0], level.blobs[1] + 1)))]
    over = rng.random(len(clutter)) < 0.4
    stack: list[tuple[Parts, int | None]] = [(c, None) for c, o in zip(clutter, over, strict=True) if not o]
    stack += [objects[i] for i in order]
    stack += [(c, None) for c, o in zip(clutter, over, strict=True) if o]

    layers: list[tuple[tuple[int, int, np.ndarray], int | None, np.ndarray | None]] = []
    for parts, label in stack:  # type: ignore[assignment]  # label: None for clutter
        layer = _rasterize(parts, size)
        if layer is None:
            continue
        y0, x0, alpha = layer
        under = image[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]].reshape(-1, 3).mean(axis=0)
        colour = _contrasting_colour(rng, under, level)
        _paint(image, layer, colour, rng.uniform(0.0, 0.4) if hard else 0.0, rng)
        layers.append((layer, label, _box(parts) if label is not None else None))

    # Visibility, top layer first: how much of each object is not covered by anything drawn later.
    covered = np.zeros((size, size), dtype=np.float32)
    annotations: list[tuple[int, np.ndarray]] = []
    for (y0, x0, alpha), label, box in reversed(layers):
        region = covered[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
        if label is not None and box is not None:
            visible = float((alpha * (1.0 - region)).sum() / alpha.sum())
            if visible >= _MIN_VISIBLE:
                annotations.append((label, np.clip(box, 0, size)))
        region[...] = 1.0 - (1.0 - region) * (1.0 - alpha)
    annotations.reverse()

    image += rng.normal(0.0, rng.uniform(*level.noise), image.shape).astype(np.float32)
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if hard and rng.random() < 0.3:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6)))
    return pixels, annotations


def generate_shapes(
    out_dir: str | Path,
    num_images: int = 200,
    size: int = 128,
    seed: int = 0,
    difficulty: Difficulty = "easy",
    val_fraction: float = 0.2,
) -> GeneratedDataset:
    """Generate the synthetic shapes dataset in COCO layout and return where it went.

    Writes ``out_dir/{train,val}/NNNNNN.png`` and ``out_dir/annotations/instances_{train,val}.json``
    (categories ``1..6`` = ``SHAPE_CLASSES``). The last ``round(num_images * val_fraction)`` images are
    the validation split; image ids ``1..num_images`` are unique across both splits.
    """
    if difficulty not in _LEVELS:
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}")
    if num_images < 1 or size < 32 or not 0.0 <= val_fraction < 1.0:
        raise ValueError("need num_images >= 1, size >= 32 and 0 <= val_fraction < 1")
    out_dir = Path(out_dir)
    train_dir, val_dir, _, _ = dataset_paths(out_dir)
    num_val = round(num_images * val_fraction)
    num_train = num_images - num_val
    splits: dict[str, Split] = {"train": ([], []), "val": ([], [])}

    for index in range(num_images):
        rng = np.random.default_rng([seed, _DIFFICULTY_CODE[difficulty], index])
        pixels, objects = render_shapes_image(rng, size, difficulty)
        split = "train" if index < num_train else "val"
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save((train_dir if split == "train" else val_dir) / file_name, format="PNG")
        images, annotations = splits[split]
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for label, box in objects:
            annotations.append(coco_annotation(len(annotations) + 1, image_id, label + 1, box.tolist()))

    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)
    ]
    description = f"harnet synthetic shapes, difficulty={difficulty}, seed={seed}, size={size}"
    return write_splits(out_dir, splits, categories, description)
