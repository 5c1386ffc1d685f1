"""Benchmark labelled-image throughput of the human field: render B (pose, camera) pairs per call and
project their joints (the labels the exporter writes), at several resolutions and batch sizes.

    python scripts/bench_render.py [--device cpu|cuda] [--json PATH] [--load-config RUN/config.yml]
                                   [--body open] [--num-gaussians N] [--budget-seconds 300]

Without ``--load-config`` it builds a :class:`~posegen_ns.field.human_field.HumanGaussians` field
(``--num-gaussians`` Gaussians on the ``--body`` surface, untrained: speed does not depend on the
colours) and renders random real-mocap poses (the pose bank of the shipped clips) from random
cameras around the pelvis (azimuth in [-pi, pi], elevation in [-0.25, 0.6] rad, distance 2.4-3.6 m,
focal length framing a 1.75 m person at 3 m to 75 % of the image height, as the pipeline's
sampler). With ``--load-config`` it renders the trained run's field and pose bank instead.

Each measurement is one warm-up call, then timed calls (at least one, up to ``--repeats`` or
``--min-seconds``), each: draw poses and cameras, pose the Gaussians (LBS), rasterise (gsplat on
CUDA, the torch rasteriser on CPU), project the SMPL-24 and H36M-17 joints, and synchronise.
Reported: images per second, and on CUDA the peak allocated GPU memory of that call
(``torch.cuda.max_memory_allocated``). Batch sizes double from 1 to ``--max-batch`` (256) and stop
at a resolution once a call takes more than ``--max-call-seconds`` or ``--budget-seconds`` are spent
(CPU) or memory runs out (CUDA). Defaults: CUDA 256^2 and 512^2; CPU 64^2, 128^2, 256^2, 512^2.

``--json PATH`` writes ``{"device": ..., "results": [{"resolution": ..., "batch": ...,
"images_per_second": ..., "peak_memory_mb": ...}]}`` (``peak_memory_mb`` is null on CPU).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Literal, Optional

# Passive OpenMP waiting (unless set): on a shared, busy CPU, spinning worker threads made the torch
# rasteriser ~80x slower with 2 threads (measured). OpenMP reads it when torch loads, which the
# package's .pth hook does at interpreter start, so re-run this script with it set.
# OMP_WAIT_POLICY=ACTIVE overrides.
if "OMP_WAIT_POLICY" not in os.environ and __name__ == "__main__":
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import tyro  # noqa: E402

from posegen_ns.atomic_io import check_writable, write_json  # noqa: E402
from posegen_ns.geometry import orbit_extrinsics, project_points  # noqa: E402

ELEVATION = (-0.25, 0.6)
DISTANCE = (2.4, 3.6)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


class Scene:
    """What one benchmark call needs: a render function, a pose bank and the rest pelvis."""

    def __init__(self, render: Callable, body_pose: torch.Tensor, global_orient: torch.Tensor, pelvis: torch.Tensor,
                 description: str):
        self.render = render  # (body_pose, global_orient, K, R, t, W, H) -> FieldRender
        self.body_pose = body_pose  # (P, 69) on the device
        self.global_orient = global_orient  # (P, 3)
        self.pelvis = pelvis  # (3,) rest pelvis, metres
        self.description = description


def build_scene(args: BenchConfig, device: torch.device) -> Scene:
    """The field, pose bank and render function (see the module docstring)."""
    if args.load_config:
        from posegen_ns.cli import load_run

        pipeline = load_run(args.load_config)
        pipeline.to(device).eval()
        model = pipeline.model
        body = model.body
        betas = model.betas[None]

        def render(pose, orient, K, R, t, W, H):
            B = pose.shape[0]
            return model.render(pose, orient, torch.zeros(B, 3, device=device), K, R, t, W, H,
                                betas=betas.expand(B, -1))

        pose, orient = pipeline.prior_body_pose, pipeline.prior_global_orient
        what = f"trained field of {args.load_config} ({model.field.num_gaussians} Gaussians)"
    else:
        from posegen_ns.body import load_body_model
        from posegen_ns.data.poses import load_pose_bank
        from posegen_ns.field.human_field import HumanGaussians

        body = load_body_model(args.body).to(device)
        field = HumanGaussians(body, num_gaussians=args.num_gaussians).to(device).eval()
        betas = torch.zeros(1, body.num_betas, device=device)

        def render(pose, orient, K, R, t, W, H):
            B = pose.shape[0]
            return field.render(pose, orient, betas.expand(B, -1), torch.zeros(B, 3, device=device), K, R, t, W, H)

        bank = load_pose_bank(args.body, stride=args.pose_stride)
        pose, orient = bank.body_pose.float().to(device), bank.global_orient.float().to(device)
        what = f"HumanGaussians on the {args.body} body, {args.num_gaussians} Gaussians (untrained)"
    zero = torch.zeros(1, 69, device=device)
    rest = body(zero, torch.zeros(1, 3, device=device), betas.to(device), torch.zeros(1, 3, device=device))
    return Scene(render, pose, orient, rest.rest_joints[0, 0], f"{what}; pose bank of {pose.shape[0]} mocap poses")


def labelled_batch(scene: Scene, batch: int, size: int, gen: torch.Generator, device: torch.device):
    """Render ``batch`` random (pose, camera) pairs at ``size``^2 and project their joints."""
    idx = torch.randint(scene.body_pose.shape[0], (batch,), generator=gen)
    pose, orient = scene.body_pose[idx.to(device)], scene.global_orient[idx.to(device)]
    cams = [_uniform(batch, -math.pi, math.pi, gen), _uniform(batch, *ELEVATION, gen), _uniform(batch, *DISTANCE, gen)]
    az, el, dist = (c.to(device) for c in cams)
    R, t = orbit_extrinsics(az, el, dist, scene.pelvis.expand(batch, 3))
    focal = 0.75 * size * 3.0 / 1.75
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]], device=device).expand(batch, 3, 3)
    out = scene.render(pose, orient, K, R, t, size, size)
    j2d, _ = project_points(out.body.joints, K, R, t)
    h2d, _ = project_points(out.body.joints_h36m, K, R, t)
    return out.rgb, out.alpha, j2d, h2d


def measure(scene: Scene, size: int, batch: int, args: BenchConfig, device: torch.device) -> tuple[float, float | None, float]:
    """``(images per second, peak MB or None, seconds per call)`` for one (resolution, batch)."""
    gen = torch.Generator().manual_seed(0)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        labelled_batch(scene, batch, size, gen, device)  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        calls, started = 0, time.perf_counter()
        while True:
            labelled_batch(scene, batch, size, gen, device)
            sync()
            calls += 1
            elapsed = time.perf_counter() - started
            if calls >= args.repeats or elapsed >= args.min_seconds:
                break
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return calls * batch / elapsed, peak, elapsed / calls


@dataclass
class BenchConfig:
    """Labelled images per second of the field's renderer (module docstring)."""

    device: Literal["cpu", "cuda"] = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    json: Optional[Path] = None
    """Write the results here."""
    load_config: Optional[Path] = None
    """A trained run's config.yml: benchmark its field."""
    body: str = "open"
    """Body of the untrained field: open, tiny or an SMPL file."""
    num_gaussians: Optional[int] = None
    """Gaussians of the untrained field (default: the posegen-human model's num_gaussians)."""
    pose_stride: int = 4
    """Frame stride of the mocap pose bank."""
    resolutions: Optional[tuple[int, ...]] = None
    """Image sizes (square; default 64 128 256 512 on CPU, 256 512 on CUDA)."""
    max_batch: int = 256
    """Largest batch size (batches double from 1)."""
    repeats: int = 5
    """At most this many timed calls per case."""
    min_seconds: float = 1.0
    """Stop timing a case after this long."""
    max_call_seconds: Optional[float] = None
    """No larger batch at a resolution once a call takes longer (default: 3 on CPU, 30 on CUDA)."""
    budget_seconds: Optional[float] = None
    """Total time budget; remaining cases are skipped (default: 300 on CPU, 1800 on CUDA)."""
    threads: Optional[int] = None
    """Torch CPU threads."""


def main() -> None:
    args = tyro.cli(BenchConfig, description=__doc__.splitlines()[0])
    if args.json:
        check_writable(args.json, "--json")  # fail now, not after the benchmark
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_render.py --device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_gaussians is None:
        from posegen_ns.model import PoseGenHumanModelConfig

        args.num_gaussians = PoseGenHumanModelConfig.__dataclass_fields__["num_gaussians"].default
    cpu = args.device == "cpu"
    device = torch.device(args.device)
    resolutions = args.resolutions or ([64, 128, 256, 512] if cpu else [256, 512])
    max_call = args.max_call_seconds or (3.0 if cpu else 30.0)
    budget = args.budget_seconds or (300.0 if cpu else 1800.0)

    scene = build_scene(args, device)
    name = torch.cuda.get_device_name(device) if not cpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {args.device} ({name}); torch {torch.__version__}")
    print(f"field: {scene.description}")
    print(f"{'resolution':>10} {'batch':>6} {'images/s':>10} {'ms/call':>9} {'peak MB':>9}")
    results, started = [], time.perf_counter()
    batches = [2**k for k in range(int(math.log2(args.max_batch)) + 1)]
    for size in resolutions:
        for batch in batches:
            if time.perf_counter() - started > budget:
                print(f"{size:>9}² {batch:>6}  skipped: --budget-seconds {budget:.0f} spent")
                break
            try:
                ips, peak, per_call = measure(scene, size, batch, args, device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"{size:>9}² {batch:>6}  out of GPU memory")
                break
            results.append({"resolution": size, "batch": batch, "images_per_second": round(ips, 2),
                            "peak_memory_mb": None if peak is None else round(peak, 1)})
            peak_s = "-" if peak is None else f"{peak:.0f}"
            print(f"{size:>9}² {batch:>6} {ips:>10.1f} {1e3 * per_call:>9.1f} {peak_s:>9}", flush=True)
            if per_call > max_call:
                break
    if args.json:
        write_json(args.json, {"device": args.device, "results": results}, indent=1)  # atomic (posegen_ns.atomic_io)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
