"""What the benchmark compares: the experiments (subjects), their configurations (variants) and the plan of
comparisons per device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEMO_SIZE = (128, 256)
PAPER_SIZE = (512, 1024)
HALF_PAPER_SIZE = (256, 512)
QUICK_SIZE = (32, 64)
WEIGHTINGS = ("fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad", "nashmtl", "famo")


@dataclass(frozen=True)
class Subject:
    """An experiment to train: its file, overrides, and whether it reads toycity (else random batches)."""

    description: str
    experiment: str
    overrides: tuple[str, ...] = ()
    toycity: bool = False


@dataclass(frozen=True)
class Variant:
    """A configuration of a subject: config overrides, and the per-parameter optimiser loop instead of fused."""

    name: str
    overrides: tuple[str, ...] = ()
    per_parameter_optimizer: bool = False
    cuda_only: bool = False


PAPER = ("model.pretrained=none",)
SUBJECTS = {
    "demo": Subject("demo S-D-N mTEB, ResNet-18 (toycity)", "experiments/supervised/toycity/sdn_mteb.yaml",
                    toycity=True),
    "paper_sd": Subject("paper S-D mTEB, ResNet-101", "experiments/supervised/cityscapes/sd_mteb.yaml", PAPER),
    "paper_sdn": Subject("paper S-D-N mTEB, ResNet-101", "experiments/supervised/cityscapes/sdn_mteb.yaml", PAPER),
    "supervised": Subject("supervised S-D mTEB, Cityscapes", "experiments/supervised/cityscapes/sd_mteb.yaml", PAPER),
    "uda": Subject("UDA S-D mTEB, Synthia -> Cityscapes", "experiments/uda/synthia2cityscapes/sd_mteb.yaml", PAPER),
    "sde": Subject("SDE S + self-supervised depth, mTEB, Cityscapes", "experiments/sde/cityscapes/sd_mteb.yaml",
                   PAPER),
}
PLAIN = ("train.channels_last=false",)
VARIANTS = {
    "plain": Variant("plain", PLAIN, per_parameter_optimizer=True),
    "default": Variant("default"),
    "channels_last": Variant("channels_last", ("train.channels_last=true",), per_parameter_optimizer=True),
    "fused_optimizer": Variant("fused_optimizer", PLAIN),
    "compile": Variant("compile", ("train.compile=true",)),
    "checkpoint_encoder": Variant("checkpoint_encoder", ("model.checkpointing=encoder",)),
    "checkpoint_all": Variant("checkpoint_all", ("model.checkpointing=all",)),
    "no_exchange": Variant("no_exchange", ("model.block=none",)),
    "bf16": Variant("bf16", ("train.amp=true", "train.amp_dtype=bf16")),
    "fp16": Variant("fp16", ("train.amp=true", "train.amp_dtype=fp16"), cuda_only=True),
    **{f"weighting_{name}": Variant(f"weighting_{name}", (f"tasks.weighting={{name: {name}}}",))
       for name in WEIGHTINGS},
}
VARIANT_NOTES = {
    "plain": "channels_last off, per-parameter Adam loop (foreach=False, fused=False)",
    "default": "shipped settings: channels_last on, fused Adam",
    "channels_last": "plain + channels_last",
    "fused_optimizer": "plain + fused Adam",
    "compile": "default + torch.compile (compile_s: the first step)",
    "checkpoint_encoder": "default + model.checkpointing=encoder",
    "checkpoint_all": "default + model.checkpointing=all",
    "no_exchange": "default without the exchange block (model.block=none): what mTEB costs",
    "bf16": "default + bf16 autocast",
    "fp16": "default + fp16 autocast with GradScaler",
    **{f"weighting_{name}": f"default + tasks.weighting={{name: {name}}}" for name in WEIGHTINGS},
}


@dataclass(frozen=True)
class Comparison:
    """Variants of one subject at one input size, interleaved; ``batch`` 0 keeps the experiment's batch size and
    ``size`` None its resolution."""

    section: str
    subject: str
    size: tuple[int, int] | None
    batch: int
    variants: tuple[str, ...]
    warmup: int
    iters: int

    @property
    def title(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "experiment size"
        return f"{self.section}: {SUBJECTS[self.subject].description} @ {size}"


OPTIONS = ("plain", "default", "channels_last", "fused_optimizer", "checkpoint_encoder", "checkpoint_all", "bf16",
           "fp16", "no_exchange", "compile")


def plan(device: torch.device, sections: Sequence[str], quick: bool) -> list[Comparison]:
    """The comparisons to run: all variants everywhere on CUDA; on a CPU fewer at the paper's sizes (slow there)."""
    cuda = device.type == "cuda"
    weighting = tuple(f"weighting_{name}" for name in WEIGHTINGS)
    if quick:
        small = ("plain", "default", "channels_last", "fused_optimizer", "checkpoint_all", "bf16")
        comparisons = [Comparison("options", "demo", QUICK_SIZE, 2, small, 1, 1),
                       Comparison("paper", "paper_sd", QUICK_SIZE, 2, ("default", "checkpoint_all"), 0, 1),
                       Comparison("weighting", "demo", QUICK_SIZE, 2, weighting, 0, 1)]
        comparisons += [Comparison("scenarios", name, QUICK_SIZE, 2, ("default",), 0, 1)
                        for name in ("supervised", "uda", "sde")]
    elif cuda:
        comparisons = [Comparison("options", name, DEMO_SIZE, 0 if name == "demo" else 2, OPTIONS, 3, 10)
                       for name in ("demo", "paper_sd", "paper_sdn")]
        comparisons += [Comparison("paper", name, PAPER_SIZE, 2, OPTIONS, 3, 10)
                        for name in ("demo", "paper_sd", "paper_sdn")]
        comparisons.append(Comparison("weighting", "demo", DEMO_SIZE, 0, weighting, 3, 10))
        comparisons += [Comparison("scenarios", name, None, 0, ("default", "bf16", "fp16"), 3, 10)
                        for name in ("supervised", "uda", "sde")]
    else:  # the paper's S-D at 512x1024 needs more than this machine's 24 GB at batch 2 (ASPP BatchNorm's minimum)
        every = ("plain", "default", "channels_last", "fused_optimizer", "checkpoint_encoder", "checkpoint_all",
                 "bf16")
        memory = ("default", "checkpoint_encoder", "checkpoint_all")
        comparisons = [Comparison("options", "demo", DEMO_SIZE, 0, (*every, "no_exchange", "compile"), 1, 8),
                       Comparison("options", "paper_sd", DEMO_SIZE, 2,
                                  tuple(v for v in every if v != "checkpoint_encoder"), 1, 6),
                       Comparison("options", "paper_sdn", DEMO_SIZE, 2, ("plain", "default", "checkpoint_all"), 1, 5),
                       Comparison("paper", "demo", PAPER_SIZE, 2, ("plain", "default", "checkpoint_all", "bf16"), 1, 5),
                       Comparison("paper", "paper_sd", HALF_PAPER_SIZE, 2, memory, 1, 5),
                       Comparison("paper", "paper_sdn", HALF_PAPER_SIZE, 2, memory[::2], 1, 5),
                       Comparison("weighting", "demo", DEMO_SIZE, 0, weighting, 1, 5)]
    return [c for c in comparisons if c.section in sections]

