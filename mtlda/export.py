"""Export a trained network for inference outside Python training code: TorchScript or ONNX.

The exported module takes one input, ``image`` (B, 3, H, W) float32 RGB in [0, 1] (normalisation is inside), and
returns a tuple of the raw scale-0 outputs (full resolution), one per task in sorted task-name order, e.g.
(depth, normals, semseg). Decoding per task (also written to ``<out>.json`` with the values of the checkpoint):

* ``semseg`` (B, C, H, W) logits: class = argmax over C, probabilities = softmax;
* ``depth`` (B, 1, H, W) scaled inverse depth y: metres d = s / max(y, 1e-6) - c (s, c from the checkpoint);
* ``normals`` (B, 3, H, W): unit normal n / |n|, camera frame x right, y down, z forward, facing the camera;
* ``edges`` (B, 1, H, W) logit: probability = sigmoid;
* ``disp`` (B, 1, H, W) sigmoid disparity: depth = 1 / (1/max + (1/min - 1/max) disp), up to scale.

H and W are fixed at export (the checkpoint's evaluation size unless given); the batch size is free.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlda.api import load_model
from mtlda.errors import UserInputError
from mtlda.files import atomic_path, refuse_overwriting_source, write_text_atomic
from mtlda.models.network import MultiTaskNet
from mtlda.schema import ExperimentConfig

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 18


class RawOutputs(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> tuple of raw scale-0 outputs (B, C_t, H, W), tasks in ``self.tasks`` order."""

    def __init__(self, model: MultiTaskNet) -> None:
        super().__init__()
        self.model = model
        self.tasks = tuple(sorted(model.tasks))

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        predictions = self.model(image)
        return tuple(predictions[(task, 0)] for task in self.tasks)


def load_trained_model(checkpoint: str | os.PathLike) -> tuple[MultiTaskNet, ExperimentConfig]:
    """The network of an mtlda checkpoint on the CPU in eval mode, and its config (no pretrained weights fetched:
    the checkpoint has them all)."""
    predictor = load_model(checkpoint, "cpu")
    return predictor.network.eval(), predictor.config


def _write(wrapper: RawOutputs, example: Tensor, fmt: str, path: Path) -> None:
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input checks run once, at trace time
            torch.jit.trace(wrapper, example, check_trace=False).save(str(path))
    else:
        torch.onnx.export(wrapper, (example,), str(path), input_names=["image"], output_names=list(wrapper.tasks),
                          opset_version=ONNX_OPSET, dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)


def export_model(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike, height: int | None = None,
                 width: int | None = None) -> dict[str, Any]:
    """Write ``out`` (TorchScript or ONNX, see the module docstring) and ``<out>.json`` describing its input and
    outputs (both written atomically); returns that description."""
    if fmt not in EXPORT_FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnxscript") is None:
        raise UserInputError('ONNX export needs the onnxscript package: pip install "mtlda[onnx]" (or export with '
                             "--format torchscript)")
    out = Path(out)
    refuse_overwriting_source(out, Path(checkpoint))
    refuse_overwriting_source(Path(f"{out}.json"), Path(checkpoint))
    predictor = load_model(checkpoint, "cpu")
    model, cfg = predictor.network.eval(), predictor.config
    height = height or cfg.data.val_height or cfg.data.height
    width = width or cfg.data.val_width or cfg.data.width
    model.valid_input_size(height, width)
    wrapper = RawOutputs(model).eval()
    example = torch.rand(1, 3, height, width)
    with atomic_path(out) as partial, torch.no_grad():
        _write(wrapper, example, fmt, partial)
        shapes = [list(output.shape[1:]) for output in wrapper(example)]
    description = {
        "format": fmt,
        "checkpoint": str(checkpoint),
        "input": {"name": "image", "shape": ["B", 3, height, width], "dtype": "float32", "range": "RGB in [0, 1]"},
        "outputs": [{"name": task, "shape": ["B", *shape], "decoding": predictor.tasks[task].decoding_rule()}
                    for task, shape in zip(wrapper.tasks, shapes)],
    }
    write_text_atomic(f"{out}.json", json.dumps(description, indent=2) + "\n")
    return description
