"""Pure parts of the SPIN / HybrIK exports: the swing-twist split behind HybrIK's ``angle_twist`` and the
``has_smpl`` decision by body (the export-file checks are in test_export_formats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapters.hybrik_ik import rotation_between, swing_twist_split, twist_angles, twist_axes, twist_rotation
from posegen_ns.body import BodyModel, load_body_model
from posegen_ns.body.joint_sets import SMPL_PARENTS
from posegen_ns.dataset_formats import is_official_smpl
from posegen_ns.geometry import axis_angle_to_matrix


def test_swing_twist_split_composes_back():
    g = torch.Generator().manual_seed(0)
    R = axis_angle_to_matrix(2.0 * torch.randn(500, 3, generator=g, dtype=torch.float64))
    axis = torch.randn(500, 3, generator=g, dtype=torch.float64)
    swing, angle = swing_twist_split(R, axis)
    assert angle.shape == (500,) and torch.isfinite(angle).all()
    assert (angle > -math.pi).all() and (angle <= math.pi).all()
    # rotmat = swing @ twist, swing = the minimal rotation of the axis (HybrIK's composition)
    twist = twist_rotation(axis, torch.stack([angle.cos(), angle.sin()], -1))
    torch.testing.assert_close(swing @ twist, R, atol=1e-6, rtol=0)  # twist_rotation guards with 1e-8
    torch.testing.assert_close(swing, rotation_between(axis, (R @ axis[..., None])[..., 0]), atol=1e-4, rtol=0)
    # a pure twist is all twist; a twist by pi stays defined (+-pi)
    pure = twist_rotation(axis, torch.stack([torch.full((500,), 0.3).double().cos(), torch.full((500,), 0.3).double().sin()], -1))
    torch.testing.assert_close(swing_twist_split(pure, axis)[1], torch.full((500,), 0.3, dtype=torch.float64))
    flip = twist_rotation(axis[:3], torch.tensor([[-1.0, 0.0]] * 3, dtype=torch.float64))
    assert torch.allclose(swing_twist_split(flip, axis[:3])[1].abs(), torch.full((3,), math.pi, dtype=torch.float64))


def test_twist_undefined_for_half_turn_swing():
    axis = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    half_turn_swing = axis_angle_to_matrix(torch.tensor([[math.pi, 0.0, 0.0]], dtype=torch.float64))  # y -> -y
    assert torch.isnan(swing_twist_split(half_turn_swing, axis)[1]).all()


def test_twist_angles_of_body_pose():
    body = load_body_model("tiny")
    from adapters.hybrik_ik import rest_joints_29

    betas = torch.zeros(1, body.num_betas)
    rest = rest_joints_29(body, betas)
    axes = twist_axes(rest)[0]  # (23, 3)
    # joint i's axis is its rest bone to its child; the left elbow's (18) points to the left wrist (20)
    torch.testing.assert_close(axes[17], rest[0, 20] - rest[0, 18])
    # a rotation of the left elbow about its bone by 0.4 rad is a twist of 0.4; about a perpendicular: no twist
    pose = torch.zeros(2, 23, 3)
    u = axes[17] / axes[17].norm()
    pose[0, 17] = 0.4 * u
    pose[1, 17] = 0.4 * torch.linalg.cross(u, torch.tensor([0.0, 0.0, 1.0]))
    ang = twist_angles(axis_angle_to_matrix(pose), rest.expand(2, -1, -1))
    assert ang.shape == (2, 23)
    assert ang[0, 17].item() == pytest.approx(0.4, abs=1e-5) and ang[1, 17].item() == pytest.approx(0.0, abs=1e-5)
    assert ang[:, [i for i in range(23) if i != 17]].abs().max() < 1e-6


def _fake_smpl_npz(path, posedirs_scale: float) -> None:
    """An SMPL-layout file with SMPL's 6890-vertex topology (random geometry): stands in for official SMPL files,
    which are registration-gated."""
    rng = np.random.default_rng(0)
    V = 6890
    weights = np.zeros((V, 24))
    weights[np.arange(V), np.arange(V) % 24] = 1.0
    reg = np.zeros((24, V))
    reg[np.arange(V) % 24, np.arange(V)] = 1.0
    reg /= reg.sum(1, keepdims=True)
    kintree = np.array([list(SMPL_PARENTS), list(range(24))], dtype=np.int64)
    kintree[0, 0] = 4294967295
    np.savez(path, v_template=rng.normal(size=(V, 3)), f=rng.integers(0, V, size=(100, 3)), weights=weights,
             J_regressor=reg, kintree_table=kintree, shapedirs=rng.normal(size=(V, 3, 10)) * 0.01,
             posedirs=rng.normal(size=(V, 3, 207)) * posedirs_scale, J_regressor_h36m=reg[:17])


def test_has_smpl_by_body(tmp_path):
    assert not is_official_smpl(load_body_model("tiny"))  # few hundred vertices
    _fake_smpl_npz(tmp_path / "smpl_neutral.npz", 1e-3)
    assert is_official_smpl(BodyModel(tmp_path / "smpl_neutral.npz"))
    # SMPL's topology without pose correctives is not SMPL (the project's converted bodies have none) ...
    _fake_smpl_npz(tmp_path / "no_correctives.npz", 0.0)
    assert not is_official_smpl(BodyModel(tmp_path / "no_correctives.npz"))
    # ... nor is a file of the project's own converted bodies, whatever its size
    _fake_smpl_npz(tmp_path / "open_body_v9.npz", 1e-3)
    assert not is_official_smpl(BodyModel(tmp_path / "open_body_v9.npz"))
