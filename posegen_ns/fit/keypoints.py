"""2D keypoints of a capture: the joint sets a detector gives, and the files they come in.

Keypoints are ``(T, C, J, 3)``: for frame t, camera c and joint j the pixel position ``(x, y)`` (OpenCV image
coordinates: x right, y down, origin at the top-left corner of the top-left pixel, as
:func:`posegen_ns.geometry.project_points`) and a confidence in [0, 1] (0: missing; NaN positions are read as
missing). Joint sets (:data:`KEYPOINT_SETS`):

- ``coco17``: the COCO person keypoints (Lin et al., ECCV 2014): nose, eyes, ears, shoulders, elbows, wrists,
  hips, knees, ankles, in COCO's order; what most 2D detectors (and BlazePose, mapped by
  :data:`COCO17_FROM_BLAZEPOSE`) give. Left/right are the person's.
- ``h36m17``: Human3.6M's 17 joints in SPIN's order (:data:`posegen_ns.body.joint_sets.H36M_JOINT_NAMES`).
- ``smpl24``: the 24 SMPL joints (:data:`posegen_ns.body.joint_sets.SMPL_JOINT_NAMES`).

Files (:func:`read_keypoints`):

- ``.npz`` with ``keypoints (T, C, J, 3)`` float and ``joint_set`` (a string, one of :data:`KEYPOINT_SETS`);
  frames and cameras in the order of the capture's ``capture.json``.
- ``.json`` in the COCO keypoint format: ``{"images": [{"id", "file_name"}, ...], "annotations": [{"image_id",
  "keypoints": [x1, y1, v1, ..., x17, y17, v17], "score"?}, ...]}`` (``coco17``). ``file_name`` names the capture
  image as ``images/<camera>/<frame:06d>.png`` (any leading folders; the last two parts are read). The third
  value of each keypoint is COCO's visibility flag (0 unlabelled, 1 occluded, 2 visible; then the confidence is
  1 for flags 1 and 2) when any value in the file exceeds 1, else a detector's score in [0, 1]. Of several people
  in one image, the annotation with the highest ``score`` (else the most labelled keypoints) is taken.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError

COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
"""The 17 COCO person keypoints, in COCO's order (the person's left and right)."""

KEYPOINT_SETS: dict[str, tuple[str, ...]] = {
    "coco17": COCO17_NAMES,
    "h36m17": H36M_JOINT_NAMES,
    "smpl24": SMPL_JOINT_NAMES,
}
"""Joint sets accepted as 2D keypoints: name -> joint names, in the order of the keypoint arrays."""

COCO17_FROM_BLAZEPOSE: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
"""BlazePose landmark (of its 33; Bazarevsky et al., CVPR-W 2020) of each COCO-17 keypoint: nose 0, eyes 2/5,
ears 7/8, shoulders 11/12, elbows 13/14, wrists 15/16, hips 23/24, knees 25/26, ankles 27/28 (BlazePose's
left/right are the person's, as COCO's)."""

TORSO_JOINTS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
"""Joints that place and orient the trunk; a frame needs some of them to be fitted (:func:`frame_support`)."""


@dataclass
class Keypoints:
    """2D keypoints of T frames seen by C cameras (module docstring for conventions).

    Attributes:
        points: ``(T, C, J, 3)`` float32: x, y in pixels and a confidence in [0, 1] (0 = missing).
        joint_set: a key of :data:`KEYPOINT_SETS`.
        source: where they came from (a file path, ``"blazepose"``), for messages and the fit's metadata.
    """

    points: Tensor
    joint_set: str
    source: str = "keypoints"

    @property
    def names(self) -> tuple[str, ...]:
        return KEYPOINT_SETS[self.joint_set]

    @property
    def xy(self) -> Tensor:
        """``(T, C, J, 2)`` pixel positions."""
        return self.points[..., :2]

    @property
    def confidence(self) -> Tensor:
        """``(T, C, J)`` confidences in [0, 1]."""
        return self.points[..., 2]

    def select(self, frames: Sequence[int] | Tensor) -> "Keypoints":
        """The keypoints of the given frames, in that order."""
        idx = torch.as_tensor(frames, dtype=torch.long).reshape(-1)
        return Keypoints(self.points[idx], self.joint_set, self.source)


def check_keypoints(points: Any, joint_set: Any, source: str, num_frames: int | None = None,
                    num_cameras: int | None = None) -> Keypoints:
    """Validate and clean keypoints: the array shape, the joint set, the frame and camera counts.

    NaN or inf positions become missing keypoints (confidence 0, position 0); confidences are clipped to [0, 1].

    Args:
        points: ``(T, C, J, 3)`` array (x, y pixels, confidence).
        joint_set: one of :data:`KEYPOINT_SETS`.
        source: the file (or producer) named in messages.
        num_frames, num_cameras: the capture's T and C, checked when given.

    Returns:
        :class:`Keypoints` (float32).

    Raises:
        PoseGenInputError: an unknown ``joint_set``, a wrong shape, or frame / camera counts that differ from the
            capture's (the message names ``source``, the field and the fix).
    """
    joint_set = str(joint_set)
    if joint_set not in KEYPOINT_SETS:
        raise PoseGenInputError(
            f"{source}: field 'joint_set' is {joint_set!r}; use one of {sorted(KEYPOINT_SETS)} (map other detectors' "
            "joints to COCO-17 first)."
        )
    J = len(KEYPOINT_SETS[joint_set])
    try:
        arr = np.asarray(points, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PoseGenInputError(f"{source}: field 'keypoints' is not numeric ({exc}).") from exc
    if arr.ndim != 4 or arr.shape[2:] != (J, 3):
        raise PoseGenInputError(
            f"{source}: field 'keypoints' has shape {arr.shape}; expected (T, C, {J}, 3) (frames, cameras, the {J} "
            f"joints of {joint_set}, x / y in pixels and a confidence)."
        )
    T, C = arr.shape[:2]
    if num_frames is not None and T != num_frames:
        raise PoseGenInputError(
            f"{source} has keypoints for {T} frames but the capture has {num_frames} frames; give one row per frame "
            "of capture.json ('frames'), in its order."
        )
    if num_cameras is not None and C != num_cameras:
        raise PoseGenInputError(
            f"{source} has keypoints for {C} cameras but the capture has {num_cameras} cameras; give one column per "
            "camera of capture.json ('cameras'), in its order."
        )
    arr = arr.copy()
    bad = ~np.isfinite(arr).all(-1)
    arr[bad] = 0.0
    arr[..., 2] = np.clip(arr[..., 2], 0.0, 1.0)
    return Keypoints(torch.from_numpy(arr), joint_set, source)


def read_keypoints(path: Path | str, num_frames: int, camera_names: Sequence[str]) -> Keypoints:
    """Read 2D keypoints for a capture of ``num_frames`` frames and the cameras ``camera_names``.

    Args:
        path: an ``.npz`` (``keypoints``, ``joint_set``) or a COCO-format ``.json`` (module docstring).
        num_frames: frames of the capture (T).
        camera_names: its cameras, in order (C).

    Returns:
        :class:`Keypoints` ``(T, C, J, 3)``.

    Raises:
        PoseGenInputError: a missing or unreadable file, a missing field, an unknown joint set, a wrong shape, or
            frame / camera counts or names that do not match the capture.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(f"--keypoints {path} does not exist; pass an .npz (keypoints, joint_set) or a COCO .json.")
    if path.suffix.lower() == ".json":
        return _read_coco_json(path, num_frames, list(camera_names))
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
        raise PoseGenInputError(f"{path} is not a readable .npz ({exc}); write it with np.savez(keypoints=..., joint_set=...).") from exc
    for key in ("keypoints", "joint_set"):
        if key not in arrays:
            raise PoseGenInputError(
                f"{path} lacks the field '{key}'; it must hold keypoints (T, C, J, 3) and joint_set (one of "
                f"{sorted(KEYPOINT_SETS)})."
            )
    joint_set = arrays["joint_set"]
    joint_set = str(joint_set[()] if joint_set.ndim == 0 else joint_set.reshape(-1)[0])
    return check_keypoints(arrays["keypoints"], joint_set, str(path), num_frames, len(camera_names))


_FRAME_FILE = re.compile(r"^(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)


def _read_coco_json(path: Path, num_frames: int, camera_names: list[str]) -> Keypoints:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoseGenInputError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise PoseGenInputError(f"{path}: a COCO keypoint file needs the fields 'images' and 'annotations'.")
    where: dict[Any, tuple[int, int]] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise PoseGenInputError(f"{path}: images[{i}] needs the fields 'id' and 'file_name'.")
        parts = Path(str(image["file_name"])).parts
        match = _FRAME_FILE.match(parts[-1]) if parts else None
        if match is None or len(parts) < 2 or parts[-2] not in camera_names:
            raise PoseGenInputError(
                f"{path}: images[{i}].file_name is {image['file_name']!r}; name the capture image as "
                f"images/<camera>/<frame:06d>.png with <camera> one of {camera_names}."
            )
        frame = int(match.group(1))
        if frame >= num_frames:
            raise PoseGenInputError(
                f"{path}: images[{i}].file_name {image['file_name']!r} is frame {frame} but the capture has "
                f"{num_frames} frames (0 .. {num_frames - 1}); the frame count does not match."
            )
        where[image["id"]] = (frame, camera_names.index(parts[-2]))
    best: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    rows = []
    for a, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "keypoints" not in ann:
            raise PoseGenInputError(f"{path}: annotations[{a}] needs the fields 'image_id' and 'keypoints'.")
        if ann["image_id"] not in where:
            raise PoseGenInputError(f"{path}: annotations[{a}].image_id {ann['image_id']!r} is not in 'images'.")
        try:
            kp = np.asarray(ann["keypoints"], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise PoseGenInputError(f"{path}: annotations[{a}].keypoints is not numeric ({exc}).") from exc
        if kp.shape != (51,):
            raise PoseGenInputError(
                f"{path}: annotations[{a}].keypoints has {kp.size} values; COCO-17 needs 51 (x, y, v for 17 keypoints)."
            )
        rows.append((a, ann, kp.reshape(17, 3)))
    flags = any(float(np.nanmax(kp[:, 2])) > 1.0 for _, _, kp in rows if kp.size)
    for a, ann, kp in rows:
        kp = kp.copy()
        kp[:, 2] = (kp[:, 2] > 0).astype(np.float32) if flags else kp[:, 2]
        rank = float(ann.get("score", float((kp[:, 2] > 0).sum())))
        key = where[ann["image_id"]]
        if key not in best or rank > best[key][0]:
            best[key] = (rank, kp)
    points = np.zeros((num_frames, len(camera_names), 17, 3), dtype=np.float32)
    for (frame, cam), (_, kp) in best.items():
        points[frame, cam] = kp
    return check_keypoints(points, "coco17", str(path), num_frames, len(camera_names))


def frame_support(kp: Keypoints, min_confidence: float) -> tuple[Tensor, Tensor]:
    """How well each frame is observed: ``(joints (T,), torso (T,))``, the number of joints seen with confidence at
    least ``min_confidence`` in at least one camera, and how many of them are :data:`TORSO_JOINTS`."""
    seen = (kp.confidence >= min_confidence).any(1)  # (T, J)
    torso = [kp.names.index(n) for n in TORSO_JOINTS if n in kp.names]
    return seen.sum(-1), seen[:, torso].sum(-1)
