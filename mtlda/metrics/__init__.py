"""Streaming evaluation metrics (exactly reducible over DDP ranks) and the multi-task delta."""

from mtlda.metrics.base import StreamingMetric, full_mask
from mtlda.metrics.delta import delta_uncertainty, multitask_delta
from mtlda.metrics.depth import DEPTH_METRIC_NAMES, DepthMetric
from mtlda.metrics.edges import EdgesMetric
from mtlda.metrics.normals import NormalsMetric, angular_error
from mtlda.metrics.segmentation import SegmentationMetric

__all__ = [
    "DEPTH_METRIC_NAMES",
    "DepthMetric",
    "EdgesMetric",
    "NormalsMetric",
    "SegmentationMetric",
    "StreamingMetric",
    "angular_error",
    "delta_uncertainty",
    "full_mask",
    "multitask_delta",
]
