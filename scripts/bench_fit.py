"""Measure ``ns-posegen-fit``'s fitting on the default capture, whose true SMPL parameters are known.

For 1, 3 and 6 of its cameras (cam00; cam00, cam02, cam04; all six) and each keypoint source:

- ``exact+2px``: the true body's COCO-17 keypoints (:class:`posegen_ns.fit.landmarks.BodyLandmarks`) projected
  with the true cameras, plus Gaussian noise of ``--noise-px`` (2) pixels per coordinate, confidence 1;
- ``blazepose``: BlazePose's COCO-17 keypoints on the capture's own images (a real detector nobody here trained),
  when its environment is available (``--blazepose-python`` or ``$POSEGEN_BLAZEPOSE_PYTHON``; otherwise skipped
  and said so);

it fits the SMPL parameters (:func:`posegen_ns.fit.solver.fit_keypoints`, default settings; started from the
default critic's prediction and, separately, from the rest pose: ``--inits``) and prints, against the true
parameters, the fitted H36M-17 joints' MPJPE (root-relative at the pelvis), PA-MPJPE and world-frame error (no
alignment), all in mm, and the reprojection residual (px), with the fit's time. The true betas are zeros; the fitted
betas are free. Results also go to ``--output`` (JSON).

    .venv/bin/python scripts/bench_fit.py --output outputs/bench_fit.json --keypoints-dir outputs/fit_keypoints
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from posegen_ns.fit.solver import FitConfig


@dataclass
class BenchFitConfig:
    """Fit the default capture from its own images / exact keypoints and compare with the true parameters."""

    output: Path = Path("outputs/bench_fit.json")
    """Where the results go (JSON)."""
    capture: Optional[Path] = None
    """Capture with true parameters (default: the default capture, built on first use)."""
    views: tuple[int, ...] = (1, 3, 6)
    """Numbers of cameras to fit with (1: cam00; 3: every second camera; 6: all)."""
    sources: tuple[str, ...] = ("exact+2px", "blazepose")
    """Keypoint sources: 'exact+2px' and / or 'blazepose'."""
    inits: tuple[str, ...] = ("critic", "rest")
    """Starting points: 'critic' (the default critic's prediction) and / or 'rest'."""
    noise_px: float = 2.0
    """Standard deviation (pixels) of the noise added to the exact keypoints."""
    blazepose_python: Optional[Path] = None
    """BlazePose environment's Python (default $POSEGEN_BLAZEPOSE_PYTHON)."""
    keypoints_dir: Optional[Path] = None
    """Also write the keypoints used (all frames and cameras, ns-posegen-fit's .npz format) to this folder:
    ``exact+2px.npz``, ``blazepose.npz`` (inputs for ``ns-posegen-fit --keypoints``)."""
    blazepose_keypoints: Optional[Path] = None
    """Read BlazePose's keypoints from this .npz (written by an earlier run with --keypoints-dir) instead of
    running the detector again."""
    max_frames: Optional[int] = None
    """Fit only the first N frames (a quick run)."""
    seed: int = 0
    """Noise seed."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Settings of the fit (default: ns-posegen-fit's)."""


def _camera_subset(num_cameras: int, n: int) -> list[int]:
    if n >= num_cameras:
        return list(range(num_cameras))
    step = num_cameras // n
    return [i * step for i in range(n)]


def main(cfg: BenchFitConfig) -> dict:
    from posegen_ns.body import load_body_model
    from posegen_ns.cli import jsonable
    from posegen_ns.critic.loading import CriticConfig
    from posegen_ns.data.capture import read_capture
    from posegen_ns.data.default_capture import default_capture_dir
    from posegen_ns.errors import PoseGenInputError
    from posegen_ns.fit.detect import detect_blazepose
    from posegen_ns.fit.initialise import critic_guess, load_initialising_critic
    from posegen_ns.fit.keypoints import Keypoints, read_keypoints
    from posegen_ns.fit.landmarks import BodyLandmarks
    from posegen_ns.fit.objective import project
    from posegen_ns.fit.solver import fit_keypoints
    from posegen_ns.metrics import mpjpe, pa_mpjpe

    cap = read_capture(cfg.capture or default_capture_dir())
    if cfg.max_frames is not None:
        cap = cap.select(list(range(min(cfg.max_frames, cap.num_frames))))
    T, C = cap.num_frames, cap.num_cameras
    body = load_body_model(cap.body)
    with torch.no_grad():
        truth = body(cap.body_pose, cap.global_orient, cap.betas.expand(T, -1), cap.transl)
        marks = BodyLandmarks(body, "coco17", torch.float64)
        X = marks.from_axis_angle(cap.global_orient.double(), cap.body_pose.double(), cap.betas.double(), cap.transl.double())
        uv, _ = project(X, cap.K.double(), cap.R.double(), cap.t.double())
    g = torch.Generator().manual_seed(cfg.seed)
    noisy = uv + cfg.noise_px * torch.randn(uv.shape, generator=g, dtype=uv.dtype)
    sources: dict[str, Keypoints] = {}
    notes: list[str] = []
    if "exact+2px" in cfg.sources:
        sources["exact+2px"] = Keypoints(torch.cat([noisy, torch.ones_like(noisy[..., :1])], -1).float(), "coco17", "exact+noise")
    if "blazepose" in cfg.sources:
        try:
            t0 = time.perf_counter()
            if cfg.blazepose_keypoints is not None:
                kp = read_keypoints(cfg.blazepose_keypoints, T, cap.camera_names)
            else:
                kp = detect_blazepose(cap.images, python=cfg.blazepose_python)
            found = float((kp.confidence.amax(-1) > 0).float().mean())
            err = (kp.xy.double() - uv).norm(dim=-1)
            w = kp.confidence.double()
            notes.append(f"BlazePose: {time.perf_counter() - t0:.1f} s for {T * C} images; person found in {found:.1%}; "
                         f"confidence-weighted mean distance to the true COCO-17 projections {float((w * err).sum() / w.sum()):.2f} px")
            sources["blazepose"] = kp
        except PoseGenInputError as exc:
            notes.append(f"BlazePose not measured: {exc}")
    for note in notes:
        print(note)
    if cfg.keypoints_dir is not None:
        from posegen_ns.atomic_io import save_npz

        for name, kp in sources.items():
            save_npz(Path(cfg.keypoints_dir) / f"{name}.npz", {"keypoints": kp.points.numpy(), "joint_set": kp.joint_set})

    guess = None
    if "critic" in cfg.inits:
        critic = load_initialising_critic(CriticConfig(), cap.body)
    rows = []
    for source, kp in sources.items():
        for n in cfg.views:
            cams = _camera_subset(C, n)
            sub = Keypoints(kp.points[:, cams], kp.joint_set, kp.source)
            for init in cfg.inits:
                guess = critic_guess(critic, cap.images[:, cams], sub, cap.R[cams], source="critic 'default'") if init == "critic" else None
                t0 = time.perf_counter()
                res = fit_keypoints(body, sub, cap.K[cams], cap.R[cams], cap.t[cams], cfg.fit, guess=guess,
                                    clip_names=cap.clip_names, frame_ids=cap.frame_ids)
                seconds = time.perf_counter() - t0
                f = res.frames
                with torch.no_grad():
                    fitted = body(res.body_pose, res.global_orient, res.betas.expand(len(f), -1), res.transl).joints_h36m
                gt = truth.joints_h36m[f]
                row = {
                    "source": source, "views": n, "cameras": [cap.camera_names[c] for c in cams], "init": init,
                    "fitted_frames": len(f), "frames": T,
                    "mpjpe_mm": round(float(mpjpe(fitted, gt).mean()) * 1000, 1),
                    "pa_mpjpe_mm": round(float(pa_mpjpe(fitted, gt).mean()) * 1000, 1),
                    "world_error_mm": round(float((fitted - gt).norm(dim=-1).mean()) * 1000, 1),
                    "residual_px": round(float(res.residual_px.mean()), 2),
                    "betas_abs_mean": round(float(res.betas.abs().mean()), 3),
                    "seconds": round(seconds, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'source':<10} {'views':>5} {'init':<7} {'MPJPE':>7} {'PA-MPJPE':>9} {'world':>7} {'resid px':>8} {'s':>6}")
    for r in rows:
        print(f"{r['source']:<10} {r['views']:>5} {r['init']:<7} {r['mpjpe_mm']:>7.1f} {r['pa_mpjpe_mm']:>9.1f} "
              f"{r['world_error_mm']:>7.1f} {r['residual_px']:>8.2f} {r['seconds']:>6.1f}")
    report = {
        "capture": str(cap.root), "frames": T, "fit": jsonable(cfg.fit), "noise_px": cfg.noise_px, "rows": rows, "notes": notes,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from posegen_ns.atomic_io import write_json

    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    import tyro

    main(tyro.cli(BenchFitConfig))

