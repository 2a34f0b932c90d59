"""The multi-task network: shared encoder, one decoder per task, exchange blocks between decoder stages.

``cfg.architecture``:

* ``3ways``: :class:`TaskDecoder` per task. The blocks run 4..s for every task, then the exchange block of stage s
  (``cfg.block``, from :data:`mtlda.models.blocks.EXCHANGE_BLOCKS`: mteb | padnet | none | any registered block),
  then the remaining blocks, for each stage in ``cfg.stages`` (descending).
  One task is the single-task baseline (no exchange block).
* ``padnet``: the original PAD-Net: per task, two bottlenecks on the stride-16 encoder map with an initial
  prediction (scale 4), PAD-Net distillation at 256 channels, two more bottlenecks and a final prediction
  bilinearly upsampled to the input (scale 0).
* ``deeplab``: the MTL survey's DeepLabV3 head per task (:mod:`mtlda.models.deeplab`), the paper's STL and MTL
  baselines: no skips, no exchange block, scale 0 only; ``decoder_channels[4]`` channels, ``aspp_rates`` rates.

Outputs are ``dict[(task, scale), Tensor]`` of raw head outputs at stride 2**scale.

``checkpointing`` (:mod:`mtlda.models.checkpointing`): ``encoder`` recomputes the activations of the encoder's
residual blocks (layer1..layer4) in the backward pass; ``all`` also those of every decoder block and exchange block
(the deeplab head, one small stride-16 head without blocks, is never checkpointed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from mtlda.errors import UserInputError
from mtlda.models.blocks import EXCHANGE_BLOCKS
from mtlda.models.checkpointing import CHECKPOINTING, run_segment
from mtlda.models.decoder import NUM_BLOCKS, HeadSpec, TaskDecoder, decoder_block_strides
from mtlda.models.deeplab import DeepLabDecoder
from mtlda.models.encoder import ResNetEncoder
from mtlda.models.exchange import ATTENTION_KINDS, FUSIONS, GatedBlock, PadNetBlock
from mtlda.models.padnet import PADNET_CHANNELS, PadNetDecoder
from mtlda.registry import Registry
from mtlda.schema import ModelConfig


class MultiTaskNet(nn.Module):
    """Encoder + per-task decoders + exchange blocks: (B, 3, H, W) RGB in [0, 1] -> {(task, scale): raw output}.

    Attributes: ``encoder``, ``decoders`` (ModuleDict by task), ``exchange`` (ModuleDict by stage as str),
    ``tasks`` (sorted tuple), ``heads``. A decoder's body is ``decoders[task].blocks``, its heads
    ``decoders[task].sides``. ``checkpoint_exchange``: recompute the exchange blocks' activations in the backward pass,
    part by part in a block that declares ``checkpoint_parts`` (the built-in ones), else the whole block at once.
    """

    def __init__(
        self,
        encoder: ResNetEncoder,
        decoders: Mapping[str, nn.Module],
        exchange: Mapping[int, nn.Module],
        heads: Mapping[str, HeadSpec],
        checkpoint_exchange: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tasks = tuple(sorted(decoders))
        self.heads = {task: heads[task] for task in self.tasks}
        self.decoders = nn.ModuleDict({task: decoders[task] for task in self.tasks})
        self.exchange = nn.ModuleDict({str(stage): exchange[stage] for stage in sorted(exchange, reverse=True)})
        self.checkpointed_whole: set[str] = set()
        for stage, block in self.exchange.items():
            if hasattr(block, "checkpoint_parts"):
                block.checkpoint_parts = checkpoint_exchange
            elif checkpoint_exchange:
                self.checkpointed_whole.add(stage)
        block_strides = decoder_block_strides(encoder.strides)
        self.input_multiple = max(encoder.strides)
        for stage, block in exchange.items():
            self.input_multiple = math.lcm(self.input_multiple, block_strides[stage] * block.downscale)
        self.min_input_size = max(self.input_multiple, 2 * max(encoder.strides))

    def valid_input_size(self, height: int, width: int) -> None:
        """Raise UserInputError (a ValueError) unless H and W are multiples of ``input_multiple`` and at least
        ``min_input_size``.

        The multiple is the encoder's output stride combined with the exchange blocks' token strides; the minimum
        keeps at least 2 pixels on the coarsest map (reflection padding).
        """
        m, low = self.input_multiple, self.min_input_size
        bad = [(name, size) for name, size in (("height", height), ("width", width)) if size % m or size < low]
        if bad:
            hints = "; ".join(f"{name} {size} -> {_nearest_valid(size, m, low)}" for name, size in bad)
            raise UserInputError(
                f"input size {height}x{width} is not supported: height and width must be multiples of {m} "
                f"(encoder output stride and exchange-block pooling) and at least {low}. Nearest valid: {hints}."
            )

    def forward(self, image: Tensor) -> dict[tuple[str, int], Tensor]:
        """(B, 3, H, W) in [0, 1] -> {(task, s): (B, out_channels, H/2**s, W/2**s)} raw head outputs."""
        if image.dim() != 4:
            raise ValueError(f"network expects a (B, 3, H, W) image, got shape {tuple(image.shape)}.")
        self.valid_input_size(*image.shape[-2:])
        features = self.encoder(image)
        states: dict[str, Tensor | None] = {task: None for task in self.tasks}
        predictions: dict[tuple[str, int], Tensor] = {}

        def run_blocks(first: int, last: int) -> None:
            for task in self.tasks:
                states[task], outputs = self.decoders[task].run(features, first, last, states[task])
                predictions.update({(task, scale): out for scale, out in outputs.items()})

        first = NUM_BLOCKS - 1
        for stage, block in self.exchange.items():
            run_blocks(first, int(stage))
            # A copy: a checkpointed block is recomputed from the very dict it was given, and states changes next.
            states.update(run_segment(block, dict(states), checkpointed=stage in self.checkpointed_whole))
            first = int(stage) - 1
        if first >= 0:
            run_blocks(first, 0)
        return predictions

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by optimiser group: "backbone", "decoders", "exchange" (non-empty groups only)."""
        groups = {
            "backbone": [p for p in self.encoder.parameters() if p.requires_grad],
            "decoders": [p for p in self.decoders.parameters() if p.requires_grad],
            "exchange": [p for p in self.exchange.parameters() if p.requires_grad],
        }
        return {name: params for name, params in groups.items() if params}

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: "encoder", "decoder/<task>" per task, "exchange", "total"."""
        counts = {"encoder": _count(self.encoder)}
        counts.update({f"decoder/{task}": _count(self.decoders[task]) for task in self.tasks})
        counts["exchange"] = _count(self.exchange)
        counts["total"] = _count(self)
        return counts


def _nearest_valid(size: int, multiple: int, minimum: int) -> str:
    below = max(minimum, size // multiple * multiple)
    above = max(minimum, -(-size // multiple) * multiple)
    return str(below) if below == above else f"{below} or {above}"


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_parameter_counts(counts: Mapping[str, int]) -> str:
    """One aligned line per entry, e.g. ``encoder           11,176,512`` (counts in units, with millions)."""
    width = max(len(name) for name in counts)
    return "\n".join(f"{name:<{width}}  {count:>13,}  ({count / 1e6:.2f}M)" for name, count in counts.items())


def _validate(cfg: ModelConfig, heads: Mapping[str, HeadSpec], checkpointing: str) -> None:
    choices = {
        "attention": (cfg.attention, ATTENTION_KINDS),
        "fusion": (cfg.fusion, FUSIONS),
        "checkpointing": (checkpointing, CHECKPOINTING),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserInputError(f"model.{key}: '{value}' is unknown; choose one of {', '.join(allowed)}.")
    ARCHITECTURES.get(cfg.architecture)
    EXCHANGE_BLOCKS.get(cfg.block)
    if not heads:
        raise ValueError("build_network needs at least one task head.")
    for task, spec in heads.items():
        if spec.out_channels < 1 or not spec.scales:
            raise ValueError(f"head of task '{task}' needs out_channels >= 1 and at least one scale, got {spec}.")
    bad = [s for s in cfg.stages if s not in range(NUM_BLOCKS)]
    if bad or len(set(cfg.stages)) != len(cfg.stages):
        raise UserInputError(f"model.stages: {cfg.stages} must be distinct decoder stages in 0..4.")
    lowest = min(scale for spec in heads.values() for scale in spec.scales)
    idle = [s for s in cfg.stages if s <= lowest]
    if idle and cfg.block != "none" and len(heads) > 1:
        raise UserInputError(
            f"model.stages: an exchange block at stage {idle[0]} feeds no output (every task's output at scales >= "
            f"{lowest} is taken before it); use stages above the lowest output scale ({lowest + 1}..4, the paper: 1)."
        )


Parts = tuple[dict[str, nn.Module], dict[int, nn.Module]]
ArchitectureBuilder = Callable[[ModelConfig, ResNetEncoder, Mapping[str, HeadSpec], bool], Parts]
ARCHITECTURES: Registry[ArchitectureBuilder] = Registry("decoder architecture (model.architecture)")


@ARCHITECTURES.register("3ways")
def build_3ways(cfg: ModelConfig, encoder: ResNetEncoder, heads: Mapping[str, HeadSpec], checkpoint_all: bool) -> Parts:
    """A 3-ways decoder per task, the ``model.block`` exchange block at each of ``model.stages`` (several tasks)."""
    tasks = sorted(heads)
    decoders = {task: TaskDecoder(encoder.num_channels, encoder.strides, heads[task], cfg.decoder_channels,
                                  cfg.aspp_rates, cfg.aspp_dropout, checkpoint_all) for task in tasks}
    exchange: dict[int, nn.Module] = {}
    if len(tasks) > 1:
        block_strides = decoder_block_strides(encoder.strides)
        for stage in cfg.stages:
            block = EXCHANGE_BLOCKS.get(cfg.block)(tuple(tasks), cfg.decoder_channels[stage], block_strides[stage], cfg)
            if block is not None:
                exchange[stage] = GatedBlock(block, cfg.decoder_channels[stage]) if cfg.block_gate else block
    return decoders, exchange


@ARCHITECTURES.register("deeplab")
def build_deeplab(cfg: ModelConfig, encoder: ResNetEncoder, heads: Mapping[str, HeadSpec],
                  checkpoint_all: bool) -> Parts:
    """The survey's DeepLab head per task, no exchange block (the paper's STL and MTL baselines)."""
    decoders = {task: DeepLabDecoder(encoder.num_channels[4], encoder.strides[4], heads[task],
                                     cfg.decoder_channels[4], cfg.aspp_rates, cfg.aspp_dropout)
                for task in sorted(heads)}
    return decoders, {}


@ARCHITECTURES.register("padnet")
def build_padnet_original(cfg: ModelConfig, encoder: ResNetEncoder, heads: Mapping[str, HeadSpec],
                          checkpoint_all: bool) -> Parts:
    """The original PAD-Net: its heads and its distillation block at 256 channels (``model.block`` is ignored)."""
    tasks = sorted(heads)
    decoders = {task: PadNetDecoder(encoder.num_channels[4], encoder.strides[4], heads[task], checkpoint_all)
                for task in tasks}
    exchange = {NUM_BLOCKS - 1: PadNetBlock(tasks, PADNET_CHANNELS)} if len(tasks) > 1 else {}
    return decoders, exchange


def build_network(cfg: ModelConfig, heads: Mapping[str, HeadSpec], checkpointing: str = "none") -> MultiTaskNet:
    """Build the network of ``cfg`` with one prediction head per task (``heads``: task name -> HeadSpec).

    The heads' scales decide the side outputs (``cfg.scales`` is for the caller that builds the heads); the
    architecture (``cfg.architecture``) and the exchange block (``cfg.block``) come from their registries; an
    unknown name is an error listing the registered ones. ``sync_bn`` is applied by the scenario under DDP.
    ``checkpointing``: "none", "encoder" or "all" (see the module docstring).
    """
    _validate(cfg, heads, checkpointing)
    checkpoint_all = checkpointing == "all"
    encoder = ResNetEncoder(
        cfg.backbone, cfg.pretrained, cfg.dilation, input_norm=cfg.input_norm, checkpoint_stages=checkpointing != "none"
    )
    decoders, exchange = ARCHITECTURES.get(cfg.architecture)(cfg, encoder, heads, checkpoint_all)
    return MultiTaskNet(encoder, decoders, exchange, heads, checkpoint_all)
