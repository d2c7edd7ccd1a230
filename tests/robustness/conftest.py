"""Fixtures of the robustness suite: a tiny untrained checkpoint and small COCO datasets to break."""

from __future__ import annotations

from pathlib import Path

import pytest

from harnet.config.experiment import load_experiment
from harnet.engine import checkpoint
from harnet.modeling.harnet import HARNet
from tests_support import TINY


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained TINY model saved as a harnet checkpoint (classes 'thing', 'other'): no training needed."""
    cfg = load_experiment(None, TINY)
    cfg.model.num_classes = 2
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoint.save_atomic({"model": HARNet(cfg.model).state_dict(), "config": cfg.to_dict(), "step": 0,
                            "class_names": ["thing", "other"], "category_ids": [1, 2]}, path)
    return path
