"""Run folders: locked while in use (a killed holder's lock is taken over), never silently reused,
``--overwrite`` deletes only the old run's own files, and eval/predict replace their own outputs whole."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harnet.engine import checkpoint, runfolder
from harnet.engine.predictor import Detector
from harnet.engine.trainer import Trainer, train
from harnet.tools.cli import main
from tests_support import tiny_args


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_lock_holds_host_and_pid_and_refuses_a_second_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = runfolder.acquire(run)
    holder = json.loads((run / ".lock").read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid() and holder["started"]
    with pytest.raises(runfolder.RunLockedError, match=rf"{run}: in use by another harnet run \(process {os.getpid()}"):
        runfolder.acquire(run)  # another open file: refused even within the same process
    lock.release()
    lock.release()  # idempotent
    assert not (run / ".lock").exists()
    with runfolder.acquire(run) as again:
        assert again.held
    assert not again.held and list(run.iterdir()) == []


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_line(tmp_path: Path) -> None:
    pid = _dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "then"}))
    said: list[str] = []
    with runfolder.acquire(tmp_path, log=said.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert said == [f"harnet: {tmp_path}: taking over the stale lock of process {pid} (started then), which no "
                    "longer runs (killed?)"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path: Path) -> None:
    """Data-loader workers are forked: the lock must die with the process that took it, not with them."""
    code = (f"import os, time\nfrom harnet.engine import runfolder\nlock = runfolder.acquire({str(tmp_path)!r})\n"
            "child = os.fork()\nif child == 0:\n    null = os.open(os.devnull, os.O_WRONLY)\n"
            "    os.dup2(null, 1)\n    os.dup2(null, 2)\n    time.sleep(60)\n    os._exit(0)\n"
            "print(child, flush=True)\nos.kill(os.getpid(), 9)\n")
    orphan = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    try:
        said: list[str] = []
        start = time.monotonic()
        with runfolder.acquire(tmp_path, log=said.append):
            assert time.monotonic() - start < runfolder.ORPHAN_WAIT_S / 3
        assert len(said) == 1 and "taking over the stale lock" in said[0]
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_lock_of_another_host_is_refused_with_the_way_out(tmp_path: Path) -> None:
    stale = json.dumps({"host": "node-17", "pid": 4242, "started": "then"})
    (tmp_path / ".lock").write_text(stale)
    with pytest.raises(runfolder.RunLockedError) as info:
        runfolder.acquire(tmp_path)
    assert str(info.value) == (f"{tmp_path}: locked by process 4242 on host node-17 since then, which this machine "
                               f"cannot check; if that run is over, delete {tmp_path / '.lock'} and retry")
    assert (tmp_path / ".lock").read_text() == stale, "a refused lock is left as it was"


def test_a_new_run_into_a_finished_run_is_refused_and_overwrite_starts_over(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(run, "train.max_steps=2", "train.eval_every=1"), progress=False)
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert {"eval_step1.json", "eval_step2.json", "last.pt", "best.pt"} <= set(before)
    with pytest.raises(runfolder.RunExistsError) as info:
        train(tiny(run, "train.max_steps=1"), progress=False)
    assert str(info.value) == (f"{run}: already holds a run (best.pt, config.yaml, eval_step1.json, eval_step2.json, "
                               "...); continue "
                               f"it with --resume {run}, choose a new output_dir (--set output_dir=...), or start "
                               "over with --overwrite (deletes that run's files)")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before, "a refused run changes nothing"

    train(tiny(run, "train.max_steps=1"), progress=False, overwrite=True)
    left = {p.name for p in run.iterdir()} - {"tensorboard"}  # (there when tensorboard is installed)
    assert left == {"best.pt", "config.yaml", "eval_step1.json", "last.pt", "metrics.csv", "notes.txt"}
    assert checkpoint.load(run / "last.pt")["step"] == 1
    assert {int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]} == {1}


def test_best_pt_holds_what_deployment_needs_and_last_pt_what_resume_needs(tiny, tmp_path: Path) -> None:
    train(tiny(tmp_path, "train.max_steps=1"), progress=False)
    best = checkpoint.load(tmp_path / "best.pt")
    # (saved_config_version: added on load, the version the run wrote, for reports)
    assert set(best) == {"model", "config", "class_names", "category_ids", "step", "best_ap", "path",
                         "saved_config_version"}
    last = checkpoint.load(tmp_path / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "rng", "skipped_nonfinite"} <= set(last)
    assert (tmp_path / "best.pt").stat().st_size < 0.6 * (tmp_path / "last.pt").stat().st_size  # no momentum
    assert Detector.from_checkpoint(tmp_path).class_names == best["class_names"]  # a run folder loads best.pt
    (tmp_path / "last.pt").unlink()
    with pytest.raises(Exception, match="nothing to resume"):  # resume never falls back to best.pt
        train(tiny(tmp_path, "train.max_steps=2"), resume=True, progress=False)
    assert not (tmp_path / ".lock").exists()


def test_trainer_failing_in_setup_unlocks_and_resume_with_overwrite_is_refused(tiny, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--resume continues the run there and --overwrite deletes it"):
        Trainer(tiny(tmp_path), resume=True, overwrite=True)
    with pytest.raises(Exception, match="nothing to resume"):
        Trainer(tiny(tmp_path), resume=True)
    assert not (tmp_path / ".lock").exists()
    trainer = Trainer(tiny(tmp_path, "train.max_steps=0"), progress=False)
    assert (tmp_path / ".lock").exists()
    trainer.fit()
    assert not (tmp_path / ".lock").exists()


def test_cli_refusal_is_one_line_with_exit_2(shapes_root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["train", *tiny_args(shapes_root, run), "--set", "train.max_steps=1", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"harnet: error: {run}: already holds a run (") and len(err.splitlines()) == 1
    assert f"--resume {run}" in err and "output_dir" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0
    assert "--overwrite: deleted the previous run's" in capsys.readouterr().err


def test_eval_and_predict_replace_their_previous_outputs(trained_run: Path, shapes_root: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "skipped.txt").write_text("val: skipped image: from an earlier evaluation\n")
    (out / "mine.txt").write_text("kept")
    assert main(["eval", str(trained_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "metrics.json", "mine.txt"]

    images = sorted((shapes_root / "val").glob("*.png"))
    pictures = tmp_path / "pictures"
    assert main(["predict", str(trained_run), *map(str, images[:2]), "--out", str(pictures), "--score", "0"]) == 0
    assert main(["predict", str(trained_run), str(images[2]), "--out", str(pictures), "--score", "0"]) == 0
    assert sorted(p.name for p in pictures.iterdir()) == sorted(["detections.json", f"{images[2].stem}_pred.png",
                                                                 "records"])
    assert [p.name for p in (pictures / "records").glob("*.json")] == [f"{images[2].stem}.json"]
    assert {d["file_name"] for d in json.loads((pictures / "detections.json").read_text())} <= {str(images[2])}
