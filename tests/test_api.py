"""The Python API: a checkpoint loads without the pretrained weights it was started from, images of every accepted
kind are read alike, and the network sees the image resized as the data pipeline resizes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtlda.api import as_image, load_model
from mtlda.config import load_config, to_dict
from mtlda.data.augment import resize_image
from mtlda.errors import UserInputError
from mtlda.resize import resize_to
from mtlda.scenarios.checkpoint import save_checkpoint
from mtlda.weights.targets import build_experiment_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = ["data.height=32", "data.width=64"]


@pytest.fixture(scope="module")
def checkpoint(module_tmp) -> Path:
    """An S-D-N model whose config names pretrained weights this machine does not have (trained elsewhere)."""
    cfg = load_config(ROOT / "experiments/supervised/toycity/sdn_mteb.yaml", SIZE)
    torch.manual_seed(0)
    model = build_experiment_model(cfg)
    stored = to_dict(cfg)
    stored["model"]["pretrained"] = "/home/elsewhere/resnet18.pth"
    path = module_tmp / "model.pt"
    save_checkpoint({"modules": {"model": model.state_dict()}, "config": stored, "iteration": 0}, path)
    return path


def test_a_checkpoint_loads_without_the_pretrained_file_its_training_started_from(checkpoint):
    model = load_model(checkpoint)
    assert model.config.model.pretrained == "none"
    assert model.predict(np.zeros((32, 64, 3), np.uint8)).depth.shape == (32, 64)


def test_the_network_sees_the_image_resized_as_in_training_when_only_the_width_shrinks(checkpoint):
    model = load_model(checkpoint)
    rgb = torch.rand(3, 32, 256, generator=torch.Generator().manual_seed(0))  # height kept, width / 4
    out = model.predict(rgb)
    with torch.no_grad():
        raw = model.network(resize_image(rgb, (32, 64))[None])[("depth", 0)]
    expected = model.tasks["depth"].decode(resize_to(raw, (32, 256)))[0, 0]
    torch.testing.assert_close(out.depth, expected)


def test_images_of_every_accepted_kind_are_read_alike():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    reference = as_image(pixels)
    assert reference.dtype == torch.float32 and 0 <= float(reference.min()) and float(reference.max()) <= 1
    torch.testing.assert_close(as_image(torch.from_numpy(pixels).permute(2, 0, 1)), reference)  # read_image's kind
    torch.testing.assert_close(as_image(pixels.astype(np.uint16) * 257), reference)
    torch.testing.assert_close(as_image(pixels / 255.0), reference)
    with pytest.raises(UserInputError, match=r"an image array has values in \[1, 248\]: floats must be in \[0, 1\]"):
        as_image(pixels.astype(np.float32))
    with pytest.raises(UserInputError, match="int32 values: pass uint8, uint16 or floats"):
        as_image(torch.from_numpy(pixels.astype(np.int32)).permute(2, 0, 1))
