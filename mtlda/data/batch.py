"""The one container that flows from datasets to networks, losses and metrics.

A dataset's ``__getitem__`` returns a :class:`Sample` (unbatched tensors); :func:`collate` stacks samples into a
:class:`Batch`. Consumers never mutate a batch: they build new tensors.

Target conventions of the built-in tasks (per task name, see :mod:`mtlda.tasks`):

* ``semseg``: (H, W) int64 class ids, ``IGNORE_INDEX`` where unlabelled.
* ``depth``: (1, H, W) float32 metric depth in metres (z-depth); invalid pixels hold 0 and are False in the mask.
* ``normals``: (3, H, W) float32 unit normals in the camera frame (x right, y down, z forward), facing the camera
  (n . ray < 0, so a fronto-parallel wall is (0, 0, -1)); invalid pixels are False in the mask.
* ``edges``: (1, H, W) float32 in {0, 1}.

``masks[name]`` is a (1, H, W) bool validity map for ``depth``, ``normals`` and ``edges``; segmentation uses the
ignore index instead. ``K`` is the (3, 3) pinhole matrix of ``image`` at its current resolution, in pixels.
``frames`` maps a temporal offset (-1, +1) to a neighbouring RGB frame of the same size and K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Sample:
    image: Tensor  # (3, H, W) float32 RGB in [0, 1]
    K: Tensor  # (3, 3) float32
    targets: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    frames: dict[int, Tensor] = field(default_factory=dict)
    id: str = ""


@dataclass
class Batch:
    image: Tensor  # (B, 3, H, W)
    K: Tensor  # (B, 3, 3)
    targets: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    frames: dict[int, Tensor] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy of the batch on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            image=move(self.image),
            K=move(self.K),
            targets={k: move(v) for k, v in self.targets.items()},
            masks={k: move(v) for k, v in self.masks.items()},
            frames={k: move(v) for k, v in self.frames.items()},
            ids=list(self.ids),
        )

    @property
    def size(self) -> int:
        return self.image.shape[0]

    def pin_memory(self) -> "Batch":
        return Batch(
            image=self.image.pin_memory(),
            K=self.K.pin_memory(),
            targets={k: v.pin_memory() for k, v in self.targets.items()},
            masks={k: v.pin_memory() for k, v in self.masks.items()},
            frames={k: v.pin_memory() for k, v in self.frames.items()},
            ids=list(self.ids),
        )


def collate(samples: list[Sample]) -> Batch:
    """Stack samples that carry the same keys into a batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    for s in samples[1:]:
        for f in ("targets", "masks", "frames"):
            if getattr(s, f).keys() != getattr(first, f).keys():
                raise ValueError(f"samples {first.id!r} and {s.id!r} carry different {f} keys")
    return Batch(
        image=torch.stack([s.image for s in samples]),
        K=torch.stack([s.K for s in samples]),
        targets={k: torch.stack([s.targets[k] for s in samples]) for k in first.targets},
        masks={k: torch.stack([s.masks[k] for s in samples]) for k in first.masks},
        frames={k: torch.stack([s.frames[k] for s in samples]) for k in first.frames},
        ids=[s.id for s in samples],
    )


__all__ = ["Sample", "Batch", "collate"]
