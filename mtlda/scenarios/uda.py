"""Multi-task unsupervised domain adaptation (paper section 4.5, appendix B.3, Eq. 7-9).

Each step: the supervised multi-task loss on a labelled source batch, plus lambda_adv times the adversarial
loss that asks one patch discriminator per (task, scale) to take the target batch's outputs for source ones
(Eq. 8-9); then the discriminators learn source = 1 / target = 0 on detached outputs (Eq. 7). ``cfg.data`` is
the target domain (validated on its validation split), ``cfg.uda.source`` the source domain. With
``uda.enabled: false`` the same data and schedule train the source-only baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from torch import Tensor, nn

from mtlda.data.batch import Batch
from mtlda.data.registry import dataset_info
from mtlda.losses.adversarial import (
    adversarial_generator_loss,
    discriminator_input,
    discriminator_loss,
    source_depth_range,
)
from mtlda.models.discriminator import build_discriminators
from mtlda.scenarios.common import build_splits, supervised_loss, training_batches
from mtlda.scenarios.engine import Engine, OptimizerSpec, StepOutput, unwrap
from mtlda.scenarios.references import ReferenceBook
from mtlda.scenarios.supervised import SupervisedScenario
from mtlda.schema import ExperimentConfig

SOURCE_SEED_OFFSET = 0
TARGET_SEED_OFFSET = 7919


class UDAScenario(SupervisedScenario):
    def __init__(self, cfg: ExperimentConfig, engine: Engine, train: bool = True) -> None:
        super().__init__(cfg, engine, train)
        self.source = build_splits(cfg.uda.source, self.names, train_split=train) if train else None
        if self.source is not None and self.source.info.num_classes != self.splits.info.num_classes:
            raise ValueError(
                f"source and target class sets differ ({self.source.info.num_classes} vs "
                f"{self.splits.info.num_classes} classes): set uda.source.classes and data.classes to one shared set"
            )
        missing = [s for s in cfg.uda.adv_scales if s not in cfg.model.scales]
        if missing:
            raise ValueError(f"uda.adv_scales {missing} are not network outputs (model.scales {cfg.model.scales})")
        channels = {name: task.out_channels for name, task in self.tasks.items()}
        self.discriminators = build_discriminators(channels, cfg.uda.adv_scales, cfg.uda.spectral_norm).to(engine.device)
        self.adv_keys = [(t, s) for t in sorted(self.tasks) for s in sorted(cfg.uda.adv_scales)]
        source_name = dataset_info(cfg.uda.source).name
        self.references = ReferenceBook(cfg, self.splits.info, self.tasks, context=f"uda from {source_name}")

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "discriminators": self.discriminators}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        disc = replace(self.cfg.optim, name="adam", lr={"discriminators": self.cfg.uda.disc_lr},
                       betas=list(self.cfg.uda.disc_betas), weight_decay=0.0, schedule="poly", grad_clip=0.0)
        specs = super().optimizers()
        specs["discriminators"] = OptimizerSpec({"discriminators": list(self.discriminators.parameters())}, disc,
                                                clip=False)
        return specs

    def wrap_for_distributed(self, engine: Engine) -> None:
        super().wrap_for_distributed(engine)
        ids = [engine.device.index] if engine.device.type == "cuda" else None
        self.discriminators = nn.parallel.DistributedDataParallel(self.discriminators, device_ids=ids)

    def train_batches(self, start_iteration: int) -> Iterator[tuple[Batch, Batch]]:
        assert self.source is not None
        src = training_batches(self.engine, self.source.train, self.cfg.uda.source, start_iteration,
                               SOURCE_SEED_OFFSET)
        tgt = training_batches(self.engine, self.splits.train, self.cfg.data, start_iteration, TARGET_SEED_OFFSET)
        return zip(src, tgt)

    def _inputs(self, preds: dict[tuple[str, int], Tensor], depth_range, size) -> dict[tuple[str, int], Tensor]:
        return {key: discriminator_input(key[0], preds[key].float(), depth_range if key[0] == "depth" else None,
                                         out_size=size) for key in self.adv_keys}

    def train_step(self, batch: tuple[Batch, Batch], engine: Engine) -> StepOutput:
        src, tgt = (b.to(engine.device, non_blocking=True) for b in batch)
        self.model.train()
        with engine.autocast():
            src_preds = self.model(src.image)
        sup, terms = supervised_loss(src_preds, self.tasks, src, self.weights)
        if not self.cfg.uda.enabled:
            engine.backward(sup)
            return StepOutput(terms, terms["total"])
        depth_range = None
        if "depth" in self.tasks:
            depth_range = source_depth_range(src.targets["depth"], src.masks["depth"], self.cfg.tasks.depth_inv_scale)
        with engine.autocast():
            tgt_preds = self.model(tgt.image)
        tgt_inputs = self._inputs(tgt_preds, depth_range, tuple(tgt.image.shape[-2:]))
        discriminators = unwrap(self.discriminators)
        adv, adv_terms = adversarial_generator_loss(discriminators, tgt_inputs, self.cfg.uda.lambda_adv)
        engine.backward(sup + adv)
        src_inputs = self._inputs(src_preds, depth_range, tuple(src.image.shape[-2:]))
        disc, disc_terms = discriminator_loss(discriminators, src_inputs, tgt_inputs)
        engine.backward(disc)
        terms.update({f"adv/{t}_s{s}": v.item() for (t, s), v in adv_terms.items()})
        terms.update({f"disc/{t}_s{s}": v.item() for (t, s), v in disc_terms.items()})
        terms["adv/weighted"] = adv.item()
        terms["total"] = sup.item() + adv.item()
        return StepOutput(terms, terms["total"])
