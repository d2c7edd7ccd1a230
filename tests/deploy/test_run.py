"""``harnet predict --shard K/N`` into one folder: shards equal one run, reruns skip what is complete, other
settings are refused, a run killed with SIGKILL leaves nothing that looks finished and its rerun completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harnet.deploy.records import RECORDS_DIR
from harnet.tools.cli import main
from tests_support import TINY, random_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("run") / "model.pt", list(TINY))


def _images(folder: Path, count: int, bad: bool = False) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48 + 4 * i, 64, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    if bad:
        (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _predict(model: Path, *args: str) -> int:
    return main(["predict", str(model), *args, "--score", "0.05", "--threads", "1", "--no-progress"])


def test_two_shards_equal_one_run(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(tmp_path / "images", 5, bad=True)
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    assert _predict(model_path, str(images), "--out", str(full), "--format", "coco") == 0
    assert _predict(model_path, str(images), "--out", str(sharded), "--format", "coco", "--shard", "2/2") == 0
    assert not (sharded / "detections.json").exists()  # half done: nothing looks finished
    assert "detections.json is written by the shard that completes the last of the 6 inputs" in capsys.readouterr().out
    assert _predict(model_path, str(images), "--out", str(sharded), "--format", "coco", "--shard", "1/2") == 0
    for name in ("detections.json", "skipped.txt", "preannotations_coco.json"):
        assert (sharded / name).read_bytes() == (full / name).read_bytes(), name
    assert sorted(p.name for p in sharded.glob("*_pred.png")) == [f"img{i:02d}_pred.png" for i in range(5)]
    assert len(list((sharded / RECORDS_DIR).glob("*.json"))) == 6  # the broken file's record says it failed


def test_rerun_skips_complete_inputs_and_refuses_other_settings(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "images", 3)
    out = tmp_path / "out"
    assert _predict(model_path, str(images), "--out", str(out), "--shard", "1/1") == 0
    first = (out / "detections.json").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_pred.png")}
    capsys.readouterr()
    assert _predict(model_path, str(images), "--out", str(out), "--shard", "1/1") == 0
    assert "3 inputs already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_pred.png")} == stamps  # nothing predicted again
    assert (out / "detections.json").read_bytes() == first
    assert _predict(model_path, str(images), "--out", str(out), "--shard", "1/1", "--tile", "64") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"harnet: error: {out}: holds results made with tile null (this call: 64)")
    assert "\n" not in err
    # A call without --shard starts the folder afresh, as before: other settings are no obstacle.
    assert main(["predict", str(model_path), str(images), "--out", str(out), "--score", "0.5", "--threads", "1"]) == 0
    records = [json.loads(p.read_text()) for p in (out / RECORDS_DIR).glob("*.json")]
    assert len(records) == 3 and {r["settings"]["score"] for r in records} == {0.5}


def test_shard_refuses_video(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert _predict(model_path, str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "o"), "--shard", "1/2") == 2
    assert "--shard spreads images and rasters, not video" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_rerun_completes_with_no_image_twice(model_path: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "images", 16)
    full, out = tmp_path / "full", tmp_path / "out"
    assert _predict(model_path, str(images), "--out", str(full)) == 0
    command = [sys.executable, "-m", "harnet.tools.cli", "predict", str(model_path), str(images), "--out", str(out),
               "--score", "0.05", "--threads", "1", "--shard", "1/1"]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list((out / RECORDS_DIR).glob("*.json"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / RECORDS_DIR).glob("*.json")))
    assert process.returncode == -signal.SIGKILL and 2 <= done < 16, process.stderr.read() if process.stderr else ""
    assert not (out / "detections.json").exists()  # nothing looks finished
    result = subprocess.run([*command, "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{done} inputs already complete" in result.stdout
    assert f"{16 - done} images," in result.stdout  # the rest predicted once, the done ones not again
    assert (out / "detections.json").read_bytes() == (full / "detections.json").read_bytes()
    names = [d["file_name"] for d in json.loads((out / "detections.json").read_text())]
    assert sorted(set(names)) == sorted(str(p) for p in images.iterdir())
