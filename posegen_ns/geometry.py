"""Rotations and cameras: the one place for conversions between conventions.

Conventions (see DESIGN.md):
- World is y-up, metres. Axis-angle (radians) for storage, 6D (Zhou et al., CVPR 2019, first two
  columns of the rotation matrix) for network outputs; conversions come from ``roma``.
- Cameras are OpenCV: x right, y down, z forward; ``K (3, 3)`` in pixels; extrinsics ``R (3, 3)``,
  ``t (3,)`` map world to camera, ``x_cam = R @ x_world + t``.
- nerfstudio wants OpenGL camera-to-world ``(3, 4)`` (x right, y up, z backward); convert only with
  :func:`opencv_to_nerfstudio_c2w` at the dataparser/rendering boundary.
"""

from __future__ import annotations

import math

import roma
import torch
from torch import Tensor

_CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Axis-angle ``(..., 3)`` radians -> rotation matrices ``(..., 3, 3)`` (roma, differentiable)."""
    return roma.rotvec_to_rotmat(rotvec)


def matrix_to_axis_angle(rotmat: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> axis-angle ``(..., 3)`` radians, angle in [0, pi]."""
    return roma.rotmat_to_rotvec(rotmat)


def rot6d_to_matrix(rot6d: Tensor) -> Tensor:
    """6D rotation ``(..., 6)`` -> rotation matrix ``(..., 3, 3)`` by Gram-Schmidt.

    The 6 numbers are the first two *columns* of the matrix, interleaved as
    ``[r00, r01, r10, r11, r20, r21]`` (a row-major ``(3, 2)`` block), as in Zhou et al. (CVPR 2019)
    and SPIN's ``rot6d_to_rotmat``.
    """
    return roma.special_gramschmidt(rot6d.reshape(*rot6d.shape[:-1], 3, 2))


def matrix_to_rot6d(rotmat: Tensor) -> Tensor:
    """Rotation matrix ``(..., 3, 3)`` -> 6D ``(..., 6)`` (inverse of :func:`rot6d_to_matrix`)."""
    return rotmat[..., :, :2].reshape(*rotmat.shape[:-2], 6)


def project_points(points_world: Tensor, K: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points with OpenCV pinhole cameras (no distortion).

    Args:
        points_world: ``(B, J, 3)`` metres, world frame.
        K: ``(B, 3, 3)`` intrinsics, pixels.
        R: ``(B, 3, 3)`` world-to-camera rotation.
        t: ``(B, 3)`` world-to-camera translation, metres.

    Returns:
        ``(uv, points_cam)``: pixel coordinates ``(B, J, 2)`` (pixel centres at integer + 0.5 is
        *not* assumed: ``u = fx * x / z + cx``) and camera-frame points ``(B, J, 3)`` in metres.
    """
    points_cam = torch.einsum("bij,bnj->bni", R, points_world) + t[:, None, :]
    z = points_cam[..., 2:3].clamp_min(1e-6)
    uv_h = torch.einsum("bij,bnj->bni", K, points_cam / z)
    return uv_h[..., :2], points_cam


def look_at_extrinsics(eye: Tensor, target: Tensor, up: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """OpenCV world-to-camera ``(R (B, 3, 3), t (B, 3))`` for cameras at ``eye (B, 3)`` looking at
    ``target (B, 3)``; the image's up direction follows ``up`` (default world +y)."""
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)  # forward
    x = torch.nn.functional.normalize(torch.cross(z, up, dim=-1), dim=-1)  # right = forward x up... y down
    y = torch.cross(z, x, dim=-1)  # down
    R = torch.stack([x, y, z], dim=-2)  # rows are camera axes in world coordinates
    t = -torch.einsum("bij,bj->bi", R, eye)
    return R, t


def orbit_extrinsics(
    azimuth: Tensor, elevation: Tensor, distance: Tensor, target: Tensor, roll: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cameras on a sphere around ``target``, OpenCV world-to-camera.

    Args:
        azimuth: ``(B,)`` radians about world +y; 0 puts the camera on +z looking towards -z
            (SMPL's canonical body faces +z, so azimuth 0 is a frontal view).
        elevation: ``(B,)`` radians above the horizontal plane.
        distance: ``(B,)`` metres from ``target``.
        target: ``(B, 3)`` metres, the point the camera looks at.
        roll: ``(B,)`` radians about the optical axis (optional).

    Returns:
        ``R (B, 3, 3)``, ``t (B, 3)``. Differentiable in every argument.
    """
    ce = torch.cos(elevation)
    offset = torch.stack(
        [distance * ce * torch.sin(azimuth), distance * torch.sin(elevation), distance * ce * torch.cos(azimuth)], -1
    )
    R, t = look_at_extrinsics(target + offset, target)
    if roll is not None:
        c, s = torch.cos(roll), torch.sin(roll)
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        Rz = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(-1, 3, 3)
        R = Rz @ R
        t = torch.einsum("bij,bj->bi", Rz, t)
    return R, t


def intrinsics_from_fov(fov_y: float, width: int, height: int) -> Tensor:
    """Pinhole ``K (3, 3)`` with vertical field of view ``fov_y`` radians, principal point at the
    image centre (pixels)."""
    fy = 0.5 * height / math.tan(0.5 * fov_y)
    return torch.tensor([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def opencv_to_nerfstudio_c2w(R: Tensor, t: Tensor) -> Tensor:
    """OpenCV world-to-camera ``R (..., 3, 3)``, ``t (..., 3)`` -> nerfstudio camera-to-world
    ``(..., 3, 4)`` in OpenGL axes (x right, y up, z backward)."""
    Rt = R.transpose(-1, -2)
    center = -(Rt @ t[..., None])[..., 0]
    rot = Rt @ _CV_TO_GL.to(R)
    return torch.cat([rot, center[..., None]], dim=-1)


def nerfstudio_c2w_to_opencv(c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`opencv_to_nerfstudio_c2w`: ``(..., 3, 4)`` -> ``(R (..., 3, 3), t (..., 3))``."""
    rot_cv = c2w[..., :3, :3] @ _CV_TO_GL.to(c2w)
    R = rot_cv.transpose(-1, -2)
    t = -(R @ c2w[..., :3, 3:4])[..., 0]
    return R, t
