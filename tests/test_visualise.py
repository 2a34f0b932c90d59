import numpy as np
import pytest
import torch

from mtlda.constants import EVAL_MAX_DEPTH, IGNORE_INDEX
from mtlda.panel_layout import (
    class_legend,
    font_scale_for,
    labelled_panel,
    make_panel,
    stack_panels,
    text_height,
    text_strip,
)
from mtlda.visualise import (
    HOT_LUT,
    MAGMA_LUT,
    VIRIDIS_LUT,
    apply_lut,
    build_lut,
    colourise_depth,
    colourise_depth_pair,
    colourise_depth_per_image,
    colourise_depth_robust,
    colourise_entropy,
    colourise_error,
    colourise_labels,
    colourise_mask,
    grey_to_rgb,
    normals_to_rgb,
    robust_depth_bounds,
)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    return 0.2126 * rgb[:, 0] + 0.7152 * rgb[:, 1] + 0.0722 * rgb[:, 2]


def test_lut_interpolates_anchors_and_magma_gets_brighter():
    lut = build_lut(np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0]]), size=3)
    assert np.allclose(lut, [[0, 0, 0], [0.5, 0.25, 0], [1, 0.5, 0]])
    lum = 0.2126 * MAGMA_LUT[:, 0] + 0.7152 * MAGMA_LUT[:, 1] + 0.0722 * MAGMA_LUT[:, 2]
    assert (np.diff(lum) > 0).all()
    out = apply_lut(torch.tensor([[[[0.0, 1.0, 2.0]]]]))
    assert torch.allclose(out[0, :, 0, 0], torch.from_numpy(MAGMA_LUT[0]))
    assert torch.equal(out[0, :, 0, 1], out[0, :, 0, 2])


def test_colourise_labels_palette_and_ignore():
    palette = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    labels = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    out = colourise_labels(labels, palette)
    assert torch.equal(out[0, :, 0].T, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]]))


def test_colourise_depth_near_is_brighter_and_missing_black():
    depth = torch.tensor([[[[1.0, 10.0, 80.0, 0.0]]]])
    lum = luminance(colourise_depth(depth, 1.0, 80.0))[0, 0]
    assert lum[0] > lum[1] > lum[2] and lum[3] == 0
    with pytest.raises(ValueError):
        colourise_depth(depth, 5.0, 1.0)


def test_normals_and_grey():
    n = torch.tensor([0.0, 0.0, -1.0])[None, :, None, None].expand(1, 3, 2, 2)
    assert torch.allclose(normals_to_rgb(n)[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.0]))
    valid = torch.tensor([[[[True, False], [True, True]]]])
    assert (normals_to_rgb(n, valid)[0, :, 0, 1] == 0).all()
    assert grey_to_rgb(torch.full((1, 1, 2, 2), 0.3)).shape == (1, 3, 2, 2)


def test_make_panel_layout():
    a = torch.zeros(2, 3, 4, 6)
    b = torch.ones(2, 3, 2, 3)  # resized to 4 x 6
    panel = make_panel([a, b], pad=1)
    assert panel.shape == (3, 2 * (4 + 2), 2 * (6 + 2))
    assert panel[:, 1:5, 1:7].max() == 0 and panel[:, 1:5, 9:15].min() == 1
    with pytest.raises(ValueError):
        make_panel([])


def lut_position(rgb: torch.Tensor, lut: np.ndarray = MAGMA_LUT) -> torch.Tensor:
    """(B, H, W) index in [0, 1] of the nearest colour-table entry of each pixel of (B, 3, H, W) colours."""
    table = torch.from_numpy(lut)
    distance = ((rgb.permute(0, 2, 3, 1)[..., None, :] - table) ** 2).sum(-1)
    return distance.argmin(-1).float() / (len(lut) - 1)


def street_depth(b: int = 2, h: int = 40, w: int = 8) -> torch.Tensor:
    """(B, 1, H, W) rows from 80 m at the top to 5 m at the bottom, geometric in between (a street seen ahead)."""
    rows = torch.logspace(np.log10(80.0), np.log10(5.0), h)
    return rows.reshape(1, 1, h, 1).expand(b, 1, h, w).clone()


def test_robust_depth_spreads_a_far_street_over_the_colour_map():
    depth = street_depth()
    robust = lut_position(colourise_depth_robust(depth))
    fixed = lut_position(colourise_depth(depth, EVAL_MAX_DEPTH / 100, EVAL_MAX_DEPTH))
    assert robust.max() - robust.min() > 0.9
    assert fixed.max() - fixed.min() < 0.3
    far_half = depth[:, 0] > 20
    assert robust[far_half].max() - robust[far_half].min() > 0.4  # 20..80 m still distinguishable
    assert (robust[:, 1:] >= robust[:, :-1]).all()  # nearer rows (further down) never darker


def test_robust_depth_is_scale_invariant_and_masks_invalid():
    depth = street_depth()
    valid = torch.ones_like(depth, dtype=torch.bool)
    valid[:, :, :, 0] = False
    rgb = colourise_depth_robust(depth, valid)
    assert torch.allclose(rgb, colourise_depth_robust(7.5 * depth, valid), atol=1e-6)
    assert (rgb[:, :, :, 0] == 0).all() and (rgb[:, :, :, 1:].sum(1) > 0).all()


def test_robust_depth_bounds_percentiles_and_empty_images():
    depth = torch.arange(1, 101, dtype=torch.float32).reshape(1, 1, 10, 10).repeat(2, 1, 1, 1)
    depth[1] = 0
    bounds = robust_depth_bounds(depth, low_percentile=0, high_percentile=100)
    assert torch.allclose(bounds[0], torch.tensor([1.0, 100.0]))
    assert torch.isnan(bounds[1]).all()
    with pytest.raises(ValueError):
        robust_depth_bounds(depth, low_percentile=60, high_percentile=40)
    flat = colourise_depth_per_image(torch.full((1, 1, 2, 2), 3.0), torch.tensor([[3.0, 3.0]]))
    assert flat.sum() > 0  # an empty range is widened, not divided by zero


def test_depth_pair_shares_the_target_range():
    target = street_depth(b=1)
    valid = target < 60
    pred_rgb, target_rgb = colourise_depth_pair(target.clone(), target, valid)
    assert torch.allclose(pred_rgb[valid.expand(-1, 3, -1, -1)], target_rgb[valid.expand(-1, 3, -1, -1)])
    assert (target_rgb * ~valid).sum() == 0
    far_pred, _ = colourise_depth_pair(2 * target, target, valid)
    assert luminance(far_pred).mean() < luminance(pred_rgb).mean()  # a too-far prediction looks darker
    no_target, _ = colourise_depth_pair(target, torch.zeros_like(target))
    assert torch.allclose(no_target, colourise_depth_robust(target))


def test_entropy_error_and_mask_colours():
    per_class = torch.full((1, 4, 2, 2), 0.25)  # sums to entropy 1
    assert torch.allclose(colourise_entropy(per_class)[0, :, 0, 0], torch.from_numpy(VIRIDIS_LUT[-1]))
    assert torch.allclose(colourise_entropy(torch.zeros(1, 1, 2, 2))[0, :, 0, 0], torch.from_numpy(VIRIDIS_LUT[0]))
    error = torch.tensor([[[[0.0, 0.1, 0.2, float("nan")]]]])
    rgb = colourise_error(error, max_error=0.2)
    assert torch.allclose(rgb[0, :, 0, 2], torch.from_numpy(HOT_LUT[-1])) and (rgb[0, :, 0, [0, 3]] == 0).all()
    assert (luminance(colourise_error(error))[0, 0, :3].diff() > 0).all()
    with pytest.raises(ValueError):
        colourise_error(error, max_error=0.0)
    mask = torch.tensor([[[[True, False]]]])
    out = colourise_mask(mask, on_colour=(0.0, 1.0, 0.0))
    assert out[0, :, 0, 0].tolist() == [0.0, 1.0, 0.0] and out[0, :, 0, 1].tolist() == [0.0, 0.0, 0.0]


def test_text_strip_draws_dark_text_that_fits():
    scale = font_scale_for(256)
    strip = text_strip("semseg pred", 120, scale)
    assert strip.shape == (3, text_height(scale), 120)
    assert strip.min() < 0.5 and (strip[:, :, :2] == 1).all()  # text inside the margins
    long = text_strip("a very long title that cannot fit in forty pixels", 40, scale)
    assert long.shape[-1] == 40 and long.min() < 0.5
    with pytest.raises(ValueError):
        text_strip("x", 10, scale, align="right")


def test_labelled_panel_layout_titles_row_labels_and_legend():
    b, h, w, pad = 2, 16, 24, 2
    images = [torch.zeros(b, 3, h, w), torch.full((b, 3, h, w), 0.5)]
    palette = np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    plain = labelled_panel(images, ["input", "depth pred"], pad=pad)
    title = text_height(font_scale_for(w))
    assert plain.shape == (3, title + b * (h + 2 * pad), 2 * (w + 2 * pad))
    assert torch.equal(plain[:, title:], make_panel(images, pad))
    assert plain[:, :title].min() < 0.5  # the title pixels are not all background
    full = labelled_panel(images, ["input", "semseg"], row_labels=["source", "target"],
                          legend=(["road", "sky"], palette), pad=pad)
    label_width = full.shape[-1] - plain.shape[-1]
    assert label_width > 0 and full.shape[1] > plain.shape[1]
    assert full[:, title:title + h, :label_width].min() < 0.5  # the row label is drawn
    legend = full[:, plain.shape[1]:]
    assert ((legend[0] == 1) & (legend[1] == 0) & (legend[2] == 0)).any()  # the red swatch
    with pytest.raises(ValueError):
        labelled_panel(images, ["only one title"])
    with pytest.raises(ValueError):
        labelled_panel(images, ["a", "b"], row_labels=["one"])


def test_class_legend_wraps_to_its_width():
    names = [f"class {i}" for i in range(12)]
    palette = np.tile(np.array([[0, 200, 0]], dtype=np.uint8), (12, 1))
    wide, narrow = class_legend(names, palette, 1200), class_legend(names, palette, 200)
    assert wide.shape[1:] == (text_height(0.45), 1200) and narrow.shape[-1] == 200
    assert narrow.shape[1] >= 4 * wide.shape[1]
    with pytest.raises(ValueError):
        class_legend(names, palette[:3], 200)


def test_stack_panels_pads_and_heads_sections():
    a, b = torch.zeros(3, 10, 30), torch.zeros(3, 6, 20)
    out = stack_panels([("source", a), ("", b)], gap=4)
    heading = text_height(0.5)
    assert out.shape == (3, heading + 10 + 4 + 6, 30)
    assert out[:, :heading].min() < 0.5
    assert (out[:, -6:, 20:] == 1).all() and (out[:, -6:, :20] == 0).all()
    with pytest.raises(ValueError):
        stack_panels([])
