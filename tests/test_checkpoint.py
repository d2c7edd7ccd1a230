"""Checkpoints: atomic, weights-only, refusing pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from harnet import checkpoint


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"model": {"w": torch.ones(2)}, "config": {}}, path)
    checkpoint.save_atomic({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt: refused to load"):
        checkpoint.load(path)


@pytest.mark.parametrize("content", [b"", b"garbage", pickle.dumps([1, 2])])
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match="bad.pt"):
        checkpoint.load(path)


def test_missing_and_not_a_harnet_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "none.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no best.pt or last.pt"):
        checkpoint.load(tmp_path)
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a harnet checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_rng_state_round_trip() -> None:
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
