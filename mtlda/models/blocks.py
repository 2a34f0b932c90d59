"""The exchange-block registry: how ``model.block`` becomes a module between decoder stages.

A block builder is ``builder(tasks, channels, stage_stride, cfg) -> nn.Module | None``: ``tasks`` the sorted task
names, ``channels`` the decoder features' channels at the stage, ``stage_stride`` their stride, ``cfg`` the
:class:`~mtlda.schema.ModelConfig`. The module it returns has ``tasks``, ``downscale`` (the factor its feature size
must divide by) and ``forward(dict[task, (B, C, H, W)]) -> dict[task, (B, C, H, W)]``; None means no block.
Under ``model.checkpointing=all`` a block with a ``checkpoint_parts`` attribute gets it set and checkpoints its own
parts (as :class:`~mtlda.models.exchange.MTEB` does, pair by pair); any other block is checkpointed whole.
Adding a block is one module with ``@register_block("name")`` on its builder (imported before the network is
built); every ``--block`` choice and error message reads from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from mtlda.models.exchange import MTEB, PadNetBlock, attention_downscale
from mtlda.registry import Registry
from mtlda.schema import ModelConfig

BlockBuilder = Callable[[Sequence[str], int, int, ModelConfig], nn.Module | None]
EXCHANGE_BLOCKS: Registry[BlockBuilder] = Registry("exchange block (model.block)")


def register_block(name: str) -> Callable[[BlockBuilder], BlockBuilder]:
    """Decorator registering a block builder under ``name`` (see the module docstring for its signature)."""
    return EXCHANGE_BLOCKS.register(name)


@register_block("mteb")
def build_mteb(tasks: Sequence[str], channels: int, stage_stride: int, cfg: ModelConfig) -> nn.Module:
    """DenseMTL's multi-task exchange block (xTAM per ordered task pair), tokens at stride >= 8."""
    return MTEB(tasks, channels, attention_downscale(stage_stride), fusion=cfg.fusion,
                self_attention=cfg.self_attention, attention=cfg.attention, use_alpha=cfg.use_alpha)


@register_block("padnet")
def build_padnet(tasks: Sequence[str], channels: int, stage_stride: int, cfg: ModelConfig) -> nn.Module:
    """PAD-Net's multi-modal distillation (self-attention gates from every other task)."""
    return PadNetBlock(tasks, channels)


@register_block("none")
def build_none(tasks: Sequence[str], channels: int, stage_stride: int, cfg: ModelConfig) -> None:
    """No exchange: the plain multi-task decoders."""
    return None
