"""Importing published weights into mtlda: the official DenseMTL models and the 3-ways self-supervised depth model.

* :func:`densemtl_to_mtlda` / :func:`threeways_to_mtlda`: state-dict conversion (checked: every tensor mapped once,
  nothing missing, shapes equal, conventions converted);
* :func:`import_weights`: a foreign file -> an mtlda checkpoint for an experiment (``scripts/import_weights.py``);
* :func:`fusion_orders` and :func:`fusion_order_scores`: the S-D-N fusion order the file does not record.
"""

from mtlda.weights.calibration import fusion_order_candidates, fusion_order_scores
from mtlda.weights.densemtl import (
    default_fusion_order,
    densemtl_to_mtlda,
    fusion_orders,
    official_output_to_mtlda,
    parse_fusion_order,
)
from mtlda.weights.importer import FORMATS, import_weights, required_overrides
from mtlda.weights.mapping import WeightImportError
from mtlda.weights.threeways import read_threeways, threeways_to_mtlda

__all__ = [
    "FORMATS",
    "WeightImportError",
    "default_fusion_order",
    "densemtl_to_mtlda",
    "fusion_order_candidates",
    "fusion_order_scores",
    "fusion_orders",
    "import_weights",
    "official_output_to_mtlda",
    "parse_fusion_order",
    "read_threeways",
    "required_overrides",
    "threeways_to_mtlda",
]
