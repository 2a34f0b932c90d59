"""Conventions shared by every module. Change them here and nowhere else."""

# Segmentation: label value that losses and metrics skip (Cityscapes trainId convention).
IGNORE_INDEX = 255

# Task names, in the one fixed order used everywhere (module creation, concatenation, logging).
TASK_CODES = {"S": "semseg", "D": "depth", "N": "normals", "E": "edges"}

# Input normalisation applied inside the encoder (torchvision ImageNet statistics; images are RGB in [0, 1]).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Depth head: regresses y = DEPTH_INV_SCALE_DEFAULT / d (d in metres), the paper's d_far / d.
# Per experiment this is `tasks.depth.inv_scale`; the conversion back is exact: d = s / y.
DEPTH_INV_SCALE_DEFAULT = 80.0

# Depth evaluation caps (metres) of the default protocol.
EVAL_MIN_DEPTH = 1e-3
EVAL_MAX_DEPTH = 80.0

# Edges: weight of the positive class in the weighted binary cross-entropy (paper / official code).
EDGE_POS_WEIGHT = 0.95
