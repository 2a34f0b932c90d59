"""Segmentation with self-supervised monocular depth as the auxiliary task (paper section 4.4, appendix B.2.2).

Two stages, chosen by ``sde.stage``:

* ``pretrain``: a single-branch self-supervised depth model (the "3-ways" setup of Hoyer et al.): the encoder, one
  disparity decoder (sigmoid head ``disp`` at ``sde.disp_scales``) and a :class:`~mtlda.models.pose.PoseNet`, trained
  with the Monodepth2 photometric loss on frames (-1, 0, +1) (``data.frames: [-1, 1]``) and the K of the crop
  being trained on.
* ``multitask``: the 3-ways network with heads ``semseg`` (``sde.semseg_scales``) and ``disp`` and the exchange block
  ``model.block`` (mteb | padnet | none), initialised from the pretrain checkpoint ``sde.init_from`` as in the paper:
  encoder, pose net and *every* decoder body from the depth decoder; heads whose shape differs (the segmentation
  head) keep their fresh initialisation. Segmentation is supervised (cross-entropy, Eq. 6 over its scales), depth
  self-supervised, with uniform task weights. Parameter groups: backbone, decoders, exchange, pose
  (``optim.lr.<group>``).

Validation: segmentation mIoU (and per class) and depth from the scale-0 disparity (``disp_to_depth`` with
``sde.min_depth``/``sde.max_depth``) against the ground-truth depth under ``tasks.depth_protocol``, which must use
per-image median scaling (caps 1e-3 / 80 m in the paper's protocol). Checkpoints hold ``model`` and ``pose``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from mtlda.data.batch import Batch, collate
from mtlda.data.registry import DatasetInfo, build_dataset, dataset_info
from mtlda.losses.photometric import PhotometricLoss
from mtlda.models.decoder import HeadSpec
from mtlda.models.network import MultiTaskNet
from mtlda.models.pose import PoseNet
from mtlda.scenarios.checkpoint import CheckpointError, load_checkpoint
from mtlda.scenarios.common import (
    DataSplits,
    build_model,
    evaluate,
    flatten_metrics,
    loader_tasks,
    prediction_panel,
    supervised_loss,
    training_batches,
    validation_loader,
)
from mtlda.scenarios.engine import Engine, OptimizerSpec, Scenario, StepOutput, unwrap
from mtlda.scenarios.references import ReferenceBook
from mtlda.schema import ExperimentConfig
from mtlda.tasks import DisparityTask, SemsegTask, Task

STAGES = ("pretrain", "multitask")
DISP = DisparityTask.name
SEMSEG = SemsegTask.name


def disparity_head(cfg: ExperimentConfig) -> HeadSpec:
    """The self-supervised depth head: one sigmoid channel at ``sde.disp_scales``."""
    return HeadSpec(1, tuple(sorted(cfg.sde.disp_scales)), apply_sigmoid=True)


def sde_heads(cfg: ExperimentConfig, num_classes: int) -> dict[str, HeadSpec]:
    """Heads of the stage's network: ``disp`` alone (pretrain) or ``disp`` and ``semseg`` (multitask)."""
    heads = {DISP: disparity_head(cfg)}
    if cfg.sde.stage == "multitask":
        heads[SEMSEG] = HeadSpec(num_classes, tuple(sorted(cfg.sde.semseg_scales)))
    return heads


def sde_tasks(cfg: ExperimentConfig, info: DatasetInfo) -> dict[str, Task]:
    """Task objects of the stage, keyed by name in sorted order (``disp``, then ``semseg`` for multitask)."""
    tasks: dict[str, Task] = {DISP: DisparityTask(cfg.sde.min_depth, cfg.sde.max_depth, cfg.tasks.depth_protocol)}
    if cfg.sde.stage == "multitask":
        tasks[SEMSEG] = SemsegTask(info.num_classes, info.palette, list(info.class_names))
    return dict(sorted(tasks.items()))


def check_sde_config(cfg: ExperimentConfig, train: bool) -> None:
    """Raise ValueError naming the key to fix when ``cfg`` cannot run the SDE scenario."""
    sde = cfg.sde
    if sde.stage not in STAGES:
        raise ValueError(f"sde.stage must be one of {', '.join(STAGES)}, got {sde.stage!r}")
    if cfg.model.architecture != "3ways":
        raise ValueError(f"the sde scenario uses the 3-ways decoders: set model.architecture=3ways "
                         f"(got {cfg.model.architecture!r})")
    if 0 not in sde.disp_scales:
        raise ValueError(f"sde.disp_scales {sde.disp_scales} must include 0: depth is evaluated at full resolution")
    if sde.stage == "multitask":
        if 0 not in sde.semseg_scales:
            raise ValueError(f"sde.semseg_scales {sde.semseg_scales} must include 0 (the final segmentation)")
        if list(cfg.tasks.names) != ["S"]:
            raise ValueError(f"the sde multi-task stage supervises segmentation only (depth is self-supervised): "
                             f"set tasks.names=[S] (got {cfg.tasks.names})")
    if train and not cfg.data.frames:
        raise ValueError("the sde scenario learns depth from neighbouring frames: set data.frames=[-1, 1]")


def build_pose_net(cfg: ExperimentConfig) -> PoseNet:
    """PoseNet on ``sde.pose_backbone``, ImageNet-initialised when the main encoder is (``model.pretrained``)."""
    return PoseNet(cfg.sde.pose_backbone, "imagenet" if cfg.model.pretrained == "imagenet" else "none")


class SequencePoses(nn.Module):
    """T_tgt_to_src (B, 4, 4) of every neighbour frame in one forward pass (so DDP sees a single call)."""

    def __init__(self, pose_net: PoseNet) -> None:
        super().__init__()
        self.pose_net = pose_net

    def forward(self, target: Tensor, frames: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """target (B, 3, H, W) and frames offset -> (B, 3, H, W), all in [0, 1] -> offset -> (B, 4, 4)."""
        return {offset: self.pose_net.relative_pose(target, frames[offset], offset) for offset in sorted(frames)}


def _sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _load_part(module: nn.Module, state: Mapping[str, Tensor], what: str, path: str | Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"the {what} of the pretrain checkpoint {path} does not fit this model ({first}); use the model "
            "settings (backbone, dilation, decoder_channels, aspp_rates, sde.pose_backbone) of the pretrain run"
        ) from None


def load_pretrained_depth(model: MultiTaskNet, pose_net: PoseNet, path: str | Path,
                          device: torch.device | str = "cpu") -> list[str]:
    """Initialise ``model`` and ``pose_net`` from an SDE pretrain checkpoint, as in the paper.

    The encoder and the pose net are copied; every task decoder's body (``blocks``) is copied from the depth
    decoder; of the depth decoder's heads, entries whose name and shape match a task's head are copied too (the
    disparity heads), the others (the segmentation head) keep their fresh initialisation. Returns the names of the
    head parameters copied (``<task>.sides.<key>``). CheckpointError when the file is missing, is not a pretrain
    checkpoint or does not fit.
    """
    if not str(path):
        raise CheckpointError("the sde multi-task stage starts from a pretrain checkpoint: set sde.init_from "
                              "(scripts/sde.py --init-from runs/<pretrain run>/last.pt)")
    if not Path(path).is_file():
        raise CheckpointError(f"sde.init_from: pretrain checkpoint {path} not found; train it first with "
                              "scripts/sde.py --stage pretrain (it writes <workdir>/last.pt)")
    ckpt = load_checkpoint(path, device)
    config = ckpt.get("config", {})
    stage = config.get("sde", {}).get("stage")
    if config.get("scenario") != "sde" or stage != "pretrain" or not {"model", "pose"} <= set(ckpt["modules"]):
        raise CheckpointError(
            f"sde.init_from: {path} is not an SDE pretrain checkpoint (scenario {config.get('scenario')!r}, stage "
            f"{stage!r}); pass the last.pt of a scripts/sde.py --stage pretrain run"
        )
    state = ckpt["modules"]["model"]
    depth_decoder = _sub_state(state, f"decoders.{DISP}.")
    if not depth_decoder:
        raise CheckpointError(f"sde.init_from: {path} has no depth decoder (decoders.{DISP}.*)")
    _load_part(model.encoder, _sub_state(state, "encoder."), "encoder", path)
    _load_part(pose_net, ckpt["modules"]["pose"], "pose net", path)
    body = _sub_state(depth_decoder, "blocks.")
    pretrained_heads = _sub_state(depth_decoder, "sides.")
    copied = []
    for task, decoder in model.decoders.items():
        _load_part(decoder.blocks, body, f"depth decoder body (for the {task} decoder)", path)
        own = decoder.sides.state_dict()
        matching = {k: v for k, v in pretrained_heads.items() if k in own and own[k].shape == v.shape}
        decoder.sides.load_state_dict({**own, **matching})
        copied += [f"{task}.sides.{key}" for key in sorted(matching)]
    return copied


class SDEScenario(Scenario):
    """The ``sde`` scenario; see the module docstring. ``train=False`` builds the validation split only."""

    def __init__(self, cfg: ExperimentConfig, engine: Engine, train: bool = True) -> None:
        check_sde_config(cfg, train)
        self.cfg, self.engine = cfg, engine
        info = dataset_info(cfg.data)
        if train and not info.has_sequences:
            raise ValueError(f"{info.name} has no image sequences: the sde scenario needs frames -1, 0, +1 "
                             "(cityscapes, or toycity with data.toycity.format=cityscapes)")
        self.tasks = sde_tasks(cfg, info)
        self._check_selection_metric()
        self.weights = {name: 1.0 for name in self.tasks}
        train_split = None
        if train:
            train_split = build_dataset(cfg.data, cfg.data.train_split, train=True, tasks=list(self.tasks))
        val_split = build_dataset(cfg.data, cfg.data.val_split, train=False, tasks=loader_tasks(self.tasks))
        self.splits = DataSplits(info, train_split, val_split)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = build_model(cfg, {}, engine.device, extra_heads=sde_heads(cfg, info.num_classes))
            self.pose_net = build_pose_net(cfg).to(engine.device)
        if engine.dist.enabled and cfg.model.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.pose_net = nn.SyncBatchNorm.convert_sync_batchnorm(self.pose_net)
        self.poses: nn.Module = SequencePoses(self.pose_net)
        self.photometric = PhotometricLoss(cfg.sde.min_depth, cfg.sde.max_depth, cfg.sde.smoothness)
        self.references = ReferenceBook(cfg, info, self.tasks, context="sde")
        if train and cfg.sde.stage == "multitask":
            load_pretrained_depth(self.model, self.pose_net, cfg.sde.init_from, engine.device)
        self._panel_batch: Batch | None = None
        self.last_results: dict[str, dict[str, float]] = {}

    def _check_selection_metric(self) -> None:
        key = self.cfg.train.selection_metric
        task, _, name = key.partition("/")
        if task not in self.tasks or name not in self.tasks[task].higher_is_better:
            raise ValueError(
                f"train.selection_metric {key!r} is not a metric of this sde run (no Δ_MTL here): use one of "
                + ", ".join(f"{t}/{m}" for t, obj in self.tasks.items() for m in obj.higher_is_better
                            if not m.startswith("iou_"))
            )

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "pose": self.pose_net}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        groups = dict(unwrap(self.model).param_groups())
        groups["pose"] = list(self.pose_net.parameters())
        return {"model": OptimizerSpec(groups, self.cfg.optim)}

    def wrap_for_distributed(self, engine: Engine) -> None:
        ids = [engine.device.index] if engine.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.poses = nn.parallel.DistributedDataParallel(self.poses, device_ids=ids)

    def train_batches(self, start_iteration: int) -> Iterator[Batch]:
        return training_batches(self.engine, self.splits.train, self.cfg.data, start_iteration)

    def train_step(self, batch: Batch, engine: Engine) -> StepOutput:
        batch = batch.to(engine.device, non_blocking=True)
        self.model.train()
        self.poses.train()
        with engine.autocast():
            preds = self.model(batch.image)
        poses = self.poses(batch.image, batch.frames)  # outside autocast: poses are composed in float32
        disparities = {s: preds[(DISP, s)] for s in sorted(self.cfg.sde.disp_scales)}
        photometric, diagnostics = self.photometric(disparities, batch.image, batch.frames, poses, batch.K)
        total = self.weights[DISP] * photometric
        terms = {f"{DISP}/{key}": value.item() for key, value in diagnostics.items()}
        terms[f"{DISP}/photometric"] = photometric.item()
        terms[f"{DISP}/weighted"] = total.item()
        if SEMSEG in self.tasks:
            semseg, semseg_terms = supervised_loss(preds, {SEMSEG: self.tasks[SEMSEG]}, batch,
                                                   {SEMSEG: self.weights[SEMSEG]})
            total = total + semseg
            terms.update({key: value for key, value in semseg_terms.items() if key != "total"})
        engine.backward(total)
        terms["total"] = total.item()
        return StepOutput(terms, terms["total"])

    def evaluate_tasks(self, engine: Engine) -> dict[str, dict[str, float]]:
        loader = validation_loader(engine, self.splits.val, self.cfg.data)
        return evaluate(engine, self.model, self.tasks, loader)

    def validate(self, engine: Engine) -> dict[str, float]:
        self.last_results = self.evaluate_tasks(engine)
        return flatten_metrics(self.last_results)

    def higher_is_better(self, metric: str) -> bool:
        task, _, name = metric.partition("/")
        return self.tasks[task].higher_is_better[name]

    def image_panels(self, engine: Engine) -> dict[str, torch.Tensor]:
        if self._panel_batch is None:
            self._panel_batch = collate([self.splits.val[i] for i in range(min(4, len(self.splits.val)))])
        return {"val/predictions": prediction_panel(self.model, self.tasks, self._panel_batch, engine)}
