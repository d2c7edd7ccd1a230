"""Training: a tiny run end to end, exact resume, atomic checkpoints, loud failures."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from harnet.config.experiment import TrainConfig, load_experiment
from harnet.config.io import ConfigError
from harnet.engine import checkpoint
from harnet.engine.evaluation import EvalResult
from harnet.engine.hooks import TrainerHook
from harnet.engine.trainer import InfiniteBatchSampler, Trainer, TrainingError, stop_signals_interrupt, train


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

    detector = Detector.from_checkpoint(tmp_path / "a" / "last.pt", optimize=False)  # unfolded: the saved weights
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


class Recorder(TrainerHook):
    """Writes down every call: (hook name, event, trainer.step)."""

    def __init__(self, name: str, calls: list[tuple[str, str, int]]) -> None:
        self.name, self.calls, self.results, self.values = name, calls, [], []  # type: ignore[var-annotated]

    def before_step(self, trainer: Trainer) -> None:
        self.calls.append((self.name, "before_step", trainer.step))

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        self.calls.append((self.name, "after_step", trainer.step))
        self.values.append(values)

    def after_eval(self, trainer: Trainer, result: EvalResult) -> None:
        self.calls.append((self.name, "after_eval", trainer.step))
        self.results.append(result)


def test_hooks_are_called_in_order_with_the_step_numbers(tiny, tmp_path: Path) -> None:
    """before_step sees the steps done so far, after_step and after_eval the step just taken; hooks run in
    the order given; after_eval gets every evaluation (the periodic one and the final one)."""
    calls: list[tuple[str, str, int]] = []
    first, second = Recorder("a", calls), Recorder("b", calls)
    result = train(tiny(tmp_path, "train.eval_every=2"), progress=False, hooks=[first, second])
    step = [("a", "before_step", 0), ("b", "before_step", 0), ("a", "after_step", 1), ("b", "after_step", 1),
            ("a", "before_step", 1), ("b", "before_step", 1), ("a", "after_step", 2), ("b", "after_step", 2)]
    evals = [("a", "after_eval", 2), ("b", "after_eval", 2)]
    later = [(name, event, n + 2) for name, event, n in step]
    assert calls == step + evals + later + [("a", "after_eval", 4), ("b", "after_eval", 4)]
    assert len(first.results) == 2 and first.results[-1] is result.final and second.results == first.results
    assert all("loss" in v for v in first.values)
    assert result.stopped_by == "max_steps" and result.train_seconds > 0


class FakeMinutes(TrainerHook):
    """A clock that advances one minute per step, so that the budget test never waits or races."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        self.now += 60.0


def _budget_run(tiny, out: Path, minutes: float, resume: bool = False) -> Trainer:  # type: ignore[no-untyped-def]
    clock = FakeMinutes()
    trainer = Trainer(tiny(out, "train.max_steps=10", f"train.max_minutes={minutes}"), resume=resume,
                      progress=False, hooks=[clock])
    trainer.clock = clock
    return trainer


def test_max_minutes_ends_training_like_max_steps_and_resume_gets_the_remainder(tiny, tmp_path: Path) -> None:
    """2.5 minutes at one (fake) minute a step: 3 steps, then last.pt, the final evaluation and best.pt as at
    max_steps. The budget counts the run's training time over sessions: a resume with the same budget
    stops at once, one with a minute more takes one more step."""
    result = _budget_run(tiny, tmp_path, 2.5).fit()
    assert (result.step, result.stopped_by, result.train_seconds) == (3, "max_minutes", 180.0)
    assert result.final is not None and (tmp_path / "best.pt").is_file()
    assert (tmp_path / "eval_step3.json").is_file()
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert ckpt["step"] == 3 and ckpt["train_seconds"] == 180.0
    again = _budget_run(tiny, tmp_path, 2.5, resume=True).fit()
    assert (again.step, again.stopped_by, again.train_seconds) == (3, "max_minutes", 180.0)
    more = _budget_run(tiny, tmp_path, 3.5, resume=True).fit()
    assert (more.step, more.stopped_by, more.train_seconds) == (4, "max_minutes", 240.0)


class FakeEvalMinutes(FakeMinutes):
    """Evaluations take a (fake) minute, steps no time."""

    def after_step(self, trainer: Trainer, values: dict[str, float]) -> None:
        pass

    def after_eval(self, trainer: Trainer, result: EvalResult) -> None:
        self.now += 60.0


def test_a_budget_spent_in_an_evaluation_stops_there_without_evaluating_again(tiny, tmp_path: Path) -> None:
    calls: list[tuple[str, str, int]] = []
    clock = FakeEvalMinutes()
    trainer = Trainer(tiny(tmp_path, "train.max_steps=10", "train.eval_every=1", "train.max_minutes=1.5"),
                      progress=False, hooks=[clock, Recorder("r", calls)])
    trainer.clock = clock
    result = trainer.fit()
    assert (result.step, result.stopped_by, result.train_seconds) == (2, "max_minutes", 120.0)
    assert [c for c in calls if c[1] == "after_eval"] == [("r", "after_eval", 1), ("r", "after_eval", 2)]
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 2


@pytest.mark.parametrize("minutes", ["0", "-1", ".nan"])
def test_max_minutes_must_be_positive(minutes: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.max_minutes: must be > 0"):
        load_experiment(None, [f"train.max_minutes={minutes}"])
    assert load_experiment(None, ["train.max_minutes=0.75"]).train.max_minutes == 0.75
    assert TrainConfig().max_minutes is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signals_interrupt_even_when_inherited_ignored(sig: signal.Signals) -> None:
    """A run started with ``cmd &`` from a script inherits SIGINT ignored; training still stops on it, and
    the process's own dispositions come back afterwards."""
    previous = signal.signal(sig, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), stop_signals_interrupt():
            signal.raise_signal(sig)  # to this thread: Python's handler runs before the next line
        assert signal.getsignal(sig) == signal.SIG_IGN
    finally:
        signal.signal(sig, previous)


def test_a_four_band_run_keeps_its_statistics_through_resume_eval_and_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Statistics computed once before training, in the run's config and checkpoints; a resume reads them back
    (no recomputation, no config difference), eval checks its data against them, prediction uses them."""
    pytest.importorskip("rasterio")
    from harnet.data.band_shapes import generate_band_shapes
    from harnet.engine.inference import evaluate_checkpoint
    from harnet.engine.predictor import Detector
    from tests_support import TINY

    info = generate_band_shapes(tmp_path / "data", num_images=8, size=64)
    data = ["data.format=coco", f"data.train_images={info['train_images']}",
            f"data.train_annotations={info['train_ann']}", f"data.val_images={info['val_images']}",
            f"data.val_annotations={info['val_ann']}", f"output_dir={tmp_path / 'run'}"]
    train(load_experiment(None, [*TINY, *data, "train.max_steps=2"]), progress=False)
    err = capsys.readouterr().err
    assert err.count("per-band statistics of the training data") == 1 and "data.photometric skipped" in err
    ckpt = checkpoint.load(tmp_path / "run" / "last.pt")
    model = checkpoint.model_config(ckpt)
    assert (model.input.channels, model.input.dtype, len(model.transform.image_mean)) == (4, "uint16", 4)
    assert model.transform.image_mean[0] > 1000  # raw 16-bit units
    resumed = load_experiment(tmp_path / "run" / "config.yaml", ["train.max_steps=3"])
    assert train(resumed, resume=True, progress=False).step == 3
    assert "per-band statistics" not in capsys.readouterr().err
    assert evaluate_checkpoint(tmp_path / "run").result.stats["AP"] >= 0
    tile = next(Path(info["val_images"]).glob("*.tif"))
    detections = Detector.from_checkpoint(tmp_path / "run", device="cpu").predict(tile)[0]
    assert set(detections) >= {"boxes", "scores", "labels"}
