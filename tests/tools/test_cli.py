"""The command line: train -> eval -> predict on a tiny run, and one-line errors with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harnet.tools.cli import main


def test_train_writes_a_complete_run_folder(trained_run: Path) -> None:
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv"):
        assert (trained_run / name).is_file(), name
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 6 and saved["model"]["dual_prediction"] is True


def test_eval_writes_metrics_and_coco_results(trained_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(trained_run), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["stats"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}
    dets = json.loads((tmp_path / "detections.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in dets)
    assert "AP" in capsys.readouterr().out


def test_predict_folder_with_a_bad_file(trained_run: Path, shapes_root: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((shapes_root / "val").glob("*.png"))[:2]:
        (images / src.name).write_bytes(src.read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["predict", str(trained_run / "last.pt"), str(images), "--out", str(out), "--score", "0"]) == 0
    assert len(list(out.glob("*_pred.png"))) == 2
    assert "broken.png" in (out / "skipped.txt").read_text()
    assert isinstance(json.loads((out / "detections.json").read_text()), list)


def test_resume_continues_a_run(trained_run: Path) -> None:
    assert main(["train", "--resume", str(trained_run), "--set", "train.max_steps=5", "--no-progress"]) == 0


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["train", "--config", "nope"], 2, "no built-in config 'nope'"),
        (["train", "--config", "demo", "--set", "model.spatal=1"], 2, "unknown config key 'model.spatal'"),
        (["train", "--config", "demo", "--set", "train.lr=fast"], 2, "train.lr: expected float"),
        (["eval", "/nonexistent/run"], 2, "/nonexistent/run: checkpoint not found"),
        (["predict", "/nonexistent.pt", "x.png"], 2, "/nonexistent.pt: checkpoint not found"),
    ],
)
def test_errors_are_one_line_with_exit_code(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_info_prints_params_and_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "hybrid", "--backbone", "resnet18", "--size", "128"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and "GFLOPs at 128x128" in out


def test_backbone_weights_flag_and_checkpoints_that_no_longer_need_the_file(
    shapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--backbone-weights sets model.backbone.weights; a missing file is a one-line error (exit 1); a
    finished run evaluates after the pretrained file is gone (the checkpoint holds every weight)."""
    import torch
    from torchvision.models import resnet18

    from tests_support import tiny_args

    weights = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), weights)
    run = tmp_path / "run"
    args = ["train", *tiny_args(shapes_root, run), "--set", "train.max_steps=1", "--no-progress"]
    assert main([*args, "--backbone-weights", str(tmp_path / "missing.pth")]) == 1
    assert "missing.pth': file not found" in capsys.readouterr().err
    assert main([*args, "--backbone-weights", str(weights)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["backbone"]["weights"] == str(weights)
    weights.unlink()
    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
