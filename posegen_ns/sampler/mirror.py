"""Left-right mirror images of (pose, camera) samples.

Mirroring the world about the vertical plane ``x = 0`` (``M = diag(-1, 1, 1)``, y up) maps a body in pose ``theta``
seen by a camera to the mirror image of that picture: every joint's rotation ``R`` becomes ``M R M`` and the left and
right joints swap, which in axis-angle is ``(a, b, c) -> (a, -b, -c)`` on the joint's swapped partner (SPIN's and
HMR's flip augmentation, github ``nkolot/SPIN`` ``utils/imutils.py flip_pose``, the same rule on SMPL's 24 joints).
The camera rule (:func:`posegen_ns.labels.orbit_cameras`) measures the azimuth about world +y from the body's front
and the roll about the optical axis; both change sign in the mirror, elevation, distance and focal scale do not.

A mirrored sample is as hard for an estimator that is left-right symmetric (trained with flips, on a symmetric body)
as the original: the learned hard distribution, whose camera heads settle on one side of the body in a given run
(the hard azimuth's mean lands near -100 deg in one training and +140 deg in another), covers both sides when a
share of its draws is mirrored (:attr:`posegen_ns.sampler.config.SamplerConfig.mirror_fraction`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.sampler.generator import PoseCameraSample


def _mirror_permutation() -> tuple[int, ...]:
    swap = {"left": "right", "right": "left"}
    out = []
    for name in SMPL_JOINT_NAMES:
        side, _, rest = name.partition("_")
        out.append(SMPL_JOINT_NAMES.index(f"{swap[side]}_{rest}") if side in swap else SMPL_JOINT_NAMES.index(name))
    return tuple(out)


SMPL_MIRROR: tuple[int, ...] = _mirror_permutation()
"""For each of SMPL's 24 joints, the index of its mirror partner (left <-> right; the spine and head map to themselves)."""

AXIS_ANGLE_MIRROR = (1.0, -1.0, -1.0)
"""Signs of an axis-angle's (x, y, z) under the mirror ``x -> -x`` (y up)."""

CAMERA_MIRROR = (-1.0, 1.0, 1.0, -1.0, 1.0)
"""Signs of the sample's camera (azimuth, elevation, distance, roll, focal_scale) under the mirror."""


def mirror_rotations(full: Tensor) -> Tensor:
    """``(B, 24, 3)`` axis-angle (global orientation first, then SMPL's 23 body joints; radians) of the mirror-image
    bodies of ``full (B, 24, 3)``: partners swapped (:data:`SMPL_MIRROR`), the y and z components negated."""
    perm = torch.tensor(SMPL_MIRROR, device=full.device)
    return full[:, perm] * full.new_tensor(AXIS_ANGLE_MIRROR)


def mirror_samples(sample: PoseCameraSample, which: Tensor) -> PoseCameraSample:
    """The samples with the rows where ``which (B,) bool`` is True replaced by their mirror images (module
    docstring): pose and global orientation mirrored, camera azimuth and roll negated; the generator's ``residual
    (B, 24, 3)`` is mirrored with the pose, ``noise`` and ``prior_index`` stay. Differentiable (a permutation and
    signs). The azimuth range must be symmetric about 0 (the default full circle is) so the mirrored camera stays in
    it; the caller checks (:class:`~posegen_ns.sampler.config.SamplerConfig`).

    Args:
        sample: ``B`` samples; ``body_pose (B, 69)``, ``global_orient (B, 3)``, ``camera (B, 5)``.
        which: ``(B,)`` bool, on any device.
    """
    B = sample.body_pose.shape[0]
    m = which.to(sample.body_pose.device).reshape(B, 1)
    full = torch.cat([sample.global_orient, sample.body_pose], -1).reshape(B, 24, 3)
    flipped = mirror_rotations(full).reshape(B, 72)
    full = torch.where(m, flipped, full.reshape(B, 72))
    camera = torch.where(m, sample.camera * sample.camera.new_tensor(CAMERA_MIRROR), sample.camera)
    residual = sample.residual
    if residual is not None:
        residual = torch.where(m[:, :, None], mirror_rotations(residual), residual)
    return PoseCameraSample(body_pose=full[:, 3:], global_orient=full[:, :3], camera=camera, residual=residual,
                            noise=sample.noise, prior_index=sample.prior_index)
