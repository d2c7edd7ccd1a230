"""The spatial val split: blocks of tiles, the fraction, and no val tile sharing a pixel with a train tile."""

from __future__ import annotations

import numpy as np
import pytest

from harnet.data.spatial_split import (
    DROPPED,
    TRAIN,
    VAL,
    GridTiles,
    auto_block,
    axis_blocks,
    choose_val_blocks,
    choose_val_rasters,
    drop_straddling,
    overlapping,
)
from harnet.deploy.tiling import Grid, window_grid


def _tiles(grid: Grid, labelled: np.ndarray | None = None) -> GridTiles:
    n = len(grid)
    return GridTiles(grid, np.arange(n) % len(grid.xs), np.arange(n) // len(grid.xs),
                     np.ones(n, dtype=bool) if labelled is None else labelled)


def _sharing(grid: Grid, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(len(first), len(second)) bool: window first[i] shares a pixel with window second[j] (brute force)."""
    rects = np.array([(w.x, w.y, w.x + w.width, w.y + w.height) for w in grid.windows()])
    a, b = rects[first][:, None], rects[second][None]
    return (a[..., 0] < b[..., 2]) & (b[..., 0] < a[..., 2]) & (a[..., 1] < b[..., 3]) & (b[..., 1] < a[..., 3])


def test_the_grids_moved_back_edge_window_joins_the_block_before() -> None:
    # 1000 px in 400 px windows: starts 0, 400, 600; the last overlaps the one before.
    assert axis_blocks((0, 400, 600), 400, 1).tolist() == [0, 1, 1]
    assert axis_blocks((0, 400, 600), 400, 2).tolist() == [0, 0, 0]
    assert axis_blocks((0, 400, 800), 400, 1).tolist() == [0, 1, 2]  # no overlap: blocks as they come
    assert axis_blocks((0,), 400, 3).tolist() == [0]


@pytest.mark.parametrize(("width", "height", "tile", "overlap"), [(1000, 700, 100, 0.0), (950, 610, 100, 0.25),
                                                                   (300, 300, 64, 0.5)])
def test_overlapping_matches_brute_force(width: int, height: int, tile: int, overlap: float) -> None:
    grid = window_grid(width, height, tile, overlap)
    rng = np.random.default_rng(0)
    marked = rng.random((len(grid.ys), len(grid.xs))) < 0.15
    near = overlapping(grid, marked)
    expected = _sharing(grid, np.arange(len(grid)), np.flatnonzero(marked.ravel())).any(axis=1)
    assert np.array_equal(near.ravel(), expected)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_written_val_tile_shares_a_pixel_with_a_train_tile(overlap: float, seed: int) -> None:
    grid = window_grid(1270, 930, 100, overlap)
    rng = np.random.default_rng(seed)
    tiles = _tiles(grid, rng.random(len(grid)) < 0.7)
    result = choose_val_blocks([tiles], 0.2, seed, block=2)
    written = tiles.labelled
    split = drop_straddling(tiles, result.splits[0], written)
    val = np.flatnonzero(written & (split == VAL))
    train = np.flatnonzero(written & (split == TRAIN))
    assert len(val) and len(train)
    assert not _sharing(grid, val, train).any()
    if overlap == 0.0:  # only the moved-back edge windows overlap, and they share their neighbour's block
        assert not (split == DROPPED).any()
    else:
        assert (split == DROPPED).any()


def test_val_fraction_seeded_never_all_and_at_least_one_block() -> None:
    grid = window_grid(2000, 2000, 100, 0.0)
    tiles = [_tiles(grid)]
    first = choose_val_blocks(tiles, 0.2, seed=0, block=2)
    again = choose_val_blocks(tiles, 0.2, seed=0, block=2)
    other = choose_val_blocks(tiles, 0.2, seed=1, block=2)
    assert np.array_equal(first.splits[0], again.splits[0]) and not np.array_equal(first.splits[0], other.splits[0])
    # 400 tiles in 100 blocks of 4: 80 val tiles is 20 blocks exactly.
    assert (first.splits[0] == VAL).sum() == 80 and first.val_blocks == 20 and first.blocks == 100
    # Whole blocks: a 2 x 2 block's tiles share their split.
    split = first.splits[0].reshape(20, 20)
    assert (split[0::2, 0::2] == split[1::2, 1::2]).all() and (split[0::2, 0::2] == split[0::2, 1::2]).all()
    # Two unequal labelled blocks: the fraction cannot be met closer than by one of them, and never by both.
    few = _tiles(window_grid(400, 200, 100, 0.0), np.array([True] * 6 + [False, True]))
    result = choose_val_blocks([few], 0.1, seed=0, block=2)
    assert 0 < (result.splits[0][few.labelled] == VAL).sum() < few.labelled.sum()


def test_automatic_block_wants_ten_labelled_blocks() -> None:
    big = _tiles(window_grid(4000, 4000, 100, 0.0))  # 40 x 40 tiles: 100 blocks of 4 x 4
    assert auto_block([big]) == 4
    small = _tiles(window_grid(500, 500, 100, 0.0))  # 5 x 5 tiles: only 1 x 1 blocks give 10
    assert auto_block([small]) == 1
    assert choose_val_blocks([small], 0.2, 0).block == 1


def test_whole_rasters_closest_to_the_fraction_never_all() -> None:
    """--split rasters: the subset of rasters whose labelled tiles come closest to the fraction, each raster
    wholly in one split; never every raster, none with one raster or a fraction of 0."""
    grids = [window_grid(w, 100, 50, 0.0, minimum=16) for w in (600, 100, 200, 150)]  # 12, 2, 4, 3 tiles
    tiles = [_tiles(g) for g in grids]
    split = choose_val_rasters(tiles, 0.2, seed=0)  # 21 tiles: 4.2 wanted, the 4-tile raster gives 4
    assert [set(s.tolist()) for s in split.splits] == [{TRAIN}, {TRAIN}, {VAL}, {TRAIN}]
    assert (split.blocks, split.val_blocks) == (4, 1)
    assert all((s == TRAIN).all() for s in choose_val_rasters(tiles, 0.0, seed=0).splits)
    assert (choose_val_rasters(tiles[:1], 0.5, seed=0).splits[0] == TRAIN).all()
    assert any((s == TRAIN).any() for s in choose_val_rasters(tiles, 0.99, seed=0).splits)


@pytest.mark.parametrize("seed", range(6))
def test_val_region_is_compact_so_overlap_leaves_training_tiles(seed: int) -> None:
    """With --overlap every train tile touching a val tile is dropped: on a small raster (4 x 4 windows, 1 x 1
    blocks) scattered val blocks could drop them all. The val region grows from an edge block to its nearest
    neighbours, so a good part of the tiles stays in training (scattered, none did)."""
    grid = window_grid(1249, 1035, 400, 0.25)
    tiles = _tiles(grid)
    split = choose_val_blocks([tiles], 0.2, seed, block=1).splits[0]
    final = drop_straddling(tiles, split, np.ones(len(grid), dtype=bool))
    val, train = np.nonzero(final == VAL)[0], np.nonzero(final == TRAIN)[0]
    assert len(val) >= 1 and len(train) >= len(grid) // 4
    assert not _sharing(grid, val, train).any()
