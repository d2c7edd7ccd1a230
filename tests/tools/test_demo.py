"""``harnet demo`` end to end on a tiny budget (the real budget is measured, see README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from harnet.tools.demo import run_demo
from tests_support import TINY


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """... replacing a previous demo's run (the way --overwrite does: nothing of it stays) and pictures."""
    keep = [o for o in TINY if not o.startswith("data.")]
    overrides = (*keep, "data.shapes.num_images=20", "data.shapes.size=64", "train.max_steps=2")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval_step500.json").write_text("{}")
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "old_pred.png").write_bytes(b"")
    ap = run_demo(tmp_path, overrides=overrides)
    assert not (tmp_path / "run" / "eval_step500.json").exists()
    assert not (tmp_path / "predictions" / "old_pred.png").exists()
    assert 0.0 <= ap <= 1.0
    out = capsys.readouterr().out
    assert "AP@[.5:.95]" in out and "pictures" in out
    assert "AP75" in out and "per class" in out and "circle" in out  # the short table
    pictures = sorted((tmp_path / "predictions").glob("*_pred.png"))
    assert len(pictures) == 4
    with Image.open(pictures[0]) as im:
        assert min(im.size) >= 512  # 64 px val images drawn upscaled
    assert (tmp_path / "curves.png").is_file()
    assert (tmp_path / "run" / "last.pt").is_file()
