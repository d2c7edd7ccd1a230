"""The training loop (:class:`Trainer`): deterministic, resumable, and loud about anything that goes wrong.

Its parts live beside it: the seeded, resumable image stream in :mod:`harnet.engine.sampler`, the metrics
log in :mod:`harnet.engine.metrics_log`, the run folder's lock and checks in :mod:`harnet.engine.runfolder`,
the device choice in :mod:`harnet.engine.device`, optimizer and schedule in :mod:`harnet.engine.optim`,
and the hooks a caller can pass in :mod:`harnet.engine.hooks`.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from harnet.config.experiment import ExperimentConfig
from harnet.config.io import ConfigError
from harnet.data.band_stats import resolve_input
from harnet.data.build import annotation_source, build_dataset
from harnet.data.image_io import BadImageError
from harnet.data.issues import BadDataError, write_issues
from harnet.data.loader import collate_fn
from harnet.data.transforms import build_transforms, photometric_note
from harnet.engine import checkpoint, distributed, runfolder
from harnet.engine.device import resolve_amp_dtype, resolve_device
from harnet.engine.errors import TrainingError, TrainingInterrupted
from harnet.engine.evaluation import EvalResult, evaluate_predictions
from harnet.engine.hooks import TrainerHook
from harnet.engine.inference import predict_dataset
from harnet.engine.metrics_log import MetricsLog
from harnet.engine.optim import ModelEMA, build_optimizer, build_scheduler, describe_groups
from harnet.engine.sampler import AugmentedDataset, InfiniteBatchSampler
from harnet.modeling.build import build_detector
from harnet.utils.errors import one_line

# With train.skip_nonfinite, this many NaN/inf batches in a row mean the run has diverged: stop.
MAX_NONFINITE_STREAK = 10
# last.pt's entry for the seconds the training loop has run over all sessions (train.max_minutes counts them).
TRAIN_SECONDS_KEY = "train_seconds"

StopReason = Literal["max_steps", "max_minutes"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final: EvalResult | None
    best_ap: float
    skipped_nonfinite: int = 0  # batches skipped for a NaN/inf loss (train.skip_nonfinite)
    stopped_by: StopReason = "max_steps"  # what ended the training loop (both are a normal finish)
    # Seconds in the training loop (periodic checkpoints and evaluations included, the final evaluation not),
    # summed over the run's --resume sessions: what train.max_minutes is measured against.
    train_seconds: float = 0.0


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block, whatever this process inherited.

    Python installs its Ctrl-C handler only when SIGINT is not inherited as ignored, and a job started in
    the background of a non-interactive shell (``cmd &``, also under ``nohup``) inherits it ignored: such a
    run could then neither be stopped with a checkpoint by SIGINT nor, without this, by SIGTERM (a
    scheduler's pre-emption), whose default kills it outright. The previous handlers come back after the
    block. Only the main thread can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # None: a handler set outside Python, which cannot be put back; the default action is the closest.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class Trainer:
    """Owns model, optimizer, data and run folder for one experiment.

    With ``train.ema_decay`` set, ``self.ema`` (:class:`harnet.engine.optim.ModelEMA`) averages the weights
    after every optimizer step, and the average is what the run is judged and deployed by: evaluation
    during and after training scores ``self.ema.module``, ``best.pt`` is chosen by its AP, and the
    ``"model"`` entry of every checkpoint holds it (so ``Detector.from_checkpoint``, ``harnet eval``,
    export and ``init_from`` all use the average without knowing about EMA). The raw weights the
    optimizer updates go to ``checkpoint.TRAIN_MODEL_KEY`` and the number of EMA updates to
    ``checkpoint.EMA_UPDATES_KEY``, which ``--resume`` reads to continue both exactly.
    """

    def __init__(self, cfg: ExperimentConfig, resume: bool = False, progress: bool = True,
                 overwrite: bool = False, hooks: Sequence[TrainerHook[Trainer]] = ()) -> None:
        """``resume`` continues the run in ``cfg.output_dir``; a new run into a folder that holds one is
        refused unless ``overwrite``, which deletes that run's files first. The folder stays locked until
        :meth:`fit` returns or :meth:`close` is called. ``hooks`` are called by :meth:`fit` in their order
        (see :class:`harnet.engine.hooks.TrainerHook`)."""
        self.hooks = list(hooks)
        # The time source of train.max_minutes, in seconds; replaceable so that tests need not wait.
        self.clock: Callable[[], float] = time.monotonic
        self._seconds_before = 0.0  # training seconds of earlier sessions (from last.pt on --resume)
        self._session_start: float | None = None  # clock() when this session's training loop started
        if resume and overwrite:
            raise ConfigError(f"{cfg.output_dir}: --resume continues the run there and --overwrite deletes it; "
                              "use one of them")
        self.device = distributed.setup(resolve_device(cfg.train.device))  # joins torchrun's process group, if any
        self.cfg, self.progress = cfg, progress and distributed.is_main()
        self.run_dir = Path(cfg.output_dir)
        self.log = MetricsLog(self.run_dir, enabled=False)  # the real one once the run folder is set up
        # Rank 0 holds the lock for the whole job; its refusal stops every rank.
        self._lock = distributed.on_main(lambda: runfolder.claim(self.run_dir, resume, overwrite))
        try:
            self._setup(resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool) -> None:
        cfg, t = self.cfg, self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.train_set = build_dataset(cfg.data, "train")
        # The model reads what the training images are (band count, data type): set before the val set is
        # checked against it, and normalised per band when the data are not 8-bit RGB (harnet.data.band_stats).
        notes = []
        if len(self.train_set):
            cfg.model, note = resolve_input(cfg.model, self.train_set)
            notes += [note, photometric_note(cfg.model.input) if cfg.data.photometric else None]
        self.val_set = build_dataset(cfg.data, "val", class_names=self.train_set.class_names,
                                     classes_from=annotation_source(cfg.data, "train"), model_input=cfg.model.input)
        for line in filter(None, notes):
            if distributed.is_main():
                print(f"harnet: {line}", file=sys.stderr)
        summary = None
        if distributed.is_main():
            summary = write_issues(self.run_dir, {"train": self.train_set.issues, "val": self.val_set.issues})
        if summary:
            print(f"harnet: {summary}", file=sys.stderr)
        if len(self.train_set) == 0:
            raise TrainingError(f"training set is empty ({cfg.data.format}: {cfg.data.train_annotations})")
        # The data decide the number of classes; a config that says otherwise would be silently wrong.
        cfg.model.num_classes = len(self.train_set.class_names)
        torch.manual_seed(t.seed)
        self.model = build_detector(cfg.detector, cfg.model).to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if t.init_from and not resume:
            self._init_from(t.init_from)
        self.optimizer = build_optimizer(self.model, t)
        # Shown in interactive runs only: scripted ones (--no-progress) keep stderr for warnings and errors.
        if self.progress and (t.backbone_lr_mult, t.bias_lr_mult, t.bias_weight_decay,
                              t.norm_weight_decay) != (1.0, 1.0, None, None):
            print(f"harnet: parameter groups: {describe_groups(self.optimizer)}", file=sys.stderr)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.amp_dtype = resolve_amp_dtype(t, self.device)
        # Loss scaling only for float16: bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # After init_from, so that the average starts from the loaded weights.
        self.ema = ModelEMA(self.model, t.ema_decay, t.ema_tau) if t.ema_decay is not None else None
        self.step, self.best_ap = 0, -1.0
        self.skipped_nonfinite, self._nonfinite_streak = 0, 0
        if resume:
            self._resume()
        # DistributedDataParallel when launched by torchrun, else the model itself; self.model stays the bare model.
        self.net = distributed.wrap(self.model, self.device)
        if distributed.is_main():
            checkpoint.write_text_atomic(yaml.safe_dump(cfg.to_dict(), sort_keys=False), self.run_dir / "config.yaml")
        self.log = MetricsLog(self.run_dir, self.step if resume else None, enabled=distributed.is_main())

    def _init_from(self, path: str) -> None:
        """Load the tensors of ``path``'s model that fit this one by name and shape; say what was loaded."""
        state = checkpoint.load(path, map_location=self.device)["model"]
        own = self.model.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fits:
            raise TrainingError(f"train.init_from {path}: no tensor fits this model (another architecture?)")
        self.model.load_state_dict(fits, strict=False)
        new = [k for k in own if k not in fits]
        if distributed.is_main():
            print(f"harnet: init_from {path}: {len(fits)} of {len(own)} tensors loaded; {len(new)} start fresh"
                  + (f" (e.g. {', '.join(new[:3])})" if new else ""), file=sys.stderr)

    def _resume(self) -> None:
        path = self.run_dir / "last.pt"
        if not path.is_file():
            raise TrainingError(f"{self.run_dir}: nothing to resume (no last.pt)")
        ckpt = checkpoint.load(path, map_location=self.device)
        checkpoint.load_model_weights(self.model, ckpt, self.cfg.model, checkpoint.training_weights_key(ckpt))
        if self.ema is not None:
            if checkpoint.EMA_UPDATES_KEY in ckpt:
                self.ema.module.load_state_dict(ckpt["model"])
                self.ema.n_averaged.fill_(int(ckpt[checkpoint.EMA_UPDATES_KEY]))
            else:  # EMA switched on at resume: the average starts here, from the resumed weights
                self.ema.module.load_state_dict(self.model.state_dict())
                self.ema.n_averaged.zero_()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):  # empty when saved without float16 loss scaling
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_ap = int(ckpt["step"]), float(ckpt["best_ap"])
        self.skipped_nonfinite = int(ckpt.get("skipped_nonfinite", 0))
        self._seconds_before = float(ckpt.get(TRAIN_SECONDS_KEY, 0.0))  # absent in runs saved before the budget
        checkpoint.set_rng_state(ckpt["rng"])

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights the run is judged by: the EMA's average when ``train.ema_decay`` is set."""
        return self.ema.module if self.ema is not None else self.model

    def deployment_state(self) -> dict[str, Any]:
        """What using the model needs (eval, predict, export, ``init_from``): best.pt holds only this.
        ``"model"`` is the deployable weights (the EMA average when on)."""
        return {
            "model": self.eval_model.state_dict(),
            "config": self.cfg.to_dict(),
            "class_names": list(self.train_set.class_names),
            "category_ids": [int(c) for c in self.train_set.category_ids],
            "step": self.step,
            "best_ap": self.best_ap,
        }

    def state(self) -> dict[str, Any]:
        """Everything an exact resume needs (last.pt): the model plus optimizer, schedule and RNG states, and
        with EMA the raw weights the optimizer updates and the number of EMA updates."""
        ema = {} if self.ema is None else {checkpoint.TRAIN_MODEL_KEY: self.model.state_dict(),
                                           checkpoint.EMA_UPDATES_KEY: self.ema.updates}
        return self.deployment_state() | ema | {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "skipped_nonfinite": self.skipped_nonfinite,
            TRAIN_SECONDS_KEY: self.train_seconds(),
            "rng": checkpoint.rng_state(),
        }

    def train_seconds(self) -> float:
        """Seconds the training loop has run, over this and earlier sessions of the run (see ``max_minutes``)."""
        running = 0.0 if self._session_start is None else self.clock() - self._session_start
        return self._seconds_before + running

    def _stop_reason(self) -> StopReason | None:
        """Whether the training loop is done: ``max_steps`` reached or the ``max_minutes`` budget spent.
        Distributed, the ranks' clocks differ slightly: any rank over budget stops all of them together."""
        t = self.cfg.train
        if self.step >= t.max_steps:
            return "max_steps"
        if t.max_minutes is None:
            return None
        over = self.train_seconds() >= 60.0 * t.max_minutes
        if distributed.world_size() > 1:
            over = distributed.mean_over_ranks({"over": torch.tensor(float(over), device=self.device)})["over"] > 0
        return "max_minutes" if over else None

    def save(self, name: str = "last.pt") -> Path:
        """Write last.pt (the full state: ``--resume`` reads only this) or best.pt (the deployment state:
        without the optimizer's moments it is a third of last.pt's size with AdamW)."""
        path = self.run_dir / name
        if distributed.is_main():
            checkpoint.save_atomic(self.state() if name == "last.pt" else self.deployment_state(), path)
        return path

    def _save_if_finite(self) -> str:
        """Save last.pt unless the weights themselves went NaN/inf (that would overwrite a good one)."""
        if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return f"last good state saved to {self.save()}"
        return f"weights are no longer finite, so {self.run_dir / 'last.pt'} was kept"

    def evaluate(self) -> EvalResult | None:
        """COCO metrics of the val set; distributed: each rank predicts its shard, rank 0 scores (others: None)."""
        shard = distributed.shard(self.val_set)
        ids, preds = predict_dataset(self.eval_model, shard, self.device, self.cfg.train.batch_size)
        all_ids, all_preds = distributed.gather_shards(ids), distributed.gather_shards(preds)
        if all_ids is None or all_preds is None:
            return None
        return evaluate_predictions(self.val_set, all_ids, all_preds)

    def _loader(self) -> Iterator[tuple[list[Tensor], list[dict[str, Any]]]]:
        t, d = self.cfg.train, self.cfg.data
        # Colour augmentation is for 8-bit RGB (photometric_note says so when it is skipped); nodata stays out of it.
        photometric = d.photometric if photometric_note(self.cfg.model.input) is None else False
        transforms = build_transforms(True, hflip_prob=d.hflip_prob, vflip_prob=d.vflip_prob, rot90_prob=d.rot90_prob,
                                      photometric=photometric, random_crop=d.random_crop,
                                      nodata_fill=self.cfg.model.transform.image_mean)
        data = AugmentedDataset(self.train_set, transforms, t.seed)
        # Distributed: every rank draws the same global batch and keeps its slice (train.batch_size is global).
        sampler = distributed.shard_batches(InfiniteBatchSampler(len(self.train_set), t.batch_size, t.seed, self.step),
                                            t.batch_size)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_fn, num_workers=d.num_workers,
                            persistent_workers=d.num_workers > 0)
        return iter(loader)

    def train_step(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, float]:
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        with torch.autocast(self.device.type, **self._autocast):
            losses = self.net(images, targets)
        loss = sum(losses.values())
        assert isinstance(loss, Tensor)
        # Averaged over the ranks (the global batch's loss), so every rank takes the same decision below.
        values = distributed.mean_over_ranks({"loss": loss, **losses})
        if not math.isfinite(values["loss"]):
            return self._nonfinite(values["loss"], [int(t["image_id"]) for t in targets])
        self._nonfinite_streak = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.train.grad_clip:
            # Clip the true gradients: unscale_ divides out the float16 loss scale (a no-op when the scaler
            # is off: float32 and bfloat16), and scaler.step then knows not to unscale again.
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        if self.cfg.train.skip_nonfinite:
            values["skipped_nonfinite"] = float(self.skipped_nonfinite)
        return values

    @property
    def _autocast(self) -> dict[str, Any]:
        return {"enabled": False} if self.amp_dtype is None else {"enabled": True, "dtype": self.amp_dtype}

    def _nonfinite(self, loss: float, ids: list[int]) -> dict[str, float]:
        """A NaN/inf loss: stop naming the step and batch, or with ``train.skip_nonfinite`` skip the
        update. A skipped batch still counts as a step (and advances the LR schedule), so the image
        stream, the schedule and resume stay exactly as in a run without the bad batch's update."""
        where = f"at step {self.step} (batch image ids {ids})"
        if not self.cfg.train.skip_nonfinite:
            raise TrainingError(f"non-finite loss {loss} {where}; {self._save_if_finite()}. "
                                "Lower train.lr, set train.grad_clip, or use --skip-nonfinite.")
        self.skipped_nonfinite += 1
        self._nonfinite_streak += 1
        if self._nonfinite_streak > MAX_NONFINITE_STREAK:
            raise TrainingError(f"non-finite loss in {self._nonfinite_streak} batches in a row, the last {where}: "
                                f"training diverged; {self._save_if_finite()}. Lower train.lr or set train.grad_clip.")
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # torch warns when the very first batches are the skipped ones
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        return {"skipped_nonfinite": float(self.skipped_nonfinite)}

    def _eval_and_keep_best(self) -> EvalResult | None:
        result = self.evaluate()
        if result is None:  # a rank other than 0
            return None
        result.save_json(self.run_dir / f"eval_step{self.step}.json")
        ap = result.stats["AP"]
        self.log.write(self.step, {f"val/{k}": v for k, v in result.stats.items()})
        if ap > self.best_ap:
            self.best_ap = ap
            self.save("best.pt")
        for hook in self.hooks:
            hook.after_eval(self, result)
        return result

    def close(self) -> None:
        """Close the logs and unlock the run folder (idempotent; :meth:`fit` does it when it returns)."""
        self.log.close()
        if self._lock is not None:
            self._lock.release()

    def fit(self) -> TrainResult:
        """Train to ``train.max_steps`` (or until ``train.max_minutes`` is spent) and evaluate; the run folder is
        unlocked however this ends. SIGINT and SIGTERM (kill, SLURM/Kubernetes pre-emption) stop it like
        Ctrl-C: checkpoint saved, then :class:`TrainingInterrupted`."""
        try:
            with stop_signals_interrupt():
                return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
        t = self.cfg.train
        self.model.train()
        batches = self._loader()
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc="train")
        interrupted = False
        evaluated: tuple[int, EvalResult | None] | None = None  # the loop's last evaluation: (step, result)
        self._session_start = self.clock()
        try:
            stop = self._stop_reason()
            while stop is None:
                for hook in self.hooks:
                    hook.before_step(self)
                images, targets = next(batches)
                values = self.train_step(images, targets)
                for hook in self.hooks:
                    hook.after_step(self, values)
                stop = self._stop_reason()
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if self.step % t.log_every == 0 or stop is not None:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()} | {"lr": f"{lr:.2e}"})
                    self.log.write(self.step, {f"train/{k}": v for k, v in values.items()} | {"lr": lr})
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save()
                if t.eval_every and self.step % t.eval_every == 0 and stop is None:  # the last: evaluated below
                    evaluated = (self.step, self._eval_and_keep_best())
                    self.model.train()
                    stop = self._stop_reason()  # an evaluation can spend the rest of the max_minutes budget
        except KeyboardInterrupt:
            interrupted = True
        except (BadImageError, BadDataError, FileNotFoundError) as e:  # a file broke after the up-front check
            raise TrainingError(f"{one_line(e)}; checkpoint saved at step {self.step} to {self.save()} "
                                "(fix or remove the file, or use --skip-bad, then --resume)") from None
        finally:
            bar.close()
            # The loop's time ends here: the final evaluation is not part of the max_minutes budget.
            self._seconds_before, self._session_start = self.train_seconds(), None
        self.save()
        if interrupted:
            raise TrainingInterrupted(f"interrupted at step {self.step}; checkpoint saved to "
                                      f"{self.run_dir / 'last.pt'} (continue with --resume {self.run_dir})")
        assert stop is not None
        # The budget can run out in an evaluation of the loop's: that one is the final one, not done twice.
        final = evaluated[1] if evaluated is not None and evaluated[0] == self.step else self._eval_and_keep_best()
        self.save()
        self.log.write(self.step, {"time/train_seconds": self._seconds_before}
                       | ({"train/skipped_nonfinite": self.skipped_nonfinite} if t.skip_nonfinite else {}))
        return TrainResult(self.run_dir, self.step, final, self.best_ap, self.skipped_nonfinite, stop,
                           self._seconds_before)


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
          hooks: Sequence[TrainerHook[Trainer]] = ()) -> TrainResult:
    """Train (or resume) the experiment; returns the final evaluation (None on ranks other than 0).

    A new run into a folder that already holds a run is refused (:class:`harnet.engine.runfolder.RunExistsError`)
    unless ``overwrite``, which deletes that run's files first; ``resume`` continues it instead. ``hooks``: see
    :class:`harnet.engine.hooks.TrainerHook`."""
    try:
        return Trainer(cfg, resume=resume, progress=progress, overwrite=overwrite, hooks=hooks).fit()
    finally:
        distributed.cleanup()
