"""Tiled prediction: the window grid, cut boxes, the merge across windows, and whole rasters."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.ops import box_iou

from harnet.config.model import InferenceConfig
from harnet.data.raster import TensorRaster, Window
from harnet.engine import checkpoint
from harnet.engine.tiling import (
    axis_starts,
    drop_cut_boxes,
    merge_across_windows,
    predict_tiled,
    window_grid,
)
from tests_support import TINY, random_checkpoint


def test_axis_starts_cover_the_edge_without_passing_it() -> None:
    assert axis_starts(1600, 400, 400) == (0, 400, 800, 1200)
    assert axis_starts(1000, 400, 300) == (0, 300, 600)
    assert axis_starts(1050, 400, 300) == (0, 300, 600, 650)  # last window ends at the edge
    assert axis_starts(250, 400, 300) == (0,)  # smaller than a window: one


def test_window_grid_sizes_and_small_images() -> None:
    grid = window_grid(1000, 500, 400, 0.25)
    assert grid.xs == (0, 300, 600) and grid.ys == (0, 100)
    assert all(w.x + w.width <= 1000 and w.y + w.height <= 500 for w in grid.windows())
    small = window_grid(100, 50, 400, 0.25)
    assert small.windows() == [Window(0, 0, 100, 50)]


def test_bad_tile_and_overlap_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="--tile 16: smaller than the model's minimum window of 32 px"):
        window_grid(100, 100, 16)
    with pytest.raises(ValueError, match="--overlap 1"):
        window_grid(100, 100, 64, 1.0)


def test_cut_box_dropped_only_when_another_window_sees_it_whole() -> None:
    grid = window_grid(800, 400, 400, 0.25)  # xs 0, 300, 400
    left = Window(0, 0, 400, 400)
    boxes = torch.tensor([[350.0, 10, 400, 60],   # cut by the left window's right edge, inside window x=300
                          [100.0, 10, 150, 60],   # interior
                          [0.0, 10, 40, 60]])     # at the raster's edge: not a cut
    assert drop_cut_boxes(boxes, left, grid).tolist() == [False, True, True]
    no_overlap = window_grid(800, 400, 400, 0.0)
    assert drop_cut_boxes(boxes, left, no_overlap).tolist() == [True, True, True]


def test_merge_finds_a_box_straddling_a_seam_once() -> None:
    boxes = torch.tensor([[390.0, 10, 450, 60], [391.0, 11, 451, 61], [100.0, 100, 140, 140], [102.0, 102, 141, 141]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 0])
    windows = torch.tensor([0, 1, 0, 0])  # the last two are the same window's: left alone
    for cfg in (InferenceConfig(), InferenceConfig(nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.3)):
        out_boxes, out_scores, _, merged = merge_across_windows(boxes, scores, labels, windows, cfg, cell=400)
        assert merged == 1
        assert len(out_boxes) == 3
        assert out_scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    # Another class, or no overlap: nothing merges.
    _, _, _, merged = merge_across_windows(boxes, scores, torch.tensor([0, 1, 0, 0]), windows, InferenceConfig(), 400)
    assert merged == 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    path = random_checkpoint(tmp_path_factory.mktemp("tiling") / "model.pt", list(TINY))
    return checkpoint.build_model(checkpoint.load(path)).eval()


def test_overlap_zero_reproduces_per_window_prediction(tiny_model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 128, 192)
    tiled = predict_tiled(tiny_model, TensorRaster(image), tile=64, overlap=0.0)
    assert tiled.windows == 6
    expected = []
    with torch.inference_mode():
        for y in (0, 64):
            for x in (0, 64, 128):
                (out,) = tiny_model([image[:, y : y + 64, x : x + 64]])
                expected.append(out["boxes"] + torch.tensor([x, y, x, y]))
    boxes = torch.cat(expected)
    got = tiled.detections["boxes"]
    assert len(got) == len(boxes) > 0
    gap = (got[:, None, :] - boxes[None, :, :]).abs().amax(dim=2)
    assert float(gap.min(dim=1).values.max()) < 1e-2 and float(gap.min(dim=0).values.max()) < 1e-2


def test_image_smaller_than_a_window_keeps_the_scale(tiny_model: torch.nn.Module) -> None:
    image = torch.rand(3, 40, 50)
    result = predict_tiled(tiny_model, TensorRaster(image), tile=64, overlap=0.25)
    boxes = result.detections["boxes"]
    assert result.windows == 1
    assert bool((boxes[:, 2] <= 50).all() and (boxes[:, 3] <= 40).all())
    padded = torch.zeros(3, 64, 64)
    padded[:, :40, :50] = image
    with torch.inference_mode():
        (out,) = tiny_model([padded])
    assert len(out["boxes"]) >= len(boxes)


def test_tile_below_the_minimum_is_refused(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="minimum window"):
        predict_tiled(tiny_model, TensorRaster(torch.rand(3, 64, 64)), tile=8)




def test_voting_absorbs_twins_from_other_windows_soft_nms_alone_decays_them() -> None:
    """With box voting, a box of another window claimed by a kept box (IoU >= box_voting_iou) is averaged into it
    and removed; Soft-NMS without voting only decays it (exp(-IoU^2 / sigma))."""
    boxes = torch.tensor([[390.0, 10, 450, 60], [392.0, 10, 452, 60]])
    scores, labels, windows = torch.tensor([0.9, 0.6]), torch.tensor([0, 0]), torch.tensor([0, 1])
    iou = float(box_iou(boxes[:1], boxes[1:])[0, 0])
    voting = InferenceConfig(nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.05)
    out_boxes, out_scores, _, merged = merge_across_windows(boxes, scores, labels, windows, voting, cell=400)
    assert merged == 1 and out_scores.tolist() == pytest.approx([0.9])
    torch.testing.assert_close(out_boxes[0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5)
    soft = replace(voting, box_voting_iou=None)
    _, out_scores, _, merged = merge_across_windows(boxes, scores, labels, windows, soft, cell=400)
    assert merged == 0
    assert out_scores.tolist() == pytest.approx([0.9, 0.6 * math.exp(-iou * iou / soft.soft_nms_sigma)])
