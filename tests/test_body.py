"""BodyModel on the tiny generated body: joints, LBS transforms, gradients, loading and errors."""

from __future__ import annotations

import math
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, H36M_TO_LSP14, SMPL_JOINT_NAMES
from posegen_ns.body.tiny_body import TINY_REST_JOINTS, build_tiny_body
from posegen_ns.errors import PoseGenInputError

J = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}


def body_pose_row(joint: str) -> int:
    """Row of ``body_pose (B, 23, 3)`` that rotates SMPL joint ``joint`` (body_pose skips the root)."""
    return J[joint] - 1


@pytest.fixture(scope="module")
def tiny():
    return load_body_model("tiny")


def random_inputs(body, batch: int = 2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(
        body_pose=0.4 * torch.randn(batch, 69, generator=g, dtype=dtype),
        global_orient=0.4 * torch.randn(batch, 3, generator=g, dtype=dtype),
        betas=0.5 * torch.randn(batch, body.num_betas, generator=g, dtype=dtype),
        transl=torch.randn(batch, 3, generator=g, dtype=dtype),
    )


# ---- joints and regressors -----------------------------------------------------------------------
def test_rest_pose_joints_are_the_tiny_rest_joints(tiny):
    out = tiny(torch.zeros(1, 69))
    expected = torch.as_tensor(TINY_REST_JOINTS, dtype=torch.float32)
    torch.testing.assert_close(out.joints[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rest_joints[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.vertices[0], tiny.v_template, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.transforms[0], torch.eye(4).expand(24, 4, 4), atol=1e-6, rtol=0)
    # H36M limb joints coincide with the SMPL ones; pelvis = SMPL pelvis, thorax = SMPL neck here
    h36m = out.joints_h36m[0]
    for name in ("left_knee", "right_ankle", "left_shoulder", "right_wrist", "pelvis"):
        torch.testing.assert_close(h36m[H36M_JOINT_NAMES.index(name)], expected[J[name]], atol=1e-6, rtol=0)
    torch.testing.assert_close(h36m[H36M_JOINT_NAMES.index("thorax")], expected[J["neck"]], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.joints_lsp, out.joints_h36m[:, list(H36M_TO_LSP14)])


def test_left_elbow_90_degrees_about_y_moves_the_wrist_as_computed_by_hand(tiny):
    pose = torch.zeros(1, 23, 3)
    pose[0, body_pose_row("left_elbow"), 1] = math.pi / 2
    out = tiny(pose)
    # elbow (0.43, 0.44, 0); wrist offset (0.25, 0, 0) turned +90 deg about y -> (0, 0, -0.25)
    torch.testing.assert_close(out.joints[0, J["left_wrist"]], torch.tensor([0.43, 0.44, -0.25]), atol=1e-6, rtol=0)
    # hand offset (0.33, 0, 0) -> (0, 0, -0.33)
    torch.testing.assert_close(out.joints[0, J["left_hand"]], torch.tensor([0.43, 0.44, -0.33]), atol=1e-6, rtol=0)
    rest = torch.as_tensor(TINY_REST_JOINTS, dtype=torch.float32)
    for name in ("left_elbow", "left_shoulder", "right_wrist", "head", "pelvis"):
        torch.testing.assert_close(out.joints[0, J[name]], rest[J[name]], atol=1e-6, rtol=0)
    # the H36M wrist (the wrist cube's mean) follows
    h36m_wrist = out.joints_h36m[0, H36M_JOINT_NAMES.index("left_wrist")]
    torch.testing.assert_close(h36m_wrist, torch.tensor([0.43, 0.44, -0.25]), atol=1e-6, rtol=0)


def test_global_orient_rotates_about_the_pelvis(tiny):
    out = tiny(torch.zeros(1, 69), global_orient=torch.tensor([[0.0, math.pi, 0.0]]))
    rest = torch.as_tensor(TINY_REST_JOINTS, dtype=torch.float32)
    # 180 degrees about y: (x, y, z) -> (-x, y, -z); the pelvis sits at the origin
    torch.testing.assert_close(out.joints[0], rest * torch.tensor([-1.0, 1.0, -1.0]), atol=1e-5, rtol=0)


def test_transforms_map_rest_vertices_to_posed_vertices(tiny):
    inputs = random_inputs(tiny, batch=3)
    out = tiny(**inputs)
    weights = tiny.lbs_weights
    rigid = (weights.max(1).values == 1.0).nonzero().flatten()
    assert len(rigid) == tiny.num_vertices  # every tiny-body vertex is rigidly skinned
    owner = weights[rigid].argmax(1)  # (R,)
    shapedirs = tiny.smpl.shapedirs  # (V, 3, S)
    v_shaped = tiny.v_template + torch.einsum("vds,bs->bvd", shapedirs, inputs["betas"])  # (B, V, 3)
    T = out.transforms[:, owner]  # (B, R, 4, 4)
    mapped = torch.einsum("brij,brj->bri", T[..., :3, :3], v_shaped[:, rigid]) + T[..., :3, 3]
    torch.testing.assert_close(mapped, out.vertices[:, rigid], atol=1e-5, rtol=0)
    # each joint's transform also moves its own rest joint to its posed position
    moved = torch.einsum("bjik,bjk->bji", out.transforms[..., :3, :3], out.rest_joints) + out.transforms[..., :3, 3]
    torch.testing.assert_close(moved, out.joints, atol=1e-5, rtol=0)


def test_transl_shifts_every_output(tiny):
    inputs = random_inputs(tiny, batch=2)
    shifted = tiny(**inputs)
    inputs_0 = dict(inputs, transl=None)
    base = tiny(**inputs_0)
    t = inputs["transl"][:, None]
    for name in ("vertices", "joints", "joints_h36m", "joints_lsp"):
        torch.testing.assert_close(getattr(shifted, name), getattr(base, name) + t, atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted.transforms[..., :3, 3], base.transforms[..., :3, 3] + t, atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted.transforms[..., :3, :3], base.transforms[..., :3, :3])
    torch.testing.assert_close(shifted.rest_joints, base.rest_joints)


def test_betas_scale_the_body_as_documented(tiny):
    out = tiny(torch.zeros(1, 69), betas=torch.tensor([[1.0, 0.0]]))
    rest = torch.as_tensor(TINY_REST_JOINTS, dtype=torch.float32)
    torch.testing.assert_close(out.joints[0], 1.1 * rest, atol=1e-5, rtol=0)  # betas[0]: +10 % per unit
    out = tiny(torch.zeros(1, 69), betas=torch.tensor([[0.0, -1.0]]))
    torch.testing.assert_close(out.joints[0], rest * torch.tensor([0.9, 1.0, 1.0]), atol=1e-5, rtol=0)


# ---- gradients -----------------------------------------------------------------------------------
def test_gradcheck_joints_and_vertices_in_double_precision():
    body = load_body_model("tiny").double()
    inputs = random_inputs(body, batch=1, seed=3, dtype=torch.float64)
    vert_subset = torch.arange(0, body.num_vertices, 17)
    names = ("body_pose", "global_orient", "betas", "transl")

    def fn(body_pose, global_orient, betas, transl):
        out = body(body_pose, global_orient=global_orient, betas=betas, transl=transl)
        return out.joints, out.vertices[:, vert_subset], out.joints_h36m

    args = tuple(inputs[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_reach_every_input(tiny):
    inputs = {k: v.clone().requires_grad_(True) for k, v in random_inputs(tiny, batch=2).items()}
    out = tiny(**inputs)
    (out.vertices.square().sum() + out.joints_h36m.square().sum()).backward()
    for name, value in inputs.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        assert value.grad.abs().sum() > 0, name
    # d(vertex)/d(transl) is the identity: sum over vertices of 2 * v
    torch.testing.assert_close(
        inputs["transl"].grad,
        2 * out.vertices.detach().sum(1) + 2 * out.joints_h36m.detach().sum(1),
        rtol=1e-4, atol=1e-3,
    )


# ---- loading -------------------------------------------------------------------------------------
class _FakeCh:
    """Stands for chumpy.ch.Ch in a pickle: its state is {'x': array}, as chumpy pickles it."""

    def __init__(self, x: np.ndarray):
        self.x = x


def _write_fake_official_pickle(path, data: dict) -> None:
    """An SMPL .pkl laid out as the official one: chumpy arrays, scipy sparse J_regressor, strings."""
    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")
    _FakeCh.__module__, _FakeCh.__qualname__ = "chumpy.ch", "Ch"
    chumpy_ch.Ch = _FakeCh
    chumpy.ch = chumpy_ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, chumpy_ch
    try:
        official = {
            "v_template": _FakeCh(data["v_template"]),
            "shapedirs": _FakeCh(data["shapedirs"]),
            "posedirs": data["posedirs"],
            "weights": _FakeCh(data["weights"]),
            "J_regressor": scipy.sparse.csc_matrix(data["J_regressor"]),
            "J": _FakeCh(data["J_regressor"] @ data["v_template"]),
            "kintree_table": data["kintree_table"],
            "f": data["f"].astype(np.uint32),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        path.write_bytes(pickle.dumps(official, protocol=2))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
        _FakeCh.__module__, _FakeCh.__qualname__ = __name__, "_FakeCh"
    assert "chumpy" not in sys.modules


def test_chumpy_pickle_loads_without_chumpy_and_matches_the_npz(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("POSEGEN_CACHE_DIR", str(tmp_path / "cache"))
    data = build_tiny_body()
    pkl = tmp_path / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"
    _write_fake_official_pickle(pkl, data)
    assert b"chumpy.ch" in pkl.read_bytes()
    reg = tmp_path / "J_regressor_h36m.npy"
    np.save(reg, data["J_regressor_h36m"])
    body = load_body_model(pkl, j_regressor_h36m=reg)
    inputs = random_inputs(body, batch=2, seed=1)
    got, want = body(**inputs), tiny(**inputs)
    for name in ("vertices", "joints", "joints_h36m", "transforms"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-6, rtol=0)
    torch.testing.assert_close(body.faces, tiny.faces)
    assert list((tmp_path / "cache" / "smpl").glob("basicmodel_neutral_lbs_10_207_0_v1.1.0-*.npz"))
    # an official pickle has no H36M regressor: the error says where to get one
    with pytest.raises(PoseGenInputError, match="J_regressor_h36m"):
        load_body_model(pkl)


def test_missing_smpl_file_names_the_file_and_the_download_site(tmp_path):
    missing = tmp_path / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"
    with pytest.raises(PoseGenInputError) as err:
        load_body_model(missing)
    assert str(missing) in str(err.value)
    assert "smpl.is.tue.mpg.de" in str(err.value)


@pytest.mark.parametrize("key", ["weights", "J_regressor", "shapedirs"])
def test_model_file_missing_a_key_names_the_key(tmp_path, key):
    data = build_tiny_body()
    del data[key]
    path = tmp_path / "broken.npz"
    np.savez(path, **data)
    with pytest.raises(PoseGenInputError, match=rf"'{key}'") as err:
        load_body_model(path)
    assert str(path) in str(err.value)


def test_nan_pose_names_body_pose(tiny):
    pose = torch.zeros(2, 69)
    pose[1, 5] = float("nan")
    with pytest.raises(PoseGenInputError, match="body_pose") as err:
        tiny(pose)
    assert "[1]" in str(err.value)  # the bad batch row
    with pytest.raises(PoseGenInputError, match="global_orient"):
        tiny(torch.zeros(1, 69), global_orient=torch.full((1, 3), float("inf")))
    with pytest.raises(PoseGenInputError, match="betas"):
        tiny(torch.zeros(1, 69), betas=torch.zeros(1, 7))
