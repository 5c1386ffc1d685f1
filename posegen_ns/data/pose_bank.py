"""The shipped SMPL pose bank: all 35 CMU clips of the project's mocap subset, fitted to the open body.

Users get the broad pose prior (and the source and evaluation poses, :mod:`posegen_ns.data.splits`)
without the shared mocap folder and without fitting anything. The file
``posegen_ns/mocap/pose_bank/cmu_pose_bank.npz`` is written by ``scripts/build_pose_bank.py``
(atomic write); its arrays (``N`` poses, ``C`` clips):

- ``format_version`` ``()`` int: :data:`FORMAT_VERSION`.
- ``global_orient`` ``(N, 3)`` float16 and ``body_pose`` ``(N, 69)`` float16: SMPL axis-angle, radians,
  y-up world (the joint rotations carry over to any SMPL-layout body; only ``transl`` and the fit
  error depend on the open body's proportions).
- ``transl`` ``(N, 3)`` float32: root translation in metres as fitted.
- ``fit_error_mm`` ``(N,)`` float16: mean per-joint distance of the fitted body to the mocap joints.
- ``clip_index`` ``(N,)`` int16 into the per-clip arrays; ``frame_ids`` ``(N,)`` int32: frame in the
  original BVH (before subsampling; a synthetic T-pose frame 0 is never kept).
- per clip: ``clip_names`` ``(C,)`` str (file stems), ``categories`` ``(C,)`` str (manifest category),
  ``clip_fps`` ``(C,)`` float32 (BVH frame rate), ``clip_stride`` ``(C,)`` int16 (frames kept: every
  ``stride``-th, about :data:`TARGET_FPS` per second; 1 for the short 14-20 frame windows), ``clip_sha1`` ``(C,)`` str (of the BVH file).
- ``body`` ``()`` str: the body the clips were fitted to (``"open"``) and ``body_id`` its file hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from posegen_ns.data.poses import PoseBank
from posegen_ns.errors import PoseGenInputError

__all__ = ["FORMAT_VERSION", "TARGET_FPS", "shipped_pose_bank_path", "load_shipped_pose_bank", "read_pose_bank_file"]

FORMAT_VERSION = 1
"""Version of the bank file layout (module docstring); readers reject other versions."""

TARGET_FPS = 30.0
"""Poses per second of motion kept in the bank (stride = round(clip fps / TARGET_FPS))."""

_PER_POSE = {"global_orient": 3, "body_pose": 69, "transl": 3}
_REQUIRED = (
    "format_version", "global_orient", "body_pose", "transl", "fit_error_mm", "clip_index", "frame_ids",
    "clip_names", "categories", "clip_fps", "clip_stride", "clip_sha1", "body", "body_id",
)
_REBUILD = "rebuild it with `python scripts/build_pose_bank.py` (needs the shared CMU mocap folder)"


def shipped_pose_bank_path() -> Path:
    """``posegen_ns/mocap/pose_bank/cmu_pose_bank.npz`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "mocap" / "pose_bank" / "cmu_pose_bank.npz"


def read_pose_bank_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a pose bank file (layout in the module docstring).

    Returns:
        Its arrays, checked: every key present, the format version, consistent shapes, finite poses,
        clip indices in range.

    Raises:
        PoseGenInputError: missing or unreadable file, or a check fails (the file and field are named).
    """
    path = Path(path)
    if not path.is_file():
        raise PoseGenInputError(f"pose bank {path} does not exist; {_REBUILD}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED if k not in npz.files]
            if missing:
                raise PoseGenInputError(f"pose bank {path} lacks the arrays {missing}; {_REBUILD}.")
            d = {k: npz[k] for k in _REQUIRED}
    except PoseGenInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/npy errors of a damaged file
        raise PoseGenInputError(f"pose bank {path} is unreadable ({type(exc).__name__}: {exc}); {_REBUILD}.") from None

    def bad(msg: str) -> PoseGenInputError:
        return PoseGenInputError(f"pose bank {path}: {msg}; {_REBUILD}.")

    if int(d["format_version"]) != FORMAT_VERSION:
        raise bad(f"format_version is {int(d['format_version'])}, this code reads {FORMAT_VERSION}")
    n = int(d["body_pose"].shape[0])
    for k, w in _PER_POSE.items():
        if d[k].shape != (n, w):
            raise bad(f"{k} has shape {d[k].shape}, expected ({n}, {w})")
        if not np.isfinite(d[k]).all():
            raise bad(f"{k} holds NaN or infinite values")
    for k in ("fit_error_mm", "clip_index", "frame_ids"):
        if d[k].shape != (n,):
            raise bad(f"{k} has shape {d[k].shape}, expected ({n},)")
    c = int(d["clip_names"].shape[0])
    for k in ("categories", "clip_fps", "clip_stride", "clip_sha1"):
        if d[k].shape != (c,):
            raise bad(f"{k} has shape {d[k].shape}, expected ({c},) (one per clip)")
    if n == 0 or c == 0:
        raise bad("it holds no poses")
    if d["clip_index"].min() < 0 or d["clip_index"].max() >= c:
        raise bad(f"clip_index outside [0, {c})")
    if len(set(d["clip_names"].tolist())) != c:
        raise bad("clip_names has duplicates")
    return d


def load_shipped_pose_bank(
    clips: Sequence[str] | None = None,
    *,
    split: str | None = None,
    path: str | Path | None = None,
) -> PoseBank:
    """The shipped CMU pose bank (all clips fitted to the open body) as a :class:`PoseBank`.

    Args:
        clips: clip names (file stems, or file names / paths of the clips) to keep, in this order;
            default every clip. Unknown names raise.
        split: keep only the clips of ``"source"``, ``"prior"`` or ``"eval"``
            (:mod:`posegen_ns.data.splits`); combined with ``clips`` it keeps their intersection.
        path: another bank file of the same layout (default :func:`shipped_pose_bank_path`).

    Returns:
        ``PoseBank`` with float32 ``global_orient (N, 3)``, ``body_pose (N, 69)``, ``transl (N, 3)``
        (metres), per-pose clip names and categories, and ``frame_ids (N,)`` (original BVH frames).

    Raises:
        PoseGenInputError: the file is missing or invalid (named), an unknown clip or split.
    """
    from posegen_ns.data.splits import clips_of

    path = Path(path) if path is not None else shipped_pose_bank_path()
    d = read_pose_bank_file(path)
    names = [str(s) for s in d["clip_names"].tolist()]
    if clips is None:
        wanted = list(names)
    else:
        wanted = [Path(str(c)).stem if Path(str(c)).suffix.lower() in (".bvh", ".npz") else Path(str(c)).name for c in clips]
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise PoseGenInputError(f"pose bank {path} has no clips {unknown}; it holds: {', '.join(names)}.")
    if split is not None:
        in_split = set(clips_of(split))
        wanted = [c for c in wanted if c in in_split]
        if not wanted:
            raise PoseGenInputError(f"pose bank {path}: none of the requested clips is in split {split!r}.")
    index = torch.from_numpy(d["clip_index"].astype(np.int64))
    order = [names.index(c) for c in dict.fromkeys(wanted)]
    keep = torch.cat([(index == ci).nonzero().flatten() for ci in order])
    cats = [str(s) for s in d["categories"].tolist()]
    idx = keep.numpy()
    ci = d["clip_index"][idx].astype(np.int64)
    return PoseBank(
        global_orient=torch.from_numpy(d["global_orient"][idx].astype(np.float32)),
        body_pose=torch.from_numpy(d["body_pose"][idx].astype(np.float32)),
        transl=torch.from_numpy(d["transl"][idx].astype(np.float32)),
        clip_names=[names[i] for i in ci],
        categories=[cats[i] for i in ci],
        frame_ids=torch.from_numpy(d["frame_ids"][idx].astype(np.int64)),
    )


def bank_motions(bank: PoseBank, max_frames: int | None = None) -> list:
    """One :class:`~posegen_ns.mocap.Motion` per clip of ``bank`` (in order), each with at most ``max_frames``
    frames spread evenly over the whole clip (:func:`posegen_ns.mocap.bvh.frame_indices` with ``spread``),
    so evaluation on any number of clips has a bounded cost and sees every part of each motion. Translation is
    kept as stored; ``betas`` is None (the subject's own shape); ``meta["category"]`` is the clip's category.

    Raises:
        PoseGenInputError: an empty bank or ``max_frames < 1``.
    """
    from posegen_ns.mocap import Motion
    from posegen_ns.mocap.bvh import frame_indices

    if len(bank) == 0:
        raise PoseGenInputError("bank_motions: the pose bank is empty.")
    if max_frames is not None and max_frames < 1:
        raise PoseGenInputError(f"bank_motions: max_frames must be >= 1 (got {max_frames}).")
    out = []
    for clip in bank.clips:
        rows = torch.tensor([i for i, n in enumerate(bank.clip_names) if n == clip])
        rows = rows[torch.from_numpy(frame_indices(len(rows), 0, 1, max_frames, spread=True))]
        out.append(Motion(
            name=clip, global_orient=bank.global_orient[rows], body_pose=bank.body_pose[rows], transl=bank.transl[rows],
            betas=None, fps=TARGET_FPS, source=shipped_pose_bank_path(), fit_error_mm=None,
            meta={"category": bank.categories[int(rows[0])], "frame_indices": bank.frame_ids[rows].tolist()},
        ))
    return out
