"""The body's points that 2D keypoints observe: one linear map per keypoint joint set, evaluated without skinning.

Every keypoint joint set (:data:`posegen_ns.fit.keypoints.KEYPOINT_SETS`) is written as K *landmarks*, each a
weighted sum of mesh vertices (a row ``r_k (V,)`` of a regressor):

- ``smpl24``: the SMPL joints themselves (the body's ``J_regressor``).
- ``h36m17``: the body's H36M regressor (``BodyModel.J_regressor_h36m``), so the joints are those every critic
  and metric of posegen-ns uses.
- ``coco17``: shoulders, elbows, wrists, hips, knees and ankles are the SMPL joints of those names (as SPIN and
  SMPLify map them); the nose, eyes and ears are single mesh vertices: SMPL's own landmark vertices (SPIN's /
  smplx's ``vertex_ids['smplh']``: nose 332, right eye 6260, left eye 2800, right ear 4071, left ear 583) for a
  6890-vertex SMPL body, otherwise the vertices of the head (skinned mostly to SMPL's ``head`` joint) nearest to
  anatomical spots found on the rest mesh: the nose at the front-most point of the face midline, the ears at the
  widest points of the head, level with the nose, the eyes a third of the way from the nose to each ear, raised by
  a tenth of the head's width. These five are approximations on non-SMPL meshes (hence their lower default
  weight in :class:`~posegen_ns.fit.solver.FitConfig`).

Posing a landmark by linear blend skinning (SMPL, Loper et al. 2015; the body's ``lbs_weights`` ``w``) and then
regressing is linear in the per-joint transforms, so

    X_k = sum_j W_kj Jp_j + R_j (P_kj(beta) - W_kj Jr_j(beta)),   W_kj = sum_v r_kv w_vj,   P_kj = sum_v r_kv w_vj v_v(beta)

with ``R_j`` and ``Jp_j`` the world rotations and posed positions of the 24 joints and ``Jr`` the rest joints
(:class:`posegen_ns.mocap.fit.JointsOnlyBody`). ``P`` and ``Jr`` are linear in ``betas``. The cost is that of the
24-joint kinematic chain, independent of the mesh size. It is exact for bodies without pose corrective blend shapes
(the open and tiny bodies); for official SMPL files it leaves out the pose correctives' small displacement of the
regressed points.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.body.model import BodyModel
from posegen_ns.errors import PoseGenInputError
from posegen_ns.fit.keypoints import KEYPOINT_SETS
from posegen_ns.geometry import axis_angle_to_matrix
from posegen_ns.mocap.fit import JointsOnlyBody

SMPL_FACE_VERTICES: dict[str, int] = {"nose": 332, "right_eye": 6260, "left_eye": 2800, "right_ear": 4071, "left_ear": 583}
"""COCO face keypoints on the 6890-vertex SMPL mesh (SPIN's and smplx's ``vertex_ids['smplh']``)."""
_HEAD = SMPL_JOINT_NAMES.index("head")


def face_vertices(body: BodyModel) -> dict[str, int]:
    """Vertex index of the nose, eyes and ears (COCO's face keypoints) on ``body`` (module docstring).

    Raises:
        PoseGenInputError: the body has no vertex skinned mostly to its head joint.
    """
    if body.num_vertices == 6890:
        return dict(SMPL_FACE_VERTICES)
    with torch.no_grad():
        v = body.v_template.detach().double().cpu()
        head = (body.lbs_weights.detach().argmax(-1) == _HEAD).nonzero().flatten()
    if head.numel() == 0:
        raise PoseGenInputError(
            f"body {body.model_path} has no vertex skinned to its head joint; COCO face keypoints cannot be placed "
            "(use h36m17 or smpl24 keypoints)."
        )
    hv = v[head]  # (H, 3) rest pose: y up, the body faces +z
    width = float(hv[:, 0].max() - hv[:, 0].min())
    centre_x = float(hv[:, 0].mean())
    mid = (hv[:, 0] - centre_x).abs() < 0.15 * width
    nose = hv[mid][hv[mid][:, 2].argmax()] if bool(mid.any()) else hv[hv[:, 2].argmax()]
    level = (hv[:, 1] - nose[1]).abs() < 0.25 * width
    side = hv[level] if bool(level.any()) else hv
    spots = {
        "nose": nose,
        "left_ear": side[side[:, 0].argmax()],  # SMPL's left is +x
        "right_ear": side[side[:, 0].argmin()],
    }
    for eye, ear in (("left_eye", "left_ear"), ("right_eye", "right_ear")):
        spots[eye] = nose + (spots[ear] - nose) / 3.0 + torch.tensor([0.0, 0.1 * width, 0.0], dtype=v.dtype)
    return {name: int(head[(hv - p).norm(dim=-1).argmin()]) for name, p in spots.items()}


def landmark_regressor(body: BodyModel, joint_set: str) -> Tensor:
    """``(K, V)`` rows of vertex weights whose posed sums are the K keypoints of ``joint_set`` (module docstring).

    Raises:
        PoseGenInputError: an unknown joint set.
    """
    if joint_set not in KEYPOINT_SETS:
        raise PoseGenInputError(f"joint set {joint_set!r} is not one of {sorted(KEYPOINT_SETS)}.")
    joint_reg = body.joint_regressor.detach().double().cpu()  # (24, V)
    if joint_set == "smpl24":
        return joint_reg
    if joint_set == "h36m17":
        return body.J_regressor_h36m.detach().double().cpu()
    face = face_vertices(body)
    rows = []
    for name in KEYPOINT_SETS["coco17"]:
        if name in face:
            row = torch.zeros(body.num_vertices, dtype=torch.float64)
            row[face[name]] = 1.0
        else:
            row = joint_reg[SMPL_JOINT_NAMES.index(name)]
        rows.append(row)
    return torch.stack(rows)


class BodyLandmarks:
    """Posed keypoint positions of a body for one joint set, without skinning (module docstring).

    Args:
        body: the :class:`~posegen_ns.body.BodyModel`.
        joint_set: a key of :data:`~posegen_ns.fit.keypoints.KEYPOINT_SETS`.
        dtype: computation dtype.

    Call with ``rot_mats (B, 24, 3, 3)`` local rotations (root first), ``betas (nb,)`` (one subject) and
    ``transl (B, 3)`` metres; returns world landmarks ``(B, K, 3)`` metres.
    """

    def __init__(self, body: BodyModel, joint_set: str, dtype: torch.dtype = torch.float32):
        reg = landmark_regressor(body, joint_set)  # (K, V) float64
        w = body.lbs_weights.detach().double().cpu()  # (V, 24)
        v = body.v_template.detach().double().cpu()  # (V, 3)
        dirs = body.shapedirs.detach().double().cpu()  # (V, 3, nb)
        self.W = (reg @ w).to(dtype)  # (K, 24)
        self.P0 = torch.einsum("kv,vj,vc->kjc", reg, w, v).to(dtype)  # (K, 24, 3)
        self.Pd = torch.einsum("kv,vj,vcb->kjcb", reg, w, dirs).to(dtype)  # (K, 24, 3, nb)
        self.chain = JointsOnlyBody(body, dtype=dtype)
        self.joint_set = joint_set
        self.num_betas = body.num_betas
        self.dtype = dtype

    def __call__(self, rot_mats: Tensor, betas: Tensor, transl: Tensor) -> Tensor:
        betas = betas.to(self.dtype)
        rest = self.chain.rest_joints(betas)  # (24, 3)
        R, Jp = self.chain.transforms(rot_mats, rest)  # (B, 24, 3, 3), (B, 24, 3)
        P = self.P0 + torch.einsum("kjcb,b->kjc", self.Pd, betas)  # (K, 24, 3)
        local = P - self.W[..., None] * rest  # (K, 24, 3)
        X = torch.einsum("kj,bjc->bkc", self.W, Jp) + torch.einsum("bjcd,kjd->bkc", R, local)
        return X + transl[:, None, :]

    def from_axis_angle(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor, transl: Tensor) -> Tensor:
        """Landmarks ``(B, K, 3)`` from SMPL parameters: ``global_orient (B, 3)``, ``body_pose (B, 69)`` axis-angle
        radians, ``betas (nb,)``, ``transl (B, 3)`` metres."""
        B = body_pose.shape[0]
        rot = axis_angle_to_matrix(torch.cat([global_orient.reshape(B, 1, 3), body_pose.reshape(B, 23, 3)], 1).to(self.dtype))
        return self(rot, betas, transl.to(self.dtype))


def check_body_landmarks(body: BodyModel, joint_set: str, num: int = 2, seed: int = 0, atol: float = 1e-4) -> float:
    """Largest distance (metres) between :class:`BodyLandmarks` and the full skinned body's regressed points for
    ``num`` random poses: 0 up to rounding for bodies without pose correctives (a self-check used by the tests)."""
    g = torch.Generator().manual_seed(seed)
    pose = 0.4 * torch.randn(num, 69, generator=g)
    orient = torch.randn(num, 3, generator=g)
    betas = 0.5 * torch.randn(body.num_betas, generator=g)
    transl = torch.randn(num, 3, generator=g)
    with torch.no_grad():
        out = body(pose, orient, betas.expand(num, -1), transl)
        reg = landmark_regressor(body, joint_set).to(out.vertices)
        ref = torch.einsum("kv,bvc->bkc", reg, out.vertices)
        got = BodyLandmarks(body, joint_set, torch.float64).from_axis_angle(orient.double(), pose.double(), betas.double(), transl.double())
    return float((got.to(ref) - ref).norm(dim=-1).max())

