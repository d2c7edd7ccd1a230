"""Training on messy data and through faults, via ``harnet train`` in-process (exit code + stderr).

Covers: odd-but-valid images train; ``--skip-bad`` skips, counts and lists; a file that breaks mid-run
stops with its name and a checkpoint (then ``--resume --skip-bad`` finishes); NaN/inf losses stop with
step and batch named, or are skipped and counted with ``--skip-nonfinite``; unwritable or full disks are
refused before anything trains.
"""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from badfiles import CASES_BY_NAME, coco_args, coco_dict, make_coco_split, write_json, write_rgb

from harnet.engine import checkpoint
from harnet.modeling.harnet import HARNet
from harnet.tools.cli import main


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    make_coco_split(tmp_path / "data", "train", 4)
    make_coco_split(tmp_path / "data", "val", 1)
    return tmp_path / "data"


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip()


@pytest.mark.slow
def test_odd_but_valid_images_and_boxes_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every converted image kind, a negative, a crowd box, a degenerate and a clipped box: one batch."""
    images = tmp_path / "data" / "train"
    entries, boxes = [], {}
    kinds = ("grayscale", "rgba", "palette_transparent", "gray16", "cmyk_jpeg", "exif_rotated", "tiny_1px")
    for k, name in enumerate(kinds, start=1):
        case = CASES_BY_NAME[name]
        width, height = case.write(images / f"{name}{case.suffix}")
        entries.append((k, f"{name}{case.suffix}", width, height))
        boxes[k] = [[0, 0, width, height]]
    entries.append((8, "negative.png", *write_rgb(images / "negative.png")))
    data = coco_dict(entries, boxes)
    data["annotations"] += [
        {"id": 100, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        {"id": 101, "image_id": 2, "category_id": 2, "bbox": [10, 10, 0, 5]},  # no width: dropped
        {"id": 102, "image_id": 3, "category_id": 2, "bbox": [30, 30, 50, 50]},  # clipped to 40x40
    ]
    write_json(tmp_path / "data" / "train.json", data)
    make_coco_split(tmp_path / "data", "val", 2)
    run = tmp_path / "run"
    assert main(coco_args(tmp_path / "data", run, "train.batch_size=8", "train.max_steps=1")) == 0
    err = _err(capsys)
    assert f"data issues (train: 1 dropped box), listed in {run / 'skipped.txt'}" in err
    listed = json.loads((run / "skipped.json").read_text())
    assert listed["counts"] == {"train": {"dropped box": 1}}
    assert "annotation id 101" in listed["items"][0]["problem"]
    assert checkpoint.load(run / "last.pt")["step"] == 1


def _broken_train_split(root: Path) -> dict[str, int]:
    """3 good images and one of each broken kind; returns what --skip-bad must count."""
    images, entries, boxes = root / "train", [], {}
    for k in range(1, 4):
        entries.append((k, f"good{k}.png", *write_rgb(images / f"good{k}.png", 64, 48, seed=k)))
        boxes[k] = [[16, 12, 32, 24]]
    broken = ["missing", "zero_bytes", "text_file", "truncated_png", "truncated_jpeg", "huge_10k", "strip_1x100"]
    for k, name in enumerate(broken, start=10):
        case = CASES_BY_NAME[name]
        entries.append((k, f"{name}{case.suffix}", *case.write(images / f"{name}{case.suffix}")))
    entries.append((20, "bad_category.png", *write_rgb(images / "bad_category.png")))
    data = coco_dict(entries, boxes)
    data["annotations"] += [
        {"id": 200, "image_id": 20, "category_id": 9, "bbox": [1, 1, 5, 5]},  # unknown category: skip image
        {"id": 201, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},  # unknown image: skip annotation
        {"id": 202, "image_id": 1, "category_id": 1, "bbox": [1, 1, float("nan"), 5]},  # NaN: skip good1
    ]
    write_json(root / "train.json", data)
    return {"skipped image": len(broken) + 2, "skipped annotation": 1}


@pytest.mark.slow
def test_skip_bad_trains_on_the_rest_and_lists_what_was_skipped(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    counts = _broken_train_split(tmp_path / "data")
    make_coco_split(tmp_path / "data", "val", 2)
    (tmp_path / "data" / "val" / "val_2.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # truncated right after the magic
    run = tmp_path / "run"
    assert main(coco_args(tmp_path / "data", run)) == 1  # strict: the first bad item stops it, nothing trained
    ann = tmp_path / "data" / "train.json"
    assert _err(capsys).startswith(f"harnet: error: {ann}: annotations[3] (image bad_category.png) refers to unknown")
    assert not (run / "last.pt").exists()

    assert main([*coco_args(tmp_path / "data", run), "--skip-bad"]) == 0
    listed = json.loads((run / "skipped.json").read_text())
    assert listed["counts"] == {"train": counts, "val": {"skipped image": 1}}
    text = (run / "skipped.txt").read_text()
    for name in ("missing.png", "zero_bytes.png", "truncated_png.png", "truncated_jpeg.jpg", "huge_10k.png",
                 "bad_category.png", "good1.png", "val_2.png"):
        assert name in text, name
    assert len(text.splitlines()) == sum(counts.values()) + 1
    assert "data issues (train: 1 skipped annotation, 9 skipped images; val: 1 skipped image)" in _err(capsys)
    assert checkpoint.load(run / "last.pt")["step"] == 2


@pytest.mark.slow
def test_file_breaking_mid_run_stops_with_its_name_and_a_checkpoint(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Header fine, pixels truncated: strict mode finds it when a (worker-loaded) batch reaches it."""
    root = tmp_path / "data"
    make_coco_split(root, "train", 3)
    make_coco_split(root, "val", 1)
    bad = root / "train" / "train_2.png"
    bad.write_bytes(bad.read_bytes()[:200])
    run = tmp_path / "run"
    args = coco_args(root, run, "train.batch_size=3", "data.num_workers=1")
    assert main(args) == 1
    err = _err(capsys)
    assert err.startswith(f"harnet: error: {bad}: cannot decode image data (")
    assert err.endswith(f"checkpoint saved at step 0 to {run / 'last.pt'} (fix or remove the file, or use "
                        "--skip-bad, then --resume)")
    assert len(err.splitlines()) == 1
    assert main(["train", "--resume", str(run), "--skip-bad", "--no-progress"]) == 0
    assert checkpoint.load(run / "last.pt")["step"] == 2
    assert "skipped image" in (run / "skipped.txt").read_text()


class _Poison:
    """Replaces ``HARNet.forward``: NaN losses on the listed training calls, the real model otherwise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, calls: set[int] | None, break_weights: bool = False):
        self.calls, self.count, self.break_weights = calls, 0, break_weights
        original = HARNet.forward

        def forward(model: HARNet, images, targets=None):  # type: ignore[no-untyped-def]
            if not model.training:
                return original(model, images, targets)
            self.count += 1
            if self.calls is None or self.count in self.calls:
                if self.break_weights:
                    next(model.parameters()).data.fill_(float("inf"))
                return {"classification": torch.tensor(float("nan"), requires_grad=True)}
            return original(model, images, targets)

        monkeypatch.setattr(HARNet, "forward", forward)


def test_nonfinite_loss_stops_naming_step_and_batch(tiny_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _Poison(monkeypatch, {1})
    run = tmp_path / "run"
    assert main(coco_args(tiny_coco, run)) == 1
    err = _err(capsys)
    assert err.startswith("harnet: error: non-finite loss nan at step 0 (batch image ids [")
    assert f"last good state saved to {run / 'last.pt'}" in err and "--skip-nonfinite" in err
    assert checkpoint.load(run / "last.pt")["step"] == 0


def test_nonfinite_weights_are_not_saved_over_a_good_checkpoint(tiny_coco: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _Poison(monkeypatch, {2}, break_weights=True)
    run = tmp_path / "run"
    assert main(coco_args(tiny_coco, run)) == 1
    assert "at step 1 (batch image ids [" in (err := _err(capsys))
    assert f"weights are no longer finite, so {run / 'last.pt'} was kept" in err
    ckpt = checkpoint.load(run / "last.pt")
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_skip_nonfinite_skips_counts_and_logs(tiny_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _Poison(monkeypatch, {2, 3})
    run = tmp_path / "run"
    assert main([*coco_args(tiny_coco, run, "train.max_steps=4", "train.log_every=1"), "--skip-nonfinite"]) == 0
    assert "skipped 2 batches with a non-finite loss" in capsys.readouterr().out
    ckpt = checkpoint.load(run / "last.pt")
    assert ckpt["step"] == 4 and ckpt["skipped_nonfinite"] == 2 and ckpt["config"]["train"]["skip_nonfinite"]
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    skipped = {int(step): float(value) for step, name, value in rows if name == "train/skipped_nonfinite"}
    assert skipped == {1: 0.0, 2: 1.0, 3: 2.0, 4: 2.0}
    assert ("4", "train/skipped_nonfinite", "2") in {tuple(r) for r in rows}  # the final summary row


def test_skip_nonfinite_gives_up_after_too_many_in_a_row(tiny_coco: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _Poison(monkeypatch, None)
    run = tmp_path / "run"
    assert main([*coco_args(tiny_coco, run, "train.max_steps=50"), "--skip-nonfinite"]) == 1
    err = _err(capsys)
    assert err.startswith("harnet: error: non-finite loss in 11 batches in a row, the last at step 10 (batch image ids")
    assert "training diverged" in err and len(err.splitlines()) == 1


def test_full_disk_is_refused_before_training(tiny_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 10 * 2**20, 10 * 2**20))
    run = tmp_path / "run"
    assert main(coco_args(tiny_coco, run)) == 1
    assert _err(capsys) == (f"harnet: error: {run}: only 10 MiB free on disk; need at least 200 MiB for "
                            "checkpoints")
    assert [p.name for p in run.iterdir()] == []


def test_unwritable_output_is_refused_before_training(tiny_coco: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # we run as root, where chmod does not bite: a file in the path does
    assert main(coco_args(tiny_coco, blocker / "run")) == 1
    assert _err(capsys) == f"harnet: error: {blocker / 'run'}: output folder is not writable (Not a directory)"


def test_eval_skip_bad(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``harnet eval``: a bad val image stops it naming the file; ``--skip-bad`` evaluates the rest."""
    root = tmp_path / "data"
    make_coco_split(root, "val", 2)
    bad = root / "val" / "val_1.png"
    bad.write_text("not an image")
    args = ["eval", str(tiny_ckpt), "--set", "data.format=coco", "--set", f"data.val_images={root / 'val'}",
            "--set", f"data.val_annotations={root / 'val.json'}", "--out", str(tmp_path / "out")]
    assert main(args) == 1
    assert _err(capsys).startswith(f"harnet: error: {bad}: not a readable image file")
    assert main([*args, "--skip-bad"]) == 0
    listed = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert listed["counts"] == {"val": {"skipped image": 1}} and listed["items"][0]["file"] == str(bad)
    assert "data issues (val: 1 skipped image)" in _err(capsys)
    assert (tmp_path / "out" / "metrics.json").is_file()
