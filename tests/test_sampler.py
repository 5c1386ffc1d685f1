"""Sampler pieces: bounded hardness loss, joint limits, generator bounds, discriminator learning."""

import math

import pytest
import torch

from posegen_ns.sampler import CameraRanges, HardPoseGenerator, PartDiscriminator, bounded_hardness_loss, joint_limit_penalty


def test_bounded_hardness_loss_is_zero_at_target_and_bounded():
    ref = torch.tensor(0.1)
    assert bounded_hardness_loss(torch.tensor([0.2]), ref, target_ratio=2.0).item() < 1e-7
    # hand-computed: r = 1 -> 1 - exp(-(log 2)^2)
    expected = 1 - math.exp(-math.log(2.0) ** 2)
    assert abs(bounded_hardness_loss(torch.tensor([0.1]), ref, 2.0).item() - expected) < 1e-6
    huge = bounded_hardness_loss(torch.tensor([1e6, 1e-6]), ref, 2.0)
    assert 0.0 <= huge.item() <= 1.0  # bounded even for absurd errors
    # past the target the gradient pushes the error back down (no run-away)
    e = torch.tensor([0.5], requires_grad=True)
    bounded_hardness_loss(e, ref, 2.0).backward()
    assert e.grad.item() > 0
    e = torch.tensor([0.12], requires_grad=True)
    bounded_hardness_loss(e, ref, 2.0).backward()
    assert e.grad.item() < 0


def test_joint_limit_penalty_hand_cases():
    pose = torch.zeros(3, 69)
    pose[1, (4 - 1) * 3 + 0] = 1.0  # left knee flexed the right way: no penalty
    pose[2, (4 - 1) * 3 + 0] = -0.6  # hyper-extended by 0.6 rad: (0.6 - 0.1)^2
    pen = joint_limit_penalty(pose, margin=0.1)
    assert pen[0] == 0 and pen[1] == 0
    assert abs(pen[2].item() - 0.25) < 1e-6


def test_generator_respects_camera_ranges_and_residual_bound():
    torch.manual_seed(0)
    ranges = CameraRanges()
    g = HardPoseGenerator(max_residual=0.3, ranges=ranges)
    torch.nn.init.normal_(g.pose_head.weight, std=10.0)  # saturate the tanh
    s = g(torch.zeros(16, 69), torch.zeros(16, 3), torch.randn(16, g.noise_dim) * 10)
    b = ranges.bounds()
    assert ((s.camera >= b[:, 0]) & (s.camera <= b[:, 1])).all()
    assert s.residual.abs().max() <= 0.3 + 1e-6
    assert s.body_pose.shape == (16, 69) and s.global_orient.shape == (16, 3)
    # gradients reach the generator from the camera and the pose
    (s.camera.sum() + s.body_pose.sum()).backward()
    assert g.camera_head.weight.grad.abs().sum() > 0 and g.pose_head.weight.grad.abs().sum() > 0


def test_discriminator_learns_real_poses_over_noise():
    torch.manual_seed(0)
    real = 0.15 * torch.randn(256, 69)
    real[:, (4 - 1) * 3] = 0.8 + 0.1 * torch.randn(256)  # "real" poses: knees bent
    d = PartDiscriminator(hidden=32)
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(150):
        fake = 1.2 * torch.randn(64, 69)
        lr_, lf = d(real[torch.randint(256, (64,))]), d(fake)
        loss = bce(lr_, torch.ones_like(lr_)) + bce(lf, torch.zeros_like(lf))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p_real = torch.sigmoid(d(0.15 * torch.randn(128, 69) + real[:128] * 0)).mean()
        held = real[:128].clone()
        p_real = torch.sigmoid(d(held)).mean()
        p_fake = torch.sigmoid(d(1.2 * torch.randn(128, 69))).mean()
    assert p_real > 0.8 and p_fake < 0.2


def test_camera_distribution_keeps_a_floor_on_its_spread():
    """However the generator learns, each camera logit keeps a spread >= min_camera_std (no collapse
    onto one view): with the spread logits driven to -inf the elevation still varies with the noise."""
    torch.manual_seed(0)
    g = HardPoseGenerator(min_camera_std=1.0)
    with torch.no_grad():
        g.camera_head.weight.zero_()
        g.camera_head.bias[:5] = 0.0
        g.camera_head.bias[5:] = -50.0  # sigmoid -> 0: spread at its floor
    noise = torch.randn(4096, g.noise_dim)
    s = g(torch.zeros(4096, 69), torch.zeros(4096, 3), noise)
    # logits ~ N(0, 1): the elevation is lo + (hi - lo) * sigmoid(n); std of sigmoid(N(0,1)) is about 0.21
    el = (s.camera[:, 1] - g.bounds[1, 0]) / (g.bounds[1, 1] - g.bounds[1, 0])
    assert 0.19 < float(el.std()) < 0.23
    torch.testing.assert_close(el, torch.sigmoid(noise[:, 1]), atol=1e-5, rtol=0)
    # the azimuth (full circle) is a wrapped normal with its floor spread: N(0, 0.5) wrapped, i.e. unchanged here
    torch.testing.assert_close(s.camera[:, 0], torch.remainder(0.5 * noise[:, 0] + math.pi, 2 * math.pi) - math.pi, atol=1e-5, rtol=0)
    # a mean driven as far as it goes cannot saturate the sigmoid: logits ~ N(2, 1)
    with torch.no_grad():
        g.camera_head.bias[:5] = 50.0
    el = (g(torch.zeros(4096, 69), torch.zeros(4096, 3), noise).camera[:, 1] - g.bounds[1, 0]) / (g.bounds[1, 1] - g.bounds[1, 0])
    torch.testing.assert_close(el, torch.sigmoid(2.0 + noise[:, 1]), atol=1e-5, rtol=0)
    assert float(el.std()) > 0.08


def test_camera_spread_is_capped_and_the_azimuth_wraps_around_the_back_view():
    """Spread logits driven to +inf stop at max_camera_std / max_azimuth_std (samples do not pile up on
    the range bounds); an azimuth mean at pi (the back view) gives one cluster around pi on the circle,
    whose circular mean is pi, not two clusters at -pi and +pi averaging to 0; gradients reach the mean."""
    torch.manual_seed(0)
    g = HardPoseGenerator(min_camera_std=1.0, max_camera_std=2.0, min_azimuth_std=0.3, max_azimuth_std=0.6)
    with torch.no_grad():
        g.camera_head.weight.zero_()
        g.camera_head.bias[:5] = 0.0
        g.camera_head.bias[0] = math.pi  # azimuth mean: the back view
        g.camera_head.bias[5:] = 50.0  # sigmoid -> 1: spread at its cap
    noise = torch.randn(8192, g.noise_dim)
    cam = g(torch.zeros(8192, 69), torch.zeros(8192, 3), noise).camera
    el = (cam[:, 1] - g.bounds[1, 0]) / (g.bounds[1, 1] - g.bounds[1, 0])
    torch.testing.assert_close(el, torch.sigmoid(2.0 * noise[:, 1]), atol=1e-5, rtol=0)
    az = cam[:, 0]
    assert float(az.min()) >= -math.pi and float(az.max()) < math.pi
    resultant = torch.polar(torch.ones_like(az), az).mean()
    assert abs(abs(float(resultant.angle())) - math.pi) < 0.02  # circular mean at the back view
    # circular std sqrt(-2 ln R) of a wrapped normal with sigma 0.6 is 0.6
    assert abs(math.sqrt(-2 * math.log(float(resultant.abs()))) - 0.6) < 0.02
    # one cluster around the back view: 95 % within 2 sigma of pi on the circle
    assert 0.94 < float((az.abs() > math.pi - 1.2).float().mean()) < 0.97
    # the wrap is differentiable in the mean (the loss gradient w.r.t. the mean angle is exact, 1 per sample)
    with torch.no_grad():
        g.camera_head.bias[0] = 0.0
    out = g(torch.zeros(4, 69), torch.zeros(4, 3), noise[:4]).camera[:, 0].sum()
    (grad,) = torch.autograd.grad(out, g.camera_head.bias)
    assert float(grad[0]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="max_camera_std"):
        HardPoseGenerator(min_camera_std=2.0, max_camera_std=1.0)
    # a partial azimuth range keeps the sigmoid (no wrap)
    part = HardPoseGenerator(ranges=CameraRanges(azimuth=(-1.0, 1.0)))
    assert not part.wrapped_azimuth and g.wrapped_azimuth
