"""AMASS-style ``.npz`` motion files: read (and write, for round trips and exports).

AMASS (Mahmood et al., ICCV 2019, amass.is.tue.mpg.de) stores per-frame SMPL(-H/-X) parameters:
``poses (T, 72+)`` axis-angle (root first), ``trans (T, 3)`` metres, ``betas (N,)`` and
``mocap_framerate`` (Hz), in a **z-up** world. posegen-ns is y-up, so the root is rotated by
``R_zy`` = -90 degrees about x, ``(x, y, z) -> (x, z, -y)``.

SMPL rotates the body about its rest pelvis ``J0`` (which depends on betas), not about the origin:
``joint = R_go (J - J0) + J0 + transl``. Turning the world by ``R`` therefore maps
``R_go -> R @ R_go`` and ``transl -> R (J0 + transl) - J0`` (rotating ``transl`` alone would shift the
body by ``R J0 - J0``, ~0.3 m for SMPL). ``J0`` is taken from the body the motion is loaded for.

Pose layout: SMPL files have 72 values (24 joints); SMPL-H (156) and SMPL-X (165) files share the
first 66 (root + 21 body joints) but continue with fingers/jaw where SMPL has its two hand joints, so
for those the two hand joints (values 66:72) are set to zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import save_npz
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from posegen_ns.mocap.bvh import frame_indices

Z_UP_TO_Y_UP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""Rotation by -90 degrees about x: AMASS z-up world -> posegen-ns y-up world."""

DEFAULT_FPS = 120.0
"""Frame rate assumed when a file has no ``mocap_framerate`` (AMASS's most common capture rate)."""


def rest_pelvis(body, betas: Tensor | None = None) -> Tensor:
    """``(3,)`` the body's rest pelvis joint for ``betas (num_betas,)`` (zeros if None), metres."""
    from posegen_ns.mocap.fit import JointsOnlyBody

    return JointsOnlyBody(body).rest_joints(betas)[0]


def rotate_root(global_orient: Tensor, transl: Tensor, R: Tensor, pelvis: Tensor) -> tuple[Tensor, Tensor]:
    """Express a motion in a world turned by ``R``.

    Args:
        global_orient: ``(T, 3)`` axis-angle.
        transl: ``(T, 3)`` metres.
        R: ``(3, 3)`` world rotation.
        pelvis: ``(3,)`` rest pelvis joint ``J0`` of the body.

    Returns:
        ``(global_orient (T, 3), transl (T, 3))`` with ``R_go' = R R_go``, ``t' = R (J0 + t) - J0``.
    """
    R = R.to(global_orient.dtype)
    go = matrix_to_axis_angle(R @ axis_angle_to_matrix(global_orient))
    tr = (pelvis + transl) @ R.T - pelvis
    return go, tr


def _array(data, key: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(data[key])
    except ValueError as exc:  # object arrays need pickle, which we do not allow
        raise PoseGenInputError(f"AMASS file {path}: field '{key}' cannot be read without pickle ({exc}).") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise PoseGenInputError(f"AMASS file {path}: field '{key}' has dtype {arr.dtype}; expected numbers.")
    return arr.astype(np.float64)


def read_amass_npz(
    path: str | Path,
    body,
    stride: int = 1,
    max_frames: int | None = None,
    spread: bool = False,
) -> dict:
    """Read an AMASS-style ``.npz`` into y-up SMPL parameters for ``body``.

    Args:
        path: the ``.npz`` file.
        body: the :class:`~posegen_ns.body.BodyModel` the motion is for (its rest pelvis turns the
            root; its ``num_betas`` sizes the returned betas).
        stride: keep every ``stride``-th frame.
        max_frames: keep at most this many frames (after striding).
        spread: spread those frames evenly over the whole motion instead of taking the first ones
            (:func:`posegen_ns.mocap.bvh.frame_indices`).

    Returns:
        dict with ``global_orient (T, 3)``, ``body_pose (T, 69)``, ``transl (T, 3)`` (float32
        tensors, y-up), ``betas (num_betas,)`` or None (file betas truncated / zero-padded), ``fps``
        (float, stride included) and ``fps_in_file`` (bool).

    Raises:
        PoseGenInputError: missing file, missing ``poses``/``trans``, bad shapes, fewer than 72 pose
            values, mismatched frame counts, NaN/inf; the message names the file and the field.
    """
    path = Path(path)
    if stride < 1:
        raise PoseGenInputError(f"stride must be >= 1 (got {stride}) when reading {path}.")
    if not path.is_file():
        raise PoseGenInputError(f"AMASS file {path} does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for broken archives
        raise PoseGenInputError(f"AMASS file {path} is not a readable .npz archive ({exc}).") from exc
    with data:
        missing = [k for k in ("poses", "trans") if k not in data.files]
        if missing:
            raise PoseGenInputError(
                f"AMASS file {path} lacks field(s) {missing} (found {sorted(data.files)}); an AMASS motion "
                "needs 'poses' (T, 72+) axis-angle and 'trans' (T, 3) metres."
            )
        poses = _array(data, "poses", path)
        trans = _array(data, "trans", path)
        betas = _array(data, "betas", path).reshape(-1) if "betas" in data.files else None
        fps_key = next((k for k in ("mocap_framerate", "mocap_frame_rate") if k in data.files), None)
        fps = float(_array(data, fps_key, path).reshape(-1)[0]) if fps_key else DEFAULT_FPS
    if poses.ndim != 2 or poses.shape[1] < 72:
        raise PoseGenInputError(
            f"AMASS file {path}: 'poses' has shape {poses.shape}; expected (T, 72+) axis-angle (SMPL 72, "
            "SMPL-H 156, SMPL-X 165)."
        )
    if trans.shape != (poses.shape[0], 3):
        raise PoseGenInputError(f"AMASS file {path}: 'trans' has shape {trans.shape}; expected ({poses.shape[0]}, 3).")
    if poses.shape[0] == 0:
        raise PoseGenInputError(f"AMASS file {path} holds no frames.")
    for key, arr in (("poses", poses), ("trans", trans), ("betas", betas)):
        if arr is not None and not np.isfinite(arr).all():
            rows = np.nonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(1))[0][:10].tolist() if arr.ndim > 1 else []
            raise PoseGenInputError(f"AMASS file {path}: field '{key}' contains NaN or inf (frames {rows}).")
    if not fps > 0:
        raise PoseGenInputError(f"AMASS file {path}: '{fps_key}' is {fps}; expected a positive frame rate.")
    keep = frame_indices(poses.shape[0], 0, stride, max_frames, spread)
    pose72 = poses[keep, :72].copy()
    if poses.shape[1] > 72:
        pose72[:, 66:72] = 0.0  # SMPL-H/X: these values are fingers/jaw, not SMPL's hand joints
    nb = body.num_betas
    out_betas = None
    if betas is not None:
        b = np.zeros(nb)
        b[: min(nb, betas.size)] = betas[:nb]
        out_betas = torch.as_tensor(b, dtype=torch.float32)
    pose_t = torch.as_tensor(pose72, dtype=torch.float32)
    go, tr = rotate_root(pose_t[:, :3], torch.as_tensor(trans[keep], dtype=torch.float32), Z_UP_TO_Y_UP,
                         rest_pelvis(body, out_betas).to(torch.float32))
    return {
        "global_orient": go,
        "body_pose": pose_t[:, 3:72].contiguous(),
        "transl": tr,
        "betas": out_betas,
        "fps": fps / stride,
        "fps_in_file": fps_key is not None,
    }


def write_amass_npz(
    path: str | Path,
    body,
    global_orient: Tensor,  # (T, 3) y-up
    body_pose: Tensor,  # (T, 69)
    transl: Tensor,  # (T, 3) y-up
    betas: Tensor | None = None,  # (num_betas,)
    fps: float = DEFAULT_FPS,
) -> Path:
    """Write y-up SMPL parameters as an AMASS-style z-up ``.npz`` (inverse of :func:`read_amass_npz`).

    Returns:
        The written path. Keys: ``poses (T, 72)``, ``trans (T, 3)``, ``betas (num_betas,)``,
        ``mocap_framerate``, ``gender`` ("neutral").
    """
    path = Path(path)
    pelvis = rest_pelvis(body, betas).to(global_orient.dtype)
    go, tr = rotate_root(global_orient, transl, Z_UP_TO_Y_UP.T, pelvis)
    poses = torch.cat([go, body_pose.reshape(-1, 69)], 1)
    b = betas if betas is not None else torch.zeros(body.num_betas)
    return save_npz(path, dict(
        poses=poses.detach().cpu().numpy(), trans=tr.detach().cpu().numpy(),
        betas=b.detach().cpu().numpy(), mocap_framerate=np.float64(fps), gender=np.str_("neutral"),
    ))
