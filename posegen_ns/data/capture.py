"""The native multi-camera capture format and its in-memory form, :class:`Capture`.

A capture is T frames of one person seen by C fixed, calibrated cameras, with the person's SMPL
parameters per frame. On disk (``DIR/``)::

    capture.json        {"version": 1, "body": "open", "width": W, "height": H,
                         "cameras": [{"name": "cam00", "K": 3x3, "R": 3x3, "t": [3]}, ...],
                         "frames": [{"clip": "07_05_slow_walk", "frame": 16, "split": "train"}, ...],
                         "betas": [nb]}
    body_params.npz     global_orient (T, 3), body_pose (T, 69), transl (T, 3), betas (nb,)  float32
    images/<cam>/<i:06d>.png   RGB, H x W, i = frame index in the capture (0 .. T-1)
    masks/<cam>/<i:06d>.png    8-bit, person > 127

Conventions: cameras are OpenCV (x right, y down, z forward), ``K`` in pixels, ``R, t`` map world to
camera (``x_cam = R x_world + t``), metres; the world is y-up. Body parameters are SMPL axis-angle
(radians) for the body named by ``body`` (a body source name such as ``"open"`` or an SMPL file path),
so ``body(body_pose, global_orient, betas, transl)`` gives the person in world coordinates.

:func:`write_capture` writes into a temporary sibling folder and renames it into place at the end,
so a capture on disk is never half written. :func:`read_capture` validates everything it reads and
raises :class:`~posegen_ns.errors.PoseGenInputError` naming the file, the field and the fix; it reads
ZJU-MoCap folders (``annots.npy``) through :func:`posegen_ns.data.zju.read_zju`. The in-memory
:class:`~posegen_ns.data.capture_data.Capture` and image I/O live in :mod:`posegen_ns.data.capture_data`,
below both readers.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import atomic_dir, save_npz, write_json
from posegen_ns.data.capture_data import SPLITS, Capture, check_finite_rows, read_image, write_png
from posegen_ns.errors import PoseGenInputError, require_folder

CAPTURE_VERSION = 1
_BODY_PARAM_KEYS = ("global_orient", "body_pose", "transl")
_IO_THREADS = 4


def _frame_file(root: Path, kind: str, cam: str, index: int) -> Path:
    return root / kind / cam / f"{index:06d}.png"


# ---- writing --------------------------------------------------------------------------------------

def capture_json(capture: Capture) -> dict[str, Any]:
    """The ``capture.json`` content for ``capture``."""
    return {
        "version": CAPTURE_VERSION,
        "body": capture.body,
        "width": capture.width,
        "height": capture.height,
        "cameras": [
            {"name": n, "K": capture.K[c].tolist(), "R": capture.R[c].tolist(), "t": capture.t[c].tolist()}
            for c, n in enumerate(capture.camera_names)
        ],
        "frames": [
            {"clip": clip, "frame": int(fid), "split": s}
            for clip, fid, s in zip(capture.clip_names, capture.frame_ids.tolist(), capture.split)
        ],
        "betas": capture.betas.tolist(),
    }


def write_capture(capture: Capture, output_dir: Path | str, overwrite: bool = False) -> Path:
    """Write ``capture`` in the native format (module docstring) to ``output_dir``, atomically.

    Files go to a temporary sibling folder ``.<name>.tmp-<id>`` that is renamed to ``output_dir`` at
    the end; on any error it is removed and nothing appears at ``output_dir``.

    Args:
        capture: the capture (validated first).
        output_dir: destination folder.
        overwrite: replace an existing ``output_dir`` (it stays intact until the new one is complete).

    Returns:
        ``output_dir`` as a Path.

    Raises:
        PoseGenInputError: ``output_dir`` exists and ``overwrite`` is False, or the capture is invalid.
    """
    out = Path(output_dir).expanduser()
    capture.validate(source=f"capture to write to {out}")
    with atomic_dir(out, overwrite, flag="Output folder") as tmp:
        write_capture_files(capture, tmp)
    return out


def write_capture_files(capture: Capture, folder: Path) -> None:
    """Write ``capture``'s files (module docstring) into the existing, empty ``folder`` (no atomicity of its own:
    callers write into a temporary folder, :func:`posegen_ns.atomic_io.atomic_dir`, as :func:`write_capture` does)."""
    images = capture.images.cpu().numpy()
    masks = capture.masks.cpu().numpy().astype(np.uint8) * 255
    jobs = []
    for c, cam in enumerate(capture.camera_names):
        (folder / "images" / cam).mkdir(parents=True)
        (folder / "masks" / cam).mkdir(parents=True)
        for i in range(capture.num_frames):
            jobs.append((_frame_file(folder, "images", cam, i), images[i, c]))
            jobs.append((_frame_file(folder, "masks", cam, i), masks[i, c]))
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        for _ in pool.map(lambda job: write_png(*job), jobs):
            pass
    save_npz(
        folder / "body_params.npz",
        {k: getattr(capture, k).detach().cpu().numpy().astype(np.float32) for k in (*_BODY_PARAM_KEYS, "betas")},
    )
    write_json(folder / "capture.json", capture_json(capture))


# ---- reading --------------------------------------------------------------------------------------

def read_capture(capture_dir: Path | str, body: Any = None, **zju_options: Any) -> Capture:
    """Read a capture folder: the native format, or ZJU-MoCap when the folder holds ``annots.npy``.

    Args:
        capture_dir: the folder.
        body: only for ZJU-MoCap folders: the :class:`~posegen_ns.body.BodyModel` (or source name /
            SMPL path) the parameters are converted for (see :func:`posegen_ns.data.zju.read_zju`).
        **zju_options: passed to :func:`~posegen_ns.data.zju.read_zju` (camera/frame selection,
            downscaling).

    Raises:
        PoseGenInputError: a missing file, a missing or inconsistent field (the message names the file,
            the field, the numbers involved and the fix).
    """
    root = require_folder(capture_dir, "Capture folder", "pass a folder with capture.json (or ZJU-MoCap's annots.npy)")
    if (root / "annots.npy").is_file() and not (root / "capture.json").is_file():
        from posegen_ns.data.zju import read_zju

        if body is None:
            raise PoseGenInputError(
                f"{root} is a ZJU-MoCap folder (annots.npy); its SMPL parameters must be converted for a body "
                "model: pass body=PATH to the SMPL model they were fitted with (SMPL neutral)."
            )
        return read_zju(root, body, **zju_options)
    if zju_options:
        raise PoseGenInputError(f"Options {sorted(zju_options)} only apply to ZJU-MoCap folders; {root} is a native capture.")
    meta = _read_capture_json(root)
    cam_names = [c["name"] for c in meta["cameras"]]
    W, H = meta["width"], meta["height"]
    T, C = len(meta["frames"]), len(cam_names)
    params = _read_body_params(root, T, meta)

    def load(job: tuple[str, int, int]) -> np.ndarray:
        kind, c, i = job
        path = _frame_file(root, kind, cam_names[c], i)
        array = read_image(path, grayscale=(kind == "masks"))
        if array.shape[:2] != (H, W):
            raise PoseGenInputError(
                f"{path} is {array.shape[1]}x{array.shape[0]} (W x H) but {root / 'capture.json'} says "
                f"width {W}, height {H}; resize the images or fix 'width'/'height'."
            )
        return array

    images = np.zeros((T, C, H, W, 3), dtype=np.uint8)
    masks = np.zeros((T, C, H, W), dtype=bool)
    jobs = [(kind, c, i) for c in range(C) for i in range(T) for kind in ("images", "masks")]
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        for (kind, c, i), array in zip(jobs, pool.map(load, jobs)):
            if kind == "images":
                images[i, c] = array
            else:
                masks[i, c] = array > 127
    cams = meta["cameras"]
    capture = Capture(
        images=torch.from_numpy(images),
        masks=torch.from_numpy(masks),
        K=torch.tensor([c["K"] for c in cams], dtype=torch.float32),
        R=torch.tensor([c["R"] for c in cams], dtype=torch.float32),
        t=torch.tensor([c["t"] for c in cams], dtype=torch.float32),
        global_orient=params["global_orient"],
        body_pose=params["body_pose"],
        transl=params["transl"],
        betas=params["betas"],
        clip_names=[str(f["clip"]) for f in meta["frames"]],
        frame_ids=torch.tensor([int(f["frame"]) for f in meta["frames"]], dtype=torch.long),
        split=[str(f["split"]) for f in meta["frames"]],
        body=str(meta["body"]),
        camera_names=cam_names,
        root=root,
    )
    capture.validate(source=str(root))
    return capture


def _read_capture_json(root: Path) -> dict[str, Any]:
    path = root / "capture.json"
    if not path.is_file():
        raise PoseGenInputError(
            f"{path} does not exist; a native capture folder needs capture.json, body_params.npz, images/ "
            "and masks/ (write one with posegen_ns.data.write_capture or ns-posegen-capture)."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PoseGenInputError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(meta, dict):
        raise PoseGenInputError(f"{path} must hold a JSON object.")
    missing = [key for key in ("version", "body", "width", "height", "cameras", "frames") if key not in meta]
    if missing and not (root / "body_params.npz").is_file() and (root / "images").is_dir():
        raise PoseGenInputError(
            f"{path} lacks the field(s) {', '.join(map(repr, missing))} and {root} has no body_params.npz: this looks like "
            f"images and cameras without body parameters. Fit them from 2D keypoints with: ns-posegen-fit --input {root} "
            f"--output-dir CAPTURE, then use --data CAPTURE."
        )
    for key in missing:
        raise PoseGenInputError(f"{path} lacks the field '{key}'.")
    if meta["version"] != CAPTURE_VERSION:
        raise PoseGenInputError(f"{path}: field 'version' is {meta['version']!r}; this reader knows version {CAPTURE_VERSION}.")
    for key in ("width", "height"):
        if not isinstance(meta[key], int) or meta[key] <= 0:
            raise PoseGenInputError(f"{path}: field '{key}' must be a positive integer, got {meta[key]!r}.")
    if not isinstance(meta["cameras"], list) or not meta["cameras"]:
        raise PoseGenInputError(f"{path}: field 'cameras' must be a non-empty list.")
    for c, cam in enumerate(meta["cameras"]):
        for key, shape in (("name", None), ("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            if key not in cam:
                raise PoseGenInputError(f"{path}: cameras[{c}] lacks the field '{key}'.")
            if shape is not None:
                try:
                    arr = np.asarray(cam[key], dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise PoseGenInputError(f"{path}: cameras[{c}].{key} is not numeric ({exc}).") from exc
                if arr.shape != shape:
                    raise PoseGenInputError(f"{path}: cameras[{c}].{key} has shape {arr.shape}, expected {shape}.")
    if not isinstance(meta["frames"], list) or not meta["frames"]:
        raise PoseGenInputError(f"{path}: field 'frames' must be a non-empty list.")
    for i, frame in enumerate(meta["frames"]):
        for key in ("clip", "frame", "split"):
            if key not in frame:
                raise PoseGenInputError(f"{path}: frames[{i}] lacks the field '{key}'.")
        if frame["split"] not in SPLITS:
            raise PoseGenInputError(f"{path}: frames[{i}].split is {frame['split']!r}; use one of {SPLITS}.")
    return meta


def _read_body_params(root: Path, num_frames: int, meta: dict[str, Any]) -> dict[str, Tensor]:
    path = root / "body_params.npz"
    if not path.is_file():
        raise PoseGenInputError(
            f"{path} does not exist; it must hold global_orient (T, 3), body_pose (T, 69), transl (T, 3), betas (nb,). "
            f"For a person you filmed (images and cameras, no body parameters), fit them from 2D keypoints with: "
            f"ns-posegen-fit --input {root} --output-dir CAPTURE, then use --data CAPTURE."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
        raise PoseGenInputError(f"{path} is not a readable .npz ({exc}).") from exc
    out: dict[str, Tensor] = {}
    for key, width in (("global_orient", 3), ("body_pose", 69), ("transl", 3)):
        if key not in arrays:
            raise PoseGenInputError(f"{path} lacks the field '{key}' ({num_frames}, {width}).")
        value = arrays[key]
        if value.ndim != 2 or value.shape[1] != width:
            raise PoseGenInputError(f"{path}: field '{key}' has shape {value.shape}, expected (T, {width}).")
        if value.shape[0] != num_frames:
            raise PoseGenInputError(
                f"{path} has {value.shape[0]} frames (field '{key}') but {root / 'capture.json'} lists "
                f"{num_frames} frames; the two files must describe the same frames (rewrite one of them)."
            )
        out[key] = torch.from_numpy(value.astype(np.float32))
        check_finite_rows(out[key], key, str(path))
    betas = arrays.get("betas", np.asarray(meta.get("betas", []), dtype=np.float32))
    if betas.ndim != 1:
        raise PoseGenInputError(f"{path}: field 'betas' has shape {betas.shape}, expected (nb,).")
    if "betas" in meta and len(meta["betas"]) != len(betas):
        raise PoseGenInputError(
            f"{path} has {len(betas)} betas but {root / 'capture.json'} has {len(meta['betas'])}; make them agree."
        )
    out["betas"] = torch.from_numpy(betas.astype(np.float32))
    check_finite_rows(out["betas"][None], "betas", str(path))
    return out
