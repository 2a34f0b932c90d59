"""Loss functions. Supervised task losses and the multi-scale objective live in :mod:`mtlda.losses.supervised`."""

from mtlda.losses.supervised import (
    berhu_loss,
    cross_entropy_loss,
    multiscale_objective,
    normals_cosine_loss,
    weighted_edge_bce,
)

__all__ = [
    "berhu_loss",
    "cross_entropy_loss",
    "multiscale_objective",
    "normals_cosine_loss",
    "weighted_edge_bce",
]
