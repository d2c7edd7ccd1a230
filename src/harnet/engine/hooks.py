"""Trainer hooks: code that watches (or steers) a training run without the trainer knowing about it.

Like detectron2's ``HookBase``: subclass :class:`TrainerHook`, override what you need, and pass instances
to ``Trainer(cfg, hooks=[...])`` or ``train(cfg, hooks=[...])``. A benchmark timestamps steps and
evaluations with one instead of polling the metrics log, and the ablation records its AP curve with one
instead of parsing it back. Hooks run on every rank; under torchrun ``after_eval`` runs on rank 0 only
(the only rank with a result).

This module does not import the trainer (the trainer imports it): the trainer's type is the class's
parameter, ``TrainerHook[Trainer]``, so the dependency runs one way. A subclass annotates its methods
with :class:`harnet.engine.trainer.Trainer` as it pleases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from harnet.engine.evaluation import EvalResult

# The trainer a hook is called with: harnet.engine.trainer.Trainer (a plain ``TrainerHook`` leaves it open).
# Contravariant: a hook that accepts any object serves as a hook of the Trainer.
TrainerT = TypeVar("TrainerT", contravariant=True)


class TrainerHook(Generic[TrainerT]):
    """Called by :meth:`harnet.engine.trainer.Trainer.fit` in the order the hooks were given; every method
    is a no-op unless overridden.

    Step numbers follow the metrics log: ``trainer.step`` is the number of steps done, so it is the index
    of the coming step in :meth:`before_step` (0 for a new run's first) and the step just taken (1 for the
    first) in :meth:`after_step` and :meth:`after_eval`. A hook that raises ends training as an error
    would: nothing is saved for it.
    """

    def before_step(self, trainer: TrainerT) -> None:
        """Before the batch of step ``trainer.step + 1`` is drawn."""

    def after_step(self, trainer: TrainerT, values: dict[str, float]) -> None:
        """After an optimizer step (or a skipped non-finite batch); ``values`` are the step's losses (averaged
        over ranks), as the metrics log gets them every ``train.log_every`` steps."""

    def after_eval(self, trainer: TrainerT, result: EvalResult) -> None:
        """After every evaluation (``train.eval_every`` and the final one), once ``best.pt`` is updated."""
