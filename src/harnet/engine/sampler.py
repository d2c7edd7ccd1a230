"""The training image stream: seeded, resumable batches and per-draw seeded augmentation.

The image order is a seeded stream of permutations indexed by the global step, and each sample's
augmentation is seeded by its position in that stream. So a run stopped at step k and resumed from its
checkpoint draws exactly the batches an uninterrupted run would, whatever the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler


class InfiniteBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(dataset index, draw number)`` from an endless stream of seeded permutations.

    Starting at ``start_step`` skips exactly the draws already consumed, which is what makes resume
    exact. The draw number seeds that sample's augmentation.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.start_step = size, batch_size, seed, start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        draw = self.start_step * self.batch_size
        epoch, offset = divmod(draw, self.size)
        batch: list[tuple[int, int]] = []
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            for index in order[offset:].tolist():
                batch.append((index, draw))
                draw += 1
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs it to exist for some code paths
        return 2**62


class AugmentedDataset(Dataset):
    """Applies the training transforms with the global RNG seeded by the draw number."""

    def __init__(self, base: Dataset, transforms: Any, seed: int) -> None:
        self.base, self.transforms, self.seed = base, transforms, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        index, draw = key
        image, target = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + draw)
            return self.transforms(image, target)
