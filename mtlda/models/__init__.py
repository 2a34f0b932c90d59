"""Model core: ResNet encoder, 3-ways task decoders, cross-task exchange blocks and the multi-task network."""

from mtlda.models.decoder import ASPP, HeadSpec, TaskDecoder
from mtlda.models.encoder import BACKBONES, ResNetEncoder
from mtlda.models.exchange import MTEB, XTAM, PadNetBlock, attention, attention_downscale, explicit_attention
from mtlda.models.network import MultiTaskNet, PadNetDecoder, build_network, format_parameter_counts

__all__ = [
    "ASPP",
    "BACKBONES",
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
    "explicit_attention",
    "format_parameter_counts",
]
