"""Real human motion: BVH (three rigs, by joint names) and AMASS ``.npz`` -> body-model poses.

Public API:
- :class:`Motion`: per-frame ``global_orient (T, 3)``, ``body_pose (T, 69)``, ``transl (T, 3)``
  (axis-angle radians, metres, y-up world), ``betas``, ``fps``, the source file and, for BVH, the
  per-frame fit error.
- :func:`load_motion` (``.bvh`` or ``.npz``), :func:`load_motion_dir`.
- :func:`shipped_clips_dir`: six CMU clips inside the package (the embedded default motion), with
  ``manifest.csv`` and ``LICENSE-CMU.txt``; :func:`clip_category` / :func:`clip_info` look clips up.

BVH files are read by :mod:`~posegen_ns.mocap.bvh`, mapped to SMPL-24 joints and metres by
:mod:`~posegen_ns.mocap.rigs`, and retargeted onto the body by :mod:`~posegen_ns.mocap.fit`
(batched IK over joints only). Fits are cached under ``cache_dir()/mocap_fits`` keyed by the file's
bytes, the body's joint model, the frame selection and the fit options.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import read_cache, save_npz
from posegen_ns.body.model import BodyModel
from posegen_ns.errors import PoseGenInputError, require_folder
from posegen_ns.mocap.amass import read_amass_npz, write_amass_npz
from posegen_ns.mocap.bvh import BVHClip, forward_kinematics, frame0_looks_like_tpose, frame_indices, read_bvh
from posegen_ns.mocap.fit import FitConfig, FitResult, JointsOnlyBody, fit_joints
from posegen_ns.mocap.rigs import RIGS, Rig, check_left_right, detect_rig, detect_unit_scale

__all__ = [
    "Motion", "load_motion", "load_motion_dir", "shipped_clips_dir", "clip_category", "clip_info", "manifest_for",
    "bvh_targets", "FitConfig", "FitResult", "fit_joints", "read_bvh", "forward_kinematics", "RIGS", "Rig",
    "detect_rig", "read_amass_npz", "write_amass_npz",
]

logger = logging.getLogger(__name__)



@lru_cache(maxsize=1)
def _code_key() -> str:
    """Hash of this package's sources, so cached fits follow code changes."""
    h = hashlib.sha1()
    for name in ("__init__.py", "bvh.py", "rigs.py", "fit.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Motion:
    """A motion clip in body-model parameters. T frames; y-up world, metres, axis-angle radians."""

    name: str
    global_orient: Tensor  # (T, 3)
    body_pose: Tensor  # (T, 69)
    transl: Tensor  # (T, 3)
    betas: Tensor | None  # (num_betas,) or None (the body's own shape)
    fps: float  # frames per second of the kept frames (stride included)
    source: Path
    fit_error_mm: Tensor | None  # (T,) mean per-joint fit error per frame (BVH only), mm
    meta: dict = field(default_factory=dict)
    """Extra facts: for BVH ``rig``, ``unit``, ``scale``, ``skipped_tpose_frame``, ``frame_indices``,
    per-joint ``joint_error_mm`` (mean over frames), ``max_error_mm``, ``fit_seconds``."""

    def __len__(self) -> int:
        return int(self.body_pose.shape[0])


def shipped_clips_dir() -> Path:
    """Folder of the CMU clips shipped inside the package (BVH, ``manifest.csv``, ``LICENSE-CMU.txt``)."""
    return Path(__file__).resolve().parent / "clips"


@lru_cache(maxsize=8)
def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {Path(r["file"]).name: r for r in rows if r.get("file")}


def _manifests_for(path: Path) -> list[Path]:
    """Manifests that may describe ``path``: the shipped one and ``manifest.csv`` beside or above it."""
    out = [shipped_clips_dir() / "manifest.csv"]
    for d in (path.parent, path.parent.parent):
        m = d / "manifest.csv"
        if m.is_file() and m not in out:
            out.append(m)
    return out


def manifest_for(poses: str | Path) -> Path | None:
    """The ``manifest.csv`` describing the motion files of ``poses`` (a folder or one file): in that folder
    (the file's folder) or the one above it; None if there is none (the shipped manifest is always searched
    by :func:`clip_info`)."""
    poses = Path(poses).expanduser()
    base = poses.parent if poses.is_file() else poses
    for d in (base, base.parent):
        if (d / "manifest.csv").is_file():
            return d / "manifest.csv"
    return None


def clip_info(name: str | Path, manifest: str | Path | None = None) -> dict[str, str] | None:
    """The manifest row of a clip, or None.

    Args:
        name: a file name, path, stem (``"07_05_slow_walk"``) or CMU id (``"07_05"``).
        manifest: an extra ``manifest.csv`` (with ``file`` and ``category`` columns) searched after
            the shipped one.
    """
    key = Path(str(name)).name
    sources = [shipped_clips_dir() / "manifest.csv"] + ([Path(manifest)] if manifest else [])
    for m in sources:
        if not m.is_file():
            continue
        rows = _read_manifest(m)
        for fname, row in rows.items():
            if key in (fname, Path(fname).stem, row.get("subject_trial", "")):
                return row
    return None


def clip_category(name: str | Path, manifest: str | Path | None = None) -> str:
    """Category of a clip from the manifest (e.g. ``"walk_run"``, ``"jump"``, ``"sports"``,
    ``"dance"``), or ``"unknown"``.

    Categories of the CMU data: walk_run, sit_getup, bend_pickup, jump, dance, martial_arts_boxing,
    sports, acrobatics, floor_lying_crawl_roll, climb_playground, stretch_exercise.
    """
    row = clip_info(name, manifest)
    return row["category"] if row and row.get("category") else "unknown"


def _tpose_frame0(clip: BVHClip) -> bool:
    for m in _manifests_for(clip.path):
        row = _read_manifest(m).get(clip.path.name)
        if row is not None and row.get("frame0_is_tpose") in ("yes", "no"):
            return row["frame0_is_tpose"] == "yes"
    return frame0_looks_like_tpose(clip.skeleton, clip.motion[:2])


def bvh_targets(clip: BVHClip, rig: Rig | None = None) -> tuple[np.ndarray, Rig, float, str]:
    """Mapped joint positions of a BVH clip in metres.

    Returns:
        ``(targets (T, K, 3), rig, metres_per_unit, unit_name)``, joints in ``rig.joint_map`` order.

    Raises:
        PoseGenInputError: unknown rig; left/right look swapped.
    """
    rig = rig or detect_rig(clip.skeleton, clip.path)
    scale, unit = detect_unit_scale(clip.skeleton, rig)
    cols = [clip.skeleton.index(b) for b in rig.bvh_names]
    targets = forward_kinematics(clip.skeleton, clip.motion)[:, cols] * scale  # (T, K, 3)
    check_left_right(targets, rig, clip.path)
    return targets, rig, scale, unit


def _body_key(body: BodyModel) -> str:
    jb = JointsOnlyBody(body, dtype=torch.float64)
    h = hashlib.sha1()
    for t in (jb.j_template, jb.j_dirs, jb.parents.to(torch.float64)):
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:16]


def _fit_cache_path(path: Path, body: BodyModel, stride: int, max_frames: int | None, cfg: FitConfig,
                    spread: bool = False) -> Path:
    from posegen_ns.body.smpl_files import cache_dir

    h = hashlib.sha1(path.read_bytes())
    key = (_code_key(), _body_key(body), stride, max_frames, dataclasses.astuple(cfg)) + (("spread",) if spread else ())
    h.update(repr(key).encode())
    return cache_dir() / "mocap_fits" / f"{path.stem}_{h.hexdigest()[:20]}.npz"


def _load_bvh_motion(path: Path, body: BodyModel, stride: int, max_frames: int | None, cfg: FitConfig,
                     cache: bool, spread: bool = False) -> Motion:
    cache_path = _fit_cache_path(path, body, stride, max_frames, cfg, spread) if cache else None

    def read(p: Path) -> Motion:
        with np.load(p, allow_pickle=False) as d:
            meta = {k[5:]: d[k].tolist() for k in d.files if k.startswith("meta_")}
            t = lambda k: torch.as_tensor(d[k])  # noqa: E731
            return Motion(
                name=path.stem, global_orient=t("global_orient"), body_pose=t("body_pose"), transl=t("transl"),
                betas=t("betas") if "betas" in d.files else None, fps=float(d["fps"]), source=path,
                fit_error_mm=t("fit_error_mm"), meta=meta,
            )

    cached = read_cache(cache_path, read, "mocap fit", say=logger.warning) if cache_path is not None else None
    if cached is not None:  # a damaged file is refitted (read_cache names it)
        return cached
    clip = read_bvh(path)  # all frames (cheap); frames are selected below
    skip = 1 if _tpose_frame0(clip) else 0
    keep = frame_indices(clip.motion.shape[0], skip, stride, max_frames, spread)
    if keep.size == 0:
        raise PoseGenInputError(f"BVH file {path}: no frames left after skipping {skip}, stride {stride}, max_frames {max_frames}.")
    spacing = float(np.diff(keep).mean()) if keep.size > 1 else float(stride)
    clip = dataclasses.replace(clip, motion=clip.motion[keep], frame_indices=keep, frame_time=clip.frame_time * spacing)
    targets, rig, unit_scale, unit = bvh_targets(clip)
    result = fit_joints(body, targets, rig.smpl_indices(), rig.weights(), cfg)
    meta = {
        "rig": rig.name, "unit": unit, "metres_per_unit": unit_scale, "scale": result.scale,
        "skipped_tpose_frame": bool(skip), "frame_indices": keep.tolist(),
        "joints": list(rig.joint_map), "joint_error_mm": result.joint_error_mm.mean(0).tolist(),
        "mean_error_mm": result.mean_error_mm, "max_error_mm": result.max_error_mm,
        "segment_error_deg": result.segment_error_deg.mean(0).tolist(), "segments": result.segments,
        "fit_seconds": result.seconds,
    }
    motion = Motion(
        name=path.stem, global_orient=result.global_orient, body_pose=result.body_pose, transl=result.transl,
        betas=result.betas, fps=clip.fps, source=path, fit_error_mm=result.frame_error_mm, meta=meta,
    )
    if cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {
                "global_orient": motion.global_orient.numpy(), "body_pose": motion.body_pose.numpy(),
                "transl": motion.transl.numpy(), "fps": np.float64(motion.fps),
                "fit_error_mm": motion.fit_error_mm.numpy(),
                **({"betas": motion.betas.numpy()} if motion.betas is not None else {}),
                **{f"meta_{k}": np.asarray(v) for k, v in meta.items()},
            }
            save_npz(cache_path, arrays)
        except OSError as exc:
            logger.warning("could not write mocap fit cache %s: %s", cache_path, exc)
    return motion


def load_motion(
    path: str | Path,
    body: BodyModel,
    stride: int = 1,
    max_frames: int | None = None,
    fit: FitConfig | None = None,
    cache: bool = True,
    spread: bool = False,
) -> Motion:
    """Load a motion file as body-model parameters for ``body``.

    ``.bvh``: read, skip a synthetic T-pose frame 0 (from a ``manifest.csv`` beside/above the file or
    the shipped one, else detected), keep every ``stride``-th frame (at most ``max_frames``), map the
    rig's joints to SMPL-24 in metres, and fit ``body`` to them (:func:`fit_joints`; ``fit`` sets the
    options). ``.npz``: AMASS-style parameters (:func:`read_amass_npz`), no fitting.

    Args:
        path: a ``.bvh`` or ``.npz`` file.
        body: the :class:`BodyModel` to pose (any source: tiny, open, SMPL).
        stride: keep every ``stride``-th frame (>= 1).
        max_frames: keep at most this many frames.
        fit: fitting options (BVH only).
        spread: take those ``max_frames`` evenly spaced over the whole motion instead of the first ones
            (bounded cost for any clip length, every part of the motion represented).
        cache: reuse / store BVH fits under ``cache_dir()/mocap_fits``.

    Raises:
        PoseGenInputError: unsupported extension, missing or malformed file (file and line named),
            unknown rig (joint names found and supported rigs listed), mirrored left/right.
    """
    path = Path(path).expanduser()
    if stride < 1:
        raise PoseGenInputError(f"stride must be >= 1 (got {stride}) when loading {path}.")
    if not path.is_file():
        raise PoseGenInputError(f"motion file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".bvh":
        return _load_bvh_motion(path, body, stride, max_frames, fit or FitConfig(), cache, spread)
    if suffix == ".npz":
        d = read_amass_npz(path, body, stride=stride, max_frames=max_frames, spread=spread)
        return Motion(
            name=path.stem, global_orient=d["global_orient"], body_pose=d["body_pose"], transl=d["transl"],
            betas=d["betas"], fps=d["fps"], source=path, fit_error_mm=None,
            meta={"fps_in_file": d["fps_in_file"]},
        )
    raise PoseGenInputError(f"motion file {path}: unsupported extension {path.suffix!r}; expected .bvh or .npz (AMASS).")


def load_motion_dir(
    directory: str | Path,
    body: BodyModel,
    stride: int = 1,
    max_frames: int | None = None,
    fit: FitConfig | None = None,
    cache: bool = True,
) -> list[Motion]:
    """Load every ``.bvh`` and ``.npz`` in ``directory`` (sorted by name; not recursive).

    Raises:
        PoseGenInputError: the folder is missing or holds no motion file, or any file fails to load.
    """
    directory = require_folder(directory, "motion folder", "pass a folder of .bvh (or AMASS .npz) files")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".bvh", ".npz") and p.is_file())
    if not files:
        raise PoseGenInputError(f"motion folder {directory} holds no .bvh or .npz files.")
    return [load_motion(p, body, stride=stride, max_frames=max_frames, fit=fit, cache=cache) for p in files]
