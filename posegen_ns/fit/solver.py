"""Fit SMPL parameters to 2D keypoints seen by calibrated cameras: per-frame ``global_orient``, ``body_pose``,
``transl`` and one ``betas`` for the subject (SMPLify, Bogo et al. ECCV 2016, with EFT's initialisation, Joo et al.
3DV 2021).

Energy (units in :mod:`posegen_ns.fit.objective`; weights in :class:`FitConfig`), averaged over the F fitted frames:

    E = mean_t [ data_t                                   robust, confidence-weighted 2D reprojection (mrad^2)
               + pose_prior * s * |theta_t - theta0_t|^2   pose prior: stay near the initial pose (rad^2)
               + joint_limits * L(theta_t)                 knees / elbows bending the wrong way (rad^2)
               + behind * B_t ]                            observed points in front of their cameras (m^2)
        + smooth * S                                       3D acceleration over neighbouring frames (mm^2 / frame^2)
        + betas_prior * |beta|^2

``theta0`` is the initial pose: the critic's prediction where it starts a frame (EFT's observation: a regressor's
output keeps a fit to 2D keypoints on plausible 3D poses; EFT fine-tunes the network per example, here its
prediction itself is the anchor, so any critic that predicts SMPL parameters serves, and nothing is trained), or
zero (SMPL's rest pose, an L2 pose prior) where the fit starts from the rest pose. ``s`` anneals the prior from
strong to weak over the stages (:attr:`FitConfig.prior_schedule`, as SMPLify's stages). ``L`` is the sampler's
:func:`posegen_ns.sampler.losses.joint_limit_penalty`. The views agree by construction: one body in world
coordinates is projected into all of them.

Solver and stages:

1. **Hypotheses for the root** (per frame, batched): the critic's orientation and the same turned 180 degrees
   about the cameras' up direction (monocular front/back ambiguity, as SMPLify tries both), with the critic's pose;
   and ``yaw_hypotheses`` orientations of an upright body in a relaxed rest pose (arms lowered 70 degrees) spread
   over a full turn about the up direction. Each gets its translation from a linear least-squares solve (the
   rays through the observed keypoints: ``[n]_x (R (X + transl) + t) = 0``), then ``root_iterations`` of L-BFGS on
   root rotation and translation against the torso keypoints (shoulders, hips). Each frame keeps the hypothesis
   with the lowest robust cost over all its keypoints; along a sequence the choice is made jointly (Viterbi, with
   a cost on the root turning between neighbours: :func:`~posegen_ns.fit.objective.consistent_choice`), so one
   frame does not flip front to back while its neighbours do not.
2. **Full fit**: L-BFGS on every parameter of every frame jointly (the shared ``betas`` and the smoothness term
   couple the frames), one round of ``iterations`` per entry of ``prior_schedule``. The smoothness term joins in
   the last round only: frames first settle on their own keypoints, so that neighbours that started from different
   root hypotheses are not held in a compromise between two minima.

Why L-BFGS: the energy is smooth (Geman-McClure instead of a hard threshold), has a few thousand parameters and is
evaluated exactly and cheaply on all frames at once (joints only, no skinning:
:class:`~posegen_ns.fit.landmarks.BodyLandmarks`), which is the setting where a quasi-Newton method with a
strong-Wolfe line search converges in tens of iterations where Adam needs thousands and a learning rate to tune
(SMPLify-X, Pavlakos et al. CVPR 2019, uses L-BFGS for the same problem). The Levenberg-Marquardt solver of
:mod:`posegen_ns.mocap.fit` needs hand-written Jacobians of every term and handles the frame coupling by Jacobi
sweeps; autograd keeps this objective easy to extend. Rotations: the root as ``R0 exp(delta)`` (a small
correction of the hypothesis, so no axis-angle singularity near pi), the body joints in axis-angle (SMPL's own
parameters), converted with :mod:`posegen_ns.geometry` (roma).

Frames with too few confident keypoints are not fitted: :attr:`FitResult.skipped` lists each with the reason.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.body.model import BodyModel
from posegen_ns.errors import PoseGenInputError
from posegen_ns.fit.keypoints import TORSO_JOINTS, Keypoints, frame_support
from posegen_ns.fit.landmarks import BodyLandmarks
from posegen_ns.fit.objective import (
    angular_residual, behind_camera, consistent_choice, data_term, project, sequence_pairs, sequence_triplets,
    smoothness_term,
)
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from posegen_ns.sampler.losses import joint_limit_penalty

FACE_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "head_top", "neck_nose")
"""Keypoints weighted by :attr:`FitConfig.face_weight` (placed less exactly on the body than the limb joints)."""
ARM_LOWERING = 1.2
"""Radians the relaxed rest pose of the root hypotheses lowers each arm from SMPL's T-pose (about 70 degrees)."""


@dataclass
class FitConfig:
    """Options of :func:`fit_keypoints` (the energy is in the module docstring)."""

    min_confidence: float = 0.3
    """Keypoints with a lower confidence are ignored (treated as missing)."""
    min_keypoints: int = 6
    """A frame is fitted only if at least this many joints are seen confidently (in any camera) ..."""
    min_torso: int = 2
    """... of which at least this many are shoulders or hips; other frames are skipped and listed."""
    robust_sigma_mrad: float = 50.0
    """Scale of the Geman-McClure cost, milliradians (about 9 px at a 175 px focal length, 50 px at 1000 px)."""
    face_weight: float = 0.3
    """Weight of the face keypoints (nose, eyes, ears; H36M's head top) relative to the limb joints (1)."""
    pose_prior: float = 0.5
    """Weight of |theta - theta0|^2 (mrad^2 per rad^2) in the last stage."""
    prior_schedule: tuple[float, ...] = (10.0, 3.0, 1.0)
    """Multipliers of ``pose_prior`` in the successive full-fit stages (strong to weak)."""
    joint_limits: float = 1000.0
    """Weight of the knee / elbow limit penalty (mrad^2 per rad^2)."""
    betas_prior: float = 10.0
    """Weight of |beta|^2 (mrad^2 per unit of beta)."""
    fit_betas: bool = True
    """Fit one ``betas`` for the subject (else keep the initial one: the critic's median or zeros)."""
    smooth: float = 0.1
    """Weight of the 3D acceleration term (mrad^2 per mm^2 / frame^2); 0 turns it off."""
    smooth_max_gap: int = 4
    """Frames are neighbours for the smoothness term when they are of one clip and at most this many frame ids apart."""
    hypothesis_switch: float = 100.0
    """Weight (mrad^2 per rad^2) of the root turning between neighbouring frames when each frame's root hypothesis
    is chosen (consistently along a sequence, by dynamic programming); 0: each frame on its own."""
    yaw_hypotheses: int = 8
    """Upright rest-pose orientations tried per frame (evenly spaced about the up direction)."""
    root_iterations: int = 30
    """L-BFGS iterations of the root stage."""
    iterations: int = 60
    """L-BFGS iterations of each full-fit stage."""
    behind: float = 1e6
    """Weight of the penalty on observed points closer than 0.1 m to (or behind) their camera (mrad^2 per m^2)."""


@dataclass
class InitialGuess:
    """A starting point for every frame (e.g. a critic's prediction). T frames."""

    global_orient: Tensor  # (T, 3) world axis-angle, radians
    body_pose: Tensor  # (T, 69) axis-angle, radians
    betas: Tensor  # (nb,)
    source: str = "critic"


@dataclass
class FitResult:
    """Fitted parameters for the F fitted frames (of T), and how well they explain the keypoints."""

    frames: Tensor  # (F,) long: index of each fitted frame among the T input frames
    global_orient: Tensor  # (F, 3) world axis-angle, radians
    body_pose: Tensor  # (F, 69) axis-angle, radians
    transl: Tensor  # (F, 3) metres
    betas: Tensor  # (nb,)
    residual_px: Tensor  # (F,) confidence-weighted mean reprojection error over cameras and keypoints, pixels
    residual_px_camera: Tensor  # (F, C) the same per camera, pixels (NaN where a camera saw no keypoint)
    hypothesis: list[str]  # (F,) the root hypothesis each frame kept ("critic", "critic-flipped", "rest-yaw-090", ...)
    skipped: dict[int, str]  # input frame index -> why it was not fitted
    initialisation: str  # what started the fit ("critic ..." or "rest pose")
    energy: dict[str, float] = field(default_factory=dict)  # final terms (module docstring units)
    seconds: float = 0.0

    @property
    def num_fitted(self) -> int:
        return int(self.frames.numel())


def _rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """``(3, 3)`` smallest rotation taking unit vector ``a (3,)`` onto ``b (3,)``."""
    axis = torch.linalg.cross(a, b)
    s, c = axis.norm(), torch.dot(a, b)
    if s < 1e-9:
        if c > 0:
            return torch.eye(3, dtype=a.dtype)
        perp = torch.tensor([1.0, 0.0, 0.0], dtype=a.dtype)  # a is +-y here (a = SMPL's up); x is perpendicular
        return axis_angle_to_matrix(math.pi * perp)
    return axis_angle_to_matrix(axis / s * torch.atan2(s, c))


def camera_up(R: Tensor) -> Tensor:
    """``(3,)`` the cameras' mean up direction in world coordinates (minus each camera's image y axis, ``-R[1]``),
    normalised: the direction an upright person's head points in the images."""
    up = -R[:, 1, :].mean(0)
    if up.norm() < 1e-6:
        up = -R[0, 1, :]
    return up / up.norm()


def relaxed_rest_pose(num: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(num, 69)`` SMPL's rest pose with both arms lowered by :data:`ARM_LOWERING` radians (about the body's z
    axis at the shoulders): the rest-pose starting point of the root hypotheses."""
    pose = torch.zeros(num, 23, 3, dtype=dtype)
    pose[:, SMPL_JOINT_NAMES.index("left_shoulder") - 1, 2] = -ARM_LOWERING
    pose[:, SMPL_JOINT_NAMES.index("right_shoulder") - 1, 2] = ARM_LOWERING
    return pose.reshape(num, 69)


def solve_translation(points: Tensor, observed: Tensor, weights: Tensor, K: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Translations ``(F, 3)`` (metres) that best put ``points (F, K, 3)`` (world, without translation) on the rays
    through ``observed (F, C, K, 2)`` pixels, weighted by ``weights (F, C, K)``: the linear least squares of
    ``[n]_x (R_c (X_k + transl) + t_c) = 0`` with ``n = K_c^-1 (u, v, 1)`` (the algebraic, DLT-style error)."""
    ones = torch.ones_like(observed[..., :1])
    n = torch.einsum("cij,fckj->fcki", torch.linalg.inv(K), torch.cat([observed, ones], -1))  # (F, C, K, 3)
    z = torch.zeros_like(n[..., 0])
    skew = torch.stack([
        torch.stack([z, -n[..., 2], n[..., 1]], -1),
        torch.stack([n[..., 2], z, -n[..., 0]], -1),
        torch.stack([-n[..., 1], n[..., 0], z], -1),
    ], -2)  # (F, C, K, 3, 3)
    A = torch.einsum("fckij,cjl->fckil", skew, R)
    cam = torch.einsum("cij,fkj->fcki", R, points) + t[None, :, None, :]
    b = -torch.einsum("fckij,fckj->fcki", skew, cam)
    w = weights[..., None, None]
    H = (w * A.transpose(-1, -2) @ A).sum((1, 2)) + 1e-9 * torch.eye(3, dtype=points.dtype)
    g = (w * A.transpose(-1, -2) @ b[..., None]).sum((1, 2))
    return torch.linalg.solve(H, g)[..., 0]


def _lbfgs(params: list[Tensor], energy: Callable[[], Tensor], iterations: int, advance: Callable[[int], None],
           chunk: int = 10) -> float:
    """Minimise ``energy()`` over ``params`` with L-BFGS (strong-Wolfe line search) for at most ``iterations``
    iterations, reported to ``advance`` in chunks; stops early when L-BFGS converges. Returns the final energy."""
    if iterations <= 0:
        with torch.no_grad():
            return float(energy())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=chunk, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = energy()
        loss.backward()
        return loss

    done = 0
    while done < iterations:
        n = min(chunk, iterations - done)
        opt.param_groups[0]["max_iter"] = n
        opt.param_groups[0]["max_eval"] = max_eval = 4 * n
        state = opt.state[params[0]]
        iters, evals = state.get("n_iter", 0), state.get("func_evals", 0)
        opt.step(closure)
        ran, evaluated = state.get("n_iter", 0) - iters, state.get("func_evals", 0) - evals
        advance(n)
        done += n
        if ran < n and evaluated < max_eval:  # converged (gradient or change below tolerance)
            advance(iterations - done)
            break
    with torch.no_grad():
        return float(energy())


def _keypoint_weights(kp: Keypoints, cfg: FitConfig) -> Tensor:
    """``(T, C, J)`` confidence x joint weight, 0 below ``min_confidence``."""
    conf = kp.confidence.double()
    joint_w = torch.tensor([cfg.face_weight if n in FACE_KEYPOINTS else 1.0 for n in kp.names], dtype=torch.float64)
    return torch.where(conf >= cfg.min_confidence, conf, torch.zeros_like(conf)) * joint_w


def fit_keypoints(
    body: BodyModel,
    keypoints: Keypoints,
    K: Tensor,  # (C, 3, 3)
    R: Tensor,  # (C, 3, 3)
    t: Tensor,  # (C, 3)
    config: Optional[FitConfig] = None,
    guess: Optional[InitialGuess] = None,
    clip_names: Optional[Sequence[str]] = None,
    frame_ids: Optional[Tensor] = None,
    progress: Optional[Callable[[str, int], Callable[[int], None]]] = None,
) -> FitResult:
    """Fit SMPL parameters of ``body`` to ``keypoints`` (module docstring).

    Args:
        body: the body the parameters are for.
        keypoints: ``(T, C, J, 3)`` :class:`~posegen_ns.fit.keypoints.Keypoints` (pixels, confidence).
        K, R, t: the C cameras (OpenCV: ``K`` pixels, ``x_cam = R x_world + t``, metres).
        config: :class:`FitConfig`.
        guess: per-frame starting point (e.g. :func:`posegen_ns.fit.initialise.critic_guess`); ``None``: rest pose.
        clip_names, frame_ids: ``T`` clip names and ``(T,)`` frame ids: frames of one clip with close ids are
            neighbours for the smoothness term (:func:`~posegen_ns.fit.objective.sequence_triplets`); ``None``: the
            frames are one clip, consecutive.
        progress: ``progress(description, total) -> advance(n)`` for a progress bar (e.g. wrapping
            :func:`posegen_ns.cli.progress`); ``None``: silent.

    Returns:
        :class:`FitResult`.

    Raises:
        PoseGenInputError: cameras or a guess whose shapes do not match the keypoints, or no frame with enough
            confident keypoints (the message lists why each was skipped).
    """
    cfg = config or FitConfig()
    t0 = time.perf_counter()
    T, C = keypoints.points.shape[:2]
    if tuple(K.shape) != (C, 3, 3) or tuple(R.shape) != (C, 3, 3) or tuple(t.shape) != (C, 3):
        raise PoseGenInputError(
            f"cameras K {tuple(K.shape)}, R {tuple(R.shape)}, t {tuple(t.shape)} do not match the keypoints' {C} cameras; "
            f"expected ({C}, 3, 3), ({C}, 3, 3), ({C}, 3)."
        )
    if guess is not None and (tuple(guess.body_pose.shape) != (T, 69) or tuple(guess.global_orient.shape) != (T, 3)):
        raise PoseGenInputError(
            f"initial guess has body_pose {tuple(guess.body_pose.shape)} and global_orient "
            f"{tuple(guess.global_orient.shape)}; expected ({T}, 69) and ({T}, 3)."
        )
    clip_names = list(clip_names) if clip_names is not None else ["clip"] * T
    frame_ids = torch.as_tensor(frame_ids if frame_ids is not None else torch.arange(T)).long()

    joints, torso = frame_support(keypoints, cfg.min_confidence)
    skipped: dict[int, str] = {}
    for i in range(T):
        if int(joints[i]) < cfg.min_keypoints or int(torso[i]) < cfg.min_torso:
            skipped[i] = (f"{int(joints[i])} joints seen with confidence >= {cfg.min_confidence} (need {cfg.min_keypoints}), "
                          f"{int(torso[i])} of them shoulders/hips (need {cfg.min_torso})")
    kept = [i for i in range(T) if i not in skipped]
    if not kept:
        listed = "; ".join(f"frame {i}: {why}" for i, why in list(skipped.items())[:5])
        raise PoseGenInputError(
            f"no frame has enough confident keypoints to be fitted ({listed}{' ...' if T > 5 else ''}); check the "
            "keypoints (their confidences, joint_set, pixel coordinates) or lower --fit.min-confidence."
        )
    frames = torch.tensor(kept, dtype=torch.long)
    F = len(kept)
    dt = torch.float64
    kp = keypoints.select(frames)
    obs = kp.xy.to(dt)  # (F, C, J, 2)
    weights = _keypoint_weights(kp, cfg)  # (F, C, J)
    K, R, t = K.to(dt), R.to(dt), t.to(dt)
    marks = BodyLandmarks(body, kp.joint_set, dt)
    nb = body.num_betas
    triplets = sequence_triplets([clip_names[i] for i in kept], frame_ids[frames], cfg.smooth_max_gap)
    pairs = sequence_pairs([clip_names[i] for i in kept], frame_ids[frames], cfg.smooth_max_gap)
    bar = progress or (lambda description, total: (lambda n=1: None))

    # ---- stage 1: root hypotheses ----------------------------------------------------------------------------
    up = camera_up(R)
    upright = _rotation_between(torch.tensor([0.0, 1.0, 0.0], dtype=dt), up)
    hyp_R0, hyp_pose, hyp_anchor, labels = [], [], [], []
    flip = axis_angle_to_matrix(math.pi * up)
    if guess is not None:
        g_R = axis_angle_to_matrix(guess.global_orient[frames].to(dt))
        g_pose = guess.body_pose[frames].to(dt)
        for R0, label in ((g_R, guess.source), (flip @ g_R, f"{guess.source}-flipped")):
            hyp_R0.append(R0)
            hyp_pose.append(g_pose)
            hyp_anchor.append(g_pose)
            labels.append(label)
        betas0 = guess.betas.to(dt)[:nb]
    else:
        betas0 = torch.zeros(nb, dtype=dt)
    rest = relaxed_rest_pose(F, dt)
    for h in range(max(cfg.yaw_hypotheses, 0 if guess is not None else 1)):
        yaw = 2 * math.pi * h / max(cfg.yaw_hypotheses, 1)
        hyp_R0.append((axis_angle_to_matrix(yaw * up) @ upright).expand(F, 3, 3))
        hyp_pose.append(rest)
        hyp_anchor.append(torch.zeros_like(rest))
        labels.append(f"rest-yaw-{round(math.degrees(yaw)):03d}")
    H = len(hyp_R0)
    R0 = torch.cat(hyp_R0)  # (H*F, 3, 3)
    pose_h = torch.cat(hyp_pose)
    obs_h, w_h = obs.repeat(H, 1, 1, 1), weights.repeat(H, 1, 1)
    torso_mask = torch.tensor([n in TORSO_JOINTS for n in kp.names], dtype=dt)
    w_torso = w_h * torso_mask
    pose_rot = axis_angle_to_matrix(pose_h.reshape(-1, 23, 3))
    with torch.no_grad():
        X0 = marks(torch.cat([R0[:, None], pose_rot], 1), betas0, torch.zeros(H * F, 3, dtype=dt))
        transl_h = solve_translation(X0, obs_h, w_h, K, R, t)
    d_root = torch.zeros(H * F, 3, dtype=dt, requires_grad=True)
    transl_v = transl_h.clone().requires_grad_(True)

    def root_energy(w: Tensor) -> Tensor:
        rot = torch.cat([(R0 @ axis_angle_to_matrix(d_root))[:, None], pose_rot], 1)
        X = marks(rot, betas0, transl_v)
        uv, depth = project(X, K, R, t)
        e = angular_residual(uv, obs_h, K)
        return data_term(e, w, cfg.robust_sigma_mrad) + cfg.behind * behind_camera(depth, w)

    advance = bar(f"root: {H} hypotheses x {F} frames", max(cfg.root_iterations, 1))
    _lbfgs([d_root, transl_v], lambda: root_energy(w_torso).mean(), cfg.root_iterations, advance)
    with torch.no_grad():
        cost = root_energy(w_h).reshape(H, F)
        R_h = (R0 @ axis_angle_to_matrix(d_root)).reshape(H, F, 3, 3)
        best = consistent_choice(cost, R_h, pairs, cfg.hypothesis_switch)  # (F,)
        pick = best * F + torch.arange(F)
        R_start = (R0 @ axis_angle_to_matrix(d_root))[pick]
        pose_start = pose_h[pick]
        anchor = torch.cat(hyp_anchor)[pick]
        transl_start = transl_v[pick]
    chosen = [labels[int(b)] for b in best]

    # ---- stage 2: full fit ------------------------------------------------------------------------------------
    d_root = torch.zeros(F, 3, dtype=dt, requires_grad=True)
    pose = pose_start.clone().requires_grad_(True)
    transl = transl_start.clone().requires_grad_(True)
    betas = betas0.clone().requires_grad_(cfg.fit_betas)
    params = [d_root, pose, transl] + ([betas] if cfg.fit_betas else [])
    terms: dict[str, Tensor] = {}

    def full_energy(prior_scale: float, smooth: bool) -> Tensor:
        rot = torch.cat([(R_start @ axis_angle_to_matrix(d_root))[:, None], axis_angle_to_matrix(pose.reshape(F, 23, 3))], 1)
        X = marks(rot, betas, transl)
        uv, depth = project(X, K, R, t)
        e = angular_residual(uv, obs, K)
        terms["data"] = data_term(e, weights, cfg.robust_sigma_mrad).mean()
        terms["pose_prior"] = cfg.pose_prior * prior_scale * (pose - anchor).square().sum(-1).mean()
        terms["joint_limits"] = cfg.joint_limits * joint_limit_penalty(pose).mean()
        terms["behind"] = cfg.behind * behind_camera(depth, weights).mean()
        terms["smooth"] = cfg.smooth * smoothness_term(X, triplets) if smooth and cfg.smooth > 0 else X.new_zeros(())
        terms["betas_prior"] = cfg.betas_prior * betas.square().sum()
        return sum(terms.values())

    stages = len(cfg.prior_schedule)
    for s, scale in enumerate(cfg.prior_schedule):
        last = s == stages - 1
        advance = bar(f"fit stage {s + 1}/{stages}: {F} frames, prior x{scale:g}{', smoothed' if last and len(triplets) else ''}",
                      max(cfg.iterations, 1))
        _lbfgs(params, lambda scale=scale, last=last: full_energy(scale, last), cfg.iterations, advance)

    with torch.no_grad():
        final_scale = cfg.prior_schedule[-1] if cfg.prior_schedule else 1.0
        full_energy(final_scale, True)
        R_root = R_start @ axis_angle_to_matrix(d_root)
        rot = torch.cat([R_root[:, None], axis_angle_to_matrix(pose.reshape(F, 23, 3))], 1)
        uv, _ = project(marks(rot, betas, transl), K, R, t)
        px = (uv - obs).norm(dim=-1)  # (F, C, J)
        seen = (weights > 0).to(dt) * kp.confidence.to(dt)
        residual = (seen * px).sum((1, 2)) / seen.sum((1, 2)).clamp_min(1e-12)
        per_cam = (seen * px).sum(2) / seen.sum(2)
        per_cam = torch.where(seen.sum(2) > 0, per_cam, torch.full_like(per_cam, float("nan")))
    f32 = torch.float32
    return FitResult(
        frames=frames,
        global_orient=matrix_to_axis_angle(R_root).to(f32),
        body_pose=pose.detach().to(f32),
        transl=transl.detach().to(f32),
        betas=betas.detach().to(f32),
        residual_px=residual.to(f32),
        residual_px_camera=per_cam.to(f32),
        hypothesis=chosen,
        skipped=skipped,
        initialisation=f"{guess.source} prediction" if guess is not None else "rest pose",
        energy={k: float(v) for k, v in terms.items()},
        seconds=time.perf_counter() - t0,
    )
