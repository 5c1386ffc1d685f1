"""Tests of the differentiable Gaussian rasteriser's torch backend (posegen_ns.field.rasterize)."""

from __future__ import annotations

import math

import pytest
import torch

import posegen_ns.field.rasterize as rz
from posegen_ns.errors import PoseGenInputError
from posegen_ns.field.rasterize import EPS2D, rasterize_gaussians

FX = 100.0


def _camera(size: int = 33, cx: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity world-to-camera (looking down +z) and a pinhole whose principal point is the centre
    of pixel (size // 2, size // 2)."""
    c = size // 2 + 0.5 if cx is None else cx
    K = torch.tensor([[[FX, 0.0, c], [0.0, FX, c], [0.0, 0.0, 1.0]]])
    return torch.eye(4)[None], K


def _gaussians(means, scales, opacities, colors):
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    scales = torch.as_tensor(scales, dtype=torch.float32).reshape(n, -1).expand(n, 3).contiguous()
    return dict(means=means, quats=quats, scales=scales,
                opacities=torch.as_tensor(opacities, dtype=torch.float32).reshape(n),
                colors=torch.as_tensor(colors, dtype=torch.float32).reshape(n, 3))


def test_single_isotropic_gaussian_alpha_colour_depth():
    z, opacity = 2.0, 0.7
    sigma_eff = 2.0  # pixels, after the 0.3 px^2 dilation
    sigma_px = math.sqrt(sigma_eff**2 - EPS2D)  # fx * s / z
    s = sigma_px * z / FX
    viewmat, K = _camera()
    bg = torch.tensor([0.1, 0.2, 0.3])
    g = _gaussians([0.0, 0.0, z], s, opacity, [1.0, 0.5, 0.0])
    rgb, alpha, depth = rasterize_gaussians(**g, viewmats=viewmat, Ks=K, width=33, height=33, background=bg)
    assert rgb.shape == (1, 33, 33, 3) and alpha.shape == (1, 33, 33, 1) and depth.shape == (1, 33, 33, 1)
    c = 16  # the mean projects onto this pixel's centre
    assert alpha[0, c, c, 0].item() == pytest.approx(opacity, abs=1e-5)
    expected = opacity * torch.tensor([1.0, 0.5, 0.0]) + (1 - opacity) * bg
    torch.testing.assert_close(rgb[0, c, c], expected, atol=1e-5, rtol=0)
    assert depth[0, c, c, 0].item() == pytest.approx(z, abs=1e-5)
    # one (dilated) sigma = 2 px to the right, below, and diagonally (d^2 = 2 sigma^2)
    assert alpha[0, c, c + 2, 0].item() == pytest.approx(opacity * math.exp(-0.5), abs=1e-5)
    assert alpha[0, c + 2, c, 0].item() == pytest.approx(opacity * math.exp(-0.5), abs=1e-5)
    assert alpha[0, c + 2, c + 2, 0].item() == pytest.approx(opacity * math.exp(-1.0), abs=1e-5)
    # far pixels are untouched: background colour, zero alpha and depth
    assert alpha[0, 0, 0, 0].item() == 0.0 and depth[0, 0, 0, 0].item() == 0.0
    torch.testing.assert_close(rgb[0, 0, 0], bg)


def test_front_to_back_order_regardless_of_input_order():
    viewmat, K = _camera()
    near = dict(means=[0.0, 0.0, 2.0], scales=0.02, opacities=0.6, colors=[1.0, 0.0, 0.0])
    far = dict(means=[0.0, 0.0, 3.0], scales=0.03, opacities=0.5, colors=[0.0, 1.0, 0.0])
    bg = torch.tensor([0.0, 0.0, 1.0])
    outs = []
    for pair in ((near, far), (far, near)):
        g = _gaussians(*([p[k] for p in pair] for k in ("means", "scales", "opacities", "colors")))
        outs.append(rasterize_gaussians(**g, viewmats=viewmat, Ks=K, width=33, height=33, background=bg))
    (rgb, alpha, depth), (rgb2, alpha2, depth2) = outs
    # centre pixel: near red with 0.6, then far green with 0.5 of the remaining 0.4
    torch.testing.assert_close(rgb[0, 16, 16], torch.tensor([0.6, 0.2, 0.2]), atol=1e-5, rtol=0)
    assert alpha[0, 16, 16, 0].item() == pytest.approx(0.8, abs=1e-5)
    assert depth[0, 16, 16, 0].item() == pytest.approx((0.6 * 2 + 0.2 * 3) / 0.8, abs=1e-5)
    torch.testing.assert_close(rgb, rgb2)
    torch.testing.assert_close(alpha, alpha2)
    torch.testing.assert_close(depth, depth2)


def _dense_reference(g, viewmats, Ks, W, H, bg):
    """All pixels x all Gaussians with gsplat's own pure-torch projection, composited by hand."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(g["quats"], g["scales"], compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(g["means"], covars, viewmats, Ks, W, H)
    out = []
    for c in range(viewmats.shape[0]):
        ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        d = torch.stack([xs, ys], -1).reshape(-1, 1, 2) - means2d[c][None]  # (P, N, 2)
        a, b, cc = conics[c].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + cc * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = (g["opacities"] * torch.exp(-sigma)).clamp_max(0.999)
        alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255) & (depths[c] > 0.01), alpha, 0.0)
        order = torch.argsort(depths[c])
        alpha = alpha[:, order]
        T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha], 1), 1)
        alive = T[:, 1:] > 1e-4
        w = alpha * T[:, :-1] * alive
        acc = w.sum(1)
        rgb = w @ g["colors"][order] + (1 - acc)[:, None] * bg
        dep = (w @ depths[c][order]) / acc.clamp_min(1e-10)
        out.append((rgb.reshape(H, W, 3), acc.reshape(H, W, 1), dep.reshape(H, W, 1)))
    return [torch.stack(x) for x in zip(*out)]


def _random_scene(n: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * torch.tensor([0.4, 0.3, 0.3], dtype=dtype)
    return dict(
        means=means,
        quats=torch.randn(n, 4, generator=gen, dtype=dtype),
        scales=torch.rand(n, 3, generator=gen, dtype=dtype) * 0.08 + 0.01,
        opacities=torch.rand(n, generator=gen, dtype=dtype) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=gen, dtype=dtype),
    )


def _two_cameras(W: int, H: int, dtype=torch.float32):
    from posegen_ns.geometry import intrinsics_from_fov, orbit_extrinsics

    R, t = orbit_extrinsics(torch.tensor([0.0, 1.1]), torch.tensor([0.0, 0.3]), torch.tensor([2.5, 2.0]),
                            torch.zeros(2, 3))
    viewmats = torch.eye(4).repeat(2, 1, 1)
    viewmats[:, :3, :3], viewmats[:, :3, 3] = R, t
    Ks = intrinsics_from_fov(0.9, W, H).repeat(2, 1, 1)
    Ks[1, 0, 2] += 1.7  # off-centre principal point
    return viewmats.to(dtype), Ks.to(dtype)


def test_matches_dense_reference_with_gsplat_projection():
    W, H = 24, 20
    g = _random_scene(40, seed=1)
    viewmats, Ks = _two_cameras(W, H)
    bg = torch.tensor([0.2, 0.4, 0.6])
    rgb, alpha, depth = rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg)
    ref_rgb, ref_alpha, ref_depth = _dense_reference(g, viewmats, Ks, W, H, bg)
    assert alpha.max() > 0.9  # the scene is visible and overlapping
    torch.testing.assert_close(rgb, ref_rgb, atol=2e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=2e-5, rtol=0)
    torch.testing.assert_close(depth, ref_depth, atol=1e-4, rtol=0)


def test_row_bands_give_the_same_image_and_gradients(monkeypatch):
    W, H = 24, 20
    viewmats, Ks = _two_cameras(W, H)

    def render():
        g = {k: v.requires_grad_(True) for k, v in _random_scene(40, seed=2).items()}
        out = rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=W, height=H)
        (out[0].square().sum() + out[1].sum() + out[2].sum()).backward()
        return [x.detach() for x in out], [g[k].grad for k in sorted(g)]

    full, full_grads = render()
    monkeypatch.setattr(rz, "_MAX_PAIRS", 150)
    bands = rz._row_bands(torch.tensor([0, 5]), torch.tensor([10, 30]), torch.tensor([20, 20]), 40)
    assert len(bands) > 2 and bands[0][0] == 0 and bands[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    chunked, chunked_grads = render()  # many bands, each checkpointed
    for a, b in zip(full + full_grads, chunked + chunked_grads):
        torch.testing.assert_close(a, b)


def test_per_camera_gaussians_equal_separate_calls():
    W, H = 24, 20
    viewmats, Ks = _two_cameras(W, H)
    g0, g1 = _random_scene(30, seed=3), _random_scene(30, seed=4)
    g1["opacities"] = g0["opacities"]  # opacities stay shared: mix shared and per-camera inputs
    batched = {k: torch.stack([g0[k], g1[k]]) if k != "opacities" else g0[k] for k in g0}
    out = rasterize_gaussians(**batched, viewmats=viewmats, Ks=Ks, width=W, height=H)
    for c, g in enumerate((g0, g1)):
        single = rasterize_gaussians(**g, viewmats=viewmats[c : c + 1], Ks=Ks[c : c + 1], width=W, height=H)
        for a, b in zip(out, single):
            torch.testing.assert_close(a[c : c + 1], b)


def test_gaussians_behind_camera_contribute_nothing():
    viewmat, K = _camera()
    visible = _gaussians([0.0, 0.0, 2.0], 0.02, 0.8, [1.0, 1.0, 1.0])
    both = _gaussians([[0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.005]], [0.02, 0.5, 0.5], [0.8, 1.0, 1.0],
                      [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    a = rasterize_gaussians(**visible, viewmats=viewmat, Ks=K, width=33, height=33)
    b = rasterize_gaussians(**both, viewmats=viewmat, Ks=K, width=33, height=33, near=0.01)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    behind = _gaussians([0.0, 0.0, -1.0], 0.5, 1.0, [1.0, 0.0, 0.0])
    rgb, alpha, depth = rasterize_gaussians(**behind, viewmats=viewmat, Ks=K, width=33, height=33)
    assert alpha.abs().max() == 0 and rgb.abs().max() == 0 and depth.abs().max() == 0


def test_gradients_finite_and_nonzero_for_every_input():
    W, H = 24, 20
    g = {k: v.requires_grad_(True) for k, v in _random_scene(30, seed=5).items()}
    viewmats, Ks = _two_cameras(W, H)
    viewmats.requires_grad_(True)
    rgb, alpha, depth = rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=W, height=H)
    (rgb.square().sum() + alpha.sum() + depth.sum()).backward()
    for name, x in [*g.items(), ("viewmats", viewmats)]:
        assert torch.isfinite(x.grad).all(), name
        assert x.grad.abs().sum() > 0, name


def test_gradcheck_double_two_gaussians():
    viewmat = torch.eye(4, dtype=torch.float64)[None]
    K = torch.tensor([[[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    means = torch.tensor([[0.05, -0.03, 2.0], [-0.1, 0.06, 2.5]], dtype=torch.float64)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.7, -0.3, 0.2, 0.1]], dtype=torch.float64)
    scales = torch.tensor([[0.70, 0.55, 0.60], [0.80, 0.65, 0.9]], dtype=torch.float64)
    opac = torch.tensor([0.6, 0.8], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.7, 0.3]], dtype=torch.float64)
    inputs = [x.clone().requires_grad_(True) for x in (means, quats, scales, opac, colors)]

    def f(m, q, s, o, c):
        rgb, alpha, depth = rasterize_gaussians(m, q, s, o, c, viewmat, K, 8, 8,
                                                background=torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64))
        return rgb, alpha, depth

    out = f(*inputs)
    assert out[1].min() > 1 / 255  # every pixel is covered, so every pixel has a gradient
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_input_errors():
    viewmat, K = _camera()
    g = _gaussians([0.0, 0.0, 2.0], 0.02, 0.8, [1.0, 1.0, 1.0])
    with pytest.raises(PoseGenInputError, match="colors"):
        rasterize_gaussians(**{**g, "colors": torch.ones(2, 3)}, viewmats=viewmat, Ks=K, width=8, height=8)
    with pytest.raises(PoseGenInputError, match="Ks"):
        rasterize_gaussians(**g, viewmats=viewmat, Ks=K[0], width=8, height=8)
    with pytest.raises(PoseGenInputError, match="backend"):
        rasterize_gaussians(**g, viewmats=viewmat, Ks=K, width=8, height=8, backend="cuda")


def test_auto_backend_is_torch_on_cpu():
    viewmat, K = _camera()
    g = _gaussians([0.0, 0.0, 2.0], 0.02, 0.8, [1.0, 1.0, 1.0])
    a = rasterize_gaussians(**g, viewmats=viewmat, Ks=K, width=33, height=33, backend="auto")
    b = rasterize_gaussians(**g, viewmats=viewmat, Ks=K, width=33, height=33, backend="torch")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_gsplat_path_plumbing_with_a_stand_in(monkeypatch):
    """The gsplat backend cannot run without CUDA; check its call pattern against a stand-in with
    gsplat 1.4's shape contract (shared Gaussians (N, ...), colours (N, D) or (C, N, D), "RGB+ED")."""
    import sys
    import types

    calls = []

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=0.01,
                      packed=True, backgrounds=None, render_mode="RGB"):
        N, C = means.shape[0], viewmats.shape[0]
        assert means.shape == (N, 3) and quats.shape == (N, 4) and scales.shape == (N, 3)
        assert opacities.shape == (N,) and colors.shape in ((N, 3), (C, N, 3)) and backgrounds.shape == (C, 3)
        assert render_mode == "RGB+ED"
        calls.append(C)
        rgb, alpha, depth = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, width,
                                                height, background=backgrounds[0], backend="torch", near=near_plane)
        return torch.cat([rgb, depth], -1), alpha, {}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    W, H = 24, 20
    viewmats, Ks = _two_cameras(W, H)
    g0, g1 = _random_scene(30, seed=6), _random_scene(30, seed=7)
    bg = torch.tensor([0.3, 0.3, 0.3])
    shared = rasterize_gaussians(**g0, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg, backend="gsplat")
    assert calls == [2]  # one batched call for shared Gaussians
    ref = rasterize_gaussians(**g0, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg, backend="torch")
    for a, b in zip(shared, ref):
        torch.testing.assert_close(a, b)
    per_cam = {k: torch.stack([g0[k], g1[k]]) for k in g0}
    calls.clear()
    out = rasterize_gaussians(**per_cam, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg, backend="gsplat")
    assert calls == [1, 1]  # one call per camera for per-camera Gaussians
    ref = rasterize_gaussians(**per_cam, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg, backend="torch")
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
