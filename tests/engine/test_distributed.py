"""Distributed data parallel on CPU (gloo): 2 processes x 1 image train like 1 process x 2 images (the same
gradients, the same losses), a 2-process checkpoint resumes in 1 process, and sharded evaluation equals a
single-process one."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


# `python -m harnet ARGS` with a hook that saves, on each rank, the gradients the first optimizer step applies
# (after DDP's all-reduce) to PREFIX.rank<R>.pt: run as `python -c CODE PREFIX ARGS`.
FIRST_STEP_GRADIENTS = """
import functools, sys
import torch, torch.distributed as dist
from harnet.engine import trainer
from harnet.engine.hooks import TrainerHook
from harnet.tools.cli import main

class FirstStepGradients(TrainerHook):
    def before_step(self, t):
        if t.step == 0:
            def save(optimizer, args, kwargs):
                grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
                torch.save(grads, f"{sys.argv[1]}.rank{dist.get_rank()}.pt")
                handle.remove()
            handle = t.optimizer.register_step_pre_hook(save)

trainer.train = functools.partial(trainer.train, hooks=[FirstStepGradients()])  # cmd_train imports it when called
sys.exit(main(sys.argv[2:]))
"""

Gradients = dict[str, torch.Tensor]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_double_batch(shapes_root: Path, tmp_path: Path) -> None:
    """The two processes apply, at their first step, the mean of the gradients of their images, and that mean
    is the gradient of the double batch; their loss trajectory is the one-process one, and their checkpoint
    resumes in one process.

    Weights after several steps are not compared: this tiny, randomly initialised network is ill-conditioned
    enough that weights differing by float rounding soon give gradients that differ far more, so how far two
    runs that add the same numbers in another order drift apart depends on the CPU's rounding. The first
    step's gradients start from the very same weights and carry no such drift."""
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = load_experiment(None, [*tiny_overrides(shapes_root, one), *DDP, "train.max_steps=4"])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    reference = train(cfg, progress=False)
    # The same run on 2 processes x 1 image for 3 steps (`-m harnet train` plus the gradient hook) ...
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
         sys.executable, "-c", FIRST_STEP_GRADIENTS, str(tmp_path / "grads"),
         "train", "--config", str(config), "--set", f"output_dir={two}", "--set", "train.max_steps=3",
         "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    print(f"torchrun: {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1, "only rank 0 reports"
    assert not (two / ".lock").exists(), "rank 0 released the run folder's lock"
    ddp_losses = _losses(two)

    # The first step's gradients. Each rank computed the gradient of its image alone with one thread, from the
    # seeded initial weights: the very operations that recompute it here, so the very same numbers.
    ranks = [torch.load(tmp_path / f"grads.rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[1][k], ranks[0][k]) for k in ranks[0]), "the ranks applied different gradients"
    model, images, targets = _first_batch(cfg, tmp_path / "init")
    with _threads(1):
        per_image = [_gradients(model, images[i : i + 1], targets[i : i + 1]) for i in (0, 1)]
        model64, images64, targets64 = _float64(model, images, targets)
        batch64 = _gradients(model64, images64, targets64)
        per_image64 = [_gradients(model64, images64[i : i + 1], targets64[i : i + 1]) for i in (0, 1)]
    assert set(ranks[0]) == set(per_image[0]) == {n for n, p in model.named_parameters() if p.requires_grad}
    # DDP applied their mean: the one float32 rounding of adding two numbers away, and no more ...
    wrong = _not_their_mean(ranks[0], *per_image)
    assert not wrong, f"{len(wrong)} of {len(ranks[0])} tensors are not the mean of the ranks' gradients: {wrong[:5]}"
    exact = sum(torch.equal(ranks[0][k], (per_image[0][k] + per_image[1][k]) / 2) for k in ranks[0])
    print(f"all-reduced == mean of the per-image gradients: {exact} of {len(ranks[0])} tensors bit for bit")
    # ... which a rank's gradient left out, or the two summed instead of averaged, would not be.
    g0, g1 = per_image
    wrongs = {"rank 1 left out": {k: g0[k] / 2 for k in g0}, "rank 0 alone": {k: g0[k] for k in g0},
              "summed": {k: g0[k] + g1[k] for k in g0}}
    for name, wrong in wrongs.items():
        refused = _not_their_mean(wrong, g0, g1)
        print(f"{name}: {len(refused)} of {len(g0)} tensors refused")
        assert refused, name
    # And that mean is the gradient of the double batch the one-process run takes (the loss is a mean over
    # images, which frozen BN does not couple). In exact arithmetic the two are equal; computed in float64 they
    # differ by the rounding of summing in another order grown through the network, float64's epsilon times
    # far less than the millions that 1e-9 allows, while an image's gradient missing from either side, or a
    # loss normalised over the whole batch, changes them by percents.
    for key, batch in batch64.items():
        mean = (per_image64[0][key] + per_image64[1][key]) / 2
        size = float(torch.linalg.vector_norm(per_image64[0][key]) + torch.linalg.vector_norm(per_image64[1][key])) / 2
        diff = float(torch.linalg.vector_norm(batch - mean))
        assert diff <= 1e-9 * size, f"{key}: |double batch - mean of its images| {diff:.3g} > 1e-9 x {size:.3g}"

    # The 2-process run's checkpoint of step 3, resumed to step 4 in 1 process.
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
    assert list(b) == list(a)
    for key in a:
        assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape, key
        if not a[key].is_floating_point():
            assert torch.equal(b[key], a[key]), key
    assert reference.step == 4


def _not_their_mean(got: Gradients, g0: Gradients, g1: Gradients) -> list[str]:
    """The tensors of ``got`` that are not ``(g0 + g1) / 2`` in float32: DDP's all-reduce adds the ranks'
    gradients (one rounding, at most half an epsilon of ``|g0| + |g1|``) and halves them (exact, short of
    subnormal numbers), so any other summation order lands within one epsilon of ``(|g0| + |g1|) / 2``."""
    finfo = torch.finfo(torch.float32)
    return [key for key in g0
            if not bool(((got[key] - (g0[key] + g1[key]) / 2).abs()
                         <= finfo.eps * (g0[key].abs() + g1[key].abs()) / 2 + finfo.tiny).all())]


def test_the_gradient_comparison_rejects_a_rank_left_out_or_not_averaged() -> None:
    """The check above accepts the mean summed in any order and refuses what a broken all-reduce would give."""
    gen = torch.Generator().manual_seed(0)
    # rank 1's gradient much smaller than rank 0's; and gradients near float32's smallest normal number
    g0 = {"w": torch.randn(1000, generator=gen), "small": torch.randn(10, generator=gen) * 1e-36}
    g1 = {"w": torch.randn(1000, generator=gen) * 1e-3, "small": torch.randn(10, generator=gen) * 1e-36}
    assert not _not_their_mean({k: (g0[k] + g1[k]) / 2 for k in g0}, g0, g1)
    assert not _not_their_mean({k: g0[k] / 2 + g1[k] / 2 for k in g0}, g0, g1)
    assert not _not_their_mean({k: (g1[k] + g0[k]) * 0.5 for k in g0}, g0, g1)
    assert _not_their_mean({k: g0[k] / 2 for k in g0}, g0, g1) == ["w", "small"]  # rank 1's gradient left out
    assert _not_their_mean({k: g0[k] for k in g0}, g0, g1) == ["w", "small"]  # ... and the mean over rank 0 alone
    assert _not_their_mean({k: g0[k] + g1[k] for k in g0}, g0, g1) == ["w", "small"]  # summed, not averaged


def _first_batch(cfg: ExperimentConfig, out: Path) -> tuple[torch.nn.Module, list[torch.Tensor], list[dict]]:
    """The seeded initial model both runs start from, in training mode, and the first global batch."""
    cfg = copy.deepcopy(cfg)
    cfg.output_dir = str(out)
    trainer = Trainer(cfg, progress=False)
    try:
        images, targets = next(trainer._loader())
    finally:
        trainer.close()
    return trainer.model.train(), images, targets


def _gradients(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]) -> Gradients:
    """The gradient of the training loss, as ``Trainer.train_step`` computes it."""
    model.zero_grad(set_to_none=True)
    sum(model(images, targets).values()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _float64(model: torch.nn.Module, images: list[torch.Tensor],
             targets: list[dict]) -> tuple[torch.nn.Module, list[torch.Tensor], list[dict]]:
    def wide(x: object) -> object:
        return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    return (copy.deepcopy(model).double(), [img.double() for img in images],
            [{k: wide(v) for k, v in t.items()} for t in targets])


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` in the block (the ranks run with OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
