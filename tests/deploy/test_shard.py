"""``--shard K/N``: parsing, and a split that gives each input to exactly one shard whatever the listing order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from harnet.deploy.shard import Shard, parse_shard, shard_positions
from harnet.utils.errors import UsageError


def test_parse_shard() -> None:
    assert parse_shard(None) is None
    assert parse_shard("2/5") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)
    for bad in ("0/2", "3/2", "1/0", "2", "a/b", "1/2/3", "-1/2"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_every_input_in_exactly_one_shard_whatever_the_order(tmp_path: Path) -> None:
    paths = [tmp_path / f"dir{i % 3}" / f"img{i:03d}.png" for i in range(23)]
    count = 4
    shares = [[paths[i] for i in shard_positions(paths, Shard(k, count))] for k in range(1, count + 1)]
    assert sorted(p for share in shares for p in share) == sorted(paths)  # each once, none left out
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # dealt out evenly
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    for k, share in enumerate(shares, start=1):
        again = [shuffled[i] for i in shard_positions(shuffled, Shard(k, count))]
        assert set(again) == set(share)  # the shell's order does not move an input to another shard
        assert again == [p for p in shuffled if p in set(share)]  # each shard keeps the order given


def test_same_split_under_another_mount_point_and_relative_paths(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"b/{n}.tif" for n in "qwertyuiop"]
    here = [tmp_path / "mnt1" / n for n in names]
    there = [tmp_path / "other" / "mount" / n for n in names]
    monkeypatch.chdir(tmp_path / ".")
    relative = [Path("mnt1") / n for n in names]
    for k in (1, 2, 3):
        shard = Shard(k, 3)
        assert shard_positions(here, shard) == shard_positions(there, shard) == shard_positions(relative, shard)
    assert shard_positions(here, None) == shard_positions(here, Shard(1, 1)) == list(range(len(here)))
