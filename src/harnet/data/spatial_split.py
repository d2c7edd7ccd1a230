"""A spatial train/val split of tiles: whole blocks of neighbouring tiles go to val, and no val tile shares a
pixel with a train tile.

Why blocks: neighbouring tiles of one raster see the same trees, shadows and light; a crown cut by a tile edge
is in both. Splitting tile by tile would validate on what the model trained on and overstate AP. A square block
of ``block`` x ``block`` tiles keeps most of a val tile's neighbours in val too, so leakage is limited to the
block's rim; with overlapping tiles (``--overlap``, or the grid's last column and row, moved back to end at the
raster's edge) the train tiles that share pixels with a val tile are dropped, and counted.

The last column (row) of a grid usually overlaps the one before it even without ``--overlap``; when it would
start a block of its own it joins the block before, so that overlap costs no tile.

The val blocks are one compact region grown from a ``seed``-drawn block on a raster's edge, nearest blocks
first, each taken while it brings the count of labelled val tiles closer to ``val_fraction`` of all labelled
tiles (never all of them). A block holding no labelled tile (only label-free tiles, offered as negatives) goes
to val with probability ``val_fraction``, so negatives split in the same proportion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harnet.deploy.tiling import Grid

TRAIN, VAL, DROPPED = 0, 1, -1
# Block sides tried by the automatic choice, largest first, and the labelled blocks it wants at least: enough
# that the val fraction can be met to within a block's share.
AUTO_BLOCKS = (4, 3, 2, 1)
MIN_LABELLED_BLOCKS = 10


@dataclass(frozen=True)
class GridTiles:
    """The tiles of one raster's grid, as indices into ``grid.xs`` (``cols``) and ``grid.ys`` (``rows``)."""

    grid: Grid
    cols: np.ndarray  # (n,) int
    rows: np.ndarray  # (n,) int
    labelled: np.ndarray  # (n,) bool: holds at least one box


def axis_blocks(starts: Sequence[int], length: int, block: int) -> np.ndarray:
    """Block index of each start along one axis: ``k // block``, the last start joining the block before when
    it would be alone in its own and overlaps its predecessor (the grid's edge window, moved back)."""
    index = np.arange(len(starts)) // block
    if len(starts) > 1 and index[-1] != index[-2] and starts[-1] < starts[-2] + length:
        index[-1] = index[-2]
    return index


def block_ids(tiles: Sequence[GridTiles], block: int) -> list[np.ndarray]:
    """A global block id for each tile of each raster (blocks never span two rasters)."""
    out, offset = [], 0
    for t in tiles:
        bx = axis_blocks(t.grid.xs, t.grid.win_w, block)
        by = axis_blocks(t.grid.ys, t.grid.win_h, block)
        nbx = int(bx.max()) + 1 if len(bx) else 1
        ids = offset + by[t.rows] * nbx + bx[t.cols]
        out.append(ids.astype(np.int64))
        offset += nbx * (int(by.max()) + 1 if len(by) else 1)
    return out


def auto_block(tiles: Sequence[GridTiles]) -> int:
    """The largest block side of :data:`AUTO_BLOCKS` with at least :data:`MIN_LABELLED_BLOCKS` blocks holding
    labelled tiles (1, a tile a block, when none has)."""
    for block in AUTO_BLOCKS:
        ids = block_ids(tiles, block)
        labelled = np.concatenate([i[t.labelled] for i, t in zip(ids, tiles, strict=True)]) if ids else np.zeros(0)
        if len(np.unique(labelled)) >= MIN_LABELLED_BLOCKS:
            return block
    return 1


@dataclass(frozen=True)
class SplitResult:
    """Per raster, each tile's split (:data:`TRAIN`, :data:`VAL`); the blocks and the choice."""

    splits: list[np.ndarray]
    block: int
    blocks: int  # blocks holding a tile
    val_blocks: int
    target: float  # labelled val tiles aimed at


def choose_val_blocks(tiles: Sequence[GridTiles], val_fraction: float, seed: int, block: int | None = None,
                      ) -> SplitResult:
    """Train or val for every tile, by blocks (the module docstring).

    The val blocks form one compact region: it starts at a ``seed``-drawn block on the edge of a raster and
    grows to the blocks nearest it, taking each while that brings the labelled val tiles closer to the target.
    Why compact and at an edge: every train tile sharing a pixel with a val tile is dropped, so scattered val
    blocks (with ``--overlap``, each one's whole ring of neighbours) can leave no training tile at all; a
    region at the edge has the shortest border, so the fewest dropped tiles and the least leakage."""
    if block is None:
        block = auto_block(tiles)
    if block < 1:
        raise ValueError(f"--block {block}: a block is at least one tile")
    ids = block_ids(tiles, block)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    labelled = np.concatenate([t.labelled for t in tiles]) if tiles else np.zeros(0, dtype=bool)
    unique = np.unique(all_ids)
    weights = {int(b): int(labelled[all_ids == b].sum()) for b in unique}
    total = sum(weights.values())
    target = val_fraction * total
    rng = np.random.default_rng(seed)
    order = _region_order(tiles, ids, rng)
    coins = dict(zip(order, rng.random(len(order)).tolist(), strict=True))
    val: set[int] = set()
    taken = 0
    for b in order:
        w = weights[b]
        if w == 0:
            continue
        if taken + w < total and abs(taken + w - target) < abs(taken - target):
            val.add(b)
            taken += w
        elif taken > 0:
            break
    if val_fraction > 0 and taken == 0:  # no block improved on none: the nearest of those that fit
        fitting = [b for b in order if 0 < weights[b] < total]
        if fitting:
            val.add(min(fitting, key=lambda b: abs(weights[b] - target)))
    # Blocks holding no labelled tile (only negatives): val in the same proportion, drawn.
    val |= {b for b in order if weights[b] == 0 and coins[b] < val_fraction}
    splits = [np.where(np.isin(i, list(val)), VAL, TRAIN).astype(np.int64) for i in ids]
    return SplitResult(splits, block, len(unique), len(val), target)


def _region_order(tiles: Sequence[GridTiles], ids: Sequence[np.ndarray], rng: np.random.Generator) -> list[int]:
    """Every block id, nearest first to a drawn block on the edge of a drawn raster (block centres in tile
    units); the other rasters follow in a drawn order, each from its own first block."""
    rasters = [r for r in rng.permutation(len(tiles)).tolist() if len(ids[r])]
    order: list[int] = []
    for k, r in enumerate(rasters):
        t, bid = tiles[r], ids[r]
        blocks = np.unique(bid)
        centre = np.array([[t.cols[bid == b].mean(), t.rows[bid == b].mean()] for b in blocks])
        if k == 0:
            edge = ((t.cols[:, None] == t.cols.min()) | (t.cols[:, None] == t.cols.max())
                    | (t.rows[:, None] == t.rows.min()) | (t.rows[:, None] == t.rows.max()))[:, 0]
            candidates = np.unique(bid[edge])
            start = centre[np.searchsorted(blocks, candidates[rng.integers(len(candidates))])]
        else:
            start = centre.min(axis=0)
        distance = ((centre - start) ** 2).sum(axis=1)
        order += blocks[np.lexsort((blocks, distance))].tolist()
    return order


def choose_val_rasters(tiles: Sequence[GridTiles], val_fraction: float, seed: int) -> SplitResult:
    """Whole rasters to val (``--split rasters``): the proper, non-empty subset of rasters whose labelled tiles
    come closest to ``val_fraction`` of all (exhaustive for up to 16 rasters, greedy by size beyond), ties
    broken by a ``seed``-shuffled order. Why: rasters of different places or dates (the deepforest wheel's
    scenes) are the strongest separation there is, and no tile of a val raster can share a pixel with a
    train tile."""
    weights = [int(t.labelled.sum()) for t in tiles]
    val: set[int] = set()
    target = val_fraction * sum(weights)
    if val_fraction > 0 and len(tiles) > 1:
        order = np.random.default_rng(seed).permutation(len(tiles)).tolist()
        if len(order) > 16:
            for r in sorted(order, key=lambda k: -weights[k]):
                if sum(weights[k] for k in val) + weights[r] <= target or not val:
                    val.add(r)
            val -= {order[-1]} if len(val) == len(order) else set()
        else:
            subsets = ([order[i] for i in range(len(order)) if mask >> i & 1] for mask in range(1, 2 ** len(order) - 1))
            val = set(min(subsets, key=lambda subset: abs(sum(weights[k] for k in subset) - target)))
    splits = [np.full(len(t.labelled), VAL if r in val else TRAIN, dtype=np.int64) for r, t in enumerate(tiles)]
    return SplitResult(splits, 0, len(tiles), len(val), target)


def overlapping(grid: Grid, marked: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) bool: the grid's windows sharing a pixel with a window marked in ``marked`` (same
    shape), marked windows included."""
    xs, ys = np.asarray(grid.xs), np.asarray(grid.ys)
    # The windows overlapping column i are a contiguous run of columns (starts are sorted, widths equal).
    x_lo = np.searchsorted(xs, xs - grid.win_w, side="right")
    x_hi = np.searchsorted(xs, xs + grid.win_w, side="left")
    y_lo = np.searchsorted(ys, ys - grid.win_h, side="right")
    y_hi = np.searchsorted(ys, ys + grid.win_h, side="left")
    table = np.zeros((len(ys) + 1, len(xs) + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(marked.astype(np.int64), axis=0), axis=1)
    r0, r1 = y_lo[:, None], y_hi[:, None]
    c0, c1 = x_lo[None, :], x_hi[None, :]
    sums = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return sums > 0


def drop_straddling(tiles: GridTiles, split: np.ndarray, written: np.ndarray) -> np.ndarray:
    """``split`` with :data:`DROPPED` for the written train tiles that share a pixel with a written val tile."""
    grid = tiles.grid
    marked = np.zeros((len(grid.ys), len(grid.xs)), dtype=bool)
    is_val = written & (split == VAL)
    marked[tiles.rows[is_val], tiles.cols[is_val]] = True
    near = overlapping(grid, marked)[tiles.rows, tiles.cols]
    out = split.copy()
    out[written & (split == TRAIN) & near] = DROPPED
    return out
