"""AdaBN: BatchNorm statistics re-estimated on unlabelled images, weights untouched, labels never read."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mtlda.adabn import ADABN_SEED, batches_of_at_least_two, batchnorm_layers, recalibrate_batchnorm
from mtlda.data.batch import Sample, collate
from mtlda.errors import UserInputError

CPU = torch.device("cpu")


def images(count: int, offset: float) -> list[Sample]:
    g = torch.Generator().manual_seed(count)
    return [Sample(image=torch.rand(3, 4, 6, generator=g) * (1 + i % 3) + offset, K=torch.eye(3), id=str(i))
            for i in range(count)]


def test_the_statistics_are_those_of_the_first_images_and_nothing_else_changes():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1))
    model[0].running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    data = images(10, offset=-2.0)
    used = recalibrate_batchnorm(model, data, num_images=8, batch_size=4, device=CPU)
    assert used == 8 and not model.training
    first = torch.stack([s.image for s in data[:8]])
    assert torch.allclose(model[0].running_mean, first.mean((0, 2, 3)), atol=1e-6)
    # cumulative average over the two batches of the unbiased per-batch variances (BatchNorm's own estimator)
    per_batch = [b.transpose(0, 1).reshape(3, -1).var(1) for b in first.split(4)]
    assert torch.allclose(model[0].running_var, torch.stack(per_batch).mean(0), atol=1e-5)
    assert model[0].momentum == 0.1  # restored
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_a_larger_count_than_the_data_set_uses_every_image_and_dropout_draws_are_fixed():
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout(0.5), nn.BatchNorm2d(4))

    a, b = net(), net()
    assert recalibrate_batchnorm(a, images(6, 0.0), 100, 4, CPU) == 6
    torch.manual_seed(123)  # the caller's random state neither changes the result nor is consumed
    before = torch.get_rng_state()
    recalibrate_batchnorm(b, images(6, 0.0), 100, 4, CPU)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[2].running_mean, b[2].running_mean) and torch.equal(a[2].running_var, b[2].running_var)


class NeedsTwo(nn.Module):
    """A BatchNorm network that refuses a training batch of one image, as ASPP's image pooling does."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.bn, self.fail = nn.BatchNorm2d(3), fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and (x.shape[0] < 2 or self.fail):
            raise ValueError(f"a training batch of {x.shape[0]}")
        return self.bn(x)


def test_no_batch_holds_a_single_image():
    assert batches_of_at_least_two(5, 4) == [[0, 1, 2, 3, 4]]
    assert batches_of_at_least_two(9, 4) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert batches_of_at_least_two(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batches_of_at_least_two(3, 1) == [[0, 1, 2]] and batches_of_at_least_two(4, 1) == [[0, 1], [2, 3]]
    model = NeedsTwo()
    assert recalibrate_batchnorm(model, images(5, 0.0), 5, 4, CPU) == 5
    assert recalibrate_batchnorm(model, images(4, 0.0), 10, 1, CPU) == 4  # batches of two at least


def test_a_failing_pass_leaves_the_statistics_as_they_were():
    model = NeedsTwo(fail=True)
    model.bn.running_mean.fill_(3.0)
    with pytest.raises(ValueError, match="training batch"):
        recalibrate_batchnorm(model, images(4, 0.0), 4, 2, CPU)
    assert torch.equal(model.bn.running_mean, torch.full((3,), 3.0)) and model.bn.momentum == 0.1
    assert int(model.bn.num_batches_tracked) == 0 and not model.training


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_images >= 2"):
        recalibrate_batchnorm(nn.BatchNorm2d(3), images(2, 0.0), 1, 4, CPU)
    with pytest.raises(ValueError, match="num_images >= 2"):
        recalibrate_batchnorm(nn.BatchNorm2d(3), images(1, 0.0), 8, 4, CPU)
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate_batchnorm(nn.Conv2d(3, 3, 1), images(2, 0.0), 2, 4, CPU)
    assert batchnorm_layers(nn.Sequential(nn.BatchNorm2d(3), nn.SyncBatchNorm(3))) != []


def test_only_the_named_layers_are_re_estimated_and_the_others_normalise_with_their_own_statistics():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.Sequential(nn.BatchNorm2d(2)))
    model[2][0].running_mean.fill_(4.0)
    model[2][0].running_var.fill_(9.0)
    data = images(8, offset=1.0)
    recalibrate_batchnorm(model, data, 8, 4, CPU, layers=["2"])
    assert torch.equal(model[0].running_mean, torch.zeros(3)) and int(model[0].num_batches_tracked) == 0
    with torch.no_grad():  # the first layer normalised with its own (initial) statistics: x / sqrt(1 + eps)
        features = model[1](torch.stack([s.image for s in data]) / (1 + model[0].eps) ** 0.5)
    assert torch.allclose(model[2][0].running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert model[2][0].momentum == 0.1
    every = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.Sequential(nn.BatchNorm2d(2)))
    every.load_state_dict(model.state_dict())
    recalibrate_batchnorm(every, data, 8, 4, CPU, layers=["0", "2.0"])
    assert not torch.equal(every[0].running_mean, torch.zeros(3))
    assert not torch.allclose(every[2][0].running_mean, model[2][0].running_mean)


def test_a_layer_name_that_names_no_batchnorm_is_refused_with_the_names_that_do():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1))
    with pytest.raises(UserInputError, match="no BatchNorm layer is named 'encoder.bn1'.*such as 0"):
        recalibrate_batchnorm(model, images(4, 0.0), 4, 2, CPU, layers=["encoder.bn1"])
    assert torch.equal(model[0].running_mean, torch.zeros(3))


def test_every_layer_re_estimated_equals_torchs_update_bn():
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1),
                             nn.BatchNorm2d(2))
    ours, reference = net(), net()
    data = images(7, offset=0.5)
    recalibrate_batchnorm(ours, data, 7, 3, CPU)
    torch.manual_seed(ADABN_SEED)
    loader = DataLoader(data, batch_sampler=batches_of_at_least_two(7, 3), collate_fn=collate)  # draws a seed too
    torch.optim.swa_utils.update_bn((batch.image for batch in loader), reference)
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
