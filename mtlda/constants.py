"""Conventions shared by every module. Change them here and nowhere else."""

# Segmentation: label value that losses and metrics skip (Cityscapes trainId convention).
IGNORE_INDEX = 255

# Input normalisation applied inside the encoder (images are RGB in [0, 1]), by ``model.input_norm``:
# "imagenet" (torchvision's ImageNet statistics) or "monodepth" ((x - 0.45) / 0.225, what the official DenseMTL
# and Monodepth2 code use with ImageNet weights).
INPUT_NORMALISATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "monodepth": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
}

# Depth head: regresses y = s / (d + c) (d in metres), the paper's d_far / d with s = ``tasks.depth_inv_scale``
# and c = ``tasks.depth_inv_offset``; the conversion back is exact: d = s / y - c. The official DenseMTL head
# regresses 65536 / (100 d + 1) = 655.36 / (d + 0.01): s = 655.36, c = 0.01 (the paper's experiments).
DEPTH_INV_SCALE_DEFAULT = 80.0
OFFICIAL_DEPTH_INV_SCALE = 655.36
OFFICIAL_DEPTH_INV_OFFSET = 0.01

# Depth evaluation caps (metres) of the default protocol.
EVAL_MIN_DEPTH = 1e-3
EVAL_MAX_DEPTH = 80.0

# Edges: weight of the positive class in the weighted binary cross-entropy (paper / official code).
EDGE_POS_WEIGHT = 0.95

# Self-supervised depth (Monodepth2): the sigmoid disparity maps linearly to inverse depth in
# [1 / SDE_MAX_DEPTH, 1 / SDE_MIN_DEPTH] (metres); ``sde.min_depth`` / ``sde.max_depth`` per experiment.
SDE_MIN_DEPTH = 0.1
SDE_MAX_DEPTH = 100.0
