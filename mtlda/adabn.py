"""AdaBN (Li et al., "Adaptive Batch Normalization for practical domain adaptation", 2018): a network keeps its
weights and every BatchNorm layer's running mean and variance is re-estimated on unlabelled images of the domain
it is evaluated on. With a model trained on a source domain only, it is the classic adaptation baseline that needs
no training: it tells how much of an adapted model's gain the target's normalisation statistics alone give.

The statistics are the cumulative average over the batches (``torch.optim.swa_utils.update_bn``), computed in
training mode, as BatchNorm computes them during training; labels are never read.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, Subset

from mtlda.data.batch import collate
from mtlda.scenarios.checkpoint import isolated_rng

ADABN_SEED = 0  # the dropout draws of the training-mode passes: the same statistics every time


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (SyncBatchNorm included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, num_images: int, batch_size: int,
                          device: torch.device) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by those of the first ``num_images``
    images of ``dataset`` (samples with an ``image`` (3, H, W)), read in order in batches of ``batch_size``.
    Leaves ``model`` in eval mode; returns the number of images used (``num_images`` or the data set's size)."""
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"recalibrate_batchnorm needs num_images >= 1 and batch_size >= 1, got {num_images}, "
                         f"{batch_size}")
    if not batchnorm_layers(model):
        raise ValueError("recalibrate_batchnorm: the model has no BatchNorm layer, nothing to re-estimate")
    used = min(num_images, len(dataset))
    loader = DataLoader(Subset(dataset, range(used)), batch_size=batch_size, shuffle=False, collate_fn=collate)

    def images() -> Iterator[Tensor]:
        for batch in loader:
            yield batch.image.to(device)

    with isolated_rng():
        torch.manual_seed(ADABN_SEED)
        update_bn(images(), model)
    model.eval()
    return used
