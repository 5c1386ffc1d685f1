"""The terms of the keypoint-fitting energy (pure functions; the solver in :mod:`posegen_ns.fit.solver` sums them).

Shapes: F frames, C cameras, K keypoints. Cameras are OpenCV (``x_cam = R x_world + t``, ``K`` in pixels),
world points in metres, angles in radians.

Per frame t, with landmarks ``X_tk`` (:class:`~posegen_ns.fit.landmarks.BodyLandmarks`), observations ``x_tck``
(pixels) with weights ``w_tck`` (confidence x joint weight, 0 where missing):

    data_t   = sum_ck w_tck rho(e_tck) / sum_ck w_tck,       e_tck = 1000 |pi_c(X_tk) - x_tck| / f_c   (milliradians)
    rho(e)   = sigma^2 e^2 / (sigma^2 + e^2)                 (Geman-McClure; SMPLify, Bogo et al. ECCV 2016, eq. 2)

The residual is measured as the angle it subtends at the camera (pixels divided by the focal length ``f_c``, the
mean of ``fx`` and ``fy``, in milliradians; 1 mrad is 1 px at a 1000 px focal length), so one set of weights
serves any image resolution. ``rho`` is quadratic for ``e << sigma`` and saturates at ``sigma^2`` for outliers (a
wrong detection pulls with bounded force). One body in world coordinates is projected into every camera, so the
views must agree by construction; each camera's residual is reported separately (a badly calibrated view shows).

    smooth   = mean over triplets (t-1, t, t+1) and landmarks of |a_tk|^2,   a_tk = (X_t+1 - X_t) / g2 - (X_t - X_t-1) / g1

in mm^2 per frame^2 (``g`` the gaps in frame index): an acceleration penalty on the 3D landmarks (EFT's and
SMPLify's video variants smooth the same way), so steady motion is free and jitter is not.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def geman_mcclure(e: Tensor, sigma: float) -> Tensor:
    """Geman-McClure robust cost ``sigma^2 e^2 / (sigma^2 + e^2)`` of residuals ``e`` (any shape, same units as
    ``sigma``), as SMPLify's 2D term (Bogo et al., ECCV 2016). Quadratic near 0, bounded by ``sigma^2``."""
    e2 = e.square()
    return sigma**2 * e2 / (sigma**2 + e2)


def project(points: Tensor, K: Tensor, R: Tensor, t: Tensor, near: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Project world points into every camera.

    Args:
        points: ``(F, K, 3)`` world points, metres.
        K: ``(C, 3, 3)`` intrinsics, pixels. R: ``(C, 3, 3)``, t: ``(C, 3)`` world-to-camera (OpenCV).
        near: depths are clamped to at least ``near`` metres before the division (points behind a camera then
            project far away instead of mirroring; :func:`behind_camera` penalises them).

    Returns:
        ``uv (F, C, K, 2)`` pixels and ``depth (F, C, K)`` metres (camera z, unclamped).
    """
    cam = torch.einsum("cij,fkj->fcki", R, points) + t[None, :, None, :]
    z = cam[..., 2]
    xy = cam[..., :2] / z.clamp_min(near)[..., None]
    uv = torch.einsum("cij,fckj->fcki", K[:, :2, :2], xy) + K[None, :, None, :2, 2]
    return uv, z


def angular_residual(uv: Tensor, observed: Tensor, K: Tensor) -> Tensor:
    """``(F, C, K)`` residuals in milliradians: ``1000 |uv - observed| / f_c`` for ``uv, observed (F, C, K, 2)``
    pixels and ``K (C, 3, 3)`` (``f_c`` the mean of ``fx`` and ``fy``)."""
    f = 0.5 * (K[:, 0, 0] + K[:, 1, 1])  # (C,)
    return 1000.0 * (uv - observed).norm(dim=-1) / f[None, :, None]


def data_term(e: Tensor, weights: Tensor, sigma: float) -> Tensor:
    """``(F,)`` weighted mean of :func:`geman_mcclure` over cameras and keypoints of residuals ``e (F, C, K)``
    (mrad) with ``weights (F, C, K)`` (>= 0); mrad^2. A frame without any weight gets 0."""
    num = (weights * geman_mcclure(e, sigma)).sum((1, 2))
    return num / weights.sum((1, 2)).clamp_min(1e-12)


def behind_camera(depth: Tensor, weights: Tensor, near: float = 0.1) -> Tensor:
    """``(F,)`` squared shortfall (m^2) of observed landmarks closer than ``near`` metres to (or behind) the camera
    that observes them: ``sum_ck [w > 0] relu(near - z)^2``, ``depth, weights (F, C, K)``."""
    return ((weights > 0).to(depth) * torch.relu(near - depth).square()).sum((1, 2))


def sequence_triplets(clip_names: Sequence[str], frame_ids: Tensor | Sequence[int], max_gap: int) -> Tensor:
    """Neighbouring frames for the smoothness term: ``(S, 5)`` long rows ``(t-1, t, t+1, g1, g2)``.

    Consecutive entries of the frame list form a triplet when all three belong to the same clip, their frame ids
    increase and each gap ``g`` (in frame ids) is at most ``max_gap``. ``max_gap <= 0`` gives no triplets.
    """
    ids = [int(i) for i in (frame_ids.tolist() if isinstance(frame_ids, Tensor) else frame_ids)]
    rows = []
    for t in range(1, len(ids) - 1):
        if not (clip_names[t - 1] == clip_names[t] == clip_names[t + 1]):
            continue
        g1, g2 = ids[t] - ids[t - 1], ids[t + 1] - ids[t]
        if 0 < g1 <= max_gap and 0 < g2 <= max_gap:
            rows.append((t - 1, t, t + 1, g1, g2))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 5)


def sequence_pairs(clip_names: Sequence[str], frame_ids: Tensor | Sequence[int], max_gap: int) -> list[tuple[int, int]]:
    """Neighbouring frames ``(t, t+1)``: consecutive entries of one clip whose frame ids increase by at most
    ``max_gap`` (the links of :func:`sequence_triplets`)."""
    ids = [int(i) for i in (frame_ids.tolist() if isinstance(frame_ids, Tensor) else frame_ids)]
    return [(t, t + 1) for t in range(len(ids) - 1)
            if clip_names[t] == clip_names[t + 1] and 0 < ids[t + 1] - ids[t] <= max_gap]


def consistent_choice(cost: Tensor, rotations: Tensor, pairs: Sequence[tuple[int, int]], switch: float) -> Tensor:
    """Pick one of H hypotheses per frame, consistently along sequences (Viterbi).

    Minimises ``sum_t cost[h_t, t] + switch * sum_(t, t+1) angle(R[h_t, t], R[h_t+1, t+1])^2`` over chains of
    neighbouring frames (``pairs``, from :func:`sequence_pairs`); frames in no pair take their cheapest hypothesis.

    Args:
        cost: ``(H, F)`` each hypothesis' cost per frame (mrad^2).
        rotations: ``(H, F, 3, 3)`` each hypothesis' root rotation.
        pairs: neighbouring frames ``(t, t + 1)``.
        switch: weight (mrad^2 per rad^2) of the root turning between neighbours.

    Returns:
        ``(F,)`` long, the chosen hypothesis of each frame.
    """
    H, F = cost.shape
    best = cost.argmin(0).clone()
    nxt = dict(pairs)
    starts = [t for t in nxt if t not in {b for _, b in pairs}]
    for start in starts:
        chain = [start]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        acc = cost[:, chain[0]].clone()  # (H,) best cost of a path ending in each hypothesis
        back = []
        for a, b in zip(chain[:-1], chain[1:]):
            rel = torch.einsum("hij,gik->hgjk", rotations[:, a], rotations[:, b])  # R_a^T R_b for every pair
            cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
            total = acc[:, None] + switch * torch.arccos(cos).square()  # (H_a, H_b)
            acc, arg = total.min(0)
            acc = acc + cost[:, b]
            back.append(arg)
        h = int(acc.argmin())
        for i in range(len(chain) - 1, -1, -1):
            best[chain[i]] = h
            if i > 0:
                h = int(back[i - 1][h])
    return best


def smoothness_term(points: Tensor, triplets: Tensor) -> Tensor:
    """Mean squared acceleration (mm^2 per frame^2) of ``points (F, K, 3)`` metres over ``triplets (S, 5)``
    (:func:`sequence_triplets`); 0 without triplets."""
    if triplets.numel() == 0:
        return points.new_zeros(())
    a, b, c = points[triplets[:, 0]], points[triplets[:, 1]], points[triplets[:, 2]]
    g1 = triplets[:, 3, None, None].to(points)
    g2 = triplets[:, 4, None, None].to(points)
    acc = 1000.0 * ((c - b) / g2 - (b - a) / g1)  # (S, K, 3) mm per frame^2
    return acc.square().sum(-1).mean()


def jitter_mm(points: Tensor, triplets: Tensor) -> float:
    """Mean acceleration magnitude (mm per frame^2) of ``points (F, K, 3)`` metres over ``triplets``: the figure
    the smoothness term lowers (NaN without triplets)."""
    if triplets.numel() == 0:
        return float("nan")
    a, b, c = points[triplets[:, 0]], points[triplets[:, 1]], points[triplets[:, 2]]
    g1 = triplets[:, 3, None, None].to(points)
    g2 = triplets[:, 4, None, None].to(points)
    return float((1000.0 * ((c - b) / g2 - (b - a) / g1)).norm(dim=-1).mean())
