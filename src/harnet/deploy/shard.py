"""``harnet predict ... --shard K/N``: which of a command line's inputs one of N processes predicts.

Every shard of a job (a SLURM array, N machines) runs the same command line, so each sees the same expanded
inputs; the split must then give every input to exactly one shard, whatever order the shell or the file
system listed them in. The inputs are ranked by their resolved path (sorted, so a glob's or a folder's
listing order does not matter) and dealt out round-robin: shard K takes ranks K-1, K-1+N, ... Dealing by
sorted rank rather than by a hash of the path keeps the shards within one input of each other in size
(a hash leaves a small collection lopsided), and it is the same on machines that mount the collection
under different prefixes, since one prefix does not change the order of the paths below it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harnet.utils.errors import UsageError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """``"K/N"`` -> Shard(K, N) with 1 <= K <= N; None -> None; anything else a one-line :class:`UsageError`."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UsageError(f"--shard {text}: expected K/N, e.g. 1/4 (shard K of N, counted from 1)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard {text}: K must be between 1 and N (N >= 1)")
    return Shard(index, count)


def shard_positions(paths: Sequence[Path | str], shard: Shard | None) -> list[int]:
    """The positions in ``paths`` that ``shard`` predicts (all of them for None), in the order given."""
    if shard is None or shard.count == 1:
        return list(range(len(paths)))
    ranked = sorted(range(len(paths)), key=lambda i: (str(Path(paths[i]).resolve()), i))
    mine = {position for rank, position in enumerate(ranked) if rank % shard.count == shard.index - 1}
    return sorted(mine)
