"""Segmentation with self-supervised monocular depth as the auxiliary task (paper section 4.4, appendix B.2.2).

Two stages, chosen by ``sde.stage``:

* ``pretrain``: a single-branch self-supervised depth model (the "3-ways" setup of Hoyer et al.): the encoder, one
  disparity decoder (sigmoid head ``disp`` at ``sde.disp_scales``) and a :class:`~mtlda.models.pose.PoseNet`, trained
  with the Monodepth2 photometric loss on frames (-1, 0, +1) (``data.frames: [-1, 1]``) and the K of the crop
  being trained on.
* ``multitask``: the 3-ways network with the supervised tasks of ``tasks.names`` (segmentation in the paper; heads at
  ``sde.supervised_scales``) and ``disp``, and the exchange block ``model.block``, initialised from the pretrain
  checkpoint ``sde.init_from`` as in the paper: encoder, pose net and *every* decoder body from the depth decoder;
  heads whose shape differs keep their fresh initialisation. Supervised tasks use their losses (Eq. 6 over their
  scales), depth is self-supervised, all with uniform task weights (paper appendix B.2.2). Parameter groups:
  backbone, decoders, exchange, pose (``optim.lr.<group>``).
* ``multitask`` with ``sde.disp_scales: []``: the supervised tasks alone (the segmentation-only row of the paper's
  Table 5), initialised from the same pretrain checkpoint (encoder and every decoder body), without the disparity
  head, the pose net and the photometric loss; neighbour frames are not needed (``data.frames: []``).

Validation: every task's metric, depth from the scale-0 disparity (``disp_to_depth`` with ``sde.min_depth`` /
``sde.max_depth``) against the ground-truth depth under ``tasks.depth_protocol``, which must use per-image median
scaling. Checkpoints hold ``model`` and ``pose``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from mtlda.data.batch import Batch
from mtlda.errors import UserInputError
from mtlda.losses.photometric import PhotometricLoss
from mtlda.models.decoder import HeadSpec
from mtlda.models.network import MultiTaskNet
from mtlda.models.pose import PoseNet
from mtlda.scenarios.checkpoint import CheckpointError, load_checkpoint
from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine, OptimizerSpec, StepOutput, unwrap
from mtlda.scenarios.evaluation import task_losses
from mtlda.scenarios.panels import photometric_panel
from mtlda.scenarios.registry import register_scenario
from mtlda.schema import ExperimentConfig
from mtlda.tasks import DisparityTask, Task, build_tasks, check_codes

STAGES = ("pretrain", "multitask")
DISP = DisparityTask.name


def check_sde_config(cfg: ExperimentConfig, train: bool) -> None:
    """Raise UserInputError naming the key to fix when ``cfg`` cannot run the SDE scenario."""
    sde = cfg.sde
    if sde.stage not in STAGES:
        raise UserInputError(f"sde.stage must be one of {', '.join(STAGES)}, got {sde.stage!r}")
    if cfg.model.architecture != "3ways":
        raise UserInputError(f"the sde scenario uses the 3-ways decoders: set model.architecture=3ways "
                             f"(got {cfg.model.architecture!r})")
    if (sde.disp_scales or sde.stage == "pretrain") and 0 not in sde.disp_scales:
        raise UserInputError(f"sde.disp_scales {sde.disp_scales} must include 0: depth is evaluated at full resolution "
                             "(an empty list trains the multi-task stage's supervised tasks alone)")
    if sde.stage == "multitask":
        if 0 not in sde.supervised_scales:
            raise UserInputError(f"sde.supervised_scales {sde.supervised_scales} must include 0 (the final outputs)")
        if "depth" in check_codes(list(cfg.tasks.names)):
            raise UserInputError(f"the sde multi-task stage learns depth without labels: leave D out of tasks.names "
                                 f"(got {cfg.tasks.names})")
    if len(sde.pose_init_translation) != 3:
        raise UserInputError(f"sde.pose_init_translation needs 3 values (x, y, z), got {sde.pose_init_translation}: "
                             "e.g. [0, 0, -1.0e-3] (forward motion) or [0, 0, 0]")
    if train and sde.disp_scales and not cfg.data.frames:
        raise UserInputError("the sde scenario learns depth from neighbouring frames: set data.frames=[-1, 1]")
    if train and sde.disp_scales and cfg.data.scale_jitter[0] < 1:
        raise UserInputError(f"data.scale_jitter {cfg.data.scale_jitter} zooms out, which pads the frames with black "
                             "borders that the photometric loss would try to match: use a minimum of at least 1 "
                             "(e.g. data.scale_jitter=[1.0, 1.2])")


def build_pose_net(cfg: ExperimentConfig) -> PoseNet:
    """PoseNet on ``sde.pose_backbone``, ImageNet-initialised when the main encoder is (``model.pretrained``), with
    the main encoder's input normalisation and ``sde.pose_init_translation`` as its initial translation."""
    return PoseNet(cfg.sde.pose_backbone, "imagenet" if cfg.model.pretrained == "imagenet" else "none",
                   cfg.model.input_norm, cfg.sde.pose_init_translation)


class SequencePoses(nn.Module):
    """T_tgt_to_src (B, 4, 4) of every neighbour frame."""

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


def load_pretrained_depth(model: MultiTaskNet, pose_net: PoseNet | None, path: str | Path,
                          device: torch.device | str = "cpu") -> list[str]:
    """Initialise ``model`` and ``pose_net`` (None: a model without self-supervised depth) from an SDE pretrain
    checkpoint, as in the paper.

    The encoder and the pose net are copied; every task decoder's body (``blocks``) is copied from the depth
    decoder; of the depth decoder's heads, entries whose name and shape match a task's head are copied too (the
    disparity heads), the others keep their fresh initialisation. Returns the names of the head parameters copied
    (``<task>.sides.<key>``). CheckpointError when the file is missing, is not a pretrain checkpoint or does not fit.
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
    if pose_net is not None:
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


@register_scenario("sde")
class SDEScenario(DenseScenario):
    """The ``sde`` scenario; see the module docstring. ``train=False`` builds the validation split only."""

    def check_config(self, train: bool) -> None:
        check_sde_config(self.cfg, train)

    @property
    def self_supervised(self) -> bool:
        """Whether the run learns depth from neighbouring frames (false: the supervised tasks alone)."""
        return bool(self.cfg.sde.disp_scales)

    def build_tasks(self) -> dict[str, Task]:
        if self.training and self.self_supervised and not self.info.has_sequences:
            raise UserInputError(f"{self.info.name} has no image sequences: the sde scenario needs frames -1, 0, +1 "
                                 "(cityscapes, or toycity with data.toycity.format=cityscapes)")
        tasks = build_tasks(self.cfg, self.info) if self.cfg.sde.stage == "multitask" else {}
        if self.self_supervised:
            tasks[DISP] = DisparityTask.from_config(self.cfg, self.info)
        return dict(sorted(tasks.items()))

    def task_weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.tasks}

    def heads(self) -> dict[str, HeadSpec]:
        supervised = tuple(sorted(self.cfg.sde.supervised_scales))
        heads = {name: HeadSpec(task.out_channels, supervised) for name, task in self.tasks.items() if name != DISP}
        if self.self_supervised:
            heads[DISP] = HeadSpec(1, tuple(sorted(self.cfg.sde.disp_scales)), apply_sigmoid=True)
        return heads

    def build_extra_modules(self, train: bool) -> dict[str, nn.Module]:
        sde = self.cfg.sde
        pose_net = None
        if self.self_supervised:
            pose_net = build_pose_net(self.cfg).to(self.engine.device)
            self.photometric = PhotometricLoss(sde.min_depth, sde.max_depth, sde.smoothness)
        if train and sde.stage == "multitask":
            load_pretrained_depth(unwrap(self.model), pose_net, sde.init_from, self.engine.device)
        return {"pose": pose_net} if pose_net is not None else {}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        groups = self.model_param_groups()
        if "pose" in self.extra:
            groups["pose"] = list(self.extra["pose"].parameters())
        return {"model": OptimizerSpec(groups, self.optim_settings())}

    def extra_task_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.extra.values() for p in module.parameters() if p.requires_grad]

    def train_step(self, batch: Batch, engine: Engine) -> StepOutput:
        batch = batch.to(engine.device, non_blocking=True)
        self.model.train()
        with engine.autocast():
            preds = self.model(batch.image)
        supervised = {name: task for name, task in self.tasks.items() if name != DISP}
        losses, terms = task_losses(preds, supervised, batch) if supervised else ({}, {})
        if self.self_supervised:
            pose_net = self.extra["pose"]
            pose_net.train()
            poses = SequencePoses(pose_net)(batch.image, batch.frames)  # outside autocast: poses composed in float32
            disparities = {s: preds[(DISP, s)] for s in sorted(self.cfg.sde.disp_scales)}
            losses[DISP], diagnostics = self.photometric(disparities, batch.image, batch.frames, poses, batch.K)
            terms.update({f"{DISP}/{key}": value for key, value in diagnostics.items()})
        return StepOutput(terms, self.backward_tasks(losses, terms, engine))

    def image_panels(self, engine: Engine) -> dict[str, Tensor]:
        """The validation predictions, and (self-supervised runs) the photometric loss on training frames: the
        warped neighbours, the reprojection error and the auto-mask."""
        panels = super().image_panels(engine)
        if self.self_supervised and self.train_split is not None:
            batch = self.panel_batch("sequence", lambda: self.train_split).to(engine.device)
            model, pose_net = self.inference_model().eval(), self.extra["pose"].eval()
            with torch.no_grad(), engine.autocast():
                disparity = model(batch.image)[(DISP, 0)]
            panels["train/photometric"] = photometric_panel(disparity, SequencePoses(pose_net), self.photometric,
                                                            batch)
        return panels
