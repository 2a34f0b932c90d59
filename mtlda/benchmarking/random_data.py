"""Fixed random samples of a data set's shapes, to time the paper's models without the data set on disk."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from mtlda.constants import IGNORE_INDEX
from mtlda.data.batch import Sample
from mtlda.data.targets import BINARY_MAP, LABEL_MAP, UNIT_VECTORS, target_kind
from mtlda.scenarios.dense import DenseScenario, input_size, target_names
from mtlda.schema import DataConfig


class RandomSplit(Dataset):
    """``count`` fixed random samples of size (H, W): image, K, every target of ``targets`` (by its kind) with its
    validity mask, and the neighbour frames ``frames``. Stands in for a data set that is not on disk."""

    def __init__(self, targets: Sequence[str], num_classes: int, size: tuple[int, int], frames: Sequence[int],
                 count: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.samples = [self._sample(targets, num_classes, size, frames, g, index) for index in range(count)]

    @staticmethod
    def _sample(targets: Sequence[str], num_classes: int, size: tuple[int, int], frames: Sequence[int],
                g: torch.Generator, index: int) -> Sample:
        h, w = size
        K = torch.tensor([[float(w), 0.0, w / 2], [0.0, float(w), h / 2], [0.0, 0.0, 1.0]])
        sample = Sample(torch.rand(3, h, w, generator=g), K, id=f"random-{index}",
                        frames={offset: torch.rand(3, h, w, generator=g) for offset in frames})
        for name in targets:
            kind = target_kind(name)
            if kind is LABEL_MAP:
                labels = torch.randint(0, num_classes, (h, w), generator=g)
                sample.targets[name] = torch.where(torch.rand(h, w, generator=g) < 0.05, IGNORE_INDEX, labels)
                continue
            if kind is UNIT_VECTORS:
                vectors = torch.randn(3, h, w, generator=g) - torch.tensor([0.0, 0.0, 2.0])[:, None, None]
                sample.targets[name] = vectors / vectors.norm(dim=0, keepdim=True)
            elif kind is BINARY_MAP:
                sample.targets[name] = (torch.rand(1, h, w, generator=g) < 0.1).float()
            else:
                sample.targets[name] = 2 + 78 * torch.rand(1, h, w, generator=g)
            sample.masks[name] = torch.rand(1, h, w, generator=g) > 0.05
        return sample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def with_random_data(cls: type[DenseScenario]) -> type[DenseScenario]:
    """``cls`` reading :class:`RandomSplit` samples of its data configs' training size instead of files."""

    def build_split(self: DenseScenario, data: DataConfig, split: str, train: bool) -> Dataset:
        return RandomSplit(target_names(self.tasks), self.info.num_classes, input_size(data, train),
                           data.frames if train else (), count=2 * data.batch_size)

    return type(f"Random{cls.__name__}", (cls,), {"build_split": build_split})
