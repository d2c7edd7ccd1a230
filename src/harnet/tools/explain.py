"""Where the network looks: the three attentions of one image, as numbers and as figures.

- **spatial**: each pyramid level's mask (sigmoid, in (0, 1)), upsampled to the input image and
  overlaid as a heat map spanning the mask's own range: red where the head's towers are kept, blue
  where they are damped;
- **aligned**: the deformable conv's 3x3 sampling points at one location on C4/C5 (regular grid +
  learned offsets, one colour per offset group), drawn on the image: how the receptive field bends
  toward the object;
- **channel**: the cross-level SE channel weights (one vector per branch, shared by all levels) as
  bar charts: which channels the head amplifies or suppresses for this image.

Everything comes from :meth:`HARNet.attention_maps`: the model's own eval-mode preprocessing and
prediction, returning what each attention computed in that pass, so the numbers and the image
geometry are those of ``model(images)``. A preset without an attention skips its figure and says so.
Figures use matplotlib's object API (no pyplot, no global backend): it works headless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harnet.config.io import ConfigError
from harnet.modeling.harnet import HARNet
from harnet.modeling.pyramid import LEVEL_NAMES


@dataclass
class Explanation:
    """Attention read-outs for one image; every coordinate is in input-image pixels (x, y)."""

    image_size: tuple[int, int]  # (h, w)
    detections: dict[str, Tensor]
    masks: dict[str, Tensor] = field(default_factory=dict)  # "P3".. -> (h, w) in [0, 1]
    mask_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # feature-map size per level
    location: tuple[float, float] | None = None  # where the sampling points are taken
    sampling_points: dict[str, Tensor] = field(default_factory=dict)  # "c5" -> (groups, 9, 2) learned
    grid_points: dict[str, Tensor] = field(default_factory=dict)  # "c5" -> (9, 2) offset-free positions
    se_weights: dict[str, Tensor] = field(default_factory=dict)  # "classification"/"box" -> (C,)
    se_applies_to: str = ""
    skipped: list[str] = field(default_factory=list)


def sampling_positions(offsets: Tensor, y: int, x: int) -> tuple[Tensor, Tensor]:
    """Where a 3x3 deformable conv (stride 1, padding 1) samples for output cell (y, x), in feature
    cells: (groups, 9, 2) learned positions and (9, 2) regular ones, both (x, y).

    ``offsets`` is (2 * groups * 9, H, W) in torchvision's layout: per offset group, per kernel tap
    (row-major), (dy, dx).
    """
    taps = torch.tensor([(x - 1 + j, y - 1 + i) for i in range(3) for j in range(3)], dtype=offsets.dtype)
    d = offsets[:, y, x].reshape(-1, 9, 2)  # (groups, taps, (dy, dx))
    return taps[None] + d.flip(-1), taps


def _cell_to_pixels(points: Tensor, grid: tuple[int, int], padded: tuple[int, int], resized: tuple[int, int],
                    original: tuple[int, int]) -> Tensor:
    """Feature-cell (x, y) -> input-image pixels: cell centres at (i + 0.5) * stride of the padded
    batch, then the resize undone."""
    stride = torch.tensor([padded[1] / grid[1], padded[0] / grid[0]], dtype=points.dtype)
    scale = torch.tensor([original[1] / resized[1], original[0] / resized[0]], dtype=points.dtype)
    return (points + 0.5) * stride * scale


def _mask_to_image(mask: Tensor, padded: tuple[int, int], resized: tuple[int, int],
                   original: tuple[int, int]) -> Tensor:
    """(1, 1, h, w) level mask -> (H, W) over the input image. Bilinear interpolation is a convex
    combination, so the values stay in the mask's range."""
    up = F.interpolate(mask, size=padded, mode="bilinear", align_corners=False)[..., : resized[0], : resized[1]]
    return F.interpolate(up, size=original, mode="bilinear", align_corners=False)[0, 0]


@torch.inference_mode()
def explain_image(model: HARNet, image: Tensor, point: tuple[float, float] | None = None) -> Explanation:
    """Run ``model`` on one float CHW image in [0, 1] and collect its attentions.

    ``point`` (x, y) in input pixels selects where the deformable sampling points are read; by
    default the centre of the highest-scoring detection, or of the image if there is none.
    """
    model.eval()
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if point is not None and not (0 <= point[0] < w and 0 <= point[1] < h):
        raise ConfigError(f"--point {point[0]:g} {point[1]:g} lies outside the {w}x{h} image")
    maps = model.attention_maps([image])
    padded, resized = maps.padded_size, maps.image_sizes[0]
    result = Explanation((h, w), {k: v.cpu() for k, v in maps.detections[0].items()})

    head = model.head
    if not maps.spatial:
        result.skipped.append("spatial attention: not in this model (preset without spatial attention)")
    for name, level_masks in zip(LEVEL_NAMES, maps.spatial):
        mask = level_masks[:1].float().cpu()
        result.mask_shapes[name] = (int(mask.shape[-2]), int(mask.shape[-1]))
        result.masks[name] = _mask_to_image(mask, padded, resized, (h, w))

    if not maps.offsets:
        result.skipped.append("aligned attention: not in this model (preset without aligned attention)")
    else:
        if point is None and len(result.detections["scores"]):
            best = result.detections["boxes"][int(result.detections["scores"].argmax())]
            point = (float(best[0] + best[2]) / 2, float(best[1] + best[3]) / 2)
        if point is None:
            point = (w / 2, h / 2)
        result.location = point
        for stage, stage_offsets in maps.offsets.items():
            offsets = stage_offsets[0].float().cpu()
            grid = (int(offsets.shape[-2]), int(offsets.shape[-1]))
            # input pixel -> resized -> padded-batch feature cell
            cx = int(point[0] * resized[1] / w * grid[1] / padded[1])
            cy = int(point[1] * resized[0] / h * grid[0] / padded[0])
            cx, cy = min(max(cx, 0), grid[1] - 1), min(max(cy, 0), grid[0] - 1)
            learned, regular = sampling_positions(offsets, cy, cx)
            result.sampling_points[stage] = _cell_to_pixels(learned, grid, padded, resized, (h, w))
            result.grid_points[stage] = _cell_to_pixels(regular, grid, padded, resized, (h, w))

    if not maps.channel:
        result.skipped.append("channel SE weights: not in this model (preset without channel attention/SE)")
    else:
        for branch, weights in maps.channel.items():
            result.se_weights[branch] = weights[0].float().cpu()
        result.se_applies_to = ("prediction set 2 (the hybrid's second set; set 1 is spatially re-weighted)"
                                if head.se_on == "set2" else "the head towers")
    return result


# --- figures -----------------------------------------------------------------------------------


def _figure(image: Tensor, width_in: float = 6.0) -> Any:
    from matplotlib.figure import Figure

    h, w = image.shape[-2:]
    fig = Figure(figsize=(width_in, width_in * h / w + 0.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_axis_off()
    return fig, ax


def _draw_boxes(ax: Any, detections: dict[str, Tensor], class_names: Sequence[str] | None, top: int = 5) -> None:
    from matplotlib.patches import Rectangle

    for box, score, label in list(zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                      detections["labels"].tolist()))[:top]:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1))
        name = class_names[label] if class_names else str(label)
        ax.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=7, va="bottom")


def save_figures(result: Explanation, image: Tensor, out_dir: str | Path,
                 class_names: Sequence[str] | None = None) -> list[Path]:
    """PNG figures of ``result`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.savefig(out / name)
        files.append(out / name)

    for level, mask in result.masks.items():
        fig, ax = _figure(image)
        # Colours span this mask's own range (the colour bar gives the values): a mask's contrast,
        # not its absolute level, shows where the level looks.
        shown = ax.imshow(mask.numpy(), cmap="jet", alpha=0.5)
        fig.colorbar(shown, ax=ax, shrink=0.8, label="mask value")
        gh, gw = result.mask_shapes[level]
        ax.set_title(f"{level} spatial attention ({gh}x{gw} cells): min {float(mask.min()):.2f}, "
                     f"mean {float(mask.mean()):.2f}, max {float(mask.max()):.2f}", fontsize=8)
        save(fig, f"spatial_{level}.png")
    if result.masks:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3 * (len(result.masks) + 1), 3.4), dpi=100, layout="constrained")
        axes = fig.subplots(1, len(result.masks) + 1)
        axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        _draw_boxes(axes[0], result.detections, class_names)
        axes[0].set_title("image, top detections", fontsize=8)
        for ax, (level, mask) in zip(axes[1:], result.masks.items()):
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.imshow(mask.numpy(), cmap="jet", alpha=0.5)
            ax.set_title(f"{level} mask, blue {float(mask.min()):.2f} .. red {float(mask.max()):.2f}", fontsize=8)
        for ax in axes:
            ax.set_axis_off()
        save(fig, "spatial_levels.png")

    if result.sampling_points:
        from matplotlib import colormaps

        colors = colormaps["tab10"]
        for stage, points in result.sampling_points.items():
            fig, ax = _figure(image)
            grid = result.grid_points[stage]
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("0.85")  # taps can fall outside the image (zero padding there)
            ax.scatter(grid[:, 0], grid[:, 1], marker="s", s=40, facecolors="none", edgecolors="black",
                       linewidths=2.5)
            ax.scatter(grid[:, 0], grid[:, 1], marker="s", s=40, facecolors="none", edgecolors="white",
                       linewidths=1, label="regular 3x3 grid")
            for g in range(points.shape[0]):
                ax.scatter(points[g, :, 0], points[g, :, 1], s=18, color=colors(g % 10), label=f"offset group {g}")
            assert result.location is not None
            ax.scatter([result.location[0]], [result.location[1]], marker="*", s=160, color="yellow",
                       edgecolors="black", label="location")
            h, w = result.image_size
            ax.set_xlim(min(0, float(points[..., 0].min()) - 2), max(w, float(points[..., 0].max()) + 2))
            ax.set_ylim(max(h, float(points[..., 1].max()) + 2), min(0, float(points[..., 1].min()) - 2))
            ax.legend(fontsize=6, loc="lower right", framealpha=0.6)
            ax.set_title(f"aligned attention on {stage.upper()}: deformable sampling points at "
                         f"({result.location[0]:.0f}, {result.location[1]:.0f})", fontsize=8)
            save(fig, f"aligned_{stage}.png")

    if result.se_weights:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 2.2 * len(result.se_weights) + 0.6), dpi=100, layout="constrained")
        axes = fig.subplots(len(result.se_weights), 1, squeeze=False)[:, 0]
        for ax, (branch, weights) in zip(axes, result.se_weights.items()):
            ax.bar(range(len(weights)), weights.numpy(), width=0.9, color="tab:blue")
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
            ax.set_ylim(0, 1)
            ax.set_xlim(-1, len(weights))
            ax.set_ylabel("weight")
            ax.set_title(f"{branch} branch: cross-level SE channel weights (shared by P3-P7), "
                         f"mean {float(weights.mean()):.2f}", fontsize=8)
        axes[-1].set_xlabel(f"channel (applied to {result.se_applies_to})")
        save(fig, "se_weights.png")
    return files


def summary(result: Explanation, files: Sequence[Path], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-ready numbers behind the figures."""
    def stats(t: Tensor) -> dict[str, float]:
        return {"min": float(t.min()), "mean": float(t.mean()), "max": float(t.max())}

    dets = result.detections
    return {
        "image_size": {"height": result.image_size[0], "width": result.image_size[1]},
        "detections": [
            {"box": [round(v, 2) for v in box], "score": round(score, 4),
             "label": class_names[label] if class_names else label}
            for box, score, label in list(zip(dets["boxes"].tolist(), dets["scores"].tolist(),
                                              dets["labels"].tolist()))[:10]
        ],
        "spatial_masks": {level: {"cells": list(result.mask_shapes[level]), **stats(m)}
                          for level, m in result.masks.items()},
        "aligned": {
            "location": list(result.location) if result.location is not None else None,
            "sampling_points": {stage: p.tolist() for stage, p in result.sampling_points.items()},
            "mean_offset_pixels": {stage: float((p - result.grid_points[stage][None]).norm(dim=-1).mean())
                                   for stage, p in result.sampling_points.items()},
        },
        "se_weights": {branch: {"applies_to": result.se_applies_to, **stats(w), "values": w.tolist()}
                       for branch, w in result.se_weights.items()},
        "skipped": result.skipped,
        "files": [p.name for p in files],
    }


def explain_file(checkpoint_path: str | Path, image_path: str | Path, out_dir: str | Path,
                 point: tuple[float, float] | None = None, device: str = "auto") -> tuple[Explanation, list[Path]]:
    """``harnet explain``: checkpoint + image file -> figures and ``summary.json`` in ``out_dir``."""
    from harnet.engine.predictor import Detector

    detector = Detector.from_checkpoint(checkpoint_path, device=device)
    image = detector.to_tensor(image_path)
    result = explain_image(detector.model, image.to(detector.device), point)
    files = save_figures(result, image, out_dir, detector.class_names)
    out = Path(out_dir) / "summary.json"
    files.append(out)
    out.write_text(json.dumps(summary(result, files, detector.class_names), indent=1) + "\n")
    return result, files
