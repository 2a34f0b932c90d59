"""Import the official DenseMTL weights (``{sy,vk,cs}_densemtl_{SD,SDN}.pkl``) into :class:`MultiTaskNet`.

The released files are plain state dicts of the official model (notes 2.2): ``backbone.encoder.*`` (torchvision
ResNet-101, layer4 dilated), ``heads.<task>.decoder.<index>.*`` (positional 3-ways decoders, see
:mod:`mtlda.weights.layout`), ``m.<target>.<stage>.{extract,SA,SxTAM,proj}_<source>.*`` and
``m.<target>.<stage>.post.*`` (the mTEB), and ``params.<task>.{0,1}.*``, a second registration of every ``heads``
and ``m`` tensor (B19) that is checked equal to its original and then dropped.

Conventions are converted, not copied:

* input: the official encoder normalises RGB in [0, 1] with (x - 0.45) / 0.225; the imported model must run with
  ``model.input_norm: monodepth`` (:data:`CONFIG_OVERRIDES`).
* depth: the head regresses y = 65536 / (100 d + 1) = 655.36 / (d + 0.01), d in metres. The weights are kept and
  the model is paired with ``tasks.depth_inv_scale = 655.36`` and ``tasks.depth_inv_offset = 0.01``, so mtlda decodes
  d = 655.36 / y - 0.01, the metric depth the head was trained on (not the official decode's d - 0.99 m, B2).
* normals: the official targets computed from depth (Cityscapes, Synthia, VKITTI2) are (n_x, n_y, |n_z|) in camera
  axes (x right, y down, z forward; notes section 4), mtlda's are camera-facing, n_z < 0 for a surface seen head-on
  (``mtlda/data/batch.py``). The head's third output row (weight and bias) is negated, which maps
  (n_x, n_y, |n_z|) to (n_x, n_y, -|n_z|) exactly. On NYUDv2 the official head learns the released normals files'
  axes as they are (notes 5.4), which mtlda reads as (x, -y, -z) (:data:`mtlda.data.nyudv2.FILE_TO_CAMERA_AXES`):
  there the second and third rows are negated (:func:`normals_axis_signs`). What no linear map converts, on the
  data sets with normals from depth: the official labels were computed from the inverse-depth map treated as
  depth with unscaled intrinsics (B4), so except on fronto-parallel surfaces the imported head predicts those
  pseudo-normals, not true surface normals, and surfaces whose camera-facing normal has n_z > 0 (seen at grazing
  angles) were folded to n_z > 0.
* exchange: the official ``post`` conv of each target concatenates its directional features in Python set order,
  which depends on the process's hash seed and is not stored in the file (B1); mtlda concatenates in sorted source
  order. :func:`fusion_orders` lists every order the file may have been trained with; the mapping permutes the
  ``post`` conv's input-channel blocks from the chosen order to mtlda's.
* mTEB modules: ``extract`` -> ``extract``; SABlock ``attention.0`` (the conv before the sigmoid: the mask) ->
  ``self_attention.mask_conv`` and ``conv`` (the feature branch) -> ``self_attention.feature_conv``; SxTAM
  ``conv_b`` / ``conv_c`` / ``conv_d`` (query from the target, key and value from the source) ->
  ``query_proj`` / ``key_proj`` / ``value_proj``; ``alpha`` -> ``alpha``; ``proj`` -> ``out_proj``;
  ``post`` -> ``exchange.<stage>.fuse.<target>``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtlda.constants import OFFICIAL_DEPTH_INV_OFFSET, OFFICIAL_DEPTH_INV_SCALE
from mtlda.data.nyudv2 import FILE_TO_CAMERA_AXES
from mtlda.schema import ModelConfig
from mtlda.weights.layout import OFFICIAL_DECODER_CHANNELS, decoder_key, side_indices, side_order_from_channels
from mtlda.weights.mapping import KeyTranslator, WeightImportError, check_fits, first_keys, translate_keys

NORMALS = "normals"
# Per-channel factor from the official normals convention (n_x, n_y, |n_z|) to mtlda's camera-facing one.
NORMALS_AXIS_SIGNS = (1.0, 1.0, -1.0)

# Config overrides an imported model needs (``--set`` syntax), applied on top of the mirroring experiment.
CONFIG_OVERRIDES = (
    "model.input_norm=monodepth",
    "model.pretrained=none",
    f"tasks.depth_inv_scale={OFFICIAL_DEPTH_INV_SCALE}",
    f"tasks.depth_inv_offset={OFFICIAL_DEPTH_INV_OFFSET}",
)
# ModelConfig values that the released models fix and that no tensor shape would reveal if they differed.
OFFICIAL_MODEL = {
    "architecture": "3ways",
    "backbone": "resnet101",
    "dilation": [False, False, True],
    "decoder_channels": list(OFFICIAL_DECODER_CHANNELS),
    "aspp_rates": [6, 12, 18],
    "block": "mteb",
    "attention": "spatial",
    "self_attention": True,
    "use_alpha": True,
    "fusion": "add",
}

_ENCODER = re.compile(r"backbone\.encoder\.(.+)")
_HEAD = re.compile(r"heads\.([A-Za-z0-9]+)\.(decoder\..+)")
_PAIR = re.compile(r"m\.([A-Za-z0-9]+)\.(\d+)\.(extract|SA|SxTAM|proj)_([A-Za-z0-9]+)\.(.+)")
_POST = re.compile(r"m\.([A-Za-z0-9]+)\.(\d+)\.post\.(.+)")
_ALIAS = re.compile(r"params\.([A-Za-z0-9]+)\.([01])\.(.+)")
_ALIAS_OF = {"0": "heads", "1": "m"}
# (official branch, module inside it) -> module inside mtlda's ``pairs.<source>_to_<target>`` ("" = the XTAM itself).
XTAM_MODULES = {
    ("extract", "0"): "extract.0",
    ("SA", "attention.0"): "self_attention.mask_conv",
    ("SA", "conv"): "self_attention.feature_conv",
    ("SxTAM", ""): "",
    ("SxTAM", "conv_b.0"): "query_proj.0",
    ("SxTAM", "conv_b.1"): "query_proj.1",
    ("SxTAM", "conv_c.0"): "key_proj.0",
    ("SxTAM", "conv_c.1"): "key_proj.1",
    ("SxTAM", "conv_d.0"): "value_proj.0",
    ("SxTAM", "conv_d.1"): "value_proj.1",
    ("proj", "0"): "out_proj.0",
    ("proj", "1"): "out_proj.1",
}
POST_MODULES = {"0": "0", "1": "1"}


@dataclass
class DenseMTLImport:
    """A converted state dict and what the conversion found and chose (the import's provenance)."""

    state: dict[str, Tensor]
    tasks: list[str]
    stages: list[int]
    side_order: dict[str, list[int]]
    fusion_order: str
    aliases_verified: int
    conversions: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ fusion order
def fusion_order_name(order: Mapping[str, Sequence[str]]) -> str:
    """``{"depth": ("normals", "semseg"), ...}`` -> ``"depth=normals+semseg,..."`` (targets sorted)."""
    return ",".join(f"{target}={'+'.join(order[target])}" for target in sorted(order))


def fusion_orders(tasks: Sequence[str]) -> list[str]:
    """Every fusion order an official file may have been trained with, mtlda's sorted order first.

    For each target the ``post`` conv concatenated the other tasks in some order: (T-1)! choices per target, all
    combinations (S-D: 1, S-D-N: 8). Names read ``target=source+source,...``.
    """
    names = sorted(set(tasks))
    per_target = [
        [(target, order) for order in itertools.permutations([t for t in names if t != target])] for target in names
    ]
    return [fusion_order_name(dict(choice)) for choice in itertools.product(*per_target)]


def default_fusion_order(tasks: Sequence[str]) -> str:
    """mtlda's own order: every target's sources sorted."""
    return fusion_orders(tasks)[0]


def parse_fusion_order(name: str, tasks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``"depth=normals+semseg,..."`` -> target -> sources in concatenation order (targets in any order).

    WeightImportError unless every task is a target exactly once with the other tasks as its sources.
    """
    names = sorted(set(tasks))
    order: dict[str, tuple[str, ...]] = {}
    for part in name.split(","):
        target, _, sources = part.strip().partition("=")
        order[target.strip()] = tuple(s.strip() for s in sources.split("+"))
    valid = sorted(order) == names and all(
        sorted(sources) == [t for t in names if t != target] for target, sources in order.items()
    )
    if not valid or len(name.split(",")) != len(names):
        choices = fusion_orders(names)
        raise WeightImportError(
            f"fusion order {name!r} is not an order of tasks {names}; use one of: {first_keys(choices, 8)} "
            "(scripts/import_weights.py --list-fusion-orders)"
        )
    return order


def permute_fusion_inputs(weight: Tensor, trained: Sequence[str], wanted: Sequence[str]) -> Tensor:
    """Reorder the input-channel blocks of a fusion conv weight (C_out, k*C, 1, 1) from source order ``trained``
    to ``wanted`` (block j of the result is the block of source ``wanted[j]``)."""
    blocks = weight.chunk(len(trained), dim=1)
    return torch.cat([blocks[list(trained).index(source)] for source in wanted], dim=1)


# ---------------------------------------------------------------------------------------------- conventions
def normals_axis_signs(dataset: str) -> tuple[float, float, float]:
    """Per-channel factor from an official normals head trained on ``dataset`` to mtlda's convention: the
    released files' axes on NYUDv2 (its ground-truth normals), (n_x, n_y, |n_z|) from depth elsewhere."""
    if dataset == "nyudv2":
        return tuple(float(sign) for sign in FILE_TO_CAMERA_AXES)
    return NORMALS_AXIS_SIGNS


def official_output_to_mtlda(task: str, raw: Tensor, dataset: str = "cityscapes") -> Tensor:
    """The raw output (B, C, h, w) an imported mtlda head gives for an official head's raw output ``raw``.

    Identity except for normals, whose channels change sign by :func:`normals_axis_signs` of ``dataset``.
    """
    if task != NORMALS:
        return raw
    return raw * raw.new_tensor(normals_axis_signs(dataset)).view(1, -1, 1, 1)


def official_model_mismatches(model: ModelConfig) -> list[str]:
    """``model.<key>`` settings that differ from the released models' architecture (empty when they all match)."""
    return [
        f"model.{key} is {getattr(model, key)!r}, the official models need {value!r}"
        for key, value in OFFICIAL_MODEL.items()
        if getattr(model, key) != value
    ]


# ------------------------------------------------------------------------------------------------- aliases
def _same_values(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))


def split_aliases(state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], int]:
    """(the state without ``params.*`` aliases, number of aliases checked).

    Each alias ``params.<task>.0.<path>`` must equal ``heads.<task>.<path>`` and ``params.<task>.1.<path>`` must
    equal ``m.<task>.<path>`` (shape, dtype and values); WeightImportError naming the first alias that does not.
    """
    originals = {key: value for key, value in state.items() if _ALIAS.fullmatch(key) is None}
    checked = 0
    for key, value in state.items():
        match = _ALIAS.fullmatch(key)
        if match is None:
            continue
        task, which, path = match.groups()
        original = f"{_ALIAS_OF[which]}.{task}.{path}"
        if original not in originals:
            raise WeightImportError(f"{source}: alias {key} has no original {original}; the file is not an official "
                                    "DenseMTL state dict")
        other = originals[original]
        if not _same_values(other, value):
            raise WeightImportError(
                f"{source}: alias {key} differs from {original}, which it should duplicate; the file was modified "
                "after training. Re-export the state dict from the official model (model.state_dict())"
            )
        checked += 1
    return originals, checked


# ------------------------------------------------------------------------------------------------ renaming
def _side_orders(state: Mapping[str, Tensor], tasks: Sequence[str], given: Sequence[int] | None,
                 source: str) -> dict[str, list[int]]:
    orders = {}
    for task in tasks:
        prefix = f"heads.{task}."
        indices = side_indices([key[len(prefix):] for key in state if key.startswith(prefix)])
        if given is not None:
            if len(given) != len(indices):
                raise WeightImportError(f"{source}: the {task} decoder has {len(indices)} prediction layers, but "
                                        f"side_order {list(given)} lists {len(given)} scales")
            orders[task] = list(given)
            continue
        channels = []
        for index in indices:
            weight = state.get(f"{prefix}decoder.{index}.weight", state.get(f"{prefix}decoder.{index}.conv.weight"))
            channels.append(int(weight.shape[1]) if weight is not None and weight.dim() > 1 else -1)
        detected = side_order_from_channels(channels)
        if detected is None:
            raise WeightImportError(
                f"{source}: the scales of the {task} prediction layers (input channels {channels}) cannot be told "
                "apart; give the official active_scales order explicitly (side_order, e.g. [0, 1] or [1, 0])"
            )
        orders[task] = list(detected)
    return orders


def _translator(side_orders: Mapping[str, Sequence[int]]) -> KeyTranslator:
    def translate(key: str) -> str | None:
        if match := _ENCODER.fullmatch(key):
            return f"encoder.{match.group(1)}"
        if match := _HEAD.fullmatch(key):
            task, rest = match.groups()
            inner = decoder_key(rest, side_orders[task]) if task in side_orders else None
            return f"decoders.{task}.{inner}" if inner else None
        if match := _PAIR.fullmatch(key):
            target, stage, branch, src, path = match.groups()
            module, _, parameter = path.rpartition(".")
            inner = XTAM_MODULES.get((branch, module))
            if inner is None:
                return None
            pair = f"exchange.{stage}.pairs.{src}_to_{target}"
            return f"{pair}.{inner}.{parameter}" if inner else f"{pair}.{parameter}"
        if match := _POST.fullmatch(key):
            target, stage, path = match.groups()
            module, _, parameter = path.rpartition(".")
            if module not in POST_MODULES:
                return None
            return f"exchange.{stage}.fuse.{target}.{POST_MODULES[module]}.{parameter}"
        return None

    return translate


def _official_tasks(state: Mapping[str, Tensor]) -> list[str]:
    return sorted({m.group(1) for m in map(_HEAD.fullmatch, state) if m is not None})


def _stages(state: Mapping[str, Tensor]) -> list[int]:
    found = {int(m.group(2)) for m in map(_PAIR.fullmatch, state) if m is not None}
    return sorted(found | {int(m.group(2)) for m in map(_POST.fullmatch, state) if m is not None}, reverse=True)


def convert_densemtl(
    state: Mapping[str, Tensor],
    tasks: Sequence[str],
    fusion_order: str | None = None,
    side_order: Sequence[int] | None = None,
    target: Mapping[str, Tensor] | None = None,
    source: str = "DenseMTL state dict",
    dataset: str = "cityscapes",
) -> DenseMTLImport:
    """Convert an official DenseMTL state dict; see :func:`densemtl_to_mtlda` for the arguments."""
    originals, aliases = split_aliases(state, source)
    names = sorted(set(tasks))
    found = _official_tasks(originals)
    if found != names:
        raise WeightImportError(f"{source} holds the tasks {found}, the experiment has {names}; use the experiment "
                                "of the checkpoint's task set (e.g. sd_mteb for *_SD.pkl, sdn_mteb for *_SDN.pkl)")
    order_name = fusion_order or default_fusion_order(names)
    order = parse_fusion_order(order_name, names)
    sides = _side_orders(originals, names, side_order, source)
    renamed = translate_keys(originals, _translator(sides), source)
    converted = {renamed[key]: value for key, value in originals.items()}
    conversions = []
    for stage in _stages(originals):
        for task in names:
            key = f"exchange.{stage}.fuse.{task}.0.weight"
            wanted = tuple(t for t in names if t != task)
            if key in converted and order[task] != wanted:
                converted[key] = permute_fusion_inputs(converted[key], order[task], wanted)
                conversions.append(f"{key}: input blocks {'+'.join(order[task])} -> {'+'.join(wanted)}")
    if NORMALS in names:
        signs = normals_axis_signs(dataset)
        for scale in sides[NORMALS]:
            for parameter in ("weight", "bias"):
                key = f"decoders.{NORMALS}.sides.{scale}.{parameter}"
                value = converted[key]
                converted[key] = value * value.new_tensor(signs).view(-1, *([1] * (value.dim() - 1)))
                conversions.append(f"{key}: rows x {signs} ({dataset} normals to camera-facing)")
    if target is not None:
        check_fits(converted, target, source)
    return DenseMTLImport(converted, names, _stages(originals), sides, fusion_order_name(order), aliases, conversions)


def densemtl_to_mtlda(
    state: Mapping[str, Tensor],
    tasks: Sequence[str],
    fusion_order: str | None = None,
    side_order: Sequence[int] | None = None,
    target: Mapping[str, Tensor] | None = None,
    dataset: str = "cityscapes",
) -> dict[str, Tensor]:
    """State dict for :class:`~mtlda.models.network.MultiTaskNet` from an official DenseMTL state dict.

    ``tasks``: the model's task names (must be the file's). ``fusion_order``: a name from :func:`fusion_orders`
    (default: sorted, :func:`default_fusion_order`). ``side_order``: the official ``active_scales`` ([0, 1] for the
    released FS models, [1, 0] for DA ones); by default detected from the prediction layers' input channels.
    ``target``: the state dict of the model to load into; when given, missing keys, left-over keys and shape
    mismatches are refused. ``dataset``: the data set the file was trained on (its normals convention,
    :func:`normals_axis_signs`). Unchanged tensors are shared with ``state``, converted ones are new.
    """
    return convert_densemtl(state, tasks, fusion_order, side_order, target, dataset=dataset).state
