"""Faults: SIGKILL at a random moment then ``--resume`` reaches bit-identical weights; Ctrl-C saves and
exits 130; what a killed run leaves behind (temp files, half-written metrics rows, its lock) is cleaned on
resume; two runs racing for one folder leave one run's files.

The two signal tests run ``python -m harnet`` as a subprocess (signals need a real process); each
logs the random kill delay it used in its assertion messages so that a failure can be reproduced.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from badfiles import coco_args, make_coco_split

from harnet.engine import checkpoint
from harnet.engine.trainer import Trainer, TrainingInterrupted
from harnet.tools.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(args: list[str], sigint: signal.Handlers = signal.SIG_DFL) -> subprocess.Popen[str]:
    """``python -m harnet ARGS`` with SIGINT's disposition set to ``sigint`` in the child, whatever this
    process has (a suite started with ``nohup`` or ``cmd &`` from a script runs with SIGINT ignored)."""
    return subprocess.Popen([sys.executable, "-m", "harnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "last.pt")["model"]


def _metric_rows(run: Path) -> list[tuple[int, str, float]]:
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,name,value"
    rows = []
    for line in lines[1:]:
        step, name, value = line.split(",")  # every row complete: nothing torn
        rows.append((int(step), name, float(value)))
    return rows


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_coco_split(data, "train", 4)
    make_coco_split(data, "val", 1)
    extra = ("train.max_steps=8", "train.log_every=1")
    reference = _start(coco_args(data, tmp_path / "reference", *extra))
    run = tmp_path / "killed"
    victim = _start(coco_args(data, run, *extra))
    _wait_for(run / "last.pt", victim)  # at least one checkpoint (checkpoint_every=1)
    delay = random.uniform(0.0, 0.6)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    why = f"(killed {delay:.3f} s after the first checkpoint)"
    assert victim.returncode == -signal.SIGKILL, f"the run finished before the kill {why}"
    killed_at = checkpoint.load(run / "last.pt")["step"]  # loads: never torn, whenever the kill landed
    assert 1 <= killed_at <= 8, why
    why = f"(killed {delay:.3f} s after the first checkpoint, resumed from step {killed_at})"

    resumed = subprocess.run([sys.executable, "-m", "harnet", "train", "--resume", str(run), "--no-progress"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, f"{resumed.stderr} {why}"
    _, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err

    expected, got = _weights(tmp_path / "reference"), _weights(run)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{key} {why}")
    assert checkpoint.load(run / "last.pt")["step"] == 8
    assert not list(run.glob(".*.tmp")), f"temp files left {why}"
    train_rows = [(s, n) for s, n, _ in _metric_rows(run) if n.startswith("train/")]
    assert len(train_rows) == len(set(train_rows)), f"resumed steps logged twice {why}"
    assert sorted({s for s, _ in train_rows}) == list(range(1, 9)), why


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "inherited"), [(signal.SIGINT, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                                (signal.SIGINT, signal.SIG_IGN)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-inherited-ignored"])
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path, sig: signal.Signals,
                                                 inherited: signal.Handlers) -> None:
    """Ctrl-C, and SIGTERM (a scheduler's pre-emption) alike: checkpoint saved, clean exit 130; also in a
    run that inherited SIGINT ignored (started in the background by a script), where Python itself
    installs no Ctrl-C handler."""
    data = tmp_path / "data"
    make_coco_split(data, "train", 4)
    make_coco_split(data, "val", 1)
    run = tmp_path / "run"
    proc = _start(coco_args(data, run, "train.max_steps=100000"), sigint=inherited)
    _wait_for(run / "last.pt", proc)
    delay = random.uniform(0.0, 0.5)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = checkpoint.load(run / "last.pt")["step"]
    assert err.strip() == (f"harnet: interrupted at step {step}; checkpoint saved to {run / 'last.pt'} "
                           f"(continue with --resume {run})"), f"{err} ({sig.name} at +{delay:.3f} s)"


def test_resume_cleans_up_after_a_killed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A kill can leave a temp checkpoint and a torn or too-new metrics row: resume removes them."""
    data = tmp_path / "data"
    make_coco_split(data, "train", 2)
    make_coco_split(data, "val", 1)
    run = tmp_path / "run"
    assert main(coco_args(data, run, "train.max_steps=1", "train.log_every=1")) == 0
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    with (run / "metrics.csv").open("a") as f:
        f.write("5,train/loss,0.25\n3,train/lo")  # a step after the checkpoint, then a torn row
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=2", "--no-progress"]) == 0
    assert not list(run.glob(".*.tmp"))
    rows = _metric_rows(run)
    assert {s for s, _, _ in rows} == {1, 2} and ("train/loss" in {n for s, n, _ in rows if s == 2})
    capsys.readouterr()


@pytest.mark.parametrize("ignored", [False, True], ids=["handled", "inherited-ignored"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_during_a_checkpoint_write_still_saves_and_stops_cleanly(tiny, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      sig: signal.Signals, ignored: bool) -> None:
    """The worst moment for Ctrl-C (or SIGTERM): inside ``torch.save``. The write completes, then the
    interrupt lands; the same when the process started with the signal ignored (training stops on it
    anyway), and the disposition the process had comes back afterwards."""
    python_default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
    disposition = signal.SIG_IGN if ignored else python_default
    previous = signal.signal(sig, disposition)
    try:
        _interrupt_during_save(tiny, tmp_path, monkeypatch, sig)
        assert signal.getsignal(sig) == disposition
    finally:
        signal.signal(sig, previous)


def _interrupt_during_save(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                           sig: signal.Signals) -> None:
    real_save, sent = torch.save, []

    def save_then_ctrl_c(obj, f):  # type: ignore[no-untyped-def]
        if not sent:  # once: the first periodic checkpoint (step 1)
            sent.append(True)
            os.kill(os.getpid(), sig)  # arrives while the zip writer is open
        real_save(obj, f)

    trainer = Trainer(tiny(tmp_path, "train.checkpoint_every=1"), progress=False)
    monkeypatch.setattr(torch, "save", save_then_ctrl_c)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 1; checkpoint saved to .*last\.pt"):
        trainer.fit()
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_two_runs_racing_for_one_folder_one_wins_the_other_changes_nothing(tmp_path: Path) -> None:
    """Two ``harnet train`` started at once into one folder (seeds 1 and 2): one trains, the other exits
    non-zero with one line (the folder is in use, or already holds the first run) and writes nothing."""
    data = tmp_path / "data"
    make_coco_split(data, "train", 4)
    make_coco_split(data, "val", 1)
    run = tmp_path / "run"
    extra = ("train.max_steps=4", "train.log_every=1")
    procs = {seed: _start(coco_args(data, run, *extra, f"train.seed={seed}")) for seed in (1, 2)}
    done = {seed: (proc.wait(timeout=300), proc.communicate()[1]) for seed, proc in procs.items()}
    winners = [seed for seed, (code, _) in done.items() if code == 0]
    assert len(winners) == 1, done
    loser_code, loser_err = done[3 - winners[0]]
    assert loser_code in (1, 2) and len(loser_err.strip().splitlines()) == 1, loser_err
    assert loser_err.startswith(f"harnet: error: {run}: ") and ("in use by another harnet run" in loser_err
                                                                 or "already holds a run" in loser_err), loser_err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == winners[0]
    assert checkpoint.load(run / "last.pt")["config"]["train"]["seed"] == winners[0]
    train_rows = [(s, n) for s, n, _ in _metric_rows(run) if n == "train/loss"]
    assert train_rows == [(s, "train/loss") for s in range(1, 5)], "one run's rows, each step once"
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_a_live_run_is_locked_and_its_lock_taken_over_after_kill_9(tmp_path: Path) -> None:
    """While a run lives, a second train or --resume on its folder is refused (exit 1, one line naming its
    PID); after ``kill -9`` the lock it leaves is stale, and --resume takes it over saying so."""
    data = tmp_path / "data"
    make_coco_split(data, "train", 4)
    make_coco_split(data, "val", 1)
    run = tmp_path / "run"
    victim = _start(coco_args(data, run, "train.max_steps=100000"))
    _wait_for(run / "last.pt", victim)
    for args in (["train", "--resume", str(run), "--no-progress"], coco_args(data, run, "train.seed=7")):
        refused = subprocess.run([sys.executable, "-m", "harnet", *args], capture_output=True, text=True, env=ENV,
                                 timeout=300)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith(f"harnet: error: {run}: in use by another harnet run (process "
                                         f"{victim.pid} on "), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert json.loads((run / ".lock").read_text())["pid"] == victim.pid, "kill -9 leaves its lock file"
    step = checkpoint.load(run / "last.pt")["step"]
    resumed = subprocess.run([sys.executable, "-m", "harnet", "train", "--resume", str(run), "--set",
                              f"train.max_steps={step + 1}", "--no-progress"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{run}: taking over the stale lock of process {victim.pid} " in resumed.stderr
    assert checkpoint.load(run / "last.pt")["step"] == step + 1 and not (run / ".lock").exists()
