"""Training: a tiny run end to end, exact resume, atomic checkpoints, loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harnet.engine import checkpoint
from harnet.engine.trainer import InfiniteBatchSampler, Trainer, TrainingError, train


def test_sampler_resumes_the_same_stream() -> None:
    full = InfiniteBatchSampler(5, 2, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(6)]
    resumed = iter(InfiniteBatchSampler(5, 2, seed=3, start_step=4))
    assert [next(resumed) for _ in range(2)] == first[4:]
    draws = [d for batch in first for _, d in batch]
    assert draws == list(range(12))
    epoch0 = [i for batch in first for i, _ in batch][:5]
    assert sorted(epoch0) == list(range(5))


def test_stop_and_resume_gives_the_same_weights(tiny, tmp_path: Path) -> None:
    straight = train(tiny(tmp_path / "a"), progress=False)
    assert straight.step == 4 and straight.final is not None
    # Same run stopped after 2 steps, then resumed to 4.
    train(tiny(tmp_path / "b", "train.max_steps=2"), progress=False)
    resumed = train(tiny(tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == 4
    a = checkpoint.load(tmp_path / "a" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    for name in ("config.yaml", "metrics.csv", "best.pt"):
        assert (tmp_path / "a" / name).is_file()


def test_checkpoint_holds_everything_for_resume(tiny, tmp_path: Path) -> None:
    train(tiny(tmp_path, "train.max_steps=2"), progress=False)
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert {"model", "optimizer", "scheduler", "step", "rng", "config", "class_names"} <= set(ckpt)
    assert ckpt["step"] == 2
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_mismatched_config_is_a_clear_error(tiny, tmp_path: Path) -> None:
    train(tiny(tmp_path, "train.max_steps=1"), progress=False)
    cfg = tiny(tmp_path, "model.fpn.channels=16")
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.fpn\.channels"):
        Trainer(cfg, resume=True, progress=False)


def test_resume_without_checkpoint(tiny, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        Trainer(tiny(tmp_path / "empty"), resume=True, progress=False)


def test_non_finite_loss_stops_with_step_and_batch(tiny, tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path), progress=False)
    original = trainer.model.forward

    def poisoned(images, targets=None):  # type: ignore[no-untyped-def]
        losses = original(images, targets)
        return {k: v * float("nan") for k, v in losses.items()}

    trainer.model.forward = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 0 \(batch image ids \["):
        trainer.fit()
    assert (tmp_path / "last.pt").is_file()


def test_unwritable_output_fails_before_training(tiny, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="not writable"):
        Trainer(tiny(blocker / "run"), progress=False)


def test_init_from_loads_what_fits_and_keeps_the_rest(tiny, tmp_path: Path) -> None:
    """Two-phase training: a RetinaNet run's weights start a hybrid; the attention layers start fresh."""
    train(tiny(tmp_path / "base", "train.max_steps=1", preset="retinanet"), progress=False)
    base = checkpoint.load(tmp_path / "base" / "last.pt")["model"]
    trainer = Trainer(tiny(tmp_path / "hybrid", f"train.init_from={tmp_path / 'base'}"), progress=False)
    state = trainer.model.state_dict()
    torch.testing.assert_close(state["backbone.body.conv1.weight"], base["backbone.body.conv1.weight"])
    torch.testing.assert_close(state["head.cls_tower.convs.0.weight"], base["head.cls_tower.convs.0.weight"])
    assert any(k.startswith("head.spatial") for k in state) and not any(k.startswith("head.spatial") for k in base)


def test_tensorboard_shows_each_step_once_after_a_kill_and_resume(tiny, tmp_path: Path) -> None:
    """Event files are appended to, not replaced: a resumed run hides what the killed one logged after its
    checkpoint (``purge_step``), so the curve has each step once."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    import shutil

    train(tiny(tmp_path, "train.max_steps=2", "train.log_every=1"), progress=False)
    shutil.copy(tmp_path / "last.pt", tmp_path.parent / "step2.pt")
    train(tiny(tmp_path, "train.log_every=1"), resume=True, progress=False)
    shutil.copy(tmp_path.parent / "step2.pt", tmp_path / "last.pt")  # killed after logging 3 and 4, before saving 4
    train(tiny(tmp_path, "train.log_every=1"), resume=True, progress=False)
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


RECIPE = ["train.ema_decay=0.9", "train.ema_tau=2", "train.backbone_lr_mult=0.1", "train.bias_lr_mult=2.0",
          "train.norm_weight_decay=0.0", "train.bias_weight_decay=0.0", "data.photometric=jitter",
          "train.channels_last=true"]


def test_recipe_options_resume_exactly_and_checkpoints_deploy_the_ema(tiny, tmp_path: Path) -> None:
    """EMA + parameter groups + jitter + channels_last: stop at 2 and resume to 4 gives the same raw and
    averaged weights; "model" (what eval/predict load) is the average, evaluated during training."""
    straight = train(tiny(tmp_path / "a", *RECIPE), progress=False)
    train(tiny(tmp_path / "b", *RECIPE, "train.max_steps=2"), progress=False)
    train(tiny(tmp_path / "b", *RECIPE), resume=True, progress=False)
    a, b = checkpoint.load(tmp_path / "a" / "last.pt"), checkpoint.load(tmp_path / "b" / "last.pt")
    assert a[checkpoint.EMA_UPDATES_KEY] == b[checkpoint.EMA_UPDATES_KEY] == 4
    for entry in ("model", checkpoint.TRAIN_MODEL_KEY):
        for key in a[entry]:
            torch.testing.assert_close(a[entry][key], b[entry][key], rtol=0, atol=0, msg=f"{entry}: {key}")
    assert any(not torch.equal(a["model"][k], a[checkpoint.TRAIN_MODEL_KEY][k]) for k in a["model"])
    # The final evaluation scored the average: the deployed weights give the same AP.
    from harnet.engine.predictor import Detector

    detector = Detector.from_checkpoint(tmp_path / "a" / "last.pt")
    for key, value in detector.model.state_dict().items():
        torch.testing.assert_close(value, a["model"][key], rtol=0, atol=0, msg=key)
    trainer = Trainer(tiny(tmp_path / "a", *RECIPE), resume=True, progress=False)
    assert trainer.eval_model is trainer.ema.module  # type: ignore[union-attr]
    result = trainer.evaluate()
    assert result is not None and straight.final is not None
    assert result.stats["AP"] == pytest.approx(straight.final.stats["AP"])


def test_ema_switched_on_at_resume_starts_from_the_resumed_weights(tiny, tmp_path: Path) -> None:
    train(tiny(tmp_path, "train.max_steps=2"), progress=False)
    trainer = Trainer(tiny(tmp_path, "train.ema_decay=0.99"), resume=True, progress=False)
    assert trainer.ema is not None and trainer.ema.updates == 0
    raw = checkpoint.load(tmp_path / "last.pt")["model"]
    for key, value in trainer.ema.module.state_dict().items():
        torch.testing.assert_close(value, raw[key], rtol=0, atol=0)


def test_amp_dtype_auto_prefers_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    from harnet.config.experiment import TrainConfig
    from harnet.engine.trainer import resolve_amp_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_amp_dtype(TrainConfig(), cpu) is None  # CPU trains in float32
    assert resolve_amp_dtype(TrainConfig(amp=False), cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp_dtype(TrainConfig(), cuda) == torch.bfloat16
    assert resolve_amp_dtype(TrainConfig(amp_dtype="float16"), cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp_dtype(TrainConfig(), cuda) == torch.float16
    assert resolve_amp_dtype(TrainConfig(amp_dtype="bfloat16"), cuda) == torch.bfloat16


def test_float16_clips_the_unscaled_gradients(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float16 path (GradScaler on) run through CPU autocast: the clipped gradients are the true ones
    (norm == grad_clip), not the loss-scaled ones (which would end 65536x smaller). bfloat16: no scaler.
    (CPU has no float16 deformable conv, so this model has no aligned attention.)"""
    import harnet.engine.trainer as train_module

    monkeypatch.setattr(train_module, "resolve_amp_dtype", lambda cfg, device: torch.bfloat16)
    assert not Trainer(tiny(tmp_path / "bf16"), progress=False).scaler.is_enabled()
    monkeypatch.setattr(train_module, "resolve_amp_dtype", lambda cfg, device: torch.float16)
    trainer = Trainer(tiny(tmp_path / "fp16", "train.grad_clip=0.01", "model.aligned.enabled=false"), progress=False)
    assert trainer.scaler.is_enabled()
    batches = trainer._loader()
    for _ in range(2):
        assert torch.isfinite(torch.tensor(trainer.train_step(*next(batches))["loss"]))
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert float(norm) == pytest.approx(0.01, rel=1e-3)
