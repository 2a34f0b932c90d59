"""AdaBN (Li et al., "Adaptive Batch Normalization for practical domain adaptation", 2018): a network keeps its
weights and every BatchNorm layer's running mean and variance is re-estimated on unlabelled images of the domain
it is evaluated on. With a model trained on a source domain only, it is the classic adaptation baseline that needs
no training: it tells how much of an adapted model's gain the target's normalisation statistics alone give.

The statistics are the cumulative average over the batches (as ``torch.optim.swa_utils.update_bn``), computed in
training mode, as BatchNorm computes them during training (dropout drawn from a fixed seed, so that the same call
gives the same statistics); labels are never read. Re-estimating only some layers (``layers``: module-name prefixes,
e.g. ``encoder.bn1``, the stem) keeps the others' statistics and normalises with them during the passes, which
tells where in the network the target's statistics act.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtlda.data.batch import collate
from mtlda.errors import UserInputError
from mtlda.scenarios.checkpoint import isolated_rng

ADABN_SEED = 0  # the dropout draws of the training-mode passes: the same statistics every time


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (SyncBatchNorm included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def selected_batchnorm_layers(model: nn.Module, prefixes: Sequence[str] = ()) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` whose module name is one of ``prefixes`` or lies under one (every layer if
    ``prefixes`` is empty); a prefix that names no BatchNorm layer is a user error listing names that do."""
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    for prefix in prefixes:
        if not any(under(name, prefix) for name, _ in named):
            examples = ", ".join(name for name, _ in named[:3])
            parents = ", ".join(dict.fromkeys(name.split(".")[0] for name, _ in named))
            raise UserInputError(f"no BatchNorm layer is named {prefix!r} or lies under it (module names such as "
                                 f"{examples}, or their parents: {parents})")
    return [m for name, m in named if not prefixes or any(under(name, p) for p in prefixes)]


def batches_of_at_least_two(count: int, batch_size: int) -> list[list[int]]:
    """Indices 0..count-1 in order, in batches of ``batch_size`` (2 if smaller); a last batch of one image joins the
    one before (a training-mode pass needs two images per batch, e.g. for ASPP's image pooling). ``count`` >= 2."""
    size = max(batch_size, 2)
    batches = [list(range(i, min(i + size, count))) for i in range(0, count, size)]
    if len(batches[-1]) == 1:
        batches[-2:] = [batches[-2] + batches[-1]]
    return batches


def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, num_images: int, batch_size: int,
                          device: torch.device, layers: Sequence[str] = ()) -> int:
    """Replace the running statistics of the BatchNorm layers of ``model`` (every one, or those named by ``layers``:
    :func:`selected_batchnorm_layers`) by those of the first ``num_images`` images of ``dataset`` (samples with an
    ``image`` (3, H, W)), read in order in batches of ``batch_size`` (at least two: :func:`batches_of_at_least_two`);
    the other layers normalise with their own statistics meanwhile. Leaves ``model`` in eval mode, its statistics
    unchanged if a pass fails; returns the number of images used (``num_images`` or the data set's size)."""
    used = min(num_images, len(dataset))
    if used < 2 or batch_size < 1:
        raise ValueError(f"recalibrate_batchnorm needs num_images >= 2 images in the data set (got {num_images} of "
                         f"{len(dataset)}) and batch_size >= 1 (got {batch_size})")
    every = batchnorm_layers(model)
    if not every:
        raise ValueError("recalibrate_batchnorm: the model has no BatchNorm layer, nothing to re-estimate")
    selected = selected_batchnorm_layers(model, layers)
    kept = [m for m in every if not any(m is s for s in selected)]
    loader = DataLoader(dataset, batch_sampler=batches_of_at_least_two(used, batch_size), collate_fn=collate)
    saved = [(m, {k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in selected]
    try:
        with isolated_rng(), torch.no_grad():
            torch.manual_seed(ADABN_SEED)
            model.train()
            for m in kept:
                m.eval()
            for m in selected:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches
            for batch in loader:
                model(batch.image.to(device))
        for m, _, momentum in saved:
            m.momentum = momentum
    except BaseException:
        for m, state, momentum in saved:
            m.load_state_dict(state)
            m.momentum = momentum
        raise
    finally:
        model.eval()
    return used
