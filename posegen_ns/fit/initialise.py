"""Where a fit starts: the critic's prediction (EFT-style, Joo et al. 3DV 2021) or SMPL's rest pose.

:func:`critic_guess` runs a critic that predicts SMPL parameters (``rotmat (B, 24, 3, 3)`` with the global orientation
in the camera frame, and ``betas``: the HMR/SPIN critics of :mod:`adapters.hmr` through ``predict``, e.g. the
project's default critic, and HybrIK through ``predict_mesh``) once per frame, on the camera that sees the most confident
keypoints, cropped to the box around them (:func:`posegen_ns.labels.boxes_from_joints`, the 20 % margin of every
critic's crop). The orientation is taken to the world frame with that camera's rotation
(``R_world = R_c^T R_cam``); the subject's ``betas`` are the median over frames. Critics that predict joints only
(BlazePose, any black box) cannot start a fit: :func:`load_initialising_critic` says so and the fit starts from the
rest pose (:mod:`posegen_ns.fit.solver`), which the fit's metadata records.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from posegen_ns.errors import PoseGenInputError
from posegen_ns.fit.keypoints import Keypoints
from posegen_ns.fit.solver import InitialGuess
from posegen_ns.geometry import matrix_to_axis_angle
from posegen_ns.labels import BOX_SCALE, boxes_from_joints


def _smpl_predictor(critic: Any) -> Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]]:
    """``fn(images, boxes) -> (rotmat (B, 24, 3, 3), betas (B, >= nb))`` for critics that predict SMPL parameters:
    HMR/SPIN (``predict``: ``rotmat``, ``betas``) and HybrIK (``predict_mesh``: ``rotmat``, ``prediction.betas``);
    ``None`` for others."""
    if not getattr(critic, "differentiable", True):
        return None
    if callable(getattr(critic, "predict_mesh", None)):
        def hybrik(images: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
            out = critic.predict_mesh(images, boxes)
            return out.rotmat, out.prediction.betas

        return hybrik
    if callable(getattr(critic, "predict", None)):
        def hmr(images: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
            out = critic.predict(images, boxes)
            return out.rotmat, out.betas

        return hmr
    return None


def can_initialise(critic: Any) -> bool:
    """Whether ``critic`` predicts SMPL parameters (HMR/SPIN's ``predict``, HybrIK's ``predict_mesh``)."""
    return _smpl_predictor(critic) is not None


def load_initialising_critic(critic_config: Any, body: Any, say: Callable[[str], None] = print) -> Optional[Any]:
    """The critic of ``critic_config`` (:class:`posegen_ns.critic.loading.CriticConfig`, loaded by the project's one
    policy, :func:`~posegen_ns.critic.loading.load_configured_critic`, for ``body``) if it can start a fit, else
    ``None`` after saying why in one line. A critic that fails to load (missing files) raises."""
    from posegen_ns.critic.loading import load_configured_critic

    critic = load_configured_critic(critic_config, body)
    if not can_initialise(critic):
        say(f"critic '{critic_config.name}' predicts joints, not SMPL parameters: the fit starts from the rest pose")
        close = getattr(critic, "close", None)
        if close is not None:
            close()
        return None
    return critic


def critic_guess(
    critic: Any,
    images: Tensor,  # (T, C, H, W, 3) uint8
    keypoints: Keypoints,  # (T, C, J, 3)
    R: Tensor,  # (C, 3, 3)
    min_confidence: float = 0.3,
    batch_size: int = 16,
    source: str = "critic",
) -> InitialGuess:
    """The critic's prediction for every frame, in world coordinates (module docstring).

    Args:
        critic: predicts SMPL parameters (:func:`can_initialise`), for the body being fitted.
        images: the capture's images, RGB uint8.
        keypoints: the 2D keypoints (pixels, confidence): they choose the camera and the crop.
        R: world-to-camera rotations.
        min_confidence: keypoints below it do not count.
        batch_size: frames per critic call.
        source: the name recorded as the guess' source.

    Returns:
        :class:`~posegen_ns.fit.solver.InitialGuess` for all T frames (a frame without two confident keypoints gets
        a box over the whole image).

    Raises:
        PoseGenInputError: the critic cannot start a fit, or predicts NaN / inf.
    """
    predict = _smpl_predictor(critic)
    if predict is None:
        raise PoseGenInputError("critic_guess: this critic predicts no SMPL parameters; start from the rest pose instead.")
    T, C, H, W = images.shape[:4]
    conf = keypoints.confidence
    good = conf >= min_confidence  # (T, C, J)
    score = good.sum(-1).float() + 1e-3 * conf.sum(-1)  # (T, C): most confident keypoints, then highest confidence
    cam = score.argmax(1)  # (T,)
    xy = keypoints.xy[torch.arange(T), cam]  # (T, J, 2)
    ok = good[torch.arange(T), cam]  # (T, J)
    boxes = torch.empty(T, 4)
    for i in range(T):
        if int(ok[i].sum()) >= 2:
            boxes[i] = boxes_from_joints(xy[i][ok[i]][None].float(), scale=BOX_SCALE)[0]
        else:
            boxes[i] = torch.tensor([0.0, 0.0, float(W), float(H)])
    device = next((p.device for p in critic.parameters()), torch.device("cpu"))
    rot, betas = [], []
    critic.eval()
    with torch.no_grad():
        for s in range(0, T, batch_size):
            sl = slice(s, min(s + batch_size, T))
            frame = torch.arange(T)[sl]
            batch = images[frame, cam[sl]].permute(0, 3, 1, 2).float().div(255.0).to(device)
            rotmat, shape = predict(batch, boxes[sl].to(device))
            rot.append(rotmat.detach().cpu().double())
            betas.append(shape.detach().cpu().double())
    rotmat = torch.cat(rot)  # (T, 24, 3, 3), root in the camera frame
    betas_all = torch.cat(betas)
    if not (torch.isfinite(rotmat).all() and torch.isfinite(betas_all).all()):
        raise PoseGenInputError(f"critic '{source}' predicted NaN or inf SMPL parameters; use --init rest or another critic.")
    world_root = R.double()[cam].transpose(-1, -2) @ rotmat[:, 0]
    return InitialGuess(
        global_orient=matrix_to_axis_angle(world_root).float(),
        body_pose=matrix_to_axis_angle(rotmat[:, 1:]).reshape(T, 69).float(),
        betas=betas_all.median(0).values.float(),
        source=source,
    )
