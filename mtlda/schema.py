"""Typed schema of an experiment file. Every key a YAML experiment may set is a field here.

The loader in :mod:`mtlda.config` validates YAML against these dataclasses: unknown keys and wrong types are
errors. Defaults describe the built-in toycity demo; the paper's settings live in ``experiments/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtlda.constants import DEPTH_INV_SCALE_DEFAULT, EVAL_MAX_DEPTH, EVAL_MIN_DEPTH


@dataclass
class ModelConfig:
    """Encoder + per-task 3-ways decoders + exchange blocks."""

    architecture: str = "3ways"  # 3ways (ASPP + skip decoders) | padnet (original PAD-Net heads)
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101
    pretrained: str = "none"  # none | imagenet | path to a local .pth state dict
    input_norm: str = "imagenet"  # imagenet (torchvision statistics) | monodepth ((x - 0.45) / 0.225, official code)
    dilation: list[bool] = field(default_factory=lambda: [False, False, True])  # torchvision layer2..4
    decoder_channels: list[int] = field(default_factory=lambda: [64, 128, 128, 256, 256])
    aspp_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    scales: list[int] = field(default_factory=lambda: [0, 1])  # supervised side outputs (stride 2**s)
    block: str = "mteb"  # mteb | padnet | none
    stages: list[int] = field(default_factory=lambda: [1])  # decoder stages that get an exchange block
    attention: str = "spatial"  # spatial | channel | both (xTAM correlation branch)
    self_attention: bool = True  # xTAM's PAD-Net-style self-attention branch
    use_alpha: bool = True  # per-channel alpha (initialised to 0) on the attention branch
    fusion: str = "add"  # add | prod | concat
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP


@dataclass
class ToycityConfig:
    """Built-in procedural street scenes, written in a real data set's format and read by its loader."""

    style: str = "flat"  # flat | textured
    format: str = "cityscapes"  # cityscapes | synthia | vkitti2 | nyudv2
    num_train: int = 240
    num_val: int = 60
    height: int = 128
    width: int = 256
    seed: int = 0
    cache_dir: str = "${MTLDA_CACHE:-~/.cache/mtlda}/toycity"


@dataclass
class DataConfig:
    dataset: str = "toycity"  # toycity | cityscapes | synthia | vkitti2 | nyudv2
    root: str = ""  # empty: from CITYSCAPES_DIR / SYNTHIA_DIR / VKITTI2_DIR / NYUDV2_DIR
    classes: int = 0  # class set of the loader (0: the data set's default)
    variation: str = "clone"  # Virtual KITTI 2 variation (clone, fog, morning, 15-deg-left, ...)
    height: int = 128  # images are resized to height x width (K updated)
    width: int = 256
    crop: list[int] = field(default_factory=list)  # [h, w] random training crop; empty: none
    val_height: int = 0  # evaluation resolution (0: same as training)
    val_width: int = 0
    train_split: str = "train"
    val_split: str = "val"
    frames: list[int] = field(default_factory=list)  # neighbour frame offsets, e.g. [-1, 1] for SDE
    flip: bool = True
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])  # [min, max] zoom factor
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter (0: off)
    batch_size: int = 8
    val_batch_size: int = 8
    workers: int = 0
    max_val_samples: int = 0  # 0: the whole split
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
    edge_tolerance: int = 1  # pixels of boundary-matching tolerance for ODS-F


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: dict[str, float] = field(
        default_factory=lambda: {"backbone": 5e-4, "decoders": 1e-3, "exchange": 1e-3}
    )  # per parameter group; groups: backbone, decoders, exchange, pose, discriminators
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "poly"  # constant | step | poly
    step_at: list[int] = field(default_factory=list)  # iterations where lr is multiplied by gamma
    gamma: float = 0.1
    poly_power: float = 0.9
    grad_clip: float = 10.0  # global L2 norm; 0 disables


@dataclass
class TrainConfig:
    iterations: int = 1500
    val_every: int = 500
    log_every: int = 25
    image_every: int = 500  # TensorBoard image panels
    checkpoint_every: int = 250
    selection_metric: str = "delta"  # 'delta' or '<task>/<metric>' (e.g. semseg/miou)
    amp: bool = False
    amp_dtype: str = "bf16"  # bf16 | fp16
    compile: bool = False
    threads: int = 0  # torch.set_num_threads on CPU (0: leave as is)


@dataclass
class UDAConfig:
    source: DataConfig = field(default_factory=DataConfig)
    lambda_adv: float = 5e-3
    adv_scales: list[int] = field(default_factory=lambda: [0, 1])
    disc_lr: float = 1e-4
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    spectral_norm: bool = False
    enabled: bool = True  # False: source-only training with the same data and schedule


@dataclass
class SDEConfig:
    stage: str = "multitask"  # pretrain | multitask
    init_from: str = ""  # pretrain checkpoint for the multi-task stage
    min_depth: float = 0.1
    max_depth: float = 100.0
    smoothness: float = 1e-3
    disp_scales: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    semseg_scales: list[int] = field(default_factory=lambda: [0, 2])
    pose_backbone: str = "resnet18"


@dataclass
class ExperimentConfig:
    name: str = "toycity_sdn_mteb"
    scenario: str = "supervised"  # supervised | uda | sde
    seed: int = 0
    workdir: str = "runs/${name}/s${seed}"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    references: str = "experiments/references.yaml"  # single-task references for the multi-task delta
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
