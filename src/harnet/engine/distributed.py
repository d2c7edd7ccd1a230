"""Data-parallel training with ``torch.distributed``: ``torchrun --nproc-per-node N -m harnet train ...``.

Convention: ``train.batch_size`` is the *global* batch (Detectron2's ``IMS_PER_BATCH``), split evenly
over the processes. Every rank draws the same global batch from the same seeded
:class:`~harnet.engine.sampler.InfiniteBatchSampler` and keeps its own contiguous slice (the role
``DistributedSampler`` plays for epoch-based loaders). So a config trains the same model on 1 or N
processes (the loss is a per-image mean and DDP averages gradients), the learning rate needs no
rescaling, and a checkpoint resumes exactly with any number of processes, since the stream position
is just the global step.

BatchNorm: with ``backbone.norm: bn`` on CUDA the model is converted to ``SyncBatchNorm`` so that the
statistics are those of the global batch; SyncBatchNorm has no CPU kernel, so on CPU (gloo) each rank
normalises with its own slice. ``frozen_bn`` (the fine-tuning default) and the head's GroupNorms are
per-image and need nothing.

Only rank 0 writes (checkpoints, logs, progress bar) and holds the run folder's lock; every rank reads
the run folder on resume, so multi-node runs need ``output_dir`` on a shared file system (as the data
are). Evaluation is sharded over the ranks and gathered on rank 0, which computes the COCO metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from itertools import zip_longest
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler, Subset

from harnet.utils.compat import BatchNormBase

T = TypeVar("T")
# Rank 0 evaluates COCO metrics while the others wait at the next collective; allow for a large val set.
TIMEOUT = timedelta(minutes=30)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes checkpoints, logs and prints (rank 0, or the only process)."""
    return rank() == 0


def launched_as_main() -> bool:
    """Rank 0 of a ``torchrun`` launch (or not launched by torchrun), from ``RANK``: valid after :func:`cleanup`."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); return this rank's device.

    NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. Without torchrun's variables,
    or with a world of 1, nothing happens and ``device`` is returned unchanged.
    """
    if dist.is_available() and dist.is_initialized():
        return _local_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    device = _local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and *_object collectives use the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def _local_device(device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices on this node; "
                           f"use --nproc-per-node {torch.cuda.device_count()} or fewer")
    return torch.device("cuda", local)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 alone (its result there, None elsewhere); an exception it raises is raised on every rank.

    For what only rank 0 may do, such as taking the run folder's lock or refusing a folder that holds another
    run: were the refusal rank 0's alone, the other ranks would wait at their next collective until the timeout.
    """
    if world_size() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:
            error = e
    box = [error]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise box[0]
    return result


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` (plus SyncBatchNorm on CUDA) when distributed, else ``model`` itself.

    The conversion swaps BatchNorm modules inside ``model`` but keeps its parameter and buffer
    tensors, so an optimizer already built on ``model`` and its ``state_dict`` keys stay valid.
    """
    if world_size() == 1:
        return model
    if device.type == "cuda" and any(isinstance(m, BatchNormBase) for m in model.modules()):
        params = [id(p) for p in model.parameters()]
        model = _convert_sync_batchnorm(model)  # the same top module, its BatchNorm children swapped
        assert params == [id(p) for p in model.parameters()], "SyncBatchNorm conversion replaced parameters"
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """torch's converter, or timm's when timm's BatchNormAct2d is inside (torch's would drop its activation)."""
    try:
        from timm.layers import BatchNormAct2d, convert_sync_batchnorm
    except ImportError:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if any(isinstance(m, BatchNormAct2d) for m in module.modules()):
        return convert_sync_batchnorm(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def mean_over_ranks(values: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors -> floats averaged over all ranks (one all-reduce for the whole dict)."""
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    if world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= world_size()
    return dict(zip(values, stacked.tolist()))


class RankSlice(Sampler[list[T]]):
    """This rank's contiguous slice of every global batch of ``batches``."""

    def __init__(self, batches: Sampler[list[T]], global_batch: int) -> None:
        self.batches, self.rank, self.world = batches, rank(), world_size()
        if global_batch % self.world:
            raise ValueError(f"train.batch_size {global_batch} is the global batch and must be divisible by the "
                             f"{self.world} processes")
        self.per_rank = global_batch // self.world

    def __iter__(self) -> Iterator[list[T]]:
        start = self.rank * self.per_rank
        for batch in self.batches:
            yield batch[start : start + self.per_rank]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def shard_batches(batches: Sampler[list[T]], global_batch: int) -> Sampler[list[T]]:
    return batches if world_size() == 1 else RankSlice(batches, global_batch)


def shard(dataset: Dataset) -> Dataset:
    """Every ``world``-th item starting at this rank (undone by :func:`gather_shards`)."""
    if world_size() == 1:
        return dataset
    return Subset(dataset, range(rank(), len(dataset), world_size()))  # type: ignore[arg-type]


def gather_shards(items: Sequence[Any]) -> list[Any] | None:
    """Per-rank lists from :func:`shard` -> the full list in dataset order on rank 0, None elsewhere."""
    if world_size() == 1:
        return list(items)
    parts: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(list(items), parts, dst=0)
    if parts is None:
        return None
    missing = object()
    return [x for group in zip_longest(*parts, fillvalue=missing) for x in group if x is not missing]
