"""Pose banks: real mocap clips fitted to a body model once, cached, and served as flat arrays.

Fitting a BVH clip to the body (:func:`posegen_ns.mocap.load_motion`) takes seconds per clip; the
result depends only on the body file, the clip file and the frame stride, so it is cached as
``cache_dir()/poses/<body-id>-<clip>-s<stride>.npz`` (``body-id``: a hash of the body's model file;
the clip file's hash is stored inside and checked) and later runs load it instantly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import read_cache, save_npz
from posegen_ns.errors import PoseGenInputError, require_folder

_CACHE_VERSION = 2
MOTION_SUFFIXES = (".bvh", ".npz")


@dataclass
class PoseBank:
    """N poses from mocap clips, for one body model. Axis-angle radians, metres, world y-up.

    Attributes:
        global_orient: ``(N, 3)`` float32.
        body_pose: ``(N, 69)`` float32.
        transl: ``(N, 3)`` float32 (as fitted; the capture writer removes its horizontal part).
        clip_names: N clip names (file stems).
        categories: N clip categories from the mocap manifest (e.g. ``"walk_run"``, ``"dance"``).
        frame_ids: ``(N,)`` long, frame index in the original clip (before striding).
    """

    global_orient: Tensor
    body_pose: Tensor
    transl: Tensor
    clip_names: list[str]
    categories: list[str]
    frame_ids: Tensor

    def __len__(self) -> int:
        return int(self.body_pose.shape[0])

    def select(self, indices: Sequence[int] | Tensor) -> "PoseBank":
        """The poses at ``indices`` (a list/tensor of ints, or a bool mask of length N)."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long().reshape(-1)
        keep = idx.tolist()
        return PoseBank(
            global_orient=self.global_orient[idx], body_pose=self.body_pose[idx], transl=self.transl[idx],
            clip_names=[self.clip_names[i] for i in keep], categories=[self.categories[i] for i in keep],
            frame_ids=self.frame_ids[idx],
        )

    @property
    def clips(self) -> list[str]:
        """Distinct clip names, in order of first appearance."""
        return list(dict.fromkeys(self.clip_names))


def _file_hash(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def body_id(body: Any) -> str:
    """Short hash identifying a body: of its model file (source name, path or BodyModel)."""
    from posegen_ns.body import BodyModel, body_model_path

    path = body.model_path if isinstance(body, BodyModel) else body_model_path(body)
    return _file_hash(path)


def motion_files(directory: Path | str) -> list[Path]:
    """Motion files (``.bvh``, AMASS ``.npz``) in ``directory``, sorted by name.

    Raises:
        PoseGenInputError: the folder is missing or holds no motion files.
    """
    directory = require_folder(directory, "Mocap folder", "pass a folder of .bvh (or AMASS .npz) files")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in MOTION_SUFFIXES and p.is_file())
    if not files:
        raise PoseGenInputError(f"Mocap folder {directory} holds no .bvh or .npz files.")
    return files


def load_pose_bank(body_source: Any, clips: Sequence[Path | str] | None = None, stride: int = 4) -> PoseBank:
    """Fit mocap clips to a body (cached per clip) and return all their frames as one bank.

    Args:
        body_source: body source name (``"open"``, ``"tiny"``), SMPL path, or a loaded ``BodyModel``.
        clips: motion files; default the clips shipped with the package
            (:func:`posegen_ns.mocap.shipped_clips_dir`).
        stride: keep every ``stride``-th frame of each clip.

    Returns:
        The :class:`PoseBank` (clips in the given order, frames in time order).

    Raises:
        PoseGenInputError: missing clip files or a clip the fitter rejects.
    """
    from posegen_ns.mocap import clip_category, shipped_clips_dir

    if stride < 1:
        raise PoseGenInputError(f"load_pose_bank: stride must be >= 1, got {stride}.")
    paths = motion_files(shipped_clips_dir()) if clips is None else [Path(c).expanduser() for c in clips]
    for p in paths:
        if not p.is_file():
            raise PoseGenInputError(f"Mocap clip {p} does not exist.")
    bid = body_id(body_source)
    out_dir = _cache_root()
    body = None
    parts: list[dict[str, Any]] = []
    for path in paths:
        cache = out_dir / f"{bid}-{path.stem}-s{stride}.npz"
        clip_hash = _file_hash(path)
        arrays = _read_cache(cache, clip_hash)
        if arrays is None:
            if body is None:
                body = _as_body(body_source)
            arrays = _fit_clip(path, body, stride)
            save_npz(cache, {"clip_hash": np.array(clip_hash), "version": np.array(_CACHE_VERSION), **arrays})
        parts.append(arrays | {"name": str(arrays["name"]), "category": _category(path, clip_category)})
    return PoseBank(
        global_orient=torch.from_numpy(np.concatenate([p["global_orient"] for p in parts]).astype(np.float32)),
        body_pose=torch.from_numpy(np.concatenate([p["body_pose"] for p in parts]).astype(np.float32)),
        transl=torch.from_numpy(np.concatenate([p["transl"] for p in parts]).astype(np.float32)),
        clip_names=[p["name"] for p in parts for _ in range(len(p["body_pose"]))],
        categories=[p["category"] for p in parts for _ in range(len(p["body_pose"]))],
        frame_ids=torch.from_numpy(np.concatenate([p["frame_ids"] for p in parts]).astype(np.int64)),
    )


def _category(path: Path, clip_category) -> str:
    """The clip's manifest category: the shipped manifest, else a ``manifest.csv`` beside the clip or
    one folder up (as in the CMU subset's layout), else ``"unknown"``."""
    category = clip_category(path.stem)
    for folder in (path.parent, path.parent.parent):
        if category != "unknown":
            break
        if (folder / "manifest.csv").is_file():
            category = clip_category(path.stem, folder / "manifest.csv")
    return category


def _cache_root() -> Path:
    from posegen_ns.body.smpl_files import cache_dir

    root = cache_dir() / "poses"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _as_body(body_source: Any):
    from posegen_ns.body import BodyModel, load_body_model

    return body_source if isinstance(body_source, BodyModel) else load_body_model(body_source)


def _read_cache(path: Path, clip_hash: str) -> dict[str, np.ndarray] | None:
    """The cached fit of a clip, or None: no file, a stale one (another clip file or cache version, refitted
    silently) or a damaged one (refitted, with a message naming it: :func:`posegen_ns.atomic_io.read_cache`)."""

    def read(p: Path) -> dict[str, np.ndarray] | None:
        with np.load(p, allow_pickle=False) as npz:
            if str(npz["clip_hash"]) != clip_hash or int(npz["version"]) != _CACHE_VERSION:
                return None
            return {k: npz[k] for k in ("name", "global_orient", "body_pose", "transl", "frame_ids")}

    return read_cache(path, read, "mocap fit")


def _fit_clip(path: Path, body: Any, stride: int) -> dict[str, np.ndarray]:
    from posegen_ns.mocap import load_motion

    motion = load_motion(path, body, stride=stride)
    T = int(motion.body_pose.shape[0])
    if T == 0:
        raise PoseGenInputError(f"Mocap clip {path} has no frames after stride {stride}.")

    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)

    return {
        "name": np.array(motion.name),
        "global_orient": arr(motion.global_orient).astype(np.float32).reshape(T, 3),
        "body_pose": arr(motion.body_pose).astype(np.float32).reshape(T, 69),
        "transl": arr(motion.transl).astype(np.float32).reshape(T, 3),
        "frame_ids": _frame_ids(motion, T, stride),
    }


def _frame_ids(motion: Any, T: int, stride: int) -> np.ndarray:
    """Original frame index of each kept frame: the loader's ``meta['frame_indices']`` (BVH; after
    skipping a synthetic T-pose frame), else ``stride * k``."""
    ids = getattr(motion, "meta", {}).get("frame_indices")
    if ids is not None and len(ids) == T:
        return np.asarray(ids, dtype=np.int64)
    return np.arange(T, dtype=np.int64) * stride
