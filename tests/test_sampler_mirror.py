"""Left-right mirrored samples (posegen_ns.sampler.mirror): the mirrored sample's picture is the mirror image of the
original's (joints projected with the camera rule land at W - u with left and right swapped), mirroring twice is the
identity, only the chosen rows change, and the pipeline refuses a mirror share it cannot honour."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import project_points
from posegen_ns.labels import orbit_cameras
from posegen_ns.sampler.config import SamplerConfig
from posegen_ns.sampler.generator import PoseCameraSample
from posegen_ns.sampler.mirror import SMPL_MIRROR, mirror_samples


def _sample(B: int = 6, seed: int = 0) -> PoseCameraSample:
    g = torch.Generator().manual_seed(seed)
    camera = torch.stack([torch.linspace(-3.0, 3.0, B), torch.full((B,), 0.3), torch.full((B,), 3.0),
                          torch.linspace(-0.2, 0.25, B), torch.full((B,), 1.05)], -1)
    return PoseCameraSample(body_pose=0.4 * torch.randn(B, 69, generator=g), global_orient=torch.randn(B, 3, generator=g),
                            camera=camera, residual=0.1 * torch.randn(B, 24, 3, generator=g), prior_index=torch.arange(B))


def test_permutation_swaps_left_and_right():
    names = [SMPL_JOINT_NAMES[i] for i in SMPL_MIRROR]
    assert names[SMPL_JOINT_NAMES.index("left_hip")] == "right_hip"
    assert names[SMPL_JOINT_NAMES.index("right_wrist")] == "left_wrist"
    assert names[SMPL_JOINT_NAMES.index("head")] == "head" and names[0] == "pelvis"
    assert sorted(SMPL_MIRROR) == list(range(24)) and all(SMPL_MIRROR[SMPL_MIRROR[i]] == i for i in range(24))


def test_mirrored_picture_is_the_mirror_image():
    """The open body's skeleton is symmetric (rest joints to 3e-5 m), so the projected joints of the mirrored sample
    are those of the original reflected about the image's vertical centre line (u -> W - u, v kept), partners swapped."""
    body = load_body_model("open")
    B, W = 6, 64
    s = _sample(B)
    m = mirror_samples(s, torch.ones(B, dtype=torch.bool))
    pelvis = body.rest_joints(torch.zeros(1, body.num_betas))[:, 0].expand(B, 3)

    def project(x: PoseCameraSample) -> torch.Tensor:
        joints = body(x.body_pose, x.global_orient).joints[:, :24]
        K, R, t = orbit_cameras(x.global_orient, pelvis, x.camera[:, 0], x.camera[:, 1], x.camera[:, 2],
                                torch.full((B,), 100.0), W, W, roll=x.camera[:, 3])
        return project_points(joints, K, R, t)[0]

    a, b = project(s), project(m)
    perm = list(SMPL_MIRROR)
    assert torch.allclose(b[:, perm, 0], W - a[..., 0], atol=0.01)
    assert torch.allclose(b[:, perm, 1], a[..., 1], atol=0.01)
    assert (a[..., 0] - W / 2).abs().max() > 5  # not a degenerate, centred skeleton


def test_only_chosen_rows_change_and_twice_is_identity():
    s = _sample(4)
    which = torch.tensor([True, False, True, False])
    m = mirror_samples(s, which)
    for k in ("body_pose", "global_orient", "camera", "residual"):
        got, was = getattr(m, k), getattr(s, k)
        assert torch.equal(got[~which], was[~which]), k
        assert not torch.equal(got[which], was[which]), k
    assert torch.allclose(m.camera[which][:, 0], -s.camera[which][:, 0]) and torch.allclose(m.camera[which][:, 3], -s.camera[which][:, 3])
    assert torch.equal(m.camera[:, 1:3], s.camera[:, 1:3]) and torch.equal(m.prior_index, s.prior_index)
    # residual mirrored as the pose: same magnitude per joint pair
    assert torch.allclose(m.residual[0].norm(dim=-1), s.residual[0].norm(dim=-1)[list(SMPL_MIRROR)])
    back = mirror_samples(m, which)
    for k in ("body_pose", "global_orient", "camera", "residual"):
        assert torch.equal(getattr(back, k), getattr(s, k)), k


def test_differentiable():
    s = _sample(3)
    pose = s.body_pose.clone().requires_grad_(True)
    s.body_pose = pose
    m = mirror_samples(s, torch.tensor([True, True, False]))
    (m.body_pose * torch.arange(69.0)).sum().backward()
    assert pose.grad is not None and torch.count_nonzero(pose.grad[:2]) > 60 and torch.count_nonzero(pose.grad[2]) == 68


def test_pipeline_refuses_bad_mirror_settings():
    from posegen_ns.pipeline import PoseGenPipeline

    def make(**kw):
        cfg = SamplerConfig(**kw)
        fake = SimpleNamespace(config=SimpleNamespace(sampler=cfg), ranges=cfg.ranges())
        return PoseGenPipeline.make_sampler_networks(fake, "cpu")

    make(mirror_fraction=0.5)
    with pytest.raises(PoseGenInputError, match="mirror-fraction must be in"):
        make(mirror_fraction=1.5)
    with pytest.raises(PoseGenInputError, match="azimuth .*symmetric about 0"):
        make(mirror_fraction=0.5, azimuth_range=(0.0, math.pi))
    make(mirror_fraction=0.0, azimuth_range=(0.0, math.pi))  # no mirror: any range
