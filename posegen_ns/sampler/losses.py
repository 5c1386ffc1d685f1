"""Losses of the sampler: bounded hardness feedback and joint-angle limits."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bounded_hardness_loss(
    error: Tensor, reference_error: Tensor | float, target_ratio: float = 2.0, width: float = 1.0, reduce: bool = True
) -> Tensor:
    """Bounded feedback that drives the critic's error on generated samples towards
    ``target_ratio`` times its error on prior samples, and no further.

    ``r = error / reference_error`` (the hardness ratio, PoseAug, Gong et al. CVPR 2021);
    ``loss = 1 - exp(-((log r - log target_ratio) / width)^2)``, averaged over the batch. It lies in
    [0, 1), is 0 at ``r = target_ratio`` and grows on both sides, so the generator gains nothing by
    pushing poses past the target into implausible territory (PoseGen's released ``1 - MPJPE``
    has no such bound).

    Args:
        error: ``(B,)`` critic error per generated sample (e.g. MPJPE in metres), differentiable.
        reference_error: error on prior samples (detached; e.g. a running mean): a scalar, or ``(B,)`` one per
            sample (e.g. the mean over the sample's region of the prior).
        target_ratio: wanted hardness ratio (> 1).
        width: tolerance in log-ratio units.

        reduce: average over the batch (default) or return the ``(B,)`` per-sample losses.

    Returns:
        Scalar loss, or ``(B,)`` with ``reduce=False``.
    """
    ref = torch.as_tensor(reference_error, dtype=error.dtype, device=error.device).clamp_min(1e-6)
    log_r = torch.log(error.clamp_min(1e-6) / ref)
    loss = 1.0 - torch.exp(-(((log_r - math.log(target_ratio)) / width) ** 2))
    return loss.mean() if reduce else loss


# Flexion of knees and elbows in SMPL's joint frames (see posegen_ns.body.joint_sets):
# knees bend about +x; the left elbow about -y, the right elbow about +y.
_LIMITS: tuple[tuple[int, int, float], ...] = ((4, 0, 1.0), (5, 0, 1.0), (18, 1, -1.0), (19, 1, 1.0))


def joint_limit_penalty(body_pose: Tensor, margin: float = 0.1) -> Tensor:
    """Penalty on knees and elbows bending the wrong way.

    Args:
        body_pose: ``(B, 69)`` axis-angle radians.
        margin: tolerated wrong-way bend, radians.

    Returns:
        ``(B,)`` sum of squared wrong-way bends beyond ``margin`` (radians^2).
    """
    pose = body_pose.reshape(body_pose.shape[0], 23, 3)
    terms = [torch.relu(-sign * pose[:, joint - 1, axis] - margin) ** 2 for joint, axis, sign in _LIMITS]
    return torch.stack(terms, -1).sum(-1)
