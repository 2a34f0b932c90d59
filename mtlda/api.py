"""The Python API for notebooks and scripts: load a trained model and predict every task on an image.

    >>> import mtlda
    >>> model = mtlda.load_model("runs/toycity_sdn_mteb/s0/best.pt")
    >>> out = model.predict("street.png")          # or an (H, W, 3) uint8 array, or a (3, H, W) tensor in [0, 1]
    >>> out.semseg.shape, out.depth.shape         # (H, W) class ids, (H, W) metres: the input's size

Images are resized to the model's training resolution (metric depth depends on it), predicted, and the outputs
resized back to the input's size (class ids as the argmax of the bilinearly resized logits, unit normals
renormalised).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlda.config import load_config
from mtlda.data.augment import resize_image
from mtlda.data.io import read_rgb
from mtlda.errors import UserInputError
from mtlda.resize import resize_to
from mtlda.scenarios.checkpoint import CheckpointError, load_checkpoint, state_mismatch
from mtlda.scenarios.dense import DenseScenario, input_size
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.registry import scenario_class
from mtlda.scenarios.runner import without_pretrained
from mtlda.schema import ExperimentConfig
from mtlda.tasks import Task

ImageLike = str | os.PathLike | np.ndarray | Tensor


@dataclass
class Prediction:
    """Decoded per-task outputs at the input's size: ``maps[task]`` plus attribute access (``out.depth``).

    semseg: (H, W) int64 class ids (``class_names`` names them); depth, disp: (H, W) float metres (disp up to
    scale); normals: (3, H, W) unit vectors (camera frame: x right, y down, z forward); edges: (H, W) probability.
    ``raw`` holds each task's decoded map before the class-id / squeeze conversion, (1, C, H, W).
    """

    maps: dict[str, Tensor]
    class_names: list[str]
    raw: dict[str, Tensor] = field(repr=False, default_factory=dict)

    def __getattr__(self, name: str) -> Tensor:
        maps = self.__dict__.get("maps", {})
        if name in maps:
            return maps[name]
        raise AttributeError(f"no prediction {name!r}; this model predicts {sorted(maps)}")


def image_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; an error about the image otherwise."""
    if Path(path).is_dir():
        raise UserInputError(f"{path} is a folder: pass image files (e.g. {path}/*.png)")
    if not Path(path).is_file():
        raise UserInputError(f"image not found: {path} (pass the path of an existing image file)")
    return Path(path)


_INTEGER_SCALES = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _unit_range(image: Tensor, what: str) -> Tensor:
    """(3, H, W) float32 in [0, 1] of uint8 (/ 255), uint16 (/ 65535) or float values already in [0, 1]."""
    if image.dtype in _INTEGER_SCALES:
        return image.float() / _INTEGER_SCALES[image.dtype]
    if not image.is_floating_point():
        raise UserInputError(f"{what} of {image.dtype} values: pass uint8, uint16 or floats in [0, 1]")
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise UserInputError(f"{what} has values in [{float(image.min()):g}, {float(image.max()):g}]: floats must "
                             "be in [0, 1] (divide 8-bit values by 255)")
    return image.float()


def as_image(image: ImageLike) -> Tensor:
    """(3, H, W) float32 RGB in [0, 1] of a file path, an (H, W, 3) array or a (3, H, W) tensor (uint8, uint16 or
    floats in [0, 1])."""
    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(read_rgb(image_file(image))).permute(2, 0, 1).float().div(255)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserInputError(f"an image array must be (H, W, 3) RGB, got shape {image.shape}")
        return _unit_range(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), "an image array")
    if image.ndim != 3 or image.shape[0] != 3:
        raise UserInputError(f"an image tensor must be (3, H, W) RGB in [0, 1], got shape {tuple(image.shape)}")
    return _unit_range(image, "an image tensor")


class Predictor(nn.Module):
    """A trained network with its tasks and config, in eval mode (``mtlda.load_model`` returns one)."""

    def __init__(self, network: nn.Module, tasks: dict[str, Task], cfg: ExperimentConfig,
                 class_names: list[str]) -> None:
        super().__init__()
        self.network = network.eval()
        self.tasks = tasks
        self.config = cfg
        self.class_names = class_names
        self.size = input_size(cfg.data, train=False)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def predict(self, image: ImageLike, size: tuple[int, int] | None = None) -> Prediction:
        """Every task's decoded map for one image, at the image's size; ``size`` (H, W) is the network input
        (default: the evaluation resolution the model was trained for)."""
        rgb = as_image(image).to(self.device)
        height, width = rgb.shape[-2:]
        net_size = size or self.size
        self.network.valid_input_size(*net_size)
        preds = self.network(resize_image(rgb, net_size)[None])
        maps, raw = {}, {}
        for name, task in self.tasks.items():
            decoded = task.decode(resize_to(preds[(name, 0)].float(), (height, width)))
            raw[name] = decoded
            maps[name] = task.output_map(decoded)
        return Prediction(maps, self.class_names, raw)


def build_inference(cfg: ExperimentConfig, state: dict[str, Tensor], device: torch.device | str = "cpu") -> Predictor:
    """A :class:`Predictor` of ``cfg``'s scenario with the network weights ``state`` (no data set is read)."""
    engine = Engine(cfg, Path(cfg.workdir), torch.device(device), show_progress=False)
    scenario: DenseScenario = scenario_class(cfg.scenario)(cfg, engine, train=False, with_data=False)
    network = scenario.inference_model()
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint's weights do not fit the model its config describes "
                              f"({state_mismatch(err)}); use a checkpoint written by this version of mtlda with "
                              "its own config (or retrain)") from None
    return Predictor(network, scenario.tasks, cfg, list(scenario.info.class_names))


def load_model(checkpoint: str | os.PathLike, device: str = "cpu", overrides: tuple[str, ...] = ()) -> Predictor:
    """The model of a checkpoint (``last.pt``, ``best.pt``, an exported weights file or an imported official
    model) in eval mode, with its config attached (``model.config``) and ``model.predict(image)``."""
    ckpt: dict[str, Any] = load_checkpoint(checkpoint, device)
    cfg = load_config(None, overrides, stored=ckpt["config"])
    return build_inference(without_pretrained(cfg), ckpt["modules"]["model"], device)
