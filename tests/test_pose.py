"""Pose network: architecture, temporal order and Monodepth2's pose composition for past frames."""

import pytest
import torch

from mtlda.geometry import pose_from_axis_angle
from mtlda.models.pose import PoseNet


@pytest.fixture(scope="module")
def net() -> PoseNet:
    torch.manual_seed(0)
    return PoseNet("resnet18").eval()


@pytest.fixture(scope="module")
def frames() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 64, generator=generator), torch.rand(2, 3, 32, 64, generator=generator)


def test_parameter_counts_match_monodepth2_with_one_pose():
    net = PoseNet("resnet18")
    encoder = sum(p.numel() for p in net.encoder.parameters())
    decoder = sum(p.numel() for p in net.decoder.parameters())
    # Monodepth2: 6-channel ResNet-18 encoder 11,185,920; its decoder predicts 2 poses (1,314,572), ours 1.
    assert encoder == 11_185_920
    assert decoder == 1_314_572 - 6 * 257


def test_forward_gives_small_axis_angle_and_translation(net, frames):
    with torch.no_grad():
        axis_angle, translation = net(*frames)
    assert axis_angle.shape == (2, 3) and translation.shape == (2, 3)
    assert torch.isfinite(axis_angle).all() and torch.isfinite(translation).all()
    assert axis_angle.abs().max() < 0.1 and translation.abs().max() < 0.1  # x0.01 output scaling


def test_future_frame_pose_is_the_forward_pose(net, frames):
    target, source = frames
    with torch.no_grad():
        expected = pose_from_axis_angle(*net(target, source))
        pose = net.relative_pose(target, source, offset=1)
    torch.testing.assert_close(pose, expected)


def test_past_frame_pose_is_the_inverse_of_the_temporal_order_pose(net, frames):
    target, source = frames
    with torch.no_grad():
        forward = pose_from_axis_angle(*net(source, target))  # source (t-1) -> target (t)
        pose = net.relative_pose(target, source, offset=-1)
    identity = torch.eye(4).expand(2, 4, 4)
    torch.testing.assert_close(pose @ forward, identity, atol=1e-6, rtol=0)
    torch.testing.assert_close(pose, torch.linalg.inv(forward), atol=1e-6, rtol=0)


def test_inverted_pose_is_rotation_transpose_and_rotated_negative_translation():
    axis_angle = torch.tensor([[0.3, -0.2, 0.5]])
    translation = torch.tensor([[1.0, 2.0, -0.5]])
    T = pose_from_axis_angle(axis_angle, translation)
    T_inv = pose_from_axis_angle(axis_angle, translation, invert=True)
    R, t = T[0, :3, :3], T[0, :3, 3]
    torch.testing.assert_close(T_inv[0, :3, :3], R.T)
    torch.testing.assert_close(T_inv[0, :3, 3], -R.T @ t)


def test_zero_axis_angle_gives_identity_for_both_directions():
    zeros = torch.zeros(3, 3)
    for invert in (False, True):
        torch.testing.assert_close(pose_from_axis_angle(zeros, zeros, invert=invert), torch.eye(4).expand(3, 4, 4))


def test_zero_prediction_layer_gives_identity_relative_poses(frames):
    net = PoseNet("resnet18").eval()
    with torch.no_grad():
        net.decoder.predict.weight.zero_()
        net.decoder.predict.bias.zero_()
        for offset in (-1, 1):
            torch.testing.assert_close(net.relative_pose(*frames, offset), torch.eye(4).expand(2, 4, 4))


def test_initial_translation_starts_from_forward_motion(frames):
    """With the last layer's weights zeroed, the pose is exactly the initial translation: T_{t -> t+1} moves points
    by (0, 0, -step) (the camera moved forward), and the past frame's pose is its inverse."""
    torch.manual_seed(0)
    net = PoseNet("resnet18", initial_translation=(0.0, 0.0, -1e-3)).eval()
    with torch.no_grad():
        net.decoder.predict.weight.zero_()
        net.decoder.predict.bias[:3].zero_()
        future, past = net.relative_pose(*frames, 1), net.relative_pose(*frames, -1)
    expected = torch.eye(4).expand(2, 4, 4).clone()
    expected[:, 2, 3] = -1e-3
    torch.testing.assert_close(future, expected)
    expected[:, 2, 3] = 1e-3
    torch.testing.assert_close(past, expected)
    with pytest.raises(ValueError, match="3 values"):
        PoseNet("resnet18", initial_translation=(0.0, -1e-3))


def test_gradients_reach_the_encoder(frames):
    net = PoseNet("resnet18")
    pose = net.relative_pose(*frames, offset=-1)
    pose[:, :3, 3].sum().backward()
    assert net.encoder.conv1.weight.grad is not None and net.encoder.conv1.weight.grad.abs().sum() > 0


def test_bad_inputs_are_rejected(net, frames):
    with pytest.raises(ValueError, match="offset"):
        net.relative_pose(*frames, offset=0)
    with pytest.raises(ValueError, match="same shape|one shape"):
        net(frames[0], frames[1][:, :, :16])
