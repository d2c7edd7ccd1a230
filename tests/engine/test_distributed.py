"""Distributed data parallel on CPU (gloo): 2 processes x 1 image train exactly like 1 process x 2 images,
a 2-process checkpoint resumes in 1 process, and sharded evaluation equals a single-process one."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from harnet.config.experiment import ExperimentConfig, load_experiment
from harnet.engine import checkpoint, distributed
from harnet.engine.trainer import InfiniteBatchSampler, Trainer, train
from tests_support import tiny_overrides

# Frozen BN: per-image normalisation, so a rank's slice of the batch sees the same statistics as the
# whole batch would (plain BN would need SyncBatchNorm, which has no CPU kernel).
DDP = ["model.backbone={name: resnet18, norm: frozen_bn, trainable_layers: 5}", "train.log_every=1",
       "train.batch_size=2", "train.lr_steps=[4]"]


def _losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/loss"}


def test_rank_slices_cover_the_global_batch_and_shards_regather(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a process group nothing is sharded; the slices of 2 ranks concatenate to the global batch."""
    sampler = InfiniteBatchSampler(7, 4, seed=1)
    assert distributed.shard_batches(sampler, 4) is sampler and distributed.gather_shards([3, 1]) == [3, 1]
    slices = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        it = iter(distributed.RankSlice(sampler, 4))
        slices.append([next(it) for _ in range(3)])
    full = iter(sampler)
    assert [a + b for a, b in zip(*slices)] == [next(full) for _ in range(3)]
    with pytest.raises(ValueError, match="divisible by the 2 processes"):
        distributed.RankSlice(sampler, 3)


def test_metrics_mean_without_a_process_group() -> None:
    assert not dist.is_initialized()
    assert distributed.mean_over_ranks({"a": torch.tensor(1.5), "b": torch.tensor([2.0])}) == {"a": 1.5, "b": 2.0}


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_double_batch(shapes_root: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = load_experiment(None, [*tiny_overrides(shapes_root, one), *DDP, "train.max_steps=4"])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    reference = train(cfg, progress=False)
    # The same run on 2 processes x 1 image for 3 steps ...
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "harnet", "train", "--config", str(config), "--set", f"output_dir={two}", "--set", "train.max_steps=3",
         "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    print(f"torchrun: {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1, "only rank 0 reports"
    assert not (two / ".lock").exists(), "rank 0 released the run folder's lock"
    ddp_losses = _losses(two)
    # ... then resumed to step 4 in 1 process.
    step3 = json.loads((two / "eval_step3.json").read_text())["stats"]
    trainer = Trainer(load_experiment(config, [f"output_dir={two}"]), resume=True, progress=False)
    assert trainer.step == 3
    single = trainer.evaluate()
    assert single is not None
    for key, value in step3.items():  # sharded-and-gathered evaluation == single-process evaluation
        assert single.stats[key] == pytest.approx(value, abs=1e-6), key
    trainer.fit()

    expected = _losses(one)
    assert sorted(ddp_losses) == [1, 2, 3]
    for step, value in ddp_losses.items():
        assert value == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert _losses(two)[4] == pytest.approx(expected[4], rel=1e-5, abs=1e-6)
    print("loss trajectory max |diff|:", max(abs(_losses(two)[s] - expected[s]) for s in expected))
    a = checkpoint.load(one / "last.pt")["model"]
    b = checkpoint.load(two / "last.pt")["model"]
    start = _initial_weights(cfg, tmp_path / "init")
    # The two runs sum the same gradients in a different order (2 ranks' all-reduce vs one batch), so their
    # weights differ by float rounding carried through 4 steps. That is measured against what it can come
    # from: how far training moved each tensor (a relative error of the updates; rounding gives ~1e-5,
    # a real error such as a rank's gradient dropped or not averaged gives ~1), plus the rounding of the
    # weights themselves, one float32 epsilon of their size per step. An absolute tolerance on the
    # weights fails wherever the CPU's vector width changes the rounding (e.g. AVX-512).
    eps, worst = torch.finfo(torch.float32).eps, 0.0
    for key in a:
        assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape, key
        if not a[key].is_floating_point():
            assert torch.equal(b[key], a[key]), key
            continue
        moved = float(torch.linalg.vector_norm(a[key] - start[key]))
        diff = float(torch.linalg.vector_norm(b[key] - a[key]))
        allowed = 1e-3 * moved + 4 * eps * float(torch.linalg.vector_norm(a[key]))
        assert diff <= allowed, f"{key}: |two - one| {diff:.3g} > {allowed:.3g} (training moved it {moved:.3g})"
        worst = max(worst, diff / allowed if allowed else 0.0)
    print(f"weights: largest |two - one| is {worst:.1%} of its tolerance")
    assert reference.step == 4


def _initial_weights(cfg: ExperimentConfig, out: Path) -> dict[str, torch.Tensor]:
    """The seeded initial weights both runs started from."""
    cfg = copy.deepcopy(cfg)
    cfg.output_dir = str(out)
    trainer = Trainer(cfg, progress=False)
    try:
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_refusal_on_rank_0_stops_every_rank(shapes_root: Path, tmp_path: Path) -> None:
    """Rank 0 alone checks (and locks) the run folder; its refusal reaches the other ranks at once instead of
    leaving them waiting at the next collective for the 30-minute timeout."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")  # a folder that holds a run
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(load_experiment(None, [*tiny_overrides(shapes_root, run), *DDP]).to_dict()))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "harnet", "train", "--config", str(config), "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    # both ranks say it (their lines may interleave on the shared stderr)
    assert proc.stderr.count(f"harnet: error: {run}: already holds a run (config.yaml)") == 2, proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_sync_batchnorm_conversion_keeps_parameters_and_activations(name: str) -> None:
    """On CUDA, plain-BN backbones become SyncBatchNorm with the very same parameter tensors (the optimizer
    and the checkpoint keys stay valid); timm's BatchNormAct2d keeps its ReLU6 (torch's converter would drop it)."""
    if name.startswith("efficientnet"):
        pytest.importorskip("timm")
    from harnet.config.model import BackboneConfig
    from harnet.modeling.backbone.resnet import build_backbone
    from harnet.utils.compat import BatchNormBase

    backbone = build_backbone(BackboneConfig(name, norm="bn", trainable_layers=5))  # type: ignore[arg-type]
    params, keys = [id(p) for p in backbone.parameters()], list(backbone.state_dict())
    converted = distributed._convert_sync_batchnorm(backbone)
    assert converted is backbone and [id(p) for p in converted.parameters()] == params
    assert list(converted.state_dict()) == keys
    norms = [m for m in converted.modules() if isinstance(m, BatchNormBase)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    if name.startswith("efficientnet"):
        assert isinstance(converted.body.bn1.act, torch.nn.ReLU6)
