"""Fit every BVH clip in a folder to a body model and print per-clip fit errors and times.

    python scripts/fit_mocap_report.py --body tiny --stride 4
    python scripts/fit_mocap_report.py --body open --folder /path/to/mocap/cmu --stride 2

Columns: rig and detected unit, frames fitted, the fitted scale (body metres per mocap metre), the
per-joint position error in mm (mean over frames and joints; max over frames and joints), the mean
angle between fitted and mocap segment directions (degrees; see ``posegen_ns.mocap.fit.SEGMENTS``),
and the wall time of the fit (no cache). Position errors include rig-vs-body proportion differences
(e.g. the cgspeed CMU skeleton's short trunk), the angles do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from posegen_ns.body import load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.mocap import FitConfig, clip_category, load_motion, shipped_clips_dir


@dataclass
class Args:
    body: str = "tiny"
    """Body model: "open", "tiny" or a path to SMPL-layout model files."""
    folder: Path | None = None
    """Folder of .bvh files (default: the clips shipped in posegen_ns/mocap/clips; the project's
    full CMU subset lives in the shared data folder, mocap/cmu)."""
    stride: int = 1
    """Keep every stride-th frame."""
    max_frames: int | None = None
    """Fit at most this many frames per clip."""
    size: str = "scale"
    """Per-clip size parameter: "scale" or "betas"."""
    threads: int = 2
    """torch threads outside the fit (the fit itself runs single-threaded)."""


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    folder = args.folder or shipped_clips_dir()
    t0 = time.perf_counter()
    body = load_body_model(args.body)
    print(f"body {args.body}: {body.num_vertices} vertices, {body.num_betas} betas (loaded in {time.perf_counter() - t0:.1f} s)")
    print(f"folder {folder}, stride {args.stride}, max_frames {args.max_frames}, size {args.size}\n")
    header = f"{'clip':44s} {'category':22s} {'rig':9s} {'unit':4s} {'frames':>6s} {'scale':>6s} {'mean mm':>8s} {'max mm':>7s} {'seg deg':>7s} {'time s':>7s} {'ms/frame':>8s}"
    print(header)
    print("-" * len(header))
    means, maxes, total_t, total_f = [], [], 0.0, 0
    for path in sorted(folder.glob("*.bvh")):
        try:
            t = time.perf_counter()
            m = load_motion(path, body, stride=args.stride, max_frames=args.max_frames, fit=FitConfig(size=args.size), cache=False)
            dt = time.perf_counter() - t
        except PoseGenInputError as exc:
            print(f"{path.name:44s} FAILED: {exc}")
            continue
        cat = clip_category(path.name, folder.parent / "manifest.csv")
        mm = m.meta
        print(f"{path.stem[:44]:44s} {cat[:22]:22s} {mm['rig']:9s} {mm['unit']:4s} {len(m):6d} {mm['scale']:6.3f} "
              f"{mm['mean_error_mm']:8.1f} {mm['max_error_mm']:7.1f} {np.mean(mm['segment_error_deg']):7.2f} {dt:7.2f} {1000 * dt / len(m):8.2f}")
        means.append(mm["mean_error_mm"])
        maxes.append(mm["max_error_mm"])
        total_t += dt
        total_f += len(m)
    if means:
        print("-" * len(header))
        print(f"{len(means)} clips, {total_f} frames in {total_t:.1f} s ({1000 * total_t / max(total_f, 1):.2f} ms/frame); "
              f"mean of clip means {np.mean(means):.1f} mm, median {np.median(means):.1f} mm, worst clip max {np.max(maxes):.1f} mm")


def entrypoint() -> None:
    main(tyro.cli(Args))


if __name__ == "__main__":
    entrypoint()
