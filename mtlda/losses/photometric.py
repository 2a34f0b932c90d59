"""Self-supervised monocular depth: the Monodepth2 photometric objective (Godard et al., ICCV 2019).

One function per idea: disparity -> depth, SSIM dissimilarity, reprojection error, view synthesis, edge-aware
smoothness, and :class:`PhotometricLoss` that combines them over source frames and scales with auto-masking.

Pixel convention (mtlda): pixel centres at integer coordinates, sampling with ``grid_sample(...,
align_corners=False)`` at normalised coordinates (2u + 1) / W - 1 (see :mod:`mtlda.geometry`). Poses are
``T_tgt_to_src`` (B, 4, 4): they map points of the target camera frame into the source camera frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.constants import SDE_MAX_DEPTH, SDE_MIN_DEPTH
from mtlda.geometry import disp_to_depth, warp_frame

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_WEIGHT = 0.85  # reprojection error = 0.85 * SSIM dissimilarity + 0.15 * L1


def ssim_dissimilarity(x: Tensor, y: Tensor) -> Tensor:
    """Per-pixel (1 - SSIM) / 2 in [0, 1] with a 3x3 box window after reflection padding, channel-averaged.

    x, y: (B, C, H, W) images in [0, 1], H and W >= 2. Returns (B, 1, H, W). C1 = 0.01^2, C2 = 0.03^2.
    """
    _check_same_images(x, y)
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x = F.avg_pool2d(x, 3, stride=1)
    mu_y = F.avg_pool2d(y, 3, stride=1)
    var_x = F.avg_pool2d(x * x, 3, stride=1) - mu_x * mu_x
    var_y = F.avg_pool2d(y * y, 3, stride=1) - mu_y * mu_y
    cov_xy = F.avg_pool2d(x * y, 3, stride=1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    dissimilarity = torch.clamp((1 - numerator / denominator) / 2, 0.0, 1.0)
    return dissimilarity.mean(dim=1, keepdim=True)


def reprojection_error(pred: Tensor, target: Tensor) -> Tensor:
    """Monodepth2's photometric error: 0.85 * SSIM dissimilarity + 0.15 * L1, both channel-averaged.

    pred, target: (B, C, H, W) images in [0, 1]. Returns (B, 1, H, W).
    """
    l1 = (pred - target).abs().mean(dim=1, keepdim=True)
    return SSIM_WEIGHT * ssim_dissimilarity(pred, target) + (1 - SSIM_WEIGHT) * l1


def synthesise_view(source: Tensor, depth_tgt: Tensor, T_tgt_to_src: Tensor, K: Tensor) -> Tensor:
    """Reconstruct the target view by sampling the source image where target pixels project into it.

    source: (B, 3, H, W) source image; depth_tgt: (B, 1, H, W) z-depth of the target view in metres;
    T_tgt_to_src: (B, 4, 4) maps target-frame points into the source frame; K: (B, 3, 3) pixel intrinsics shared
    by both views. Bilinear sampling with border padding (out-of-view pixels repeat the source border).
    Returns (B, 3, H, W).
    """
    warped, _ = warp_frame(source, depth_tgt, T_tgt_to_src, K, padding="border")
    return warped


def edge_aware_smoothness(disp: Tensor, image: Tensor) -> Tensor:
    """Mean |grad d*| * exp(-mean_c |grad I|) over x and y, with d* = disp / mean(disp) per image.

    disp: (B, 1, h, w) positive disparity; image: (B, 3, h, w) at the same resolution, in [0, 1].
    Returns a scalar; 0 for a constant disparity.
    """
    if disp.shape[-2:] != image.shape[-2:] or disp.shape[0] != image.shape[0] or disp.shape[1] != 1:
        raise ValueError(
            f"edge_aware_smoothness needs disp (B,1,h,w) and image (B,C,h,w) of one size, got {tuple(disp.shape)} "
            f"and {tuple(image.shape)}; resize the image to the disparity's scale first"
        )
    disp = disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
    grad_disp_x = (disp[..., :, 1:] - disp[..., :, :-1]).abs()
    grad_disp_y = (disp[..., 1:, :] - disp[..., :-1, :]).abs()
    grad_image_x = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=1, keepdim=True)
    grad_image_y = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=1, keepdim=True)
    return (grad_disp_x * torch.exp(-grad_image_x)).mean() + (grad_disp_y * torch.exp(-grad_image_y)).mean()


@dataclass
class ReprojectionMaps:
    """The per-pixel pieces of the photometric loss at one disparity scale, at the input resolution.

    ``warped``: offset -> (B, 3, H, W) the source frame synthesised into the target view; ``error``: (B, 1, H, W) the
    minimum reprojection error over warped sources; ``identity_error``: (B, 1, H, W) the minimum over un-warped
    sources (None without auto-masking).
    """

    warped: dict[int, Tensor]
    error: Tensor
    identity_error: Tensor | None

    @property
    def supervised(self) -> Tensor:
        """(B, 1, H, W) bool: the auto-mask, True where a warped source beats every un-warped one (the pixel's error
        carries gradient); all True without auto-masking."""
        if self.identity_error is None:
            return torch.ones_like(self.error, dtype=torch.bool)
        return self.error < self.identity_error

    @property
    def min_error(self) -> Tensor:
        """(B, 1, H, W) the error the loss averages: the minimum over warped and un-warped sources."""
        return self.error if self.identity_error is None else torch.minimum(self.error, self.identity_error)


class PhotometricLoss(nn.Module):
    """Monodepth2's multi-scale self-supervised objective for a target frame and its temporal neighbours.

    For every scale s of the predicted disparity: upsample it bilinearly to the input resolution, convert it to
    depth (:func:`disp_to_depth`), synthesise the target from every source frame, take the per-pixel minimum
    reprojection error over sources; with auto-masking the un-warped sources' errors join that minimum, so a
    pixel where some un-warped source already matches at least as well as every warped one keeps an error that
    carries no gradient (static camera, objects moving with the camera, textureless regions). Ties go to the
    un-warped error (a deterministic comparison instead of Monodepth2's random 1e-5 noise), so a source identical
    to the target masks every pixel. L_s = mean(min error) + smoothness * edge_aware_smoothness(disp_s,
    image_s) / 2^s, with the smoothness at the disparity's native resolution against the target resized to it
    (bilinear, antialiased). The loss is the mean of L_s over the given scales.
    """

    def __init__(
        self,
        min_depth: float = SDE_MIN_DEPTH,
        max_depth: float = SDE_MAX_DEPTH,
        smoothness: float = 1e-3,
        automask: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        if smoothness < 0:
            raise ValueError(f"smoothness weight must be >= 0, got {smoothness}")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.smoothness = smoothness
        self.automask = automask

    def forward(
        self,
        disparities: Mapping[int, Tensor],
        target: Tensor,
        sources: Mapping[int, Tensor],
        poses: Mapping[int, Tensor],
        K: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Photometric loss and detached diagnostics.

        disparities: scale s -> (B, 1, H / 2^s, W / 2^s) sigmoid disparity; target: (B, 3, H, W) in [0, 1];
        sources: temporal offset -> (B, 3, H, W) neighbouring frame; poses: the same offsets -> (B, 4, 4)
        T_tgt_to_src; K: (B, 3, 3) intrinsics of the (H, W) crop. Returns ``(loss, diagnostics)`` with the
        scalar diagnostics "reprojection" (mean over scales of the per-pixel minimum error), "smoothness"
        (mean over scales, unweighted) and "automask_fraction" (share of pixels, over scales, where an
        un-warped source won; 0 when auto-masking is off). Computed in float32, also under autocast: SSIM's
        constants (C1 = 1e-4) are below half precision's resolution near 1.
        """
        self._check_inputs(disparities, target, sources, poses, K)
        with torch.autocast(device_type=target.device.type, enabled=False):
            return self._float32_loss(
                {s: d.float() for s, d in disparities.items()},
                target.float(),
                {o: f.float() for o, f in sources.items()},
                {o: T.float() for o, T in poses.items()},
                K.float(),
            )

    def _float32_loss(
        self,
        disparities: Mapping[int, Tensor],
        target: Tensor,
        sources: Mapping[int, Tensor],
        poses: Mapping[int, Tensor],
        K: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        identity_error = self._identity_error(target, sources)
        scale_losses, reprojections, smoothnesses, automask_fractions = [], [], [], []
        for scale in sorted(disparities):
            disp = disparities[scale]
            maps = self._maps(disp, target, sources, poses, K, identity_error)
            automask_fractions.append((~maps.supervised).float().mean() if self.automask
                                      else torch.zeros((), device=target.device))
            min_error = maps.min_error
            image_at_scale = _resize_image(target, disp.shape[-2:])
            smooth = edge_aware_smoothness(disp, image_at_scale)
            reprojection = min_error.mean()
            scale_losses.append(reprojection + self.smoothness * smooth / 2**scale)
            reprojections.append(reprojection.detach())
            smoothnesses.append(smooth.detach())
        loss = torch.stack(scale_losses).mean()
        diagnostics = {
            "reprojection": torch.stack(reprojections).mean(),
            "smoothness": torch.stack(smoothnesses).mean(),
            "automask_fraction": torch.stack(automask_fractions).mean(),
        }
        return loss, diagnostics

    @torch.no_grad()
    def reprojection_maps(self, disparity: Tensor, target: Tensor, sources: Mapping[int, Tensor],
                          poses: Mapping[int, Tensor], K: Tensor) -> ReprojectionMaps:
        """The loss's per-pixel maps for one disparity (B, 1, h, w) of the target (B, 3, H, W), for pictures;
        arguments as in :meth:`forward`, computed in float32."""
        scale = round(math.log2(target.shape[-1] / disparity.shape[-1]))
        self._check_inputs({scale: disparity}, target, sources, poses, K)
        with torch.autocast(device_type=target.device.type, enabled=False):
            target, sources = target.float(), {o: f.float() for o, f in sources.items()}
            identity_error = self._identity_error(target, sources)
            return self._maps(disparity.float(), target, sources, {o: T.float() for o, T in poses.items()}, K.float(),
                              identity_error)

    def _identity_error(self, target: Tensor, sources: Mapping[int, Tensor]) -> Tensor | None:
        """(B, 1, H, W) minimum reprojection error of the un-warped sources (None without auto-masking)."""
        if not self.automask:
            return None
        errors = torch.cat([reprojection_error(sources[o], target) for o in sorted(sources)], dim=1)
        return errors.min(dim=1, keepdim=True).values

    def _maps(self, disp: Tensor, target: Tensor, sources: Mapping[int, Tensor], poses: Mapping[int, Tensor],
              K: Tensor, identity_error: Tensor | None) -> ReprojectionMaps:
        disp_full = F.interpolate(disp, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
        _, depth = disp_to_depth(disp_full, self.min_depth, self.max_depth)
        warped = {o: synthesise_view(sources[o], depth, poses[o], K) for o in sorted(sources)}
        error = torch.cat([reprojection_error(w, target) for w in warped.values()], dim=1)
        return ReprojectionMaps(warped, error.min(dim=1, keepdim=True).values, identity_error)

    @staticmethod
    def _check_inputs(
        disparities: Mapping[int, Tensor],
        target: Tensor,
        sources: Mapping[int, Tensor],
        poses: Mapping[int, Tensor],
        K: Tensor,
    ) -> None:
        if not disparities:
            raise ValueError("PhotometricLoss needs at least one disparity scale")
        if not sources:
            raise ValueError("PhotometricLoss needs at least one source frame (e.g. offsets -1 and +1)")
        if set(sources) != set(poses):
            raise ValueError(
                f"source frames {sorted(sources)} and poses {sorted(poses)} must have the same offsets: "
                "predict one pose T_tgt_to_src per source frame"
            )
        if target.dim() != 4:
            raise ValueError(f"target must be (B, 3, H, W), got {tuple(target.shape)}")
        batch, _, height, width = target.shape
        for offset, frame in sources.items():
            if frame.shape != target.shape:
                raise ValueError(
                    f"source frame {offset} has shape {tuple(frame.shape)}, target {tuple(target.shape)}: "
                    "crop/resize every frame of a sequence identically"
                )
            if poses[offset].shape != (batch, 4, 4):
                raise ValueError(f"pose for offset {offset} must be ({batch}, 4, 4), got {tuple(poses[offset].shape)}")
        if K.shape != (batch, 3, 3):
            raise ValueError(
                f"K must be ({batch}, 3, 3) intrinsics of the {height}x{width} input, got {tuple(K.shape)}"
            )
        for scale, disp in disparities.items():
            expected = (batch, 1, height // 2**scale, width // 2**scale)
            if scale < 0 or disp.shape != expected:
                raise ValueError(
                    f"disparity at scale {scale} must be {expected} (stride 2**scale of the {height}x{width} input), "
                    f"got {tuple(disp.shape)}"
                )


def _resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Image (B, C, H, W) resized to ``size`` (bilinear, antialiased when shrinking); unchanged if already there."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def _check_same_images(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"SSIM needs images of at least 2x2 pixels (reflection padding), got {tuple(x.shape)}")
