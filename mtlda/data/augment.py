"""Geometry-aware joint transforms of a :class:`~mtlda.data.batch.Sample`: resize, crop, flip, zoom, colour jitter.

Every transform returns a new sample in which the image, the neighbour frames, all targets, their masks and ``K``
stay consistent (the pixel conventions of :mod:`mtlda.geometry`, ``align_corners=False``):

* images and frames: bilinear (antialiased when shrinking), padded with 0, mirrored;
* targets: by their kind (:mod:`mtlda.data.targets`), looked up from the target name: class ids, depth values and
  normal vectors are never blended, thin edges survive shrinking, crops pad with ``IGNORE_INDEX`` (label maps) or
  0, a flip negates the x component of normals;
* masks: ``nearest-exact``, padded False, mirrored;
* a horizontal flip mirrors cx;
* colour jitter changes the image and the frames (same factors) and nothing else.

Random draws use ``generator`` (a ``torch.Generator``) or, when it is None, torch's global RNG, which the training
loader seeds per sample (:mod:`mtlda.data.sampling`), so augmentation is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.data.batch import Sample
from mtlda.data.targets import MASK, target_kind
from mtlda.geometry import crop_intrinsics, flip_intrinsics, scale_intrinsics
from mtlda.schema import DataConfig

_GREY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. ``crop`` (h, w) is the output size of the random crop (None: keep the size)."""

    crop: tuple[int, int] | None = None
    flip: bool = True
    scale_range: tuple[float, float] = (1.0, 1.0)
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"data.scale_jitter must be [min, max] with 0 < min <= max, got {list(self.scale_range)}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"data.color_jitter must lie in [0, 1), got {self.color_jitter}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError(f"data.crop must be [height, width] of positive sizes, got {list(self.crop)}")

    @classmethod
    def from_data_config(cls, cfg: DataConfig) -> "AugmentConfig":
        if cfg.crop and len(cfg.crop) != 2:
            raise ValueError(f"data.crop must be empty or [height, width], got {cfg.crop}")
        if len(cfg.scale_jitter) != 2:
            raise ValueError(f"data.scale_jitter must be [min, max], got {cfg.scale_jitter}")
        return cls(
            crop=(int(cfg.crop[0]), int(cfg.crop[1])) if cfg.crop else None,
            flip=cfg.flip,
            scale_range=(float(cfg.scale_jitter[0]), float(cfg.scale_jitter[1])),
            color_jitter=float(cfg.color_jitter),
        )


def resize_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) float bilinear, antialiased when shrinking."""
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


def resize_sample(sample: Sample, height: int, width: int) -> Sample:
    """``sample`` resized to ``height`` x ``width`` with K scaled (depth values and normals are unchanged)."""
    h, w = sample.image.shape[-2:]
    if (h, w) == (height, width):
        return sample
    size = (height, width)
    K = scale_intrinsics(sample.K[None], width / w, height / h)[0]
    return Sample(
        image=resize_image(sample.image, size),
        K=K,
        targets={k: target_kind(k).resize(v, size) for k, v in sample.targets.items()},
        masks={k: MASK.resize(v, size) for k, v in sample.masks.items()},
        frames={k: resize_image(v, size) for k, v in sample.frames.items()},
        id=sample.id,
    )


def _crop(x: Tensor, top: int, left: int, height: int, width: int, fill: float) -> Tensor:
    """Window [top, top + height) x [left, left + width) of x (..., H, W); outside the image filled with ``fill``."""
    h, w = x.shape[-2:]
    out = torch.full((*x.shape[:-2], height, width), fill, dtype=x.dtype)
    r0, r1 = max(top, 0), min(top + height, h)
    c0, c1 = max(left, 0), min(left + width, w)
    if r1 > r0 and c1 > c0:
        out[..., r0 - top : r1 - top, c0 - left : c1 - left] = x[..., r0:r1, c0:c1]
    return out


def crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """The ``height`` x ``width`` window of ``sample`` whose top-left pixel is (``top``, ``left``), K shifted.

    Offsets may be negative and the window may exceed the image: the outside is padded (module docstring).
    """
    return Sample(
        image=_crop(sample.image, top, left, height, width, 0.0),
        K=crop_intrinsics(sample.K[None], top, left)[0],
        targets={k: _crop(v, top, left, height, width, target_kind(k).pad_value) for k, v in sample.targets.items()},
        masks={k: _crop(v, top, left, height, width, MASK.pad_value) for k, v in sample.masks.items()},
        frames={k: _crop(v, top, left, height, width, 0.0) for k, v in sample.frames.items()},
        id=sample.id,
    )


def flip_sample(sample: Sample) -> Sample:
    """``sample`` mirrored left-right: cx' = W - 1 - cx, targets by their kind (normals: x component negated)."""
    return Sample(
        image=sample.image.flip(-1),
        K=flip_intrinsics(sample.K[None], sample.image.shape[-1])[0],
        targets={k: target_kind(k).flip(v) for k, v in sample.targets.items()},
        masks={k: MASK.flip(v) for k, v in sample.masks.items()},
        frames={k: v.flip(-1) for k, v in sample.frames.items()},
        id=sample.id,
    )


def _jitter_image(x: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """(3, H, W) RGB in [0, 1]: brightness (scale), contrast (towards the mean grey), saturation (towards grey)."""
    weights = torch.tensor(_GREY_WEIGHTS, dtype=x.dtype).reshape(3, 1, 1)
    x = (x * brightness).clamp(0, 1)
    mean = (x * weights).sum(0).mean()
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    grey = (x * weights).sum(0, keepdim=True)
    return ((x - grey) * saturation + grey).clamp(0, 1)


def jitter_colors(sample: Sample, brightness: float, contrast: float, saturation: float) -> Sample:
    """``sample`` with the same colour jitter applied to the image and every frame; targets untouched."""
    return replace(
        sample,
        image=_jitter_image(sample.image, brightness, contrast, saturation),
        frames={k: _jitter_image(v, brightness, contrast, saturation) for k, v in sample.frames.items()},
    )


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _offset(size: int, out: int, generator: torch.Generator | None) -> int:
    """Random window offset in [0, size - out] (crop) or [size - out, 0] (pad)."""
    lo, hi = min(0, size - out), max(0, size - out)
    return int(torch.randint(lo, hi + 1, (), generator=generator))


def random_augment(sample: Sample, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Sample:
    """Zoom by a factor drawn from ``cfg.scale_range`` (K scaled, depth values kept), random crop (or pad) to
    ``cfg.crop`` or back to the input size, horizontal flip with probability 0.5, colour jitter."""
    h, w = sample.image.shape[-2:]
    out_h, out_w = cfg.crop or (h, w)
    lo, hi = cfg.scale_range
    if (lo, hi) != (1.0, 1.0):
        zoom = _uniform(lo, hi, generator)
        sample = resize_sample(sample, max(1, round(h * zoom)), max(1, round(w * zoom)))
    cur_h, cur_w = sample.image.shape[-2:]
    if (cur_h, cur_w) != (out_h, out_w):
        top, left = _offset(cur_h, out_h, generator), _offset(cur_w, out_w, generator)
        sample = crop_sample(sample, top, left, out_h, out_w)
    if cfg.flip and float(torch.rand((), generator=generator)) < 0.5:
        sample = flip_sample(sample)
    if cfg.color_jitter > 0:
        s = cfg.color_jitter
        factors = [_uniform(1 - s, 1 + s, generator) for _ in range(3)]
        sample = jitter_colors(sample, *factors)
    return sample

