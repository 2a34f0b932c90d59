"""The positional state-dict layout of the "3-ways" decoder, shared by the DenseMTL and 3-ways checkpoints.

Both codes keep the decoder's modules in a plain ordered dict and register them as one ``ModuleList``, so their keys
are ``decoder.<index>.<parameter path>`` with the index giving the module's position (notes 1.3; Hoyer et al.'s
``models/depth_decoder.py``): 0 the ASPP (torchvision-style ``convs.0..4`` and ``project``), 1/4/7/10 the identity
skip projections (no tensors), 2, 3, 5, 6, 8, 9, 11, 12, 13 the ``ConvBlock`` s (``block.0.conv`` = reflection-padded
3x3 conv), then one prediction layer per active scale from index 14 on, in the order the scales were listed.
A prediction layer is a 1x1 conv (``decoder.<i>.weight``) or a reflection-padded 3x3 conv before a sigmoid
(``decoder.<i>.conv.weight``).

mtlda's :class:`~mtlda.models.decoder.TaskDecoder` names the same modules ``blocks.<block>.{reduce,fuse}`` and
``sides.<scale>``. The tables below are the whole correspondence.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

# The official decoder widths of every released model (num_ch_dec), blocks 0..4.
OFFICIAL_DECODER_CHANNELS = (64, 128, 128, 256, 256)
FIRST_SIDE_INDEX = 14

# ConvBlock position -> mtlda module (the conv of a reflection-pad / conv / ELU sequence).
CONV_BLOCKS = {
    2: "blocks.4.fuse.1",
    3: "blocks.3.reduce.1",
    5: "blocks.3.fuse.1",
    6: "blocks.2.reduce.1",
    8: "blocks.2.fuse.1",
    9: "blocks.1.reduce.1",
    11: "blocks.1.fuse.1",
    12: "blocks.0.reduce.1",
    13: "blocks.0.fuse.1",
}
CONV_BLOCK_CONV = "block.0.conv"
ASPP_INDEX = 0
ASPP_PREFIX = "blocks.4.reduce"
# Official ASPP sub-module (torchvision ASPPConv / ASPPPooling numbering) -> mtlda ASPP sub-module.
ASPP_MODULES = {
    "convs.0.0": "branches.0.0",
    "convs.0.1": "branches.0.1",
    "convs.1.0": "branches.1.0",
    "convs.1.1": "branches.1.1",
    "convs.2.0": "branches.2.0",
    "convs.2.1": "branches.2.1",
    "convs.3.0": "branches.3.0",
    "convs.3.1": "branches.3.1",
    "convs.4.1": "pool_proj.0",
    "convs.4.2": "pool_proj.1",
    "project.0": "project.0.0",
    "project.1": "project.0.1",
}
# Prediction layer: official parameter path -> mtlda path inside ``sides.<scale>``.
SIDE_PARAMETERS = {
    "weight": "weight",
    "bias": "bias",
    "conv.weight": "1.weight",
    "conv.bias": "1.bias",
}

_DECODER_KEY = re.compile(r"decoder\.(\d+)\.(.+)")


def decoder_key(key: str, side_order: Sequence[int]) -> str | None:
    """Official ``decoder.<index>.<path>`` -> TaskDecoder key, or None when no rule maps it.

    ``side_order``: the scale of each prediction layer from index 14 on (the official ``active_scales``).
    """
    match = _DECODER_KEY.fullmatch(key)
    if match is None:
        return None
    index, path = int(match.group(1)), match.group(2)
    module, _, parameter = path.rpartition(".")
    if index == ASPP_INDEX and module in ASPP_MODULES:
        return f"{ASPP_PREFIX}.{ASPP_MODULES[module]}.{parameter}"
    if index in CONV_BLOCKS and module == CONV_BLOCK_CONV:
        return f"{CONV_BLOCKS[index]}.{parameter}"
    side = index - FIRST_SIDE_INDEX
    if 0 <= side < len(side_order) and path in SIDE_PARAMETERS:
        return f"sides.{side_order[side]}.{SIDE_PARAMETERS[path]}"
    return None


def side_indices(keys: Sequence[str]) -> list[int]:
    """Positions of the prediction layers among official ``decoder.<index>.*`` keys: 14, 15, ... while present
    (a stray higher index is left for the key check to report)."""
    found = {int(m.group(1)) for m in map(_DECODER_KEY.fullmatch, keys) if m is not None}
    indices = []
    while FIRST_SIDE_INDEX + len(indices) in found:
        indices.append(FIRST_SIDE_INDEX + len(indices))
    return indices


def side_order_from_channels(
    in_channels: Sequence[int], decoder_channels: Sequence[int] = OFFICIAL_DECODER_CHANNELS
) -> tuple[int, ...] | None:
    """The unique order of scales 0..n-1 whose decoder widths equal the prediction layers' input channels.

    ``in_channels[k]``: input channels of the layer at position 14 + k. None when no order or several fit (e.g.
    scales 1 and 2 both have 128 channels), so the caller must be told the order.
    """
    fits = [
        order
        for order in itertools.permutations(range(len(in_channels)))
        if all(order[k] < len(decoder_channels) and decoder_channels[order[k]] == c for k, c in enumerate(in_channels))
    ]
    return fits[0] if len(fits) == 1 else None
