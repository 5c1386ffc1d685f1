"""The folder ``ns-posegen-fit`` reads (a capture without body parameters) and the capture it writes.

Input folder ``DIR`` (the native capture layout of :mod:`posegen_ns.data.capture`, less ``body_params.npz``)::

    capture.json        {"cameras": [{"name": "cam00", "K": 3x3 | "fov_deg": F, "R": 3x3?, "t": [3]?}, ...],
                         "frames": [{"clip", "frame", "split"}, ...]?, "width"?, "height"?, "body"?}
    images/<cam>/<i:06d>.png   RGB, i = 0 .. T-1
    masks/<cam>/<i:06d>.png    optional, 8-bit, person > 127

Relaxed against the native format, because a filmed person comes without them: a camera may give its vertical
field of view ``fov_deg`` (degrees; square pixels, principal point at the image centre) instead of ``K``; without
``R`` and ``t`` a camera sits at the world origin looking along world -z, upright (``R = diag(1, -1, -1)``,
``t = 0``: the world stays y-up, the SMPL convention, for a level camera); without ``frames`` the images of the
first camera are the frames (one clip named after the folder, split ``train``); ``width``/``height`` default to
the images'. Without ``capture.json`` at all, a folder with a single camera under ``images/`` can be read when the
caller gives ``fov_deg`` (``ns-posegen-fit --fov-deg``).

The output is a native capture (:func:`posegen_ns.data.capture.write_capture`) of the fitted frames, plus
``fit.json`` (:func:`write_fitted_capture`), written to a temporary sibling folder and renamed into place at the
end, so ``--output-dir`` never holds half a capture.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import atomic_dir, save_npz, write_json
from posegen_ns.data.capture import write_capture_files
from posegen_ns.data.capture_data import SPLITS, Capture, ImageGridSizes, check_cameras, read_image
from posegen_ns.errors import PoseGenInputError, require_folder
from posegen_ns.geometry import intrinsics_from_fov

DEFAULT_R = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))
"""World-to-camera rotation of a camera given without ``R``: at the origin, looking along world -z, upright."""
_FRAME_FILE = re.compile(r"^(\d{6})\.png$")


@dataclass
class UnfittedCapture(ImageGridSizes):
    """What ``ns-posegen-fit`` reads: T frames, C cameras, H x W images (conventions of :class:`Capture`)."""

    images: Tensor  # (T, C, H, W, 3) uint8
    masks: Optional[Tensor]  # (T, C, H, W) bool, or None when the folder has no masks/
    K: Tensor  # (C, 3, 3) pixels
    R: Tensor  # (C, 3, 3) world -> camera
    t: Tensor  # (C, 3) metres
    camera_names: list[str]
    clip_names: list[str]
    frame_ids: Tensor  # (T,) long
    split: list[str]
    body: Optional[str]  # the body named in capture.json, if any
    root: Path


def _matrix(value: Any, shape: tuple[int, ...], where: str) -> Tensor:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PoseGenInputError(f"{where} is not numeric ({exc}).") from exc
    if arr.shape != shape:
        raise PoseGenInputError(f"{where} has shape {arr.shape}, expected {shape}.")
    return torch.from_numpy(arr).float()


def _frame_count(folder: Path) -> int:
    files = sorted(p.name for p in folder.iterdir() if _FRAME_FILE.match(p.name)) if folder.is_dir() else []
    if not files:
        raise PoseGenInputError(f"{folder} holds no images named 000000.png, 000001.png, ...; put the frames there.")
    if files != [f"{i:06d}.png" for i in range(len(files))]:
        raise PoseGenInputError(f"{folder}: the frames must be numbered 000000.png .. {len(files) - 1:06d}.png without gaps.")
    return len(files)


def read_unfitted_capture(input_dir: Path | str, fov_deg: Optional[float] = None) -> UnfittedCapture:
    """Read ``input_dir`` (module docstring).

    Args:
        input_dir: the folder.
        fov_deg: vertical field of view (degrees) for a folder without ``capture.json`` (one camera under
            ``images/``); ignored when ``capture.json`` exists.

    Raises:
        PoseGenInputError: a missing folder, file or field, inconsistent sizes or counts, or cameras that are not
            valid OpenCV cameras (the message names the file, the field and the fix).
    """
    root = require_folder(input_dir, "--input", "pass the folder with capture.json and images/<camera>/000000.png ...")
    path = root / "capture.json"
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PoseGenInputError(f"{path} is not valid JSON ({exc}).") from exc
        if not isinstance(meta, dict):
            raise PoseGenInputError(f"{path} must hold a JSON object.")
    else:
        cams = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
        if len(cams) != 1 or fov_deg is None:
            raise PoseGenInputError(
                f"{path} does not exist; write it with the cameras ('name', 'K' or 'fov_deg', 'R', 't'), or, for a "
                f"single camera (images/<camera>/000000.png ...; found {len(cams)} camera folders), pass --fov-deg."
            )
        meta = {"cameras": [{"name": cams[0], "fov_deg": float(fov_deg)}]}
    cameras = meta.get("cameras")
    if not isinstance(cameras, list) or not cameras:
        raise PoseGenInputError(f"{path}: field 'cameras' must be a non-empty list of {{'name', 'K' or 'fov_deg', 'R', 't'}}.")
    names = []
    for c, cam in enumerate(cameras):
        if not isinstance(cam, dict) or "name" not in cam:
            raise PoseGenInputError(f"{path}: cameras[{c}] lacks the field 'name'.")
        names.append(str(cam["name"]))
    frames = meta.get("frames")
    if frames is None:
        T = _frame_count(root / "images" / names[0])
        frames = [{"clip": root.name or "capture", "frame": i, "split": "train"} for i in range(T)]
    if not isinstance(frames, list) or not frames:
        raise PoseGenInputError(f"{path}: field 'frames' must be a non-empty list of {{'clip', 'frame', 'split'}}.")
    for i, frame in enumerate(frames):
        for key in ("clip", "frame"):
            if not isinstance(frame, dict) or key not in frame:
                raise PoseGenInputError(f"{path}: frames[{i}] lacks the field '{key}'.")
        if frame.get("split", "train") not in SPLITS:
            raise PoseGenInputError(f"{path}: frames[{i}].split is {frame['split']!r}; use one of {SPLITS}.")
    T, C = len(frames), len(names)

    first = read_image(root / "images" / names[0] / "000000.png")
    H = int(meta.get("height", first.shape[0]))
    W = int(meta.get("width", first.shape[1]))
    images = np.zeros((T, C, H, W, 3), dtype=np.uint8)
    has_masks = (root / "masks").is_dir()
    masks = np.zeros((T, C, H, W), dtype=bool) if has_masks else None
    for c, name in enumerate(names):
        for i in range(T):
            for kind in ("images", "masks") if has_masks else ("images",):
                file = root / kind / name / f"{i:06d}.png"
                array = read_image(file, grayscale=(kind == "masks"))
                if array.shape[:2] != (H, W):
                    raise PoseGenInputError(
                        f"{file} is {array.shape[1]}x{array.shape[0]} (W x H) but the capture is {W}x{H} ({path} "
                        "'width'/'height' or the first image); give every image the same size."
                    )
                if kind == "images":
                    images[i, c] = array
                else:
                    masks[i, c] = array > 127

    Ks, Rs, ts = [], [], []
    for c, cam in enumerate(cameras):
        where = f"{path}: cameras[{c}]"
        if "K" in cam:
            Ks.append(_matrix(cam["K"], (3, 3), f"{where}.K"))
        elif "fov_deg" in cam:
            fov = float(cam["fov_deg"])
            if not 0.0 < fov < 180.0:
                raise PoseGenInputError(f"{where}.fov_deg is {fov}; give the vertical field of view in degrees (0, 180).")
            Ks.append(intrinsics_from_fov(math.radians(fov), W, H).float())
        else:
            raise PoseGenInputError(f"{where} needs 'K' (3x3, pixels) or 'fov_deg' (vertical field of view, degrees).")
        Rs.append(_matrix(cam.get("R", DEFAULT_R), (3, 3), f"{where}.R"))
        ts.append(_matrix(cam.get("t", (0.0, 0.0, 0.0)), (3,), f"{where}.t"))
    K, R, t = torch.stack(Ks), torch.stack(Rs), torch.stack(ts)
    check_cameras(K, R, t, names, str(path))
    return UnfittedCapture(
        images=torch.from_numpy(images), masks=None if masks is None else torch.from_numpy(masks),
        K=K, R=R, t=t, camera_names=names,
        clip_names=[str(f["clip"]) for f in frames],
        frame_ids=torch.tensor([int(f["frame"]) for f in frames], dtype=torch.long),
        split=[str(f.get("split", "train")) for f in frames],
        body=str(meta["body"]) if "body" in meta else None,
        root=root,
    )


def fitted_capture(data: UnfittedCapture, body: str, frames: Tensor, global_orient: Tensor, body_pose: Tensor,
                   transl: Tensor, betas: Tensor, masks: Optional[Tensor] = None) -> Capture:
    """The native :class:`Capture` of the fitted ``frames (F,)`` of ``data`` with their parameters
    (``(F, 3)``, ``(F, 69)``, ``(F, 3)``, ``(nb,)``; body ``body``). ``masks (F, C, H, W)`` replaces the input's
    (required when the input has none)."""
    idx = frames.long()
    keep = idx.tolist()
    if masks is None:
        if data.masks is None:
            raise PoseGenInputError(f"{data.root} has no masks/; pass the fitted body's silhouettes as masks.")
        masks = data.masks[idx]
    return Capture(
        images=data.images[idx], masks=masks.bool(), K=data.K, R=data.R, t=data.t,
        global_orient=global_orient.float(), body_pose=body_pose.float(), transl=transl.float(), betas=betas.float(),
        clip_names=[data.clip_names[i] for i in keep], frame_ids=data.frame_ids[idx],
        split=[data.split[i] for i in keep], body=body, camera_names=list(data.camera_names),
    )


def write_fitted_capture(capture: Capture, fit_meta: dict[str, Any], output_dir: Path | str, overwrite: bool = False,
                         extra_npz: Optional[dict[str, dict[str, Any]]] = None) -> Path:
    """Write ``capture`` (native format), ``fit_meta`` as ``fit.json`` and each ``extra_npz`` entry (file name ->
    arrays, e.g. the keypoints used) into ``output_dir``, atomically: all go to a temporary sibling folder that is renamed into place at the end (an existing ``output_dir`` is replaced
    only with ``overwrite``, and stays intact until the new one is complete).

    Raises:
        PoseGenInputError: ``output_dir`` exists and ``overwrite`` is False, or the capture is invalid.
    """
    out = Path(output_dir).expanduser()
    capture.validate(source=f"fitted capture to write to {out}")
    with atomic_dir(out, overwrite, flag="--output-dir") as tmp:
        write_capture_files(capture, tmp)
        write_json(tmp / "fit.json", fit_meta)
        for name, arrays in (extra_npz or {}).items():
            save_npz(tmp / name, arrays)
    return out
