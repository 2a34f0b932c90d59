"""AdaBN (Li et al., "Adaptive Batch Normalization for practical domain adaptation", 2018): a network keeps its
weights and every BatchNorm layer's running mean and variance is re-estimated on unlabelled images of the domain
it is evaluated on. With a model trained on a source domain only, it is the classic adaptation baseline that needs
no training: it tells how much of an adapted model's gain the target's normalisation statistics alone give.

The statistics are the cumulative average over the batches (``torch.optim.swa_utils.update_bn``), computed in
training mode, as BatchNorm computes them during training (dropout drawn from a fixed seed, so that the same call
gives the same statistics); labels are never read.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset

from mtlda.data.batch import collate
from mtlda.scenarios.checkpoint import isolated_rng

ADABN_SEED = 0  # the dropout draws of the training-mode passes: the same statistics every time


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (SyncBatchNorm included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batches_of_at_least_two(count: int, batch_size: int) -> list[list[int]]:
    """Indices 0..count-1 in order, in batches of ``batch_size`` (2 if smaller); a last batch of one image joins the
    one before (a training-mode pass needs two images per batch, e.g. for ASPP's image pooling). ``count`` >= 2."""
    size = max(batch_size, 2)
    batches = [list(range(i, min(i + size, count))) for i in range(0, count, size)]
    if len(batches[-1]) == 1:
        batches[-2:] = [batches[-2] + batches[-1]]
    return batches


def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, num_images: int, batch_size: int,
                          device: torch.device) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by those of the first ``num_images``
    images of ``dataset`` (samples with an ``image`` (3, H, W)), read in order in batches of ``batch_size`` (at least
    two: :func:`batches_of_at_least_two`). Leaves ``model`` in eval mode, its statistics unchanged if a pass fails;
    returns the number of images used (``num_images`` or the data set's size)."""
    used = min(num_images, len(dataset))
    if used < 2 or batch_size < 1:
        raise ValueError(f"recalibrate_batchnorm needs num_images >= 2 images in the data set (got {num_images} of "
                         f"{len(dataset)}) and batch_size >= 1 (got {batch_size})")
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("recalibrate_batchnorm: the model has no BatchNorm layer, nothing to re-estimate")
    loader = DataLoader(dataset, batch_sampler=batches_of_at_least_two(used, batch_size), collate_fn=collate)

    def images() -> Iterator[Tensor]:
        for batch in loader:
            yield batch.image.to(device)

    saved = [(m, {k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in layers]
    try:
        with isolated_rng():
            torch.manual_seed(ADABN_SEED)
            update_bn(images(), model)
    except BaseException:
        for m, state, momentum in saved:
            m.load_state_dict(state)
            m.momentum = momentum
        raise
    finally:
        model.eval()
    return used
