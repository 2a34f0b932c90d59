"""Exported models (TorchScript, ONNX via onnxruntime) give the eager model's raw outputs, tasks in sorted order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mtlda.config import load_config, to_dict
from mtlda.errors import UserInputError
from mtlda.export import RawOutputs, export_model, load_trained_model
from mtlda.scenarios.checkpoint import save_checkpoint
from mtlda.weights.targets import build_experiment_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(module_tmp) -> Path:
    """A toycity-sized S-D-N mTEB model (ResNet-18, decoder [16, 16, 32, 64, 64], 64x128) with every branch live."""
    cfg = load_config(ROOT / "experiments/supervised/toycity/sdn_mteb.yaml", ["data.height=64", "data.width=128"])
    torch.manual_seed(0)
    model = build_experiment_model(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    for name, parameter in model.named_parameters():
        if name.endswith(".alpha"):
            parameter.data.uniform_(0.5, 1.5)
    path = module_tmp / "model.pt"
    save_checkpoint({"modules": {"model": model.state_dict()}, "config": to_dict(cfg), "iteration": 0}, path)
    return path


def _eager(checkpoint: Path, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model, _ = load_trained_model(checkpoint)
    with torch.no_grad():
        return RawOutputs(model)(image)


def test_torchscript_export_matches_the_eager_model(checkpoint: Path, tmp_path: Path) -> None:
    description = export_model(checkpoint, "torchscript", tmp_path / "model.ts")
    assert [o["name"] for o in description["outputs"]] == ["depth", "normals", "semseg"]
    assert json.loads((tmp_path / "model.ts.json").read_text()) == description
    assert "80.0 / max(y, 1e-6) - 0.0" in description["outputs"][0]["decoding"]
    image = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = torch.jit.load(str(tmp_path / "model.ts"))(image)
    for exported, eager in zip(outputs, _eager(checkpoint, image), strict=True):
        torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_matches_the_eager_model_in_onnxruntime(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime  # a test dependency (setup.cfg), as onnxscript, which torch.onnx.export(dynamo=True) needs
    description = export_model(checkpoint, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [o["name"] for o in description["outputs"]]
    image = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    outputs = session.run(None, {"image": image.numpy()})
    for exported, eager in zip(outputs, _eager(checkpoint, image), strict=True):
        torch.testing.assert_close(torch.from_numpy(exported), eager, rtol=1e-4, atol=1e-5)


def test_unsupported_sizes_and_formats_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not supported"):
        export_model(checkpoint, "torchscript", tmp_path / "m.ts", height=60, width=128)
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(checkpoint, "tflite", tmp_path / "m.tflite")


def test_onnx_export_without_onnxscript_says_what_to_install(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(UserInputError, match=r'pip install "mtlda\[onnx\]"'):
        export_model(checkpoint, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
