"""ZJU-MoCap reader (Peng et al., "Neural Body", CVPR 2021; github zju3dv/neuralbody) -> :class:`Capture`.

Layout of one subject folder (e.g. ``CoreView_377/``)::

    annots.npy          dict: 'cams': {'K': [C x (3, 3)], 'R': [C x (3, 3)], 'T': [C x (3, 1)],
                                       'D': [C x (5, 1)]},
                              'ims': [{'ims': [C relative image paths]}, ...]   (one entry per frame)
    <cam>/<frame>.jpg   images (1024 x 1024 in the release), e.g. ``Camera_B1/000000.jpg``
    params/<i>.npy      dict: 'poses' (1, 72), 'Rh' (1, 3), 'Th' (1, 3), 'shapes' (1, 10)
                        (``new_params/`` in some releases; read when ``params/`` is absent)
    mask/<image path with .png>   or  mask_cihp/<...>.png   person mask, non-zero on the person

Facts this reader relies on (as Neural Body's ``if_nerf`` datasets use them):

- ``T`` is in **millimetres** in ZJU's release (Neural Body divides it by 1000). Here the unit is
  detected: when the median camera translation exceeds 50 it is read as millimetres, else metres.
- ``R, T`` are OpenCV world-to-camera, like ours. ``D`` is OpenCV distortion: this reader does *not*
  undistort (the residual is a few pixels at the borders of ZJU's cameras) and warns when ``D`` is non-zero.
- The params index ``i`` comes from the image name: ``000123.jpg`` -> ``params/123.npy``; the older
  CoreView_313/315 names ``CoreView_313_Camera_(1)_0001_<time>.jpg`` -> ``params/1.npy`` (1-based).
- EasyMocap (which fitted ZJU's SMPL) poses SMPL with ``poses`` (whose first 3 values, the root
  rotation, are zero in the release) and then applies ``Rh, Th`` to the output:
  ``x_world = R(Rh) @ smpl(poses, shapes) + Th``. Our parameters put the rotation into
  ``global_orient``, which SMPL applies about the rest pelvis ``J0``, hence
  ``global_orient = R(Rh) R(poses[:3])`` and ``transl = Th + R(Rh) J0 - J0`` (:func:`zju_to_smpl_params`).
  ``J0`` depends on the body and its betas, so the conversion needs the body model the parameters
  were fitted with (SMPL neutral for ZJU-MoCap).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from posegen_ns.data.capture_data import Capture, read_image
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle

_MM_THRESHOLD = 50.0  # a camera more than 50 "units" from the origin: the units are millimetres


def zju_to_smpl_params(
    poses: Tensor,  # (N, 72) axis-angle, root first
    Rh: Tensor,  # (N, 3) axis-angle applied after SMPL
    Th: Tensor,  # (N, 3) metres, added after the rotation
    betas: Tensor,  # (nb,) shape coefficients of ``body``
    body: Any,
) -> dict[str, Tensor]:
    """Convert EasyMocap/ZJU ``(poses, Rh, Th)`` to ``global_orient, body_pose, transl`` for ``body``.

    ``body(body_pose, global_orient, betas, transl).vertices == R(Rh) @ body(poses[:, 3:], poses[:, :3],
    betas).vertices + Th`` (see the module docstring for the derivation).

    Returns:
        dict with ``global_orient (N, 3)``, ``body_pose (N, 69)``, ``transl (N, 3)`` (float32).
    """
    dev = body.v_template.device
    poses, Rh, Th = poses.float().to(dev), Rh.float().to(dev), Th.float().to(dev)
    N = poses.shape[0]
    R_h = axis_angle_to_matrix(Rh)  # (N, 3, 3)
    global_orient = matrix_to_axis_angle(R_h @ axis_angle_to_matrix(poses[:, :3]))
    with torch.no_grad():
        J0 = body(torch.zeros(1, 69, device=dev), betas=betas[None].float().to(dev)).rest_joints[0, 0].float()  # (3,)
    transl = Th + torch.einsum("nij,j->ni", R_h, J0) - J0
    return {"global_orient": global_orient, "body_pose": poses[:, 3:72].reshape(N, 69).contiguous(), "transl": transl}


def _frame_number(image_path: str, list_index: int) -> int:
    """The params index for an image path (see the module docstring)."""
    stem = Path(image_path).stem
    if stem.isdigit():
        return int(stem)
    parts = stem.split("_")
    if len(parts) > 4 and parts[4].isdigit():  # CoreView_313_Camera_(1)_0001_<time>
        return int(parts[4])
    digits = re.findall(r"\d+", stem)
    return int(digits[-1]) if digits else list_index


def _mask_path(root: Path, image_rel: str) -> Path:
    rel = Path(image_rel).with_suffix(".png")
    for folder in ("mask", "mask_cihp"):
        path = root / folder / rel
        if path.is_file():
            return path
    raise PoseGenInputError(
        f"No mask for {root / image_rel}: looked for {root / 'mask' / rel} and {root / 'mask_cihp' / rel}; "
        "ZJU-MoCap masks live in mask/ or mask_cihp/ with the image's relative path and a .png suffix."
    )


def read_zju(
    root: Path | str,
    body: Any,
    cameras: Sequence[int] | None = None,
    frame_start: int = 0,
    frame_stride: int = 1,
    max_frames: int | None = None,
    downscale: int = 1,
    heldout_from: float = 0.8,
) -> Capture:
    """Read a ZJU-MoCap subject folder into a :class:`Capture`.

    Args:
        root: the subject folder (holding ``annots.npy``).
        body: :class:`~posegen_ns.body.BodyModel`, or a body source / SMPL path for
            :func:`~posegen_ns.body.load_body_model`; ZJU's parameters are for SMPL neutral.
        cameras: indices into ``annots['cams']`` to read (default all).
        frame_start, frame_stride, max_frames: which entries of ``annots['ims']`` to read.
        downscale: integer factor to shrink images (area filter), masks (nearest) and ``K``.
        heldout_from: frames after this fraction of the selected ones are ``"heldout"`` (novel poses,
            as in Neural Body's protocol); the rest are ``"train"``.

    Returns:
        The capture (``clip_names`` = the folder name, ``frame_ids`` = the params index).

    Raises:
        PoseGenInputError: missing or malformed files, naming the file and field.
    """
    from posegen_ns.body import BodyModel, load_body_model

    root = Path(root).expanduser()
    if not isinstance(body, BodyModel):
        body = load_body_model(body)
    annots_path = root / "annots.npy"
    if not annots_path.is_file():
        raise PoseGenInputError(f"{annots_path} does not exist; a ZJU-MoCap folder needs annots.npy.")
    try:
        annots = np.load(annots_path, allow_pickle=True).item()
        cams = annots["cams"]
        ims = annots["ims"]
    except Exception as exc:  # noqa: BLE001
        raise PoseGenInputError(f"{annots_path} is not ZJU-MoCap's annots dict with 'cams' and 'ims' ({exc}).") from exc
    for key in ("K", "R", "T"):
        if key not in cams:
            raise PoseGenInputError(f"{annots_path}: 'cams' lacks the field '{key}'.")
    num_cams = len(cams["K"])
    cam_ids = list(range(num_cams)) if cameras is None else [int(c) for c in cameras]
    if not cam_ids or min(cam_ids) < 0 or max(cam_ids) >= num_cams:
        raise PoseGenInputError(f"{annots_path}: camera indices {cam_ids} out of range (the file has {num_cams} cameras).")
    if downscale < 1 or frame_stride < 1:
        raise PoseGenInputError("read_zju: downscale and frame_stride must be >= 1.")

    K = torch.tensor(np.stack([np.asarray(cams["K"][c], dtype=np.float64).reshape(3, 3) for c in cam_ids]))
    R = torch.tensor(np.stack([np.asarray(cams["R"][c], dtype=np.float64).reshape(3, 3) for c in cam_ids]))
    T = torch.tensor(np.stack([np.asarray(cams["T"][c], dtype=np.float64).reshape(3) for c in cam_ids]))
    if T.norm(dim=-1).median() > _MM_THRESHOLD:
        T = T / 1000.0  # ZJU's release: millimetres
    if "D" in cams:
        D = np.stack([np.asarray(cams["D"][c], dtype=np.float64).reshape(-1) for c in cam_ids])
        if np.abs(D).max() > 0:
            warnings.warn(
                f"{annots_path}: cameras have non-zero distortion D (max |D| = {np.abs(D).max():.3g}); "
                "posegen-ns ignores it (pinhole cameras).", stacklevel=2,
            )
    K[:, :2] = K[:, :2] / downscale

    entries = ims[frame_start::frame_stride]
    if max_frames is not None:
        entries = entries[:max_frames]
    if not entries:
        raise PoseGenInputError(f"{annots_path}: no frames selected (frame_start={frame_start}, the file has {len(ims)}).")
    params_dir = root / "params" if (root / "params").is_dir() else root / "new_params"
    images, masks, frame_ids, poses, Rh, Th, shapes = [], [], [], [], [], [], []
    size = None
    for n, entry in enumerate(entries):
        paths = entry["ims"] if isinstance(entry, dict) else entry
        if len(paths) != num_cams:
            raise PoseGenInputError(f"{annots_path}: ims[{frame_start + n * frame_stride}] lists {len(paths)} images for {num_cams} cameras.")
        frame = _frame_number(str(paths[cam_ids[0]]), frame_start + n * frame_stride)
        frame_ids.append(frame)
        params_path = params_dir / f"{frame}.npy"
        if not params_path.is_file():
            raise PoseGenInputError(f"{params_path} does not exist (SMPL parameters of image {paths[cam_ids[0]]}).")
        params = np.load(params_path, allow_pickle=True).item()
        for key in ("poses", "Rh", "Th"):
            if key not in params:
                raise PoseGenInputError(f"{params_path} lacks the field '{key}'.")
        p = np.asarray(params["poses"], dtype=np.float64).reshape(-1)
        if p.size < 72:
            raise PoseGenInputError(f"{params_path}: field 'poses' has {p.size} values, expected 72.")
        poses.append(p[:72])
        Rh.append(np.asarray(params["Rh"], dtype=np.float64).reshape(3))
        Th.append(np.asarray(params["Th"], dtype=np.float64).reshape(3))
        shapes.append(np.asarray(params.get("shapes", np.zeros(10)), dtype=np.float64).reshape(-1))
        frame_images, frame_masks = [], []
        for c in cam_ids:
            rel = str(paths[c])
            img = read_image(root / rel)
            msk = read_image(_mask_path(root, rel), grayscale=True)
            if msk.shape[:2] != img.shape[:2]:
                raise PoseGenInputError(f"Mask {_mask_path(root, rel)} is {msk.shape[1]}x{msk.shape[0]} but image {root / rel} is {img.shape[1]}x{img.shape[0]}.")
            if downscale > 1:
                hw = (img.shape[1] // downscale, img.shape[0] // downscale)
                img = cv2.resize(img, hw, interpolation=cv2.INTER_AREA)
                msk = cv2.resize(msk, hw, interpolation=cv2.INTER_NEAREST)
            if size is None:
                size = img.shape[:2]
            if img.shape[:2] != size:
                raise PoseGenInputError(f"Image {root / rel} is {img.shape[1]}x{img.shape[0]}; other cameras are {size[1]}x{size[0]}.")
            frame_images.append(img)
            frame_masks.append(msk != 0)
        images.append(np.stack(frame_images))
        masks.append(np.stack(frame_masks))

    shapes_arr = np.stack(shapes)
    if np.abs(shapes_arr - shapes_arr[0]).max() > 1e-4:
        warnings.warn(f"{params_dir}: 'shapes' vary over frames; using their mean.", stacklevel=2)
    betas = np.zeros(body.num_betas)
    mean_shape = shapes_arr.mean(0)
    n = min(len(mean_shape), body.num_betas)
    betas[:n] = mean_shape[:n]
    if np.abs(mean_shape[n:]).max(initial=0.0) > 1e-6:
        warnings.warn(f"{params_dir}: 'shapes' has {len(mean_shape)} coefficients; the body uses {body.num_betas}.", stacklevel=2)
    betas_t = torch.tensor(betas, dtype=torch.float32)
    converted = {k: v.cpu() for k, v in zju_to_smpl_params(
        torch.tensor(np.stack(poses)), torch.tensor(np.stack(Rh)), torch.tensor(np.stack(Th)), betas_t, body
    ).items()}
    num = len(entries)
    num_train = max(1, int(round(heldout_from * num))) if num > 1 else 1
    capture = Capture(
        images=torch.from_numpy(np.stack(images)),
        masks=torch.from_numpy(np.stack(masks)),
        K=K.float(), R=R.float(), t=T.float(),
        global_orient=converted["global_orient"].float(),
        body_pose=converted["body_pose"].float(),
        transl=converted["transl"].float(),
        betas=betas_t,
        clip_names=[root.name] * num,
        frame_ids=torch.tensor(frame_ids, dtype=torch.long),
        split=["train" if i < num_train else "heldout" for i in range(num)],
        body=str(body.model_path),
        camera_names=_camera_names(entries[0]["ims"] if isinstance(entries[0], dict) else entries[0], cam_ids),
        root=root,
    )
    capture.validate(source=str(root))
    return capture


def _camera_names(paths: Sequence[str], cam_ids: Sequence[int]) -> list[str]:
    """Camera names from the images' folders (``Camera_B1``), else ``cam00``, ``cam01``, ..."""
    names = [Path(str(paths[c])).parent.name for c in cam_ids]
    if any(not n for n in names) or len(set(names)) != len(names):
        names = [f"cam{c:02d}" for c in cam_ids]
    return names
