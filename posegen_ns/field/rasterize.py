"""Differentiable 3D Gaussian splatting behind one function, :func:`rasterize_gaussians`.

Backends:
- ``"gsplat"``: ``gsplat.rasterization`` (CUDA only; gsplat has no CPU path).
- ``"torch"``: a pure-torch, fully vectorised rasteriser for CPU (tests, CI, small runs) that
  follows gsplat's maths so the two agree (checked against each other on a GPU machine).

The maths (Kerbl et al., "3D Gaussian Splatting", SIGGRAPH 2023; EWA splatting, Zwicker et al. 2001;
gsplat's ``_torch_impl._fully_fused_projection`` and ``rasterize_to_pixels_fwd.cu``):
- ``Sigma = R S S^T R^T`` from the quaternion (wxyz, normalised) and scales, rotated to the camera;
- ``Sigma2D = J W Sigma W^T J^T + 0.3 I`` with ``J`` the Jacobian of the pinhole projection at the
  mean (``x/z`` clamped to 1.3x the field of view as gsplat does) and a 0.3 px^2 low-pass dilation;
- at a pixel centre ``p = (x + 0.5, y + 0.5)`` and ``d = p - mean2d``:
  ``alpha = min(0.999, opacity * exp(-0.5 d^T Sigma2D^-1 d))``, skipped below ``1/255``;
- front-to-back compositing in order of the mean's camera z: ``w_i = alpha_i T_i``,
  ``T_i = prod_{j<i} (1 - alpha_j)``, stopping (exclusively) once ``T`` would drop to ``1e-4``;
- ``rgb = sum w_i c_i + (1 - alpha) * background``, ``alpha = sum w_i``,
  ``depth = sum w_i z_i / alpha`` (gsplat's "ED" expected depth; 0 where ``alpha = 0``).

Letters: C cameras, N Gaussians, H x W pixels.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import roma
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from posegen_ns.errors import PoseGenInputError

ALPHA_MAX = 0.999
"""Per-Gaussian alpha clamp, as in gsplat (the original 3DGS CUDA code uses 0.99)."""
ALPHA_MIN = 1.0 / 255.0
"""Contributions below this alpha are skipped (3DGS, gsplat)."""
T_MIN = 1e-4
"""A pixel stops compositing once its transmittance would fall to this value (3DGS, gsplat)."""
EPS2D = 0.3
"""Low-pass dilation added to the 2D covariance, pixels^2 (3DGS, gsplat's ``eps2d``)."""

Backend = Literal["auto", "torch", "gsplat"]


def rasterize_gaussians(
    means: Tensor,  # [(C,) N, 3]
    quats: Tensor,  # [(C,) N, 4]
    scales: Tensor,  # [(C,) N, 3]
    opacities: Tensor,  # [(C,) N]
    colors: Tensor,  # [(C,) N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [3]
    backend: Backend = "auto",
    near: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render N 3D Gaussians into C pinhole cameras.

    Args:
        means: ``(N, 3)`` or per-camera ``(C, N, 3)`` world positions, metres. Per-camera inputs let
            the caller pose the Gaussians differently in each image (the human field does).
        quats: ``(N, 4)`` / ``(C, N, 4)`` rotations, wxyz, need not be normalised.
        scales: ``(N, 3)`` / ``(C, N, 3)`` standard deviations along the rotated axes, metres
            (already activated, i.e. positive).
        opacities: ``(N,)`` / ``(C, N)`` in [0, 1].
        colors: ``(N, 3)`` / ``(C, N, 3)`` in [0, 1].
        viewmats: ``(C, 4, 4)`` world-to-camera, OpenCV axes (x right, y down, z forward).
        Ks: ``(C, 3, 3)`` intrinsics in pixels; pixel ``(x, y)`` has its centre at ``(x+0.5, y+0.5)``.
        width, height: image size W, H in pixels.
        background: ``(3,)`` colour behind the Gaussians (default black).
        backend: ``"torch"``, ``"gsplat"`` or ``"auto"`` (gsplat when the tensors are on CUDA and
            gsplat's kernels import or build, else torch; :func:`auto_backend`). On CUDA, ``"auto"``
            falls back to torch with one printed line saying why when gsplat cannot be imported or
            built, or when its first call fails.
        near: Gaussians whose mean has camera z <= near are dropped, metres.

    Returns:
        ``rgb (C, H, W, 3)``, ``alpha (C, H, W, 1)`` accumulated opacity and ``depth (C, H, W, 1)``
        expected camera z (alpha-weighted mean of the Gaussians' z, metres; 0 where alpha = 0).
        Differentiable w.r.t. means, quats, scales, opacities, colors (and viewmats, Ks on the torch
        backend; gsplat gives no gradient w.r.t. Ks).

    Raises:
        PoseGenInputError: on inconsistent shapes or an unknown backend.

    Notes:
        The torch backend enumerates, per Gaussian, the pixels inside the exact bounding box of the
        ellipse where ``alpha >= 1/255`` (an opacity-aware radius), sorts the (pixel, Gaussian)
        pairs by pixel and depth, and composites with a segmented cumulative sum of
        ``log(1 - alpha)`` in float64. gsplat instead evaluates whole 16-px tiles touched by a
        3-sigma square, so the two differ only in pixels where gsplat's tiles cut a Gaussian off at
        ``alpha < 0.011 * opacity``. Memory is bounded by rendering horizontal bands of rows, each
        holding at most ``_MAX_PAIRS`` pairs (a Python loop over bands, usually one).
    """
    C = _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    if backend not in ("auto", "torch", "gsplat"):
        raise PoseGenInputError(
            f"rasterize_gaussians: backend={backend!r} is unknown; use 'auto', 'torch' or 'gsplat'."
        )
    if background is None:
        background = torch.zeros(3, dtype=means.dtype, device=means.device)
    auto = backend == "auto"
    if auto:
        backend = auto_backend(means.device)
    if backend == "gsplat":
        if not auto or _GSPLAT["ran"]:
            return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near)
        try:  # the first call under "auto": a kernel that was built but cannot run falls back to torch
            out = _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near)
        except torch.cuda.OutOfMemoryError:
            raise  # not a broken gsplat (and the torch backend needs more memory)
        except Exception as exc:  # noqa: BLE001 - reported in one line, then the torch backend renders
            _disable_gsplat(f"its first call failed ({_one_line(exc)})")
        else:
            _GSPLAT["ran"] = True
            return out
    per_cam = [_per_camera(x, C, nd) for x, nd in ((means, 2), (quats, 2), (scales, 2), (opacities, 1), (colors, 2))]
    return _rasterize_torch(*per_cam, viewmats, Ks, width, height, background, near)


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height) -> int:
    """Validate shapes; returns C."""
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise PoseGenInputError(f"rasterize_gaussians: viewmats has shape {tuple(viewmats.shape)}; expected (C, 4, 4).")
    C = viewmats.shape[0]
    if Ks.shape != (C, 3, 3):
        raise PoseGenInputError(
            f"rasterize_gaussians: Ks has shape {tuple(Ks.shape)}; expected ({C}, 3, 3) like viewmats."
        )
    if means.dim() not in (2, 3) or means.shape[-1] != 3:
        raise PoseGenInputError(
            f"rasterize_gaussians: means has shape {tuple(means.shape)}; expected (N, 3) or (C, N, 3)."
        )
    N = means.shape[-2]
    for name, x, tail in (("quats", quats, (4,)), ("scales", scales, (3,)), ("opacities", opacities, ()),
                          ("colors", colors, (3,))):
        if tuple(x.shape) not in ((N, *tail), (C, N, *tail)):
            raise PoseGenInputError(
                f"rasterize_gaussians: {name} has shape {tuple(x.shape)}; expected {(N, *tail)} or {(C, N, *tail)} "
                f"(N={N} Gaussians from means, C={C} cameras from viewmats)."
            )
    if means.dim() == 3 and means.shape[0] != C:
        raise PoseGenInputError(
            f"rasterize_gaussians: per-camera means has {means.shape[0]} cameras; viewmats has {C}."
        )
    if int(width) <= 0 or int(height) <= 0:
        raise PoseGenInputError(f"rasterize_gaussians: image size {width}x{height} must be positive.")
    return C


def _per_camera(x: Tensor, C: int, shared_dims: int) -> Tensor:
    """``(N, ...)`` (``shared_dims`` dims) -> ``(C, N, ...)`` as an expanded view; per-camera
    inputs pass through."""
    return x if x.dim() == shared_dims + 1 else x.unsqueeze(0).expand(C, *x.shape)


_GSPLAT: dict = {"ok": None, "reason": "", "ran": False, "told": False}
"""What ``"auto"`` knows of gsplat in this process: ``ok`` (None until checked), why not, whether a call
ran, and whether the fallback line was printed."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def gsplat_status() -> tuple[bool, str]:
    """Whether gsplat's CUDA kernels can be used in this process, and if not why (checked once).

    gsplat 1.4 from PyPI compiles its kernels on first use (``gsplat.cuda._backend``: nvcc and ninja
    through torch's cpp_extension, minutes, cached in ``$TORCH_EXTENSIONS_DIR``); this import triggers
    that build. Without nvcc it leaves ``_C = None``; a failed build raises.

    ``POSEGEN_GSPLAT=0`` in the environment turns gsplat off without trying it (e.g. where its build is known to
    fail or would take too long).

    Returns:
        ``(usable, reason)``; ``reason`` is ``""`` when usable.
    """
    if _GSPLAT["ok"] is None and os.environ.get("POSEGEN_GSPLAT", "").strip() == "0":
        _GSPLAT["ok"], _GSPLAT["reason"] = False, "POSEGEN_GSPLAT=0 turns it off"
    if _GSPLAT["ok"] is None:
        try:
            import gsplat  # noqa: F401
            from gsplat.cuda._backend import _C
        except Exception as exc:  # noqa: BLE001 - ImportError, a failed JIT build, an ABI mismatch
            _GSPLAT["ok"], _GSPLAT["reason"] = False, f"gsplat cannot be imported or built ({_one_line(exc)})"
        else:
            ok = _C is not None
            _GSPLAT["ok"] = ok
            _GSPLAT["reason"] = "" if ok else "gsplat's CUDA kernels are not built and nvcc is not on PATH to build them"
    return bool(_GSPLAT["ok"]), str(_GSPLAT["reason"])


def _disable_gsplat(reason: str) -> None:
    _GSPLAT["ok"], _GSPLAT["reason"] = False, reason
    _tell_fallback()


def _tell_fallback() -> None:
    """Print, once per process, the one line saying why ``"auto"`` renders with torch on CUDA."""
    if _GSPLAT["told"]:
        return
    _GSPLAT["told"] = True
    from nerfstudio.utils.rich_utils import CONSOLE

    CONSOLE.print(
        f"posegen-ns: rasteriser 'auto' uses the torch backend on CUDA because {_GSPLAT['reason']}; "
        "for gsplat install gsplat==1.4.0 with nvcc and ninja on PATH (or pass --pipeline.model.rasterizer torch).",
        soft_wrap=True, markup=False, highlight=False,
    )


def auto_backend(device: torch.device | str) -> Literal["torch", "gsplat"]:
    """The backend ``"auto"`` picks for tensors on ``device``: ``"gsplat"`` on CUDA when
    :func:`gsplat_status` says its kernels are usable, else ``"torch"``. On CUDA without gsplat it
    prints one line saying why (once per process)."""
    if torch.device(device).type != "cuda":
        return "torch"
    ok, _ = gsplat_status()
    if not ok:
        _tell_fallback()
        return "torch"
    return "gsplat"


# ----------------------------------------------------------------------------------------------
# gsplat backend
# ----------------------------------------------------------------------------------------------


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near):
    """``gsplat.rasterization`` with ``render_mode="RGB+ED"``.

    gsplat takes Gaussians ``(N, ...)`` shared by all cameras (only colours may be per camera), so
    when means, quats, scales or opacities are per camera ``(C, N, ...)`` this calls it once per
    camera (C is a handful of images per step) and stacks the results.
    """
    from gsplat import rasterization

    def call(m, q, s, o, c, vm, k):
        rendered, alpha, _ = rasterization(
            m, q, s, o, c, vm, k, int(width), int(height), near_plane=near, packed=False,
            backgrounds=background.to(c).expand(vm.shape[0], 3), render_mode="RGB+ED",
        )
        return rendered[..., :3], alpha, rendered[..., 3:4]

    if all(x.dim() == nd for x, nd in ((means, 2), (quats, 2), (scales, 2), (opacities, 1))):
        return call(means, quats, scales, opacities, colors, viewmats, Ks)
    C = viewmats.shape[0]
    outs = []
    for i in range(C):
        sel = [x[i] if x.dim() == nd + 1 else x
               for x, nd in ((means, 2), (quats, 2), (scales, 2), (opacities, 1), (colors, 2))]
        outs.append(call(*sel, viewmats[i : i + 1], Ks[i : i + 1]))
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))


# ----------------------------------------------------------------------------------------------
# torch backend
# ----------------------------------------------------------------------------------------------

_MAX_PAIRS = 6_000_000
"""Largest number of (pixel, Gaussian) pairs handled at once by the torch backend (memory bound)."""


def project_gaussians(
    means: Tensor,  # [C, N, 3]
    quats: Tensor,  # [C, N, 4]
    scales: Tensor,  # [C, N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """EWA projection of 3D Gaussians (gsplat's ``_fully_fused_projection`` maths, pinhole).

    Returns:
        ``means2d (C, N, 2)`` pixels, ``cov2d (C, N, 2, 2)`` pixels^2 including the 0.3 px^2
        dilation, and ``depth (C, N)`` camera z in metres. Invalid (behind-camera) Gaussians are
        not removed here.
    """
    Rw, tw = viewmats[:, :3, :3], viewmats[:, :3, 3]  # (C, 3, 3), (C, 3)
    mc = torch.einsum("cij,cnj->cni", Rw, means) + tw[:, None, :]  # (C, N, 3) camera frame
    rot = roma.unitquat_to_rotmat(F.normalize(quats, dim=-1)[..., [1, 2, 3, 0]])  # wxyz -> xyzw; (C, N, 3, 3)
    M = torch.einsum("cij,cnjk->cnik", Rw, rot) * scales[..., None, :]  # (C, N, 3, 3) camera-frame R S
    cov_c = M @ M.transpose(-1, -2)  # (C, N, 3, 3)

    x, y, z = mc.unbind(-1)
    z_safe = torch.where(z > 1e-6, z, torch.ones_like(z))  # avoid inf/nan for culled Gaussians
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
    lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z_safe * torch.maximum(torch.minimum(x / z_safe, lim_xp), -lim_xn)
    ty = z_safe * torch.maximum(torch.minimum(y / z_safe, lim_yp), -lim_yn)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2, zero, fy / z_safe, -fy * ty / z_safe**2], -1)
    J = J.reshape(*z.shape, 2, 3)  # (C, N, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2) + EPS2D * torch.eye(2, dtype=means.dtype, device=means.device)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)  # (C, N, 2)
    return means2d, cov2d, z


def _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near):
    C, N = means.shape[:2]
    H, W = int(height), int(width)
    dev, dt = means.device, means.dtype
    means2d, cov2d, depth = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = (a * c - b * b).clamp_min(1e-10)
    conic = torch.stack([c / det, -b / det, a / det], -1)  # (C, N, 3) upper triangle of Sigma2D^-1

    # Flatten camera x Gaussian; everything below indexes these flat (C*N,) arrays.
    m2 = means2d.reshape(-1, 2)
    con = conic.reshape(-1, 3)
    opa = opacities.reshape(-1)
    col = colors.reshape(-1, 3)
    dep = depth.reshape(-1)

    with torch.no_grad():
        # Exact bounding box of the ellipse where opacity * exp(-sigma) >= 1/255.
        r2 = 2.0 * torch.log((opa * 255.0).clamp_min(1e-12))  # (C*N,) squared Mahalanobis radius
        valid = (dep > near) & (det.reshape(-1) > 1e-10) & (r2 > 0) & torch.isfinite(m2).all(-1)
        r = r2.clamp_min(0).sqrt()
        ex, ey = r * a.reshape(-1).sqrt(), r * c.reshape(-1).sqrt()
        mx, my = m2[:, 0].detach(), m2[:, 1].detach()
        x0 = torch.ceil((mx - ex - 0.5).clamp(-1, W)).long().clamp_min(0)
        x1 = torch.floor((mx + ex - 0.5).clamp(-1, W)).long().clamp_max(W - 1)
        y0 = torch.ceil((my - ey - 0.5).clamp(-1, H)).long().clamp_min(0)
        y1 = torch.floor((my + ey - 0.5).clamp(-1, H)).long().clamp_max(H - 1)
        valid &= (x1 >= x0) & (y1 >= y0)
        # Gaussians in front-to-back order per camera: (camera, depth) sorted flat indices.
        order = torch.argsort(torch.where(valid, dep, torch.full_like(dep, math.inf)).reshape(C, N), dim=1)
        order = (order + torch.arange(C, device=dev)[:, None] * N).reshape(-1)
        order = order[valid[order]]  # (G,) valid flat ids, sorted by (camera, depth)
        cam = order // N
        gx0, gx1, gy0, gy1 = x0[order], x1[order], cam * H + y0[order], cam * H + y1[order]  # global rows
        bands = _row_bands(gy0, gy1, gx1 - gx0 + 1, C * H)

    if not bands:
        bands = [(0, C * H)]
    # Each band of global rows [r0, r1) is the flat pixel range [r0 * W, r1 * W). With several
    # bands and gradients on, each band is checkpointed: only its inputs are kept for backward and
    # the band is recomputed there, so memory stays bounded by one band's pairs.
    checkpointed = len(bands) > 1 and torch.is_grad_enabled()
    parts = []
    for r0, r1 in bands:
        args = (m2, con, opa, col, dep, order, gx0, gx1, gy0, gy1, r0, r1, H, W)
        if checkpointed:
            parts.append(torch.utils.checkpoint.checkpoint(_composite_band, *args, use_reentrant=False))
        else:
            parts.append(_composite_band(*args))
    out = torch.cat(parts, 0)  # (C*H*W, 5): rgb, alpha, alpha-weighted depth
    rgb, acc, dsum = out[:, :3], out[:, 3], out[:, 4]
    rgb = rgb + (1.0 - acc)[:, None] * background.to(rgb)
    depth_img = dsum / acc.clamp_min(1e-10)
    return rgb.reshape(C, H, W, 3), acc.reshape(C, H, W, 1), depth_img.reshape(C, H, W, 1)


def _composite_band(m2, con, opa, col, dep, order, gx0, gx1, gy0, gy1, r0: int, r1: int, H: int, W: int) -> Tensor:
    """Composite the pixels of global rows ``[r0, r1)``; returns ``(P, 5)`` with P = (r1 - r0) * W:
    premultiplied rgb, alpha and ``sum w z`` per pixel. Inputs are the flat per-(camera, Gaussian)
    arrays ``m2 (CN, 2)``, ``con (CN, 3)``, ``opa (CN,)``, ``col (CN, 3)``, ``dep (CN,)`` and the
    depth-ordered visible ids ``order (G,)`` with their pixel boxes (rows global)."""
    P = (r1 - r0) * W
    with torch.no_grad():
        pid, pix = _enumerate_pairs(order, gx0, gx1, gy0.clamp_min(r0), gy1.clamp_max(r1 - 1), W)
        alpha0 = _pair_alpha(m2.detach(), con.detach(), opa.detach(), pid, pix, H, W)
        keep = alpha0 >= ALPHA_MIN
        pid, pix = pid[keep], pix[keep]
        # Pairs come out grouped by Gaussian in (camera, depth) order; a stable sort by pixel keeps
        # that order inside each pixel.
        pix, perm = torch.sort(pix, stable=True)
        pid = pid[perm]
    alpha = _pair_alpha(m2, con, opa, pid, pix, H, W)  # (M,) differentiable
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    log_t = _segment_exclusive_cumsum(torch.log1p(-alpha), first)  # (M,) log transmittance before i
    with torch.no_grad():
        alive = (log_t + torch.log1p(-alpha)) > math.log(T_MIN)  # gsplat stops (exclusive) at T <= 1e-4
    w = (alpha * torch.exp(log_t))[alive]
    pix, pid = pix[alive] - r0 * W, pid[alive]
    vals = torch.cat([w[:, None] * col[pid], w[:, None], (w * dep[pid])[:, None]], 1)  # (M, 5)
    return torch.zeros(P, 5, dtype=m2.dtype, device=m2.device).index_add(0, pix, vals)


def _row_bands(gy0: Tensor, gy1: Tensor, widths: Tensor, rows: int) -> list[tuple[int, int]]:
    """Split the ``rows`` global image rows into bands ``[r0, r1)`` of at most ``_MAX_PAIRS`` pairs
    (a single row may exceed it). Gaussian g covers rows ``gy0..gy1`` with ``widths`` pixels each."""
    if gy0.numel() == 0:
        return []
    diff = torch.zeros(rows + 1, dtype=torch.long, device=gy0.device)
    diff.index_add_(0, gy0, widths).index_add_(0, gy1 + 1, -widths)
    per_row = torch.cumsum(diff[:-1], 0)  # (rows,) pairs per row
    total = int(per_row.sum())
    if total <= _MAX_PAIRS:
        return [(0, rows)]
    band_of_row = (torch.cumsum(per_row, 0) - per_row) // _MAX_PAIRS  # row starts a new band when it crosses
    starts = torch.nonzero(torch.diff(band_of_row, prepend=band_of_row[:1] - 1)).flatten().tolist()
    return list(zip(starts, starts[1:] + [rows]))


def _enumerate_pairs(ids: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, W: int) -> tuple[Tensor, Tensor]:
    """All (Gaussian id, flat pixel id) pairs of the boxes ``[x0, x1] x [y0, y1]`` (inclusive; y in
    global rows ``camera * H + y``), grouped by box in the order of ``ids``. Empty boxes give none."""
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    counts = bw * bh  # (G,)
    total = int(counts.sum())
    box = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), counts, output_size=total)
    local = torch.arange(total, device=ids.device) - (torch.cumsum(counts, 0) - counts)[box]
    bwb = bw[box]
    pix = (y0[box] + local // bwb) * W + x0[box] + local % bwb
    return ids[box], pix


def _pair_alpha(m2: Tensor, con: Tensor, opa: Tensor, pid: Tensor, pix: Tensor, H: int, W: int) -> Tensor:
    """``min(0.999, o exp(-0.5 d^T Sigma^-1 d))`` for each (Gaussian, pixel) pair ``(M,)``; 0 where
    the quadratic form is negative (as gsplat)."""
    px = (pix % W).to(m2.dtype) + 0.5
    py = ((pix // W) % H).to(m2.dtype) + 0.5
    mp = m2[pid]  # (M, 2)
    cp = con[pid]  # (M, 3)
    dx, dy = px - mp[:, 0], py - mp[:, 1]
    sigma = 0.5 * (cp[:, 0] * dx * dx + cp[:, 2] * dy * dy) + cp[:, 1] * dx * dy
    alpha = (opa[pid] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
    return torch.where(sigma >= 0, alpha, torch.zeros_like(alpha))


def _segment_exclusive_cumsum(x: Tensor, first: Tensor) -> Tensor:
    """Exclusive cumulative sum of ``x (M,)`` restarting where ``first (M,)`` is True. Summed in
    float64 so long arrays keep precision; differentiable."""
    cs = torch.cumsum(x.double(), 0)
    excl = cs - x.double()
    idx = torch.arange(x.numel(), device=x.device)
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    return (excl - excl[start]).to(x.dtype)
