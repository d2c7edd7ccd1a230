"""What training and checkpoint loading raise for the user to act on (torch-free: the command line catches
these without importing torch)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (the message says which)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: a checkpoint was saved; the message says where and how to resume.

    A ``KeyboardInterrupt`` so that callers (notebooks, ``harnet`` exiting with 130) treat it as one.
    """


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or made for another model."""
