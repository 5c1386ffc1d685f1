"""HybrIK's hybrid analytical inverse kinematics: 29 joints + 23 twists -> SMPL rotations.

HybrIK (Li et al., "HybrIK: A Hybrid Analytical-Neural Inverse Kinematics Solution for 3D Human
Pose and Shape Estimation", CVPR 2021; github.com/Jeff-sjtu/HybrIK,
``hybrik/models/layers/smpl/lbs.py``) decomposes each body rotation into a *swing*, solved in closed
form from the predicted joint positions, and a *twist* about the bone, predicted by the network as
``(cos phi, sin phi)``. The skeleton is SMPL's 24 joints plus 5 leaves (head top, both middle
finger tips, both big toes) so that every one of the 23 non-root joints has a child bone:
joint ``i`` rotates its rest bone ``i -> child(i)`` onto the predicted bone.

Algorithm (joints processed parent before child; B = batch):

1. Root: the rotation that best maps the rest bones pelvis->{spine1, left hip, right hip} onto the
   predicted ones (Kabsch / special Procrustes, :func:`roma.special_procrustes`; HybrIK's
   ``batch_get_pelvis_orient_svd``), or, in the ``naive`` variant, spine alignment followed by a
   rotation about the spine that aligns the hips (``batch_get_pelvis_orient``).
2. Joint ``i`` with parent chain rotation ``G_p``: its posed position is
   ``p_i = p_parent + G_p (rest_i - rest_parent)`` (rest bone lengths, so the mesh keeps the
   body's proportions); the target bone is ``t = x_child - p_i`` in the *adaptive* variant (used by
   HybrIK at test time; ``x`` = predicted joints re-rooted at the origin) or the predicted bone
   ``x_child - x_i`` in the *naive* variant (HybrIK's training and camera-refinement pass).
   Adaptive only: if ``t`` differs by more than 15 mm from the predicted bone direction rescaled
   to the rest bone length, the latter replaces it (accumulated errors along the chain are cut).
3. ``R_i = swing(G_p^T t <- rest bone) @ twist(phi_i about the rest bone)`` (Rodrigues, with
   HybrIK's ``1e-8`` guards), ``G_i = G_p R_i``.

Gradients (which parts of the IK stop them), as in HybrIK:
- the root rotation is computed from *detached* joints: no gradient to the joints;
- the adaptive swing targets ``x_child - p_i`` keep the gradient to the predicted joints (and, via
  ``p_i``, to the parents' rotations); where the 15 mm fallback fires, the target is the detached
  predicted bone and that joint's swing gets no gradient from the joints;
- the naive variant detaches every joint target: its rotations depend only on the twists;
- twists ``phi`` and shape ``betas`` (through the rest joints) always keep their gradients.
Hence the critic's differentiable output is the soft-argmax joints, not the IK mesh.

The rest skeleton comes from the caller's body model (:func:`rest_joints_29`); the 5 leaves are
SMPL vertices ``(411, 2445, 5905, 3216, 6617)`` on SMPL's 6890-vertex mesh (HybrIK's choice) and
chosen by :func:`leaf_vertex_ids` on other meshes (the open and tiny bodies).

The inverse, for labels (the exporter's ``angle_twist``): :func:`swing_twist_split` splits a
rotation into the minimal swing of its twist axis and the twist about it, :func:`twist_angles`
gives the 23 twist angles of an SMPL ``body_pose``.
"""

from __future__ import annotations

from dataclasses import dataclass

import roma
import torch
from smplx.lbs import vertices2joints
from torch import Tensor

from posegen_ns.body import BodyModel
from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES, SMPL_PARENTS

LEAF_NAMES: tuple[str, ...] = ("head_top", "left_middle", "right_middle", "left_bigtoe", "right_bigtoe")
HYBRIK_JOINT_NAMES_29: tuple[str, ...] = SMPL_JOINT_NAMES + LEAF_NAMES
"""HybrIK's 29 joints: SMPL-24 (HybrIK calls joint 15 'jaw' and 22/23 'thumb'; they are SMPL's
head and hands) followed by the 5 leaves."""
HYBRIK_PARENTS_29: tuple[int, ...] = SMPL_PARENTS + (15, 22, 23, 10, 11)
"""Parent of each of the 29 joints (HybrIK's ``SMPL_layer.parents``; the root's is -1)."""
HYBRIK_CHILD_24: tuple[int, ...] = tuple(
    next(j for j in range(1, 29) if HYBRIK_PARENTS_29[j] == i) for i in range(24)
)
"""The child whose bone each SMPL joint's swing aligns: its first child in the 29-joint tree
(spine3 -> neck, feet -> toes, head -> head top, hands -> middle finger tips). Equals HybrIK's
``children_map[:24]`` for joints 1..23 (the root uses its three children instead)."""
SMPL_LEAF_VERTEX_IDS: tuple[int, ...] = (411, 2445, 5905, 3216, 6617)
"""HybrIK's leaf vertices on SMPL's 6890-vertex mesh, in :data:`LEAF_NAMES` order."""
ROOT_CHILDREN: tuple[int, ...] = (3, 1, 2)
"""Children of the pelvis used for the root rotation (spine1, left hip, right hip)."""
FALLBACK_THRESHOLD_M = 0.015
"""Adaptive IK: distance (metres) above which the predicted bone direction replaces the target."""
_EPS = 1e-8


def _depth_levels(parents: tuple[int, ...], joints: range) -> list[list[int]]:
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    levels: dict[int, list[int]] = {}
    for j in joints:
        levels.setdefault(depth[j], []).append(j)
    return [levels[d] for d in sorted(levels)]


_LEVELS = _depth_levels(HYBRIK_PARENTS_29, range(1, 24))  # joints 1..23 grouped by tree depth


# ---- rest skeleton ------------------------------------------------------------------------------
def leaf_vertex_ids(body: BodyModel) -> Tensor:
    """Vertex index ``(5,)`` of each leaf in :data:`LEAF_NAMES` order for ``body``'s mesh.

    SMPL's 6890-vertex topology: :data:`SMPL_LEAF_VERTEX_IDS`. Other meshes (rest pose, y up, the
    body facing +z with its left on +x): among the vertices skinned mostly to the leaf's parent
    (head 15, hands 22/23, feet 10/11), the extreme one along +y (head top), +x / -x (left / right
    middle finger tip, T-pose) or +z (big toes).
    """
    if body.num_vertices == 6890:
        return torch.tensor(SMPL_LEAF_VERTEX_IDS, dtype=torch.long)
    owner = body.lbs_weights.argmax(dim=1)  # (V,)
    v = body.v_template
    picks = []
    for parent, axis, sign in ((15, 1, 1.0), (22, 0, 1.0), (23, 0, -1.0), (10, 2, 1.0), (11, 2, 1.0)):
        cand = (owner == parent).nonzero().flatten()
        if cand.numel() == 0:  # no vertex owned by the joint: any vertex
            cand = torch.arange(v.shape[0], device=v.device)
        picks.append(cand[(sign * v[cand, axis]).argmax()])
    return torch.stack(picks).cpu()


def rest_joints_29(body: BodyModel, betas: Tensor, leaf_ids: Tensor | None = None) -> Tensor:
    """Shaped rest-pose joints ``(B, 29, 3)`` (metres, body frame): SMPL-24 from the joint
    regressor and the 5 leaf vertices, for ``betas (B, body.num_betas)``."""
    v_shaped = body.shaped_vertices(betas)  # (B, V, 3)
    ids = leaf_vertex_ids(body) if leaf_ids is None else leaf_ids
    j24 = vertices2joints(body.joint_regressor, v_shaped)
    return torch.cat([j24, v_shaped[:, ids.to(v_shaped.device)]], dim=1)


# ---- rotations ----------------------------------------------------------------------------------
def _skew(k: Tensor) -> Tensor:
    """``(..., 3)`` -> cross-product matrices ``(..., 3, 3)``."""
    x, y, z = k.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*k.shape[:-1], 3, 3)


def _rodrigues(axis: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``I + sin K + (1 - cos) K^2`` for unit ``axis (..., 3)`` and ``cos, sin (...)``."""
    K = _skew(axis)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    return eye + sin[..., None, None] * K + (1.0 - cos)[..., None, None] * (K @ K)


def rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """Minimal rotation ``(..., 3, 3)`` taking the direction of ``a (..., 3)`` to that of
    ``b (..., 3)`` (HybrIK's swing; identity when either is zero or they are parallel)."""
    cross = torch.cross(a, b, dim=-1)
    n = cross.norm(dim=-1)
    denom = a.norm(dim=-1) * b.norm(dim=-1) + _EPS
    return _rodrigues(cross / (n[..., None] + _EPS), (a * b).sum(-1) / denom, n / denom)


def twist_rotation(axis: Tensor, phi: Tensor) -> Tensor:
    """Rotation ``(..., 3, 3)`` about ``axis (..., 3)`` (any length) by the angle whose
    ``(cos, sin)`` is ``phi (..., 2)`` normalised (HybrIK's ``phis``)."""
    phi = phi / (phi.norm(dim=-1, keepdim=True) + _EPS)
    unit = axis / (axis.norm(dim=-1, keepdim=True) + _EPS)
    return _rodrigues(unit, phi[..., 0], phi[..., 1])


TWIST_UNDEFINED_EPS = 1e-6
""":func:`swing_twist_split`: where the squared norm of the twist quaternion's ``(w, v . axis)``
part is below this, the rotation swings the bone by ~pi and its twist is undefined (NaN)."""


def twist_axes(rest_joints: Tensor) -> Tensor:
    """Twist axes ``(B, 23, 3)`` of joints 1..23: their rest bones ``rest[child(i)] - rest[i]``
    (:data:`HYBRIK_CHILD_24`), in the joint's local (rest) frame, for ``rest_joints (B, 29, 3)``
    (:func:`rest_joints_29`). Not normalised."""
    return rest_joints[:, list(HYBRIK_CHILD_24[1:])] - rest_joints[:, 1:24]


def swing_twist_split(rotmat: Tensor, axis: Tensor) -> tuple[Tensor, Tensor]:
    """Split rotations into HybrIK's swing and twist: ``rotmat = swing @ twist`` with ``twist`` a
    rotation about ``axis`` and ``swing`` the minimal rotation taking ``axis`` to ``rotmat @ axis``
    (so ``swing == rotation_between(axis, rotmat @ axis)``), the composition :func:`hybrik_ik` builds
    (``rotation_between(...) @ twist_rotation(axis, (cos, sin))``).

    With the unit quaternion ``q = (w, v)`` of ``rotmat`` and ``u = axis / |axis|``, the twist is
    the quaternion ``(w, (v . u) u)`` normalised, i.e. the angle ``2 atan2(v . u, w)`` about ``u``
    (HybrIK's ``angle_twist``; same value as its ``get_twist``, which divides the swing out of the
    matrix).

    Args:
        rotmat: ``(..., 3, 3)`` rotations.
        axis: ``(..., 3)`` twist axes (any length > 0).

    Returns:
        ``swing (..., 3, 3)`` and ``angle (...)`` radians in ``(-pi, pi]``; NaN angle (and the
        swing of angle 0) where the twist is undefined (:data:`TWIST_UNDEFINED_EPS`).
    """
    q = roma.rotmat_to_unitquat(rotmat)  # (..., 4) XYZW
    unit = axis / (axis.norm(dim=-1, keepdim=True) + _EPS)
    p = (q[..., :3] * unit).sum(-1)
    w = q[..., 3]
    undefined = p * p + w * w < TWIST_UNDEFINED_EPS
    angle = 2.0 * torch.atan2(p, w)
    angle = torch.atan2(torch.sin(angle), torch.cos(angle))  # wrap to (-pi, pi]
    safe = torch.where(undefined, torch.zeros_like(angle), angle)
    twist = _rodrigues(unit, torch.cos(safe), torch.sin(safe))
    swing = rotmat @ twist.transpose(-1, -2)
    return swing, torch.where(undefined, torch.full_like(angle, float("nan")), angle)


def twist_angles(rotmat: Tensor, rest_joints: Tensor) -> Tensor:
    """HybrIK's twist angles ``(B, 23)`` (radians in ``(-pi, pi]``, NaN where undefined) of the
    local rotations ``rotmat (B, 23, 3, 3)`` of joints 1..23 (SMPL ``body_pose`` as matrices) about
    their rest bones (:func:`twist_axes` of ``rest_joints (B, 29, 3)``). Feeding
    ``(cos, sin)`` of them and the posed 29 joints to :func:`hybrik_ik` rebuilds ``rotmat``."""
    return swing_twist_split(rotmat, twist_axes(rest_joints).to(rotmat))[1]


def root_rotation_svd(pred_bones: Tensor, rest_bones: Tensor) -> Tensor:
    """Rotation ``(B, 3, 3)`` best mapping ``rest_bones (B, K, 3)`` onto ``pred_bones (B, K, 3)``
    (Kabsch with a proper rotation); identity where the predicted bones are all zero."""
    M = torch.einsum("bki,bkj->bij", pred_bones, rest_bones)  # sum_k t_k r_k^T
    R = roma.special_procrustes(M)
    zero = M.flatten(1).abs().sum(-1) == 0
    eye = torch.eye(3, dtype=M.dtype, device=M.device).expand_as(R)
    return torch.where(zero[:, None, None], eye, R)


def root_rotation_spine(pred_bones: Tensor, rest_bones: Tensor) -> Tensor:
    """HybrIK's naive root rotation ``(B, 3, 3)`` from bones ``(B, 3, 3)`` to (spine1, left hip,
    right hip): align the spine, then rotate about it so the hips' mean direction (projected off
    the spine) aligns."""
    R_spine = rotation_between(rest_bones[:, 0], pred_bones[:, 0])
    spine_dir = pred_bones[:, 0] / (pred_bones[:, 0].norm(dim=-1, keepdim=True) + _EPS)
    hips_pred = pred_bones[:, 1:].mean(1)
    hips_rest = (R_spine @ rest_bones[:, 1:].mean(1)[..., None])[..., 0]

    def off_spine(v: Tensor) -> Tensor:
        return v - (v * spine_dir).sum(-1, keepdim=True) * spine_dir

    return rotation_between(off_spine(hips_rest), off_spine(hips_pred)) @ R_spine


# ---- the IK -------------------------------------------------------------------------------------
@dataclass
class IKResult:
    """Output of :func:`hybrik_ik`. B = batch; metres, the predicted joints' frame."""

    rotmat: Tensor  # (B, 24, 3, 3) local rotations (root: global orientation), SMPL order
    posed_joints: Tensor  # (B, 24, 3) SMPL-24 posed by ``rotmat`` with rest bone lengths, root at 0


def hybrik_ik(joints: Tensor, phis: Tensor, rest_joints: Tensor, adaptive: bool = True,
              fallback_threshold: float = FALLBACK_THRESHOLD_M) -> IKResult:
    """Solve SMPL rotations from 29 predicted joints and 23 twists (module docstring).

    Args:
        joints: ``(B, 29, 3)`` predicted joints (:data:`HYBRIK_JOINT_NAMES_29`), metres; any
            origin (only bone vectors are used).
        phis: ``(B, 23, 2)`` twist ``(cos, sin)`` of joints 1..23 (normalised here).
        rest_joints: ``(B, 29, 3)`` shaped rest-pose joints (:func:`rest_joints_29`).
        adaptive: HybrIK's test-time solver (targets from the posed parents, 15 mm fallback,
            SVD root); ``False``: the naive solver (predicted bones, spine-hip root).
        fallback_threshold: the adaptive fallback distance in metres.

    Returns:
        :class:`IKResult`. Gradient flow is described in the module docstring.
    """
    B = joints.shape[0]
    parents = HYBRIK_PARENTS_29
    rel_rest = rest_joints.clone()
    rel_rest[:, 1:] = rest_joints[:, 1:] - rest_joints[:, list(parents[1:])]  # (B, 29, 3) rest bones
    pred = joints - joints[:, :1]  # (B, 29, 3) re-rooted
    pred_d = pred.detach()
    pred_bones_d = pred_d.clone()
    pred_bones_d[:, 1:] = pred_d[:, 1:] - pred_d[:, list(parents[1:])]
    root_fn = root_rotation_svd if adaptive else root_rotation_spine
    ch = list(ROOT_CHILDREN)
    R0 = root_fn(pred_bones_d[:, ch], rel_rest[:, ch])  # (B, 3, 3)

    chain: list[Tensor | None] = [R0] + [None] * 23  # global rotations G_i
    local: list[Tensor | None] = [R0] + [None] * 23
    posed: list[Tensor | None] = [torch.zeros_like(pred[:, 0])] + [None] * 23
    for level in _LEVELS:
        par = [parents[i] for i in level]
        kid = [HYBRIK_CHILD_24[i] for i in level]
        G_p = torch.stack([chain[p] for p in par], dim=1)  # (B, K, 3, 3)
        p_i = torch.stack([posed[p] for p in par], dim=1) + (G_p @ rel_rest[:, level, :, None])[..., 0]
        rest_bone = rel_rest[:, kid]  # (B, K, 3)
        if adaptive:
            target = pred[:, kid] - p_i
            direction = pred_bones_d[:, kid]
            fallback = direction * rest_bone.norm(dim=-1, keepdim=True) / (direction.norm(dim=-1, keepdim=True) + _EPS)
            far = (target - fallback).norm(dim=-1, keepdim=True) > fallback_threshold
            target = torch.where(far, fallback, target)
        else:
            target = pred_bones_d[:, kid]
        target_local = (G_p.transpose(-1, -2) @ target[..., None])[..., 0]
        R = rotation_between(rest_bone, target_local) @ twist_rotation(rest_bone, phis[:, [i - 1 for i in level]])
        G = G_p @ R
        for k, i in enumerate(level):
            chain[i], local[i], posed[i] = G[:, k], R[:, k], p_i[:, k]
    rotmat = torch.stack(local, dim=1)  # type: ignore[arg-type]
    posed_joints = torch.stack(posed, dim=1)  # type: ignore[arg-type]
    assert rotmat.shape == (B, 24, 3, 3)
    return IKResult(rotmat=rotmat, posed_joints=posed_joints)
