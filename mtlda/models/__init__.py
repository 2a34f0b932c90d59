"""Model core: ResNet encoder, 3-ways task decoders, cross-task exchange blocks and the multi-task network."""

from mtlda.models.blocks import EXCHANGE_BLOCKS, register_block
from mtlda.models.checkpointing import CHECKPOINTING
from mtlda.models.decoder import ASPP, HeadSpec, TaskDecoder
from mtlda.models.encoder import BACKBONES, ResNetEncoder
from mtlda.models.exchange import MTEB, XTAM, PadNetBlock, attention, attention_downscale, explicit_attention
from mtlda.models.memory_format import channels_last_input, to_channels_last
from mtlda.models.network import ARCHITECTURES, MultiTaskNet, build_network, format_parameter_counts
from mtlda.models.padnet import PadNetDecoder

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "EXCHANGE_BLOCKS",
    "BACKBONES",
    "CHECKPOINTING",
    "MTEB",
    "XTAM",
    "HeadSpec",
    "MultiTaskNet",
    "PadNetBlock",
    "PadNetDecoder",
    "ResNetEncoder",
    "TaskDecoder",
    "attention",
    "attention_downscale",
    "build_network",
    "channels_last_input",
    "explicit_attention",
    "format_parameter_counts",
    "to_channels_last",
    "register_block",
]
