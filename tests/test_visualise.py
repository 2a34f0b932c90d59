import numpy as np
import pytest
import torch

from mtlda.constants import IGNORE_INDEX
from mtlda.visualise import (
    MAGMA_LUT,
    apply_lut,
    build_lut,
    colourise_depth,
    colourise_labels,
    grey_to_rgb,
    make_panel,
    normals_to_rgb,
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
