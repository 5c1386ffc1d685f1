"""Build the shipped SMPL pose bank from the project's CMU mocap subset (all clips, open body).

    python scripts/build_pose_bank.py
    python scripts/build_pose_bank.py --mocap-dir /path/to/shared/data/mocap --output /tmp/bank.npz

Reads every ``cmu/*.bvh`` of the mocap folder (with its ``manifest.csv``: categories, and which
clips start with a synthetic T-pose frame, which is skipped), fits each clip to the open default body
with the package's reader (:func:`posegen_ns.mocap.load_motion`; fits are cached under
``cache_dir()/mocap_fits``), keeps about :data:`~posegen_ns.data.pose_bank.TARGET_FPS` poses per
second (every 4th frame at 120 fps, every 2nd at 60 fps; short windows of 14-20 frames, manifest
``truncated=yes``, are kept whole as they are the only samples of their motion), and writes one compressed ``.npz``
(layout: :mod:`posegen_ns.data.pose_bank`) atomically (:func:`posegen_ns.atomic_io.save_npz`: temporary name + ``os.replace``). Prints one
line per clip (frames kept, fit error, time) and the file's size. Every clip must be in exactly one
of the source / prior / eval sets (:mod:`posegen_ns.data.splits`).
"""

from __future__ import annotations

import csv
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from posegen_ns.atomic_io import save_npz
from posegen_ns.body import load_body_model
from posegen_ns.data.pose_bank import FORMAT_VERSION, TARGET_FPS, read_pose_bank_file, shipped_pose_bank_path
from posegen_ns.data.poses import body_id
from posegen_ns.data.splits import split_of
from posegen_ns.errors import PoseGenInputError
from posegen_ns.mocap import load_motion

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Args:
    mocap_dir: Path = REPO.parent / "shared" / "data" / "mocap"
    """Mocap folder holding ``manifest.csv`` and ``cmu/*.bvh``."""
    output: Path | None = None
    """Bank file to write (default: the shipped one, posegen_ns/mocap/pose_bank/cmu_pose_bank.npz)."""
    body: str = "open"
    """Body the clips are fitted to."""
    threads: int = 2
    """torch threads."""


def _manifest(mocap_dir: Path) -> dict[str, dict[str, str]]:
    path = mocap_dir / "manifest.csv"
    if not path.is_file():
        raise PoseGenInputError(f"mocap folder {mocap_dir} has no manifest.csv; pass --mocap-dir to the shared mocap folder.")
    with open(path, newline="", encoding="utf-8") as fh:
        return {Path(r["file"]).stem: r for r in csv.DictReader(fh) if r.get("file")}


def main(args: Args) -> Path:
    torch.set_num_threads(args.threads)
    out = args.output or shipped_pose_bank_path()
    rows = _manifest(args.mocap_dir)
    files = sorted((args.mocap_dir / "cmu").glob("*.bvh"))
    if not files:
        raise PoseGenInputError(f"no BVH files in {args.mocap_dir / 'cmu'}.")
    for f in files:
        split_of(f.stem)  # every clip must be in one set
        if f.stem not in rows:
            raise PoseGenInputError(f"{f} has no row in {args.mocap_dir / 'manifest.csv'}.")
    t_all = time.perf_counter()
    body = load_body_model(args.body)
    print(f"body {args.body} loaded in {time.perf_counter() - t_all:.1f} s; {len(files)} clips from {args.mocap_dir}")
    per_pose: dict[str, list[np.ndarray]] = {k: [] for k in ("global_orient", "body_pose", "transl", "fit_error_mm", "clip_index", "frame_ids")}
    names, cats, fps_l, strides, shas = [], [], [], [], []
    for ci, f in enumerate(files):
        row = rows[f.stem]
        fps = float(row["fps"])
        # short windows (manifest ``truncated=yes``, 14-20 frames) are kept whole: they are the only
        # samples of their motion (sitting, lying, a flip)
        stride = 1 if row.get("truncated") == "yes" else max(1, round(fps / TARGET_FPS))
        t = time.perf_counter()
        m = load_motion(f, body, stride=stride)
        dt = time.perf_counter() - t
        T = len(m)
        ids = np.asarray(m.meta.get("frame_indices", np.arange(T) * stride), dtype=np.int32)
        if row.get("frame0_is_tpose") == "yes" and ids.size and ids[0] == 0:
            raise PoseGenInputError(f"{f}: frame 0 is a T-pose by the manifest but was kept.")
        per_pose["global_orient"].append(m.global_orient.detach().numpy().reshape(T, 3))
        per_pose["body_pose"].append(m.body_pose.detach().numpy().reshape(T, 69))
        per_pose["transl"].append(m.transl.detach().numpy().reshape(T, 3))
        err = m.fit_error_mm.detach().numpy() if m.fit_error_mm is not None else np.full(T, np.nan)
        per_pose["fit_error_mm"].append(err.reshape(T))
        per_pose["clip_index"].append(np.full(T, ci))
        per_pose["frame_ids"].append(ids)
        names.append(f.stem)
        cats.append(row["category"])
        fps_l.append(fps)
        strides.append(stride)
        shas.append(hashlib.sha1(f.read_bytes()).hexdigest())
        print(f"{f.stem:50s} {row['category']:22s} {split_of(f.stem):6s} stride {stride}  {T:5d} poses  "
              f"fit {float(np.nanmean(err)):6.1f} mm  {dt:6.1f} s", flush=True)
    cat = {k: np.concatenate(v) for k, v in per_pose.items()}
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        "global_orient": cat["global_orient"].astype(np.float16),
        "body_pose": cat["body_pose"].astype(np.float16),
        "transl": cat["transl"].astype(np.float32),
        "fit_error_mm": cat["fit_error_mm"].astype(np.float16),
        "clip_index": cat["clip_index"].astype(np.int16),
        "frame_ids": cat["frame_ids"].astype(np.int32),
        "clip_names": np.array(names),
        "categories": np.array(cats),
        "clip_fps": np.array(fps_l, dtype=np.float32),
        "clip_stride": np.array(strides, dtype=np.int16),
        "clip_sha1": np.array(shas),
        "body": np.array(args.body),
        "body_id": np.array(body_id(body)),
    }
    rot_err = np.abs(arrays["body_pose"].astype(np.float32) - cat["body_pose"]).max()
    save_npz(out, arrays, compressed=True, check=read_pose_bank_file)  # validated before it replaces the old bank
    n = len(arrays["body_pose"])
    print(f"\nwrote {out}: {n} poses of {len(names)} clips, {out.stat().st_size / 1e6:.2f} MB "
          f"(float16 rounding of body_pose <= {rot_err:.4f} rad); total {time.perf_counter() - t_all:.1f} s")
    return out


def entrypoint() -> None:
    main(tyro.cli(Args))


if __name__ == "__main__":
    entrypoint()
