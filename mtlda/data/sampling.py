"""Resumable, seed-determined data order.

The batch order of epoch e is a permutation drawn from ``(seed, e)``, split across ranks, and every sample gets
its own augmentation seed. A run resumed at iteration i therefore sees exactly the batches (and augmentations)
that an uninterrupted run sees from iteration i on, whatever the number of loader workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation_seed)`` for one epoch, starting at batch ``start``."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 start: int = 0, shuffle: bool = True) -> None:
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, epoch
        self.rank, self.world, self.start, self.shuffle = rank, world, start, shuffle

    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world)

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=gen) if self.shuffle else torch.arange(self.size)
        aug_seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=gen)
        per_rank = self.batches_per_epoch() * self.batch_size
        mine = order[self.rank :: self.world][:per_rank]
        for b in range(self.start, self.batches_per_epoch()):
            idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(int(i), int(aug_seeds[i])) for i in idx]


class SeededDataset(Dataset):
    """Wraps a dataset so that ``dataset[(i, seed)]`` runs ``dataset[i]`` with all RNGs seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def own_process_group(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker leaves the process group, so that SIGINT or SIGTERM sent to the
    group (Ctrl-C in a terminal, a batch scheduler) reaches the main process only, which finishes its step, saves
    and stops its workers itself, instead of failing on a dead worker; a signal sent to the worker itself (the
    loader's or multiprocessing's shutdown) still ends it."""
    os.setpgid(0, 0)


def infinite_batches(dataset: Dataset, batch_size: int, seed: int, start_iteration: int, collate_fn: Callable,
                     workers: int = 0, rank: int = 0, world: int = 1, pin_memory: bool = False) -> Iterator[Any]:
    """Batches forever, epoch after epoch, beginning where iteration ``start_iteration`` would be."""
    size = len(dataset)  # type: ignore[arg-type]
    per_epoch = size // (batch_size * world)
    if per_epoch == 0:
        raise ValueError(
            f"the training split has {size} samples, fewer than one batch of {batch_size} x {world} rank(s): "
            "lower data.batch_size or add data"
        )
    epoch, start = divmod(start_iteration, per_epoch)
    wrapped = SeededDataset(dataset)
    while True:
        sampler = EpochBatchSampler(size, batch_size, seed, epoch, rank, world, start)
        loader = DataLoader(wrapped, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                            pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed + epoch),
                            worker_init_fn=own_process_group)
        yield from loader
        epoch, start = epoch + 1, 0
