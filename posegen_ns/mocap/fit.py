"""Fit body-model parameters to mocap joint positions (retargeting by batched inverse kinematics).

Given the world positions ``x (T, K, 3)`` of K mapped joints over T frames (from a BVH file, metres,
y-up), find per-frame ``global_orient (T, 3)``, ``body_pose (T, 69)``, ``transl (T, 3)`` and one
per-clip size parameter so that the body's SMPL-24 joints ``p`` follow the targets. Per frame:

    E_t = position  * sum_k w_k |p_k + transl - s x_k|^2                      (metres^2)
        + direction * sum_b w_b L_b^2 |unit(p_c - p_a) - unit(x_c - x_a)|^2     (segments a->c, SEGMENTS)
        + pose_prior * |theta|^2 + smooth * |theta_t - (theta_{t-1} + theta_{t+1}) / 2|^2
        + hinge * (knee hyper-extension^2 + 0.3 knee twist/ab-duction^2 + elbow hyper-extension^2)

``theta`` is the local axis-angle ``body_pose``; ``L_b`` the body's rest bone length. The position
term places the body and fixes the size; the direction term, which does not care about bone
lengths, makes the joint *angles* follow the mocap even where the rig's proportions differ from the
body's (e.g. the cgspeed CMU skeleton's short trunk), which a position-only fit would absorb by
bending the spine. The size parameter, shared by all frames of a clip (bone lengths cannot change
from frame to frame), is either a global scale ``s`` of the targets (``size="scale"``: the motion
is retargeted onto the body as it is; betas stay ``None``) or the body's ``betas`` with ``s = 1``
(``size="betas"``: the body is shaped to the subject, with an L2 prior on betas).

Solver: Levenberg-Marquardt, batched over frames (one small dense system per frame, solved together),
with the classic geometric IK Jacobian: a world-frame rotation increment ``omega_j`` at joint j moves
each descendant k by ``omega_j x (p_k - p_j)``; the local axis-angle moves by
``J_l^{-1}(theta_j) R_parent^T omega_j`` (``J_l`` the left Jacobian of SO(3)). The scale (or betas)
and the translation are then updated in closed form (or by one Gauss-Newton step) between
iterations; the temporal term couples neighbouring frames through the previous iterate
(Jacobi-style). ~10-15 iterations reach convergence; L-BFGS on the same objective (tried first) was
still improving after 200 iterations and 5x the time.

Speed: only joints are needed, and SMPL's joints depend only on the rest joints
``J(beta) = J_regressor (v_template + shapedirs beta)`` (linear in beta; precomputed as ``(24, 3)``
+ ``(24, 3, num_betas)``) and the rotations through the kinematic chain
(``smplx.lbs.batch_rigid_transform``). No vertex is skinned, so the cost does not depend on the
mesh size; pose correctives move vertices, not these joints. This equals ``BodyModel(...).joints``.

Initialisation: the scale from limb lengths (body rest pose vs. targets); the global orientation per
frame analytically from the hips and trunk (the rotation taking the body's rest hips/trunk frame onto
the target's); the translation from the mid-hip point; each limb joint by the smallest rotation turning its
rest bone onto the target bone, parent before child.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform
from torch import Tensor

from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES, SMPL_PARENTS
from posegen_ns.body.model import BodyModel
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle

_IDX = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
SEGMENTS: tuple[tuple[tuple[str, ...], tuple[str, ...], float], ...] = (
    (("right_hip",), ("left_hip",), 1.0),
    (("right_shoulder",), ("left_shoulder",), 1.0),
    (("left_hip", "right_hip"), ("left_shoulder", "right_shoulder"), 1.0),
    (("left_shoulder", "right_shoulder"), ("head",), 0.5),
    (("left_hip",), ("left_knee",), 1.0), (("left_knee",), ("left_ankle",), 1.0), (("left_ankle",), ("left_foot",), 0.5),
    (("right_hip",), ("right_knee",), 1.0), (("right_knee",), ("right_ankle",), 1.0), (("right_ankle",), ("right_foot",), 0.5),
    (("left_shoulder",), ("left_elbow",), 1.0), (("left_elbow",), ("left_wrist",), 1.0),
    (("right_shoulder",), ("right_elbow",), 1.0), (("right_elbow",), ("right_wrist",), 1.0),
)
"""Segments of the direction term: (start joints, end joints, weight); an end with two joints is
their midpoint. Bones whose ends sit at rig-specific places (pelvis -> hip, pelvis -> spine) are left
out: rigs put the root and spine joints at different heights and depths, so their directions differ
from the body's even in the same pose; the hip line, the shoulder line and the trunk axis (mid-hip
to mid-shoulder) orient the trunk instead."""

_CHUNK = 256  # frames per batched LM solve

_LIMB_PAIRS = (
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
)


@dataclass
class FitConfig:
    """Options of :func:`fit_joints` (weights of the terms of ``E_t`` in the module notes)."""

    size: str = "scale"
    """Per-clip size parameter: "scale" (scale the targets onto the body) or "betas" (shape the body)."""
    iterations: int = 15
    """Levenberg-Marquardt iterations."""
    position: float = 1.0
    """Weight of the joint-position term (metres^2, weights ``w_k`` normalised to sum to 1)."""
    direction: float = 1.0
    """Weight of the segment-direction term (metres^2; segment weights normalised to sum to 1)."""
    pose_prior: float = 1e-4
    """Weight of the L2 prior on ``body_pose`` (metres^2 per radian^2, summed over joints)."""
    hinge: float = 1e-2
    """Weight of the knee/elbow terms: knees bending backwards, knee twist/ab-duction (x0.3), elbows
    bending past straight (metres^2 per radian^2)."""
    smooth: float = 1e-3
    """Weight of the temporal term on ``body_pose`` (metres^2 per radian^2)."""
    betas_prior: float = 1e-3
    """Weight of the L2 prior on ``betas`` (``size="betas"``)."""


@dataclass
class FitResult:
    """Fitted parameters and errors. T frames, K mapped joints, S segments of the direction term."""

    global_orient: Tensor  # (T, 3) axis-angle
    body_pose: Tensor  # (T, 69) axis-angle
    transl: Tensor  # (T, 3) metres, body space
    betas: Tensor | None  # (num_betas,) when size="betas"
    scale: float  # body metres per target metre (1.0 when size="betas")
    joint_error_mm: Tensor  # (T, K) |fitted joint - scale * target|, mm, body space
    segment_error_deg: Tensor  # (T, S) angle between fitted and target segment directions, degrees
    segments: list[str]  # (S,) segment labels "start->end" (see SEGMENTS)
    seconds: float

    @property
    def frame_error_mm(self) -> Tensor:
        """``(T,)`` mean per-joint error of each frame, mm."""
        return self.joint_error_mm.mean(1)

    @property
    def mean_error_mm(self) -> float:
        return float(self.joint_error_mm.mean())

    @property
    def max_error_mm(self) -> float:
        return float(self.joint_error_mm.max())


class JointsOnlyBody:
    """SMPL-24 joints of a :class:`BodyModel` without skinning any vertex.

    ``rest_joints(betas) = J_template + J_dirs @ betas``; posing by ``smplx.lbs.batch_rigid_transform``
    (the same chain as the full forward).
    """

    def __init__(self, body: BodyModel, dtype: torch.dtype = torch.float32):
        with torch.no_grad():
            j_template, j_dirs = body.rest_joint_basis(torch.float64)
            self.j_template = j_template.detach().cpu().to(dtype)  # (24, 3)
            self.j_dirs = j_dirs.detach().cpu().to(dtype)  # (24, 3, nb)
        self.parents = body.parents.detach().cpu()
        self.num_betas = body.num_betas
        self.dtype = dtype

    def rest_joints(self, betas: Tensor | None = None) -> Tensor:
        """``(24, 3)`` rest joints for ``betas (num_betas,)`` (zeros if None)."""
        if betas is None:
            return self.j_template
        return self.j_template + torch.einsum("jcb,b->jc", self.j_dirs, betas.to(self.dtype))

    def transforms(self, rot_mats: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
        """World rotations ``(T, 24, 3, 3)`` and posed joints ``(T, 24, 3)`` (no translation) from
        local rotations ``rot_mats (T, 24, 3, 3)`` (root first) and ``rest (24, 3)``."""
        T = rot_mats.shape[0]
        joints, rel = batch_rigid_transform(rot_mats, rest.expand(T, 24, 3), self.parents, dtype=rot_mats.dtype)
        return rel[..., :3, :3], joints

    def __call__(self, rot_mats: Tensor, rest: Tensor, transl: Tensor | None = None) -> Tensor:
        """Posed joints ``(T, 24, 3)``."""
        joints = self.transforms(rot_mats, rest)[1]
        return joints if transl is None else joints + transl[:, None]


# ---- analytic initialisation ----------------------------------------------------------------------


def _trunk_frame(l_hip: Tensor, r_hip: Tensor, pelvis: Tensor, top: Tensor) -> Tensor:
    """Orthonormal frames ``(..., 3, 3)`` (columns x=left, y=up, z=forward) from hips and trunk top."""
    x = torch.nn.functional.normalize(l_hip - r_hip, dim=-1)
    up = top - pelvis
    y = torch.nn.functional.normalize(up - (up * x).sum(-1, keepdim=True) * x, dim=-1)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def _swing(a: Tensor, b: Tensor) -> Tensor:
    """Smallest rotations ``(..., 3, 3)`` taking directions ``a`` onto ``b`` (both ``(..., 3)``)."""
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    axis = torch.cross(a, b, dim=-1)
    sin = axis.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(-1, keepdim=True)
    angle = torch.atan2(sin, cos)
    # opposite directions: any axis perpendicular to a (the smaller of a x e_x, a x e_y)
    ex = torch.cross(a, torch.tensor([1.0, 0.0, 0.0], dtype=a.dtype).expand_as(a), dim=-1)
    ey = torch.cross(a, torch.tensor([0.0, 1.0, 0.0], dtype=a.dtype).expand_as(a), dim=-1)
    perp = torch.nn.functional.normalize(torch.where(ex.norm(dim=-1, keepdim=True) > 0.5, ex, ey), dim=-1)
    unit_axis = torch.where(sin > 1e-8, axis / sin.clamp_min(1e-12), perp)
    rotvec = torch.where((sin > 1e-8) | (cos < 0), unit_axis * angle, torch.zeros_like(axis))
    return axis_angle_to_matrix(rotvec)


def initial_rotations(rest: Tensor, targets: Tensor, smpl_idx: list[int]) -> Tensor:
    """Analytic initial local rotations ``(T, 24, 3, 3)`` (root first) from ``targets (T, K, 3)``.

    Root: the rotation taking the rest hips/trunk frame onto the targets'. Limb joints (hips, knees,
    shoulders, elbows), parent before child: the smallest rotation turning the rest bone onto the
    target bone. Other joints: identity.

    Raises:
        PoseGenInputError: a hip or every trunk joint (shoulders/neck/spine) is unmapped.
    """
    T = targets.shape[0]
    names = [SMPL_JOINT_NAMES[i] for i in smpl_idx]
    tgt = {n: targets[:, k] for k, n in enumerate(names)}
    for need in ("left_hip", "right_hip"):
        if need not in tgt:
            raise PoseGenInputError(f"fitting needs the {need} joint among the mapped joints.")
    if "left_shoulder" in tgt and "right_shoulder" in tgt:
        top = ["left_shoulder", "right_shoulder"]
    else:
        top = [n for n in ("neck", "head", "spine3", "spine2", "spine1") if n in tgt][:1]
        if not top:
            raise PoseGenInputError("fitting needs the shoulders or a spine/neck joint among the mapped joints.")
    t_top = sum(tgt[n] for n in top) / len(top)
    r_top = sum(rest[_IDX[n]] for n in top) / len(top)
    t_mid = 0.5 * (tgt["left_hip"] + tgt["right_hip"])
    r_mid = 0.5 * (rest[_IDX["left_hip"]] + rest[_IDX["right_hip"]])
    F_t = _trunk_frame(tgt["left_hip"], tgt["right_hip"], t_mid, t_top)  # (T, 3, 3)
    F_r = _trunk_frame(rest[_IDX["left_hip"]], rest[_IDX["right_hip"]], r_mid, r_top)  # (3, 3)
    local = torch.eye(3, dtype=targets.dtype).repeat(T, 24, 1, 1)
    world = [F_t @ F_r.T] + [None] * 23
    local[:, 0] = world[0]
    swing = {a: b for a, b in _LIMB_PAIRS if a in tgt and b in tgt}
    for j in range(1, 24):
        parent_world = world[SMPL_PARENTS[j]]
        name = SMPL_JOINT_NAMES[j]
        if name in swing:
            c = swing[name]
            cur = parent_world @ (rest[_IDX[c]] - rest[j])  # (T, 3) bone direction with this joint at identity
            R = _swing(cur, tgt[c] - tgt[name]) @ parent_world  # (T, 3, 3) world rotation
            local[:, j] = parent_world.transpose(-1, -2) @ R
            world[j] = R
        else:
            world[j] = parent_world
    return local


# ---- Levenberg-Marquardt --------------------------------------------------------------------------


def _skew(v: Tensor) -> Tensor:
    """``(..., 3)`` -> ``(..., 3, 3)`` cross-product matrices (``skew(a) @ b = a x b``)."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([z, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], z, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def _inv_left_jacobian(theta: Tensor) -> Tensor:
    """``(..., 3)`` axis-angle -> ``(..., 3, 3)`` inverse left Jacobian of SO(3): ``d log(exp(eta) R) / d eta``
    at ``eta = 0`` (Barfoot, "State Estimation for Robotics", 2017, eq. 7.77)."""
    angle = theta.norm(dim=-1, keepdim=True)[..., None]  # (..., 1, 1)
    K = _skew(theta)
    small = angle < 1e-4
    a = angle.clamp_min(1e-4)
    coef = torch.where(small, torch.full_like(a, 1.0 / 12.0), 1.0 / a**2 - (1 + torch.cos(a)) / (2 * a * torch.sin(a)))
    eye = torch.eye(3, dtype=theta.dtype).expand_as(K)
    return eye - 0.5 * K + coef * (K @ K)


class _Problem:
    """Residuals and Jacobians of ``E_t`` for all frames (see the module notes)."""

    def __init__(self, jb: JointsOnlyBody, X: Tensor, smpl_idx: list[int], w: Tensor, cfg: FitConfig):
        self.jb, self.X, self.cfg = jb, X, cfg
        self.T, self.K = X.shape[:2]
        self.idx = torch.as_tensor(smpl_idx)
        # strict-ancestor matrix of SMPL-24: anc[k, j] = 1 if j is a strict ancestor of k
        anc = torch.zeros(24, 24, dtype=X.dtype)
        for k in range(24):
            a = SMPL_PARENTS[k]
            while a >= 0:
                anc[k, a] = 1.0
                a = SMPL_PARENTS[a]
        # active joints: those whose rotation moves some mapped joint
        self.active = [j for j in range(24) if anc[self.idx, j].any()]
        self.A = len(self.active)
        self.anc = anc[:, self.active]  # (24, A)
        self.a_pos = (cfg.position * w / w.sum()).sqrt()  # (K,)
        names = [SMPL_JOINT_NAMES[j] for j in smpl_idx]
        rows, seg_w, labels = [], [], []
        for start, end, sw in SEGMENTS:
            if not all(n in names for n in start + end):
                continue
            row = torch.zeros(self.K, dtype=X.dtype)
            for n in start:
                row[names.index(n)] -= 1.0 / len(start)
            for n in end:
                row[names.index(n)] += 1.0 / len(end)
            rows.append(row)
            seg_w.append(sw * float(min(w[names.index(n)] for n in start + end)))
            labels.append(f"{'+'.join(start)}->{'+'.join(end)}")
        self.segments = labels
        self.M = torch.stack(rows) if rows else torch.zeros(0, self.K, dtype=X.dtype)  # (S, K) segment = M @ joints
        sw_t = torch.as_tensor(seg_w, dtype=X.dtype)
        rest0 = jb.rest_joints()
        rest_len = (self.M @ rest0[self.idx]).norm(dim=-1)  # (S,)
        self.a_dir = (cfg.direction * sw_t / sw_t.sum().clamp_min(1e-12)).sqrt() * rest_len  # (S,)
        self.tgt_dir = torch.nn.functional.normalize(torch.einsum("sk,tkc->tsc", self.M, X), dim=-1)  # (T, S, 3)
        self.smooth_mask = torch.ones(self.T, 1, 1, dtype=X.dtype)  # temporal term: interior frames only
        self.smooth_mask[0] = self.smooth_mask[-1] = 0.0
        self.knees = [_IDX["left_knee"], _IDX["right_knee"]]
        self.elbows = [(_IDX["left_elbow"], 1.0), (_IDX["right_elbow"], -1.0)]  # sign of hyper-extension in theta_y

    def evaluate(self, local: Tensor, transl: Tensor, scale: Tensor, rest: Tensor, prior_mean: Tensor, jac: bool,
                 sl: slice = slice(None)):
        """Residuals ``(n, R)`` and, if ``jac``, Jacobians ``(n, R, 3A + 3)`` (omega of the active joints,
        then transl) for the n frames ``sl`` (``local``, ``transl``, ``prior_mean`` hold those frames)."""
        T, K, A = local.shape[0], self.K, self.A
        cfg = self.cfg
        world, joints = self.jb.transforms(local, rest)  # (T, 24, 3, 3), (T, 24, 3)
        p = joints[:, self.idx] + transl[:, None]  # (T, K, 3)
        r_pos = self.a_pos[:, None] * (p - scale * self.X[sl])  # (T, K, 3)
        d = torch.einsum("sk,tkc->tsc", self.M, p)  # (T, S, 3)
        length = d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        u = d / length
        r_dir = self.a_dir[:, None] * (u - self.tgt_dir[sl])  # (T, S, 3)
        theta = matrix_to_axis_angle(local[:, 1:])  # (T, 23, 3)
        lam = cfg.pose_prior + cfg.smooth * self.smooth_mask[sl]  # (T, 1, 1)
        r_prior = lam.sqrt() * (theta - prior_mean)  # (T, 23, 3)
        kx = theta[:, [k - 1 for k in self.knees]]  # (T, 2, 3)
        h = cfg.hinge ** 0.5
        r_knee = torch.cat([h * torch.clamp(kx[..., :1], max=0.0), (0.3 * cfg.hinge) ** 0.5 * kx[..., 1:]], -1)  # (T, 2, 3)
        r_elb = torch.stack([h * torch.clamp(s * theta[:, j - 1, 1], min=0.0) for j, s in self.elbows], -1)  # (T, 2)
        res = torch.cat([r_pos.reshape(T, -1), r_dir.reshape(T, -1), r_prior.reshape(T, -1),
                         r_knee.reshape(T, -1), r_elb], 1)
        if not jac:
            return res, None
        P = 3 * A + 3
        # d p_k / d omega_j = -skew(p_k - p_j) for strict ancestors j (joints without transl suffice)
        lever = joints[:, self.idx, None] - joints[:, None, self.active]  # (T, K, A, 3)
        dPk = -_skew(lever) * self.anc[self.idx][None, :, :, None, None]  # (T, K, A, 3, 3)
        J_pos = torch.zeros(T, K, 3, P, dtype=local.dtype)
        J_pos[..., : 3 * A] = (self.a_pos[None, :, None, None, None] * dPk).permute(0, 1, 3, 2, 4).reshape(T, K, 3, 3 * A)
        J_pos[..., 3 * A:] = self.a_pos[None, :, None, None] * torch.eye(3, dtype=local.dtype)
        G = (torch.eye(3, dtype=local.dtype) - u[..., :, None] * u[..., None, :]) / length[..., None]  # (T, B, 3, 3)
        dD = torch.einsum("sk,tkaij->tsaij", self.M, dPk)  # (T, S, A, 3, 3)
        J_dir_rot = self.a_dir[None, :, None, None, None] * (G[:, :, None] @ dD)  # (T, B, A, 3, 3)
        Bn = len(self.segments)
        J_dir = torch.zeros(T, Bn, 3, P, dtype=local.dtype)
        J_dir[..., : 3 * A] = J_dir_rot.permute(0, 1, 3, 2, 4).reshape(T, Bn, 3, 3 * A)
        # local axis-angle of active joint j (>0) moves by J_l^{-1}(theta_j) R_parent^T omega_j
        dTheta = torch.zeros(T, 23, 3, P, dtype=local.dtype)
        for a, j in enumerate(self.active):
            if j == 0:
                continue
            Rp = world[:, SMPL_PARENTS[j]]  # (T, 3, 3)
            dTheta[:, j - 1, :, 3 * a: 3 * a + 3] = _inv_left_jacobian(theta[:, j - 1]) @ Rp.transpose(-1, -2)
        J_prior = lam[..., None].sqrt() * dTheta  # (T, 23, 3, P)
        dK = dTheta[:, [k - 1 for k in self.knees]]  # (T, 2, 3, P)
        J_knee = torch.cat([h * (kx[..., :1] < 0).to(local.dtype)[..., None] * dK[:, :, :1],
                            (0.3 * cfg.hinge) ** 0.5 * dK[:, :, 1:]], 2)
        J_elb = torch.stack([h * s * (s * theta[:, j - 1, 1] > 0).to(local.dtype)[:, None] * dTheta[:, j - 1, 1]
                             for j, s in self.elbows], 1)  # (T, 2, P)
        Jm = torch.cat([J_pos.reshape(T, -1, P), J_dir.reshape(T, -1, P), J_prior.reshape(T, -1, P),
                        J_knee.reshape(T, -1, P), J_elb], 1)
        return res, Jm


    def prior_mean(self, local: Tensor) -> Tensor:
        """``(T, 23, 3)`` the minimiser of prior + temporal terms given the neighbours (Jacobi)."""
        theta = matrix_to_axis_angle(local[:, 1:])
        if self.T <= 2:
            return torch.zeros_like(theta)
        nb = torch.zeros_like(theta)
        nb[1:-1] = 0.5 * (theta[:-2] + theta[2:])
        lam_s = self.cfg.smooth * self.smooth_mask
        return lam_s / (self.cfg.pose_prior + lam_s).clamp_min(1e-30) * nb

    def apply(self, local: Tensor, transl: Tensor, step: Tensor, world: Tensor) -> tuple[Tensor, Tensor]:
        """Apply ``step (T, 3A + 3)``: world-frame increments on the active joints, then transl."""
        local = local.clone()
        A = self.A
        omega = step[:, : 3 * A].reshape(-1, A, 3)
        for a, j in enumerate(self.active):
            R_inc = axis_angle_to_matrix(omega[:, a])  # (T, 3, 3)
            if j == 0:
                local[:, 0] = R_inc @ local[:, 0]
            else:
                Rp = world[:, SMPL_PARENTS[j]]
                local[:, j] = Rp.transpose(-1, -2) @ R_inc @ Rp @ local[:, j]
        return local, transl + step[:, 3 * A:]


def _closed_form_scale(joints: Tensor, X: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Scale and translations minimising ``sum w |joints + transl_t - s X|^2``.

    Args: ``joints (T, K, 3)`` without translation, ``X (T, K, 3)``, ``w (K,)`` (sums to 1).
    Returns: ``(s, transl (T, 3))``.
    """
    jm = (w[None, :, None] * joints).sum(1, keepdim=True)
    xm = (w[None, :, None] * X).sum(1, keepdim=True)
    num = (w[None, :, None] * (joints - jm) * (X - xm)).sum()
    den = (w[None, :, None] * (X - xm).square()).sum().clamp_min(1e-12)
    s = num / den
    return s, (s * xm - jm)[:, 0]


def fit_joints(
    body: BodyModel,
    targets: Tensor | np.ndarray,  # (T, K, 3) metres
    smpl_idx: list[int] | np.ndarray,  # (K,)
    weights: Tensor | np.ndarray | None = None,  # (K,)
    config: FitConfig | None = None,
) -> FitResult:
    """Fit body parameters so that SMPL-24 joints ``smpl_idx`` follow ``targets``.

    Args:
        body: any :class:`BodyModel` (only its joints are used; see the module notes).
        targets: ``(T, K, 3)`` target joint positions, metres, y-up world.
        smpl_idx: ``(K,)`` SMPL-24 index of each target (must include both hips and the shoulders or a
            spine/neck joint).
        weights: ``(K,)`` per-target weights (default ones).
        config: :class:`FitConfig`.

    Returns:
        :class:`FitResult` (errors in the body's space, i.e. against ``scale * targets``).

    Raises:
        PoseGenInputError: targets with NaN/inf, wrong shapes, a bad ``size``, or too few joints.
    """
    cfg = config or FitConfig()
    if cfg.size not in ("scale", "betas"):
        raise PoseGenInputError(f"FitConfig.size must be 'scale' or 'betas' (got {cfg.size!r}).")
    t0 = time.perf_counter()
    dt = torch.float64  # small systems; double precision keeps LM's normal equations well-conditioned
    X = torch.as_tensor(np.asarray(targets), dtype=dt)
    smpl_idx = [int(i) for i in np.asarray(smpl_idx)]
    K = len(smpl_idx)
    if X.ndim != 3 or X.shape[1:] != (K, 3) or X.shape[0] < 1:
        raise PoseGenInputError(f"targets have shape {tuple(X.shape)}; expected (T, {K}, 3) with T >= 1.")
    if not torch.isfinite(X).all():
        raise PoseGenInputError("mocap targets contain NaN or inf; check the motion values of the source file.")
    w = torch.ones(K, dtype=dt) if weights is None else torch.as_tensor(np.asarray(weights), dtype=dt)
    w = w / w.sum()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny tensors: thread hand-offs cost more than they save
    try:
        return _fit(body, X, smpl_idx, w, cfg, t0)
    finally:
        torch.set_num_threads(threads)


def _fit(body: BodyModel, X: Tensor, smpl_idx: list[int], w: Tensor, cfg: FitConfig, t0: float) -> FitResult:
    T, K = X.shape[:2]
    dt = X.dtype
    jb = JointsOnlyBody(body, dtype=dt)
    rest = jb.rest_joints()
    names = [SMPL_JOINT_NAMES[i] for i in smpl_idx]
    betas = torch.zeros(jb.num_betas, dtype=dt)

    pairs = [(a, b) for a, b in _LIMB_PAIRS if a in names and b in names]
    if cfg.size == "scale" and pairs:
        body_len = sum(float((rest[_IDX[a]] - rest[_IDX[b]]).norm()) for a, b in pairs)
        tgt_len = sum(float((X[:, names.index(a)] - X[:, names.index(b)]).norm(dim=-1).median()) for a, b in pairs)
        scale = torch.tensor(body_len / max(tgt_len, 1e-9), dtype=dt)
    else:
        scale = torch.tensor(1.0, dtype=dt)

    prob = _Problem(jb, X, smpl_idx, w, cfg)
    local = initial_rotations(rest, X * scale, smpl_idx)  # (T, 24, 3, 3)
    hips = [names.index("left_hip"), names.index("right_hip")]
    transl = X[:, hips].mean(1) * scale - rest[[_IDX["left_hip"], _IDX["right_hip"]]].mean(0)
    mu = torch.full((T, 1, 1), 1e-3, dtype=dt)
    eye = torch.eye(3 * prob.A + 3, dtype=dt)
    chunks = [slice(i, min(i + _CHUNK, T)) for i in range(0, T, _CHUNK)]  # bounds memory on long clips
    for _ in range(cfg.iterations):
        m = prob.prior_mean(local)
        world = jb.transforms(local, rest)[0]
        for sl in chunks:
            res, Jm = prob.evaluate(local[sl], transl[sl], scale, rest, m[sl], jac=True, sl=sl)
            cost = res.square().sum(1)  # (n,)
            JtJ = Jm.transpose(1, 2) @ Jm  # (n, P, P)
            g = Jm.transpose(1, 2) @ res[..., None]  # (n, P, 1)
            d = torch.diagonal(JtJ, dim1=1, dim2=2)  # (n, P) Marquardt scaling, floored for unobservable directions
            diag = (d + 1e-3 * d.mean(-1, keepdim=True) + 1e-12)[..., None] * eye
            step = -torch.linalg.solve(JtJ + mu[sl] * diag, g)[..., 0]  # (n, P)
            new_local, new_transl = prob.apply(local[sl], transl[sl], step, world[sl])
            new_cost = prob.evaluate(new_local, new_transl, scale, rest, m[sl], jac=False, sl=sl)[0].square().sum(1)
            ok = new_cost < cost
            local[sl] = torch.where(ok[:, None, None, None], new_local, local[sl])
            transl[sl] = torch.where(ok[:, None], new_transl, transl[sl])
            mu[sl] = torch.where(ok[:, None, None], (mu[sl] / 3).clamp_min(1e-7), (mu[sl] * 4).clamp_max(1e7))
        # shared size parameter (and translations) given the poses
        joints = jb.transforms(local, rest)[1][:, prob.idx]
        if cfg.size == "scale":
            scale, transl = _closed_form_scale(joints, X, w)
        else:
            betas, rest, transl = _betas_step(jb, local, X, w, betas, transl, prob, cfg)

    with torch.no_grad():
        world, joints = jb.transforms(local, rest)
        p = joints[:, prob.idx] + transl[:, None]
        err = (p - scale * X).norm(dim=-1) * 1000.0  # (T, K)
        u = torch.nn.functional.normalize(torch.einsum("sk,tkc->tsc", prob.M, p), dim=-1)
        ang = torch.rad2deg(torch.acos((u * prob.tgt_dir).sum(-1).clamp(-1.0, 1.0)))  # (T, B)
        aa = matrix_to_axis_angle(local)  # (T, 24, 3)
    f32 = torch.float32
    return FitResult(
        global_orient=aa[:, 0].to(f32),
        body_pose=aa[:, 1:].reshape(T, 69).to(f32),
        transl=transl.to(f32),
        betas=betas.to(f32) if cfg.size == "betas" else None,
        scale=float(scale),
        joint_error_mm=err.to(f32),
        segment_error_deg=ang.to(f32),
        segments=prob.segments,
        seconds=time.perf_counter() - t0,
    )


def _betas_step(jb: JointsOnlyBody, local: Tensor, X: Tensor, w: Tensor, betas: Tensor, transl: Tensor,
                prob: _Problem, cfg: FitConfig) -> tuple[Tensor, Tensor, Tensor]:
    """One Gauss-Newton step on the shared ``betas`` (position term + prior), then the best
    translations. Posed joints are linear in the rest joints, hence in betas."""
    rest = jb.rest_joints(betas)
    T = X.shape[0]
    joints = jb.transforms(local, rest)[1][:, prob.idx]  # (T, K, 3)
    nb = betas.shape[0]
    # d joints / d beta_b: the chain applied to the shape directions of the rest joints
    dirs = jb.j_dirs.permute(2, 0, 1)  # (nb, 24, 3)
    dJ = torch.stack([jb.transforms(local, dirs[b])[1][:, prob.idx] for b in range(nb)], -1)  # (T, K, 3, nb)
    a = prob.a_pos[None, :, None]
    r = (a * (joints + transl[:, None] - X)).reshape(-1)  # (T*K*3,)
    Jb = (a[..., None] * dJ).reshape(-1, nb)
    H = Jb.T @ Jb + cfg.betas_prior * torch.eye(nb, dtype=X.dtype)
    g = Jb.T @ r + cfg.betas_prior * betas
    betas = betas - torch.linalg.solve(H, g)
    rest = jb.rest_joints(betas)
    joints = jb.transforms(local, rest)[1][:, prob.idx]
    transl = (w[None, :, None] * (X - joints)).sum(1)
    return betas, rest, transl
