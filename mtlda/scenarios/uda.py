"""Multi-task unsupervised domain adaptation (paper section 4.5, appendix B.3, Eq. 7-9).

Each step: the supervised multi-task loss on a labelled source batch, plus lambda_adv times the adversarial loss
that asks one patch discriminator per (task, scale) to take the target batch's outputs for source ones (Eq. 8-9);
then the discriminators learn source = 1 / target = 0 on detached outputs (Eq. 7). ``cfg.data`` is the target
domain (validated on its validation split), ``cfg.uda.source`` the source domain. With ``uda.enabled: false`` the
same data and schedule train the source-only baseline. With ``uda.target_bn_statistics`` the source forward pass
updates scratch copies of the BatchNorm statistics, so that the network is evaluated with target statistics.
Under torchrun the network and the discriminators' gradients are averaged over ranks after each backward (the
network runs twice per step, source and target).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace

from torch import Tensor, nn

from mtlda.data.batch import Batch
from mtlda.data.registry import dataset_info
from mtlda.errors import UserInputError
from mtlda.losses.adversarial import adversarial_generator_loss, discriminator_loss
from mtlda.models.checkpointing import batchnorm_buffers_restored
from mtlda.models.discriminator import build_discriminators
from mtlda.resize import resize_to
from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine, OptimizerSpec, StepOutput
from mtlda.scenarios.evaluation import task_losses
from mtlda.scenarios.panels import adaptation_panel
from mtlda.scenarios.registry import register_scenario

SOURCE_SEED_OFFSET = 0
TARGET_SEED_OFFSET = 7919


@register_scenario("uda")
class UDAScenario(DenseScenario):
    ddp_model = False

    def check_config(self, train: bool) -> None:
        cfg = self.cfg
        missing = [s for s in cfg.uda.adv_scales if s not in cfg.model.scales]
        if missing:
            raise UserInputError(f"uda.adv_scales {missing} are not network outputs (model.scales {cfg.model.scales})")
        source, target = dataset_info(cfg.uda.source), dataset_info(cfg.data)
        if source.domain == target.domain:
            raise UserInputError(
                f"uda: the source (uda.source) and the target (data) are the same data set "
                f"({target.domain}): adapt between two domains, e.g. toycity styles synthetic -> textured, "
                "or --src synthia --tgt cityscapes"
            )
        if train and source.num_classes != target.num_classes:
            raise UserInputError(
                f"source and target class sets differ ({source.num_classes} vs {target.num_classes} classes): "
                "set uda.source.classes and data.classes to one shared set"
            )

    def build_extra_modules(self, train: bool) -> dict[str, nn.Module]:
        cfg = self.cfg
        self.source_split = self.build_split(cfg.uda.source, cfg.uda.source.train_split, True) if train else None
        self.adv_keys = [(t, s) for t in sorted(self.tasks) for s in sorted(cfg.uda.adv_scales)]
        channels = {name: task.out_channels for name, task in self.tasks.items()}
        discriminators = build_discriminators(channels, cfg.uda.adv_scales, cfg.uda.spectral_norm,
                                              flip_input=cfg.uda.disc_flip)
        return {"discriminators": discriminators.to(self.engine.device)}

    def reference_setting(self) -> str:
        source = dataset_info(self.cfg.uda.source).domain
        return f"from {source}, " + ("adapted" if self.cfg.uda.enabled else "source-only")

    def optimizers(self) -> dict[str, OptimizerSpec]:
        uda = self.cfg.uda
        disc = replace(self.cfg.optim, name=uda.disc_optimizer, lr={"discriminators": uda.disc_lr},
                       betas=list(uda.disc_betas), weight_decay=0.0, schedule="poly", grad_clip=0.0)
        specs = super().optimizers()
        specs["discriminators"] = OptimizerSpec(
            {"discriminators": list(self.extra["discriminators"].parameters())}, disc, clip=False)
        return specs

    def train_batches(self, start_iteration: int) -> Iterator[tuple[Batch, Batch]]:
        assert self.source_split is not None and self.train_split is not None
        src = self.training_batches(self.source_split, self.cfg.uda.source, start_iteration, SOURCE_SEED_OFFSET)
        tgt = self.training_batches(self.train_split, self.cfg.data, start_iteration, TARGET_SEED_OFFSET)
        return zip(src, tgt)

    def _inputs(self, preds: dict[tuple[str, int], Tensor], contexts: dict, size) -> dict[tuple[str, int], Tensor]:
        return {(t, s): self.tasks[t].discriminator_input(resize_to(preds[(t, s)].float(), size), contexts[t])
                for t, s in self.adv_keys}

    def train_step(self, batch: tuple[Batch, Batch], engine: Engine) -> StepOutput:
        src, tgt = (b.to(engine.device, non_blocking=True) for b in batch)
        self.model.train()
        keep = self.cfg.uda.enabled and self.cfg.uda.target_bn_statistics
        with engine.autocast(), batchnorm_buffers_restored(self.model) if keep else nullcontext():
            src_preds = self.model(src.image)
        losses, terms = task_losses(src_preds, self.tasks, src)
        if not self.cfg.uda.enabled:
            return StepOutput(terms, self.backward_tasks(losses, terms, engine))
        contexts = {name: task.discriminator_context(src) for name, task in self.tasks.items()}
        with engine.autocast():
            tgt_preds = self.model(tgt.image)
        discriminators = self.extra["discriminators"]
        tgt_inputs = self._inputs(tgt_preds, contexts, tuple(tgt.image.shape[-2:]))
        adv, adv_terms = adversarial_generator_loss(discriminators, tgt_inputs, self.cfg.uda.lambda_adv)
        total = self.backward_tasks(losses, terms, engine, extra=adv)
        src_inputs = self._inputs(src_preds, contexts, tuple(src.image.shape[-2:]))
        disc, disc_terms = discriminator_loss(discriminators, src_inputs, tgt_inputs)
        engine.backward(disc)
        terms.update({f"adv/{t}_s{s}": v for (t, s), v in adv_terms.items()})
        terms.update({f"disc/{t}_s{s}": v for (t, s), v in disc_terms.items()})
        terms["adv/weighted"] = adv.detach()
        return StepOutput(terms, total)

    def image_panels(self, engine: Engine) -> dict[str, Tensor]:
        """The validation predictions, and (adapted runs) the source and target domains side by side with the
        maps their discriminators read at the finest adversarial scale."""
        panels = super().image_panels(engine)
        if self.cfg.uda.enabled and self.source_split is not None:
            source = self.cfg.uda.source
            plain = self.panel_batch("source", lambda: self.build_split(source, source.train_split, train=False))
            domains = [(f"source: {dataset_info(source).name} ({source.train_split}, labelled)", plain),
                       (f"target: {self.info.name} ({self.cfg.data.val_split})", self.panel_batch())]
            panels["train/adaptation"] = adaptation_panel(self.inference_model(), self.tasks, domains, engine.device,
                                                          engine.autocast, min(self.cfg.uda.adv_scales))
        return panels
