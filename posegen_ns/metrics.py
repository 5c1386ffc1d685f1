"""3D pose metrics: MPJPE, PA-MPJPE, PCK and AUC (the one implementation used everywhere).

All functions take metres and return per-sample values ``(B,)`` in metres (or fractions), batched
and differentiable in torch; callers convert to millimetres when reporting (``* 1000``).
Shapes: B samples, J joints; ``pred`` and ``gt`` are ``(B, J, 3)`` in the same frame.

Protocols (as in SPIN's and HybrIK's evaluation scripts):
- MPJPE: mean Euclidean joint error after aligning the roots (pelvis for H36M-17 / SMPL-24;
  for LSP-14, which has no pelvis, the mid-point of the two hips, ``root="midhip_lsp"``).
- PA-MPJPE: MPJPE after a similarity Procrustes alignment of ``pred`` to ``gt`` (scale, rotation,
  translation; Umeyama 1991, with the reflection fix), computed with ``roma``.
- PCK / AUC: fraction of joints within a threshold after root alignment (the 3DPCK of Mehta et
  al., 3DV 2017, 150 mm), and its mean over thresholds 0..150 mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import roma
import torch
from torch import Tensor

Root = int | Sequence[int] | str | None
"""A root specification: a joint index, indices whose mean is the root, a name in
:data:`NAMED_ROOTS`, or ``None`` (no alignment)."""

NAMED_ROOTS: dict[str, tuple[int, ...]] = {
    "pelvis": (0,),  # H36M-17 and SMPL-24 both start with the pelvis
    "midhip_lsp": (2, 3),  # LSP-14: left hip (2) and right hip (3), SPIN's LSP pelvis
}
"""Named roots: name -> joint indices averaged to make the root."""

DEFAULT_AUC_THRESHOLDS = torch.linspace(0.0, 0.150, 31)
"""AUC thresholds in metres: 0, 5, ..., 150 mm."""


def root_joint(joints: Tensor, root: Root) -> Tensor:
    """The root point ``(B, 1, 3)`` of ``joints (B, J, 3)`` for a :data:`Root` spec (not ``None``).

    Raises:
        ValueError: an unknown root name or an index outside ``0..J-1``.
    """
    if isinstance(root, str):
        if root not in NAMED_ROOTS:
            raise ValueError(f"unknown root {root!r}; use one of {sorted(NAMED_ROOTS)} or a joint index")
        root = NAMED_ROOTS[root]
    idx = [root] if isinstance(root, int) else list(root)
    J = joints.shape[-2]
    if not idx or any(not -J <= i < J for i in idx):
        raise ValueError(f"root indices {idx} out of range for {J} joints")
    return joints[..., idx, :].mean(dim=-2, keepdim=True)


def root_align(joints: Tensor, root: Root) -> Tensor:
    """``joints (B, J, 3)`` minus their root (see :func:`root_joint`); unchanged for ``root=None``."""
    return joints if root is None else joints - root_joint(joints, root)


def _check(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (B, J, 3)")


def joint_errors(pred: Tensor, gt: Tensor, root: Root = 0) -> Tensor:
    """Per-joint Euclidean errors ``(B, J)`` in metres after root alignment of both sets."""
    _check(pred, gt)
    return (root_align(pred, root) - root_align(gt, root)).norm(dim=-1)


def mpjpe(pred: Tensor, gt: Tensor, root: Root = 0) -> Tensor:
    """Mean per-joint position error ``(B,)`` in metres.

    Args:
        pred: ``(B, J, 3)`` predicted joints, metres.
        gt: ``(B, J, 3)`` ground-truth joints, metres, same frame and joint order.
        root: joint index (default 0, the pelvis of H36M-17 / SMPL-24), ``"midhip_lsp"`` for
            LSP-14, a sequence of indices to average, or ``None`` for no root alignment.
    """
    return joint_errors(pred, gt, root).mean(dim=-1)


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """``pred (B, J, 3)`` mapped by the similarity ``s R x + t`` that best fits ``gt (B, J, 3)``
    in least squares (Umeyama 1991; proper rotation, det R = +1, so reflections are never used).

    Differentiable; ``roma.special_procrustes`` damps the gradient when the rotation is ambiguous.
    """
    _check(pred, gt)
    R, t, s = roma.rigid_points_registration(pred, gt, compute_scaling=True)  # (B,3,3), (B,3), (B,)
    return s[:, None, None] * torch.einsum("bij,bnj->bni", R, pred) + t[:, None, :]


def pa_mpjpe(pred: Tensor, gt: Tensor) -> Tensor:
    """Procrustes-aligned MPJPE ``(B,)`` in metres (see :func:`procrustes_align`)."""
    return mpjpe(procrustes_align(pred, gt), gt, root=None)


def pck(pred: Tensor, gt: Tensor, threshold: float = 0.150, root: Root = 0) -> Tensor:
    """Percentage of correct keypoints ``(B,)`` as a fraction in [0, 1]: joints whose error after
    root alignment is at most ``threshold`` metres (3DPCK, 150 mm by default). Not differentiable."""
    return (joint_errors(pred, gt, root) <= threshold).to(pred.dtype).mean(dim=-1)


def auc(pred: Tensor, gt: Tensor, thresholds: Tensor | Sequence[float] | None = None, root: Root = 0) -> Tensor:
    """Area under the PCK curve ``(B,)`` in [0, 1]: the mean of :func:`pck` over ``thresholds``
    (metres; default 0, 5, ..., 150 mm, 31 values, as in Mehta et al. 2017)."""
    th = DEFAULT_AUC_THRESHOLDS if thresholds is None else torch.as_tensor(thresholds)
    err = joint_errors(pred, gt, root)  # (B, J)
    th = th.to(err)
    return (err[:, :, None] <= th).to(pred.dtype).mean(dim=(1, 2))


def circular_spread(angles: Tensor) -> tuple[float, float]:
    """Circular standard deviation and circular mean of angles (e.g. camera azimuths).

    The ordinary standard deviation of angles depends on where the circle is cut: views clustered
    behind a body (azimuth near +-pi) give the largest possible value although they are one view.
    Circular statistics (Mardia & Jupp, *Directional Statistics*, 2.3) do not: with ``R`` the length
    of the mean unit vector, the spread is ``sqrt(-2 ln R)`` and the mean its angle.

    Args:
        angles: ``(N,)`` radians.

    Returns:
        ``(std, mean)`` in radians: ``std`` is 0 for identical angles and grows without bound as they
        spread evenly around the circle (about 1.9 for 32 uniform angles); ``mean`` lies in ``(-pi, pi]``.

    Raises:
        ValueError: ``angles`` is empty.
    """
    if angles.numel() == 0:
        raise ValueError("circular_spread: no angles")
    a = angles.detach().double().reshape(-1)
    resultant = torch.complex(torch.cos(a).mean(), torch.sin(a).mean())
    return float(torch.sqrt(-2.0 * torch.log(resultant.abs().clamp_min(1e-12)))), float(resultant.angle())
