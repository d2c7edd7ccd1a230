"""Shared fixtures: a tiny shapes dataset and a tiny experiment config that trains in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from harnet.config.experiment import ExperimentConfig, load_experiment
from harnet.data.shapes import generate_shapes
from harnet.tools.cli import main
from tests_support import tiny_args, tiny_overrides


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own empty folder: a relative path (a config's default ``output_dir`` such as
    ``runs/demo/run``, ``data/shapes``) never reads or writes the checkout, where a user's own
    ``harnet demo`` run would otherwise make a test see "folder already holds a run"."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_images=20, size=64, seed=0, difficulty="easy")
    return root


def tiny_experiment(shapes_root: Path, out: Path, *extra: str, preset: str = "hybrid") -> ExperimentConfig:
    """ResNet-18, 32-channel FPN and head, 64 px images: a few hundred ms per step."""
    return load_experiment(None, [*tiny_overrides(shapes_root, out), f"model.preset={preset}", *extra])


@pytest.fixture
def tiny(shapes_root: Path):  # type: ignore[no-untyped-def]
    """``tiny(out_dir, "key=value", ...)`` -> a tiny ExperimentConfig on the shared shapes data."""

    def make(out: Path, *extra: str, preset: str = "hybrid") -> ExperimentConfig:
        return tiny_experiment(shapes_root, out, *extra, preset=preset)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> Path:
    """A run folder from ``harnet train`` on the tiny config (shared by CLI/detector tests)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *tiny_args(shapes_root, run), "--no-progress"]) == 0
    return run
