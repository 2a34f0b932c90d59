"""Typed schema of an experiment file. Every key a YAML experiment may set is a field here.

The loader in :mod:`mtlda.config` validates YAML against these dataclasses: unknown keys, wrong types and values
outside a field's range (``metadata={"min": ...}``) are errors. Defaults describe the built-in toycity demo; the
paper's settings live in ``experiments/``. Names of registered components (scenario, exchange block, data set,
task codes, weighting method) are checked against their registries when the run is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def at_least(minimum: float) -> dict:
    """Field metadata: values below ``minimum`` are rejected when a config is loaded."""
    return {"min": minimum}

from mtlda.constants import DEPTH_INV_SCALE_DEFAULT, EVAL_MAX_DEPTH, EVAL_MIN_DEPTH, SDE_MAX_DEPTH, SDE_MIN_DEPTH


@dataclass
class ModelConfig:
    """Encoder + per-task 3-ways decoders + exchange blocks."""

    architecture: str = "3ways"  # 3ways (ASPP + skip decoders) | deeplab (MTL-survey head) | padnet (original PAD-Net)
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101
    pretrained: str = "none"  # none | imagenet | path to a local .pth state dict
    input_norm: str = "imagenet"  # imagenet (torchvision statistics) | monodepth ((x - 0.45) / 0.225, official code)
    dilation: list[bool] = field(default_factory=lambda: [False, False, True])  # torchvision layer2..4
    decoder_channels: list[int] = field(default_factory=lambda: [64, 128, 128, 256, 256])
    aspp_rates: list[int] = field(default_factory=lambda: [6, 12, 18])  # the survey's DeepLab head: [12, 24, 36]
    aspp_dropout: float = field(default=0.5, metadata=at_least(0.0))  # dropout after the ASPP projection
    scales: list[int] = field(default_factory=lambda: [0, 1])  # supervised side outputs (stride 2**s)
    block: str = "mteb"  # mteb | padnet | none
    stages: list[int] = field(default_factory=lambda: [1])  # decoder stages that get an exchange block
    attention: str = "spatial"  # spatial | channel | both (xTAM correlation branch)
    self_attention: bool = True  # xTAM's PAD-Net-style self-attention branch
    use_alpha: bool = True  # per-channel alpha (initialised to 0) on the attention branch
    fusion: str = "add"  # add | prod | concat
    block_gate: bool = False  # blocks enter as f + g * (block(f) - f), g per channel from 0 (start as identity)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (every backend)
    checkpointing: str = "none"  # activation checkpointing: none | encoder | all (trades time for memory)


@dataclass
class ToycityConfig:
    """Built-in procedural street scenes, written in a real data set's format and read by its loader."""

    style: str = "flat"  # flat | tinted | synthetic | textured
    format: str = "cityscapes"  # cityscapes | synthia | vkitti2 | nyudv2
    num_train: int = field(default=240, metadata=at_least(1))
    num_val: int = field(default=60, metadata=at_least(1))
    height: int = field(default=128, metadata=at_least(16))
    width: int = field(default=256, metadata=at_least(16))
    seed: int = 0
    cache_dir: str = "${MTLDA_CACHE:-~/.cache/mtlda}/toycity"


@dataclass
class DataConfig:
    dataset: str = "toycity"  # toycity | cityscapes | synthia | vkitti2 | nyudv2
    root: str = ""  # empty: from CITYSCAPES_DIR / SYNTHIA_DIR / VKITTI2_DIR / NYUDV2_DIR
    normals_root: str = ""  # folder holding normals_mtlda/ (prepare-normals --out); empty: the data set root
    classes: int = 0  # class set of the loader (0: the data set's default)
    variation: str = "clone"  # Virtual KITTI 2 variation (clone, fog, morning, 15-deg-left, ...)
    height: int = field(default=128, metadata=at_least(1))  # images are resized to height x width (K updated)
    width: int = field(default=256, metadata=at_least(1))
    crop: list[int] = field(default_factory=list)  # [h, w] random training crop; empty: none
    val_height: int = field(default=0, metadata=at_least(0))  # evaluation resolution (0: same as training)
    val_width: int = field(default=0, metadata=at_least(0))
    train_split: str = "train"
    val_split: str = "val"
    frames: list[int] = field(default_factory=list)  # neighbour frame offsets, e.g. [-1, 1] for SDE
    flip: bool = True
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])  # [min, max] zoom factor
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter (0: off)
    batch_size: int = field(default=8, metadata=at_least(1))  # global batch: divided across torchrun ranks
    val_batch_size: int = field(default=8, metadata=at_least(1))  # per rank
    workers: int = field(default=0, metadata=at_least(-1))  # per rank; -1: auto (cores per rank - 1, <= 8; 0 below 4)
    max_val_samples: int = field(default=0, metadata=at_least(0))  # 0: the whole split
    toycity: ToycityConfig = field(default_factory=ToycityConfig)


@dataclass
class DepthProtocol:
    min_depth: float = EVAL_MIN_DEPTH
    max_depth: float = EVAL_MAX_DEPTH
    median_scaling: bool = False
    per_image: bool = False  # average per image (True) or over all pixels of the split (False)


@dataclass
class TasksConfig:
    names: list[str] = field(default_factory=lambda: ["S", "D", "N"])  # codes S, D, N, E
    weights: dict[str, float] = field(default_factory=dict)  # per code; empty: the paper's per task set
    depth_inv_scale: float = DEPTH_INV_SCALE_DEFAULT  # the head regresses s / (depth + offset)
    depth_inv_offset: float = 0.0  # metres; the official head's encoding is s = 655.36, offset = 0.01
    depth_protocol: DepthProtocol = field(default_factory=DepthProtocol)
    edge_tolerance: int = field(default=1, metadata=at_least(0))  # boundary-matching tolerance (px) for ODS-F
    # task balancing: {name: fixed | uncertainty | dwa | gradnorm | pcgrad | cagrad | nashmtl | famo, ...options}
    weighting: dict[str, Any] = field(default_factory=lambda: {"name": "fixed"})


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: dict[str, float] = field(
        default_factory=lambda: {"backbone": 5e-4, "decoders": 1e-3, "exchange": 1e-3}, metadata=at_least(0.0)
    )  # per parameter group; groups: backbone, decoders, exchange, pose, discriminators
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    momentum: float = 0.9
    weight_decay: float = field(default=0.0, metadata=at_least(0.0))
    schedule: str = "poly"  # constant | step | poly
    step_at: list[int] = field(default_factory=list)  # iterations where lr is multiplied by gamma
    gamma: float = 0.1
    poly_power: float = 0.9
    grad_clip: float = field(default=10.0, metadata=at_least(0.0))  # global L2 norm; 0 disables


@dataclass
class TrainConfig:
    iterations: int = field(default=1500, metadata=at_least(0))
    val_every: int = field(default=500, metadata=at_least(0))  # 0: only at the end
    log_every: int = field(default=25, metadata=at_least(1))
    image_every: int = field(default=500, metadata=at_least(0))  # TensorBoard image panels; 0: never
    checkpoint_every: int = field(default=250, metadata=at_least(0))  # last.pt; 0: only at the end
    selection_metric: str = "delta"  # 'delta' or '<task>/<metric>' (e.g. semseg/miou), checked at start-up
    amp: bool = False
    amp_dtype: str = "bf16"  # bf16 | fp16 (CUDA only)
    compile: bool = False  # torch.compile the network (compile time reported separately)
    channels_last: bool = True  # channels_last memory format of the network (0.77x the demo step time on a CPU)
    threads: int = field(default=0, metadata=at_least(0))  # torch.set_num_threads on CPU (0: leave as is)


@dataclass
class UDAConfig:
    source: DataConfig = field(default_factory=DataConfig)
    lambda_adv: float = field(default=5e-3, metadata=at_least(0.0))  # Eq. 9: summed over tasks
    adv_scales: list[int] = field(default_factory=lambda: [0, 1])
    disc_optimizer: str = "adam"  # adam (ADVENT, official code) | sgd (with optim.momentum)
    disc_lr: float = field(default=1e-4, metadata=at_least(0.0))
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    spectral_norm: bool = False  # spectral normalisation of the discriminators' convolutions (official code)
    disc_flip: bool = False  # random horizontal flip of each discriminator input in training (official code)
    enabled: bool = True  # False: source-only training with the same data and schedule
    # BatchNorm running statistics (what evaluation normalises with) from the target batches only, the domain the
    # adapted network is evaluated on; false: from source and target batches alike (the official code). Each training
    # step normalises each batch with its own statistics either way.
    target_bn_statistics: bool = False


@dataclass
class SDEConfig:
    stage: str = "multitask"  # pretrain | multitask
    init_from: str = ""  # pretrain checkpoint for the multi-task stage
    min_depth: float = SDE_MIN_DEPTH
    max_depth: float = SDE_MAX_DEPTH
    smoothness: float = field(default=1e-3, metadata=at_least(0.0))
    disp_scales: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    supervised_scales: list[int] = field(default_factory=lambda: [0, 2])  # heads of the supervised tasks
    pose_backbone: str = "resnet18"
    # added to the pose net's initial translation output (frame t -> t+1): [0, 0, -1e-3] starts from forward
    # motion; zeros: Monodepth2's start near the identity
    pose_init_translation: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


@dataclass
class ReferencesConfig:
    """Single-task references of the multi-task delta (see :mod:`mtlda.references`)."""

    file: str = ""  # references file; empty: the one shipped with mtlda (mtlda/experiments/references.yaml)
    kind: str = "stl"  # reference family: the single-task experiments Delta_MTL is measured against
    is_reference: bool = False  # this single-task experiment is the `kind` reference of its task


@dataclass
class ExperimentConfig:
    name: str = "toycity_sdn_mteb"
    scenario: str = "supervised"  # supervised | uda | sde
    seed: int = 0
    workdir: str = "runs/${name}/s${seed}"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
