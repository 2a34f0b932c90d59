"""Import the self-supervised depth model of Hoyer et al. ("Three Ways ...") that the paper's SDE starts from.

What the checkpoint is, established from the 3-ways repository (lhoyer/improving_segmentation_with_selfsupervised_depth,
commit 34274f6): ``train.py:save_monodepth_models`` writes one plain ``state_dict()`` per sub-model,
``depth.pth``, ``pose_encoder.pth``, ``pose.pth`` and ``encoder.pth`` (the last only when the backbone was trained,
as in the ``dec6`` phase), into one folder; ``models/utils.py`` downloads the released models as zips that unpack
to those files (``mono_cityscapes_1024x512_r101dil_aspp_dec6_lr5_fd2_crop512x512bs4`` is the one DenseMTL uses,
trained by ``configs/cityscapes_monodepth_highres_dec6_crop.yml``). Their layouts:

* ``encoder.pth``: ``ResnetEncoder`` (``models/resnet_encoder.py``): torchvision ResNet-101 under ``encoder.``,
  layer4 dilated, ``fc``/``avgpool`` replaced by Identity before saving (no ``fc`` keys); inputs normalised with
  (x - 0.45) / 0.225.
* ``depth.pth``: ``DepthDecoder`` (``models/depth_decoder.py``) with ASPP 6/12/18 and ``num_ch_dec``
  [64, 128, 128, 256, 256]: the positional layout of :mod:`mtlda.weights.layout`, prediction layers
  ``decoder.14..17.conv.*`` (reflection-padded 3x3 conv, then sigmoid) for scales 0, 1, 2, 3.
* ``pose_encoder.pth``: ``ResnetEncoder(18, num_input_images=2)``: torchvision ResNet-18 with a 6-channel conv1.
* ``pose.pth``: ``PoseDecoder(num_input_features=1, num_frames_to_predict_for=2)`` (``models/pose_decoder.py``):
  ``net.0`` squeeze 1x1 512 -> 256, ``net.1``/``net.2`` 3x3 256 -> 256, ``net.3`` 1x1 256 -> 12 (two poses of 6).
  With pair inputs only the first pose is used (``models/joint_segmentation_depth.py``: ``axisangle[:, 0]``), so
  rows 0-5 of ``net.3`` map to mtlda's 6-output ``predict`` and rows 6-11 are dropped.

The 3-ways pose encoder normalises its input with (x - 0.45) / 0.225 as well; the SDE scenario builds mtlda's
PoseNet with ``model.input_norm``, so ``model.input_norm=monodepth`` (:data:`CONFIG_OVERRIDES`) serves both nets.

Assumed, not checked against a real file: that the released zip holds exactly these four files as written by that
code (no extra entries). Every rule is in :data:`FILE_RULES` and the tables it names.

mtlda side: an SDE pretrain checkpoint (``mtlda/scenarios/sde.py``): module ``model`` (a MultiTaskNet with the one
``disp`` head, sigmoid 3x3 sides at scales 0-3) and module ``pose`` (:class:`~mtlda.models.pose.PoseNet`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from mtlda.schema import ExperimentConfig
from mtlda.tasks import DisparityTask
from mtlda.weights.files import load_state_dict
from mtlda.weights.layout import decoder_key
from mtlda.weights.mapping import WeightImportError, check_fits, translate_keys

DISP = DisparityTask.name
# The scale of each DepthDecoder prediction layer from position 14 on: ``scales = range(num_scales)``, num_scales 4.
DISP_SIDE_ORDER = (0, 1, 2, 3)
POSE_DECODER_MODULES = {"0": "squeeze", "1": "conv1", "2": "conv2", "3": "predict"}
POSE_OUTPUTS = 6  # rows of net.3 kept: the first of the two predicted poses
# Config overrides an imported pretrain model needs (``--set`` syntax).
CONFIG_OVERRIDES = ("model.input_norm=monodepth", "model.pretrained=none", "sde.stage=pretrain")
# ModelConfig / SDEConfig values the checkpoint fixes that no tensor shape reveals.
THREEWAYS_SETTINGS = {
    "model.dilation": [False, False, True],
    "model.aspp_rates": [6, 12, 18],
    "sde.min_depth": 0.1,
    "sde.max_depth": 100.0,
}


def threeways_setting_mismatches(cfg: ExperimentConfig) -> list[str]:
    """Settings of ``cfg`` that differ from the checkpoint's (empty when they all match)."""
    problems = []
    if cfg.scenario != "sde" or cfg.sde.stage != "pretrain":
        problems.append(f"the experiment is scenario {cfg.scenario!r} stage {cfg.sde.stage!r}; a 3-ways model is an "
                        "sde pretrain model (use experiments/sde/cityscapes/pretrain.yaml)")
    for dotted, value in THREEWAYS_SETTINGS.items():
        section, key = dotted.split(".")
        actual = getattr(getattr(cfg, section), key)
        if actual != value:
            problems.append(f"{dotted} is {actual!r}, the 3-ways model needs {value!r}")
    return problems


def _prefixed(old: str, new: str) -> Callable[[str], str | None]:
    return lambda key: f"{new}{key[len(old):]}" if key.startswith(old) else None


def _depth_decoder(key: str) -> str | None:
    inner = decoder_key(key, DISP_SIDE_ORDER)
    return f"decoders.{DISP}.{inner}" if inner else None


def _pose_decoder(key: str) -> str | None:
    match = re.fullmatch(r"net\.(\d+)\.(weight|bias)", key)
    if match is None or match.group(1) not in POSE_DECODER_MODULES:
        return None
    return f"decoder.{POSE_DECODER_MODULES[match.group(1)]}.{match.group(2)}"


def _first_pose(key: str, value: Tensor) -> Tensor:
    return value[:POSE_OUTPUTS].clone() if key.startswith("decoder.predict.") else value


@dataclass(frozen=True)
class FileRule:
    """How one file of the 3-ways folder maps: into which mtlda module, by which key translator, with which
    tensor conversion (mtlda key, tensor -> tensor)."""

    module: str
    translate: Callable[[str], str | None]
    convert: Callable[[str, Tensor], Tensor] = lambda key, value: value


FILE_RULES = {
    "encoder.pth": FileRule("model", _prefixed("encoder.", "encoder.")),
    "depth.pth": FileRule("model", _depth_decoder),
    "pose_encoder.pth": FileRule("pose", _prefixed("encoder.", "encoder.")),
    "pose.pth": FileRule("pose", _pose_decoder, _first_pose),
}


def read_threeways(path: str | Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, object]]]:
    """(file name -> tensors, file name -> scalar metadata) of a 3-ways model folder or its zip.

    WeightImportError naming the missing files.
    """
    path = Path(path)
    if path.is_dir():
        present = {name: path / name for name in FILE_RULES if (path / name).is_file()}
        contents = {name: load_state_dict(file, str(file)) for name, file in present.items()}
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = {Path(info.filename).name: info for info in archive.infolist() if not info.is_dir()}
            contents = {name: load_state_dict(archive.read(members[name]), f"{path}:{name}")
                        for name in FILE_RULES if name in members}
    else:
        raise WeightImportError(f"{path}: not a folder or zip of a 3-ways model (expected {', '.join(FILE_RULES)})")
    missing = [name for name in FILE_RULES if name not in contents]
    if missing:
        raise WeightImportError(
            f"{path} lacks {', '.join(missing)}; a 3-ways model folder holds {', '.join(FILE_RULES)} (a model "
            "trained with a frozen backbone has no encoder.pth: use the dec6 model, whose encoder was trained)"
        )
    return ({name: tensors for name, (tensors, _) in contents.items()},
            {name: meta for name, (_, meta) in contents.items() if meta})


def threeways_to_mtlda(
    files: Mapping[str, Mapping[str, Tensor]],
    targets: Mapping[str, Mapping[str, Tensor]] | None = None,
    source: str = "3-ways model",
) -> dict[str, dict[str, Tensor]]:
    """mtlda module -> state dict (``model``, ``pose``) from the 3-ways files (file name -> state dict).

    ``targets`` (module -> state dict of the model to load into): when given, missing keys, left-over keys and
    shape mismatches are refused per module.
    """
    modules: dict[str, dict[str, Tensor]] = {}
    for name, rule in FILE_RULES.items():
        if name not in files:
            raise WeightImportError(f"{source}: {name} is missing (needed: {', '.join(FILE_RULES)})")
        renamed = translate_keys(files[name], rule.translate, f"{source}: {name}")
        part = modules.setdefault(rule.module, {})
        for key, value in files[name].items():
            part[renamed[key]] = rule.convert(renamed[key], value)
    if targets is not None:
        for module, state in modules.items():
            check_fits(state, targets[module], f"{source} ({module})")
    return modules
