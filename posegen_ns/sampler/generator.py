"""Generator over (body pose, global orientation, camera).

Like PoseAug (Gong et al., CVPR 2021) it augments real poses rather than generating from noise
alone: given a real mocap pose and noise it outputs a bounded per-joint rotation residual
(``max_residual * tanh``, radians, axis-angle composed on the right of each joint's rotation) and a
camera (azimuth about the body's facing direction, elevation, distance, roll, focal scale). The
camera is a learned *distribution*, reparameterised with ``n`` the first five noise components:

- elevation, distance, roll, focal scale: per-sample logits ``mu + sigma * n`` with a bounded mean
  ``mu = max_camera_mean * tanh(m)`` and a spread ``sigma`` between ``min_camera_std`` and
  ``max_camera_std`` (``min + (max - min) * sigmoid(s)``), squashed by a sigmoid into :class:`CameraRanges`;
- azimuth, when its range is the full circle (the default): a wrapped normal on the circle,
  ``wrap(mu + sigma * n)`` with an unbounded mean angle ``mu`` (radians) and ``sigma`` between
  ``min_azimuth_std`` and ``max_azimuth_std`` radians. A sigmoid over ``[-pi, pi]`` cannot centre a
  distribution on the back view (azimuth ``pi`` is its bound): hard back views then came out as two
  clusters pinned at ``-pi`` and ``+pi``. A partial azimuth range uses the sigmoid like the others.

The floors keep the camera distribution from collapsing onto one view (which a deterministic camera head
did in practice) and the caps keep it from spreading onto the bounds of the ranges (a sigmoid of a
wide normal puts most samples at the two ends). Everything is differentiable (reparameterised),
so the critic's error on the rendered image back-propagates into the generator through the renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d


CAMERA_PARAMS: tuple[str, ...] = ("azimuth", "elevation", "distance", "roll", "focal_scale")
"""The sampled camera's parameters, in the column order of ``PoseCameraSample.camera (B, 5)``: azimuth
(radians about world +y from the body's front), elevation (radians above the horizontal), distance
(metres from the pelvis), roll (radians about the optical axis), focal_scale (factor on the framing focal
length). :func:`posegen_ns.labels.orbit_cameras` turns them into K, R, t."""


@dataclass
class CameraRanges:
    """Ranges of the camera distribution (radians, metres). Azimuth 0 is in front of the body.
    Fields in :data:`CAMERA_PARAMS` order."""

    azimuth: tuple[float, float] = (-math.pi, math.pi)
    elevation: tuple[float, float] = (-0.3, 0.85)
    distance: tuple[float, float] = (2.4, 4.4)
    roll: tuple[float, float] = (-0.3, 0.3)
    focal_scale: tuple[float, float] = (0.85, 1.15)

    @staticmethod
    def names() -> tuple[str, ...]:
        """:data:`CAMERA_PARAMS`: the column names of a ``(B, 5)`` camera tensor."""
        return CAMERA_PARAMS

    @staticmethod
    def unpack(camera: Tensor) -> dict[str, Tensor]:
        """``camera (B, 5)`` -> ``{name: (B,)}`` by :data:`CAMERA_PARAMS` (views, differentiable).

        Raises:
            ValueError: not 5 columns.
        """
        if camera.shape[-1] != len(CAMERA_PARAMS):
            raise ValueError(f"a camera tensor has {len(CAMERA_PARAMS)} columns {CAMERA_PARAMS}; got shape {tuple(camera.shape)}")
        return dict(zip(CAMERA_PARAMS, camera.unbind(-1)))

    @staticmethod
    def pack(**params: Tensor) -> Tensor:
        """``{name: (B,)}`` for every name of :data:`CAMERA_PARAMS` -> ``camera (B, 5)``.

        Raises:
            ValueError: a missing or unknown name.
        """
        if set(params) != set(CAMERA_PARAMS):
            raise ValueError(f"camera parameters must be exactly {CAMERA_PARAMS}; got {sorted(params)}")
        return torch.stack([torch.as_tensor(params[n]) for n in CAMERA_PARAMS], -1)

    def bounds(self) -> Tensor:
        """``(5, 2)`` lower/upper bounds in :meth:`names` order."""
        return torch.tensor([getattr(self, n) for n in self.names()], dtype=torch.float32)

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, 5)`` cameras drawn uniformly from the ranges (the prior's camera distribution)."""
        b = self.bounds()
        return b[:, 0] + (b[:, 1] - b[:, 0]) * torch.rand(n, 5, generator=generator)


@dataclass
class PoseCameraSample:
    """A batch of (pose, camera) samples. B samples."""

    body_pose: Tensor  # (B, 69) axis-angle radians
    global_orient: Tensor  # (B, 3) axis-angle radians, world frame (y-up)
    camera: Tensor  # (B, 5) azimuth, elevation, distance, roll, focal_scale (see CameraRanges)
    residual: Tensor | None = None  # (B, 24, 3) rotation residual the generator applied (root first), radians
    noise: Tensor | None = None  # (B, noise_dim) the generator's noise input
    prior_index: Tensor | None = None  # (B,) long: the prior frame each sample starts from (None: not from the prior)

    POSE_DIM = 72  # global_orient (3) + body_pose (69) in :meth:`flat`

    def take(self, index: Tensor) -> "PoseCameraSample":
        """The samples at ``index`` (``(M,)`` long), every tensor field indexed along the batch (None stays None)."""
        pick = lambda x: None if x is None else x[index.to(x.device)]  # noqa: E731
        return PoseCameraSample(pick(self.body_pose), pick(self.global_orient), pick(self.camera), pick(self.residual),
                                pick(self.noise), pick(self.prior_index))

    def flat(self) -> Tensor:
        """``(B, 77)``: ``[body_pose (69), global_orient (3), camera (5)]`` (the black-box sampler's search space)."""
        return torch.cat([self.body_pose, self.global_orient, self.camera], -1)

    @classmethod
    def from_flat(cls, x: Tensor) -> "PoseCameraSample":
        """Inverse of :meth:`flat`: ``x (B, 77)`` -> a sample (no residual or noise)."""
        return cls(body_pose=x[:, :69], global_orient=x[:, 69 : cls.POSE_DIM], camera=x[:, cls.POSE_DIM :])


class HardPoseGenerator(nn.Module):
    """MLP ``(real pose in 6D, noise) -> (bounded pose residual, camera)``.

    Args:
        noise_dim: size of the Gaussian noise input.
        hidden: width of the hidden layers.
        max_residual: bound on each joint's residual rotation components, radians.
        ranges: camera ranges.
        min_camera_std: floor on the spread of each camera logit (sigmoid space: 1.0 spans about
            the middle half of each range).
        max_camera_std: cap on that spread (sigmoid space; must exceed ``min_camera_std``).
        max_camera_mean: bound on each camera logit's mean (2.0: the mean stays within the
            middle 76 % of each range, so the sigmoid never saturates the spread away).
        min_azimuth_std, max_azimuth_std: floor and cap on the spread of the wrapped-normal azimuth,
            radians (full-circle azimuth range only).

    Raises:
        ValueError: ``noise_dim < 5`` or a cap not above its floor.
    """

    def __init__(
        self, noise_dim: int = 32, hidden: int = 256, max_residual: float = 0.6, ranges: CameraRanges | None = None,
        min_camera_std: float = 1.0,
        max_camera_mean: float = 2.0,
        max_camera_std: float = 2.0,
        min_azimuth_std: float = 0.5,
        max_azimuth_std: float = 2.0,
    ):
        super().__init__()
        if noise_dim < 5:
            raise ValueError("noise_dim must be at least 5 (the camera draws on the first five components)")
        if not (0.0 <= min_camera_std < max_camera_std and 0.0 <= min_azimuth_std < max_azimuth_std):
            raise ValueError(
                f"camera spread: need 0 <= min_camera_std < max_camera_std (got {min_camera_std}, {max_camera_std}) and "
                f"0 <= min_azimuth_std < max_azimuth_std (got {min_azimuth_std}, {max_azimuth_std})"
            )
        self.min_camera_std, self.max_camera_std = min_camera_std, max_camera_std
        self.min_azimuth_std, self.max_azimuth_std = min_azimuth_std, max_azimuth_std
        self.max_camera_mean = max_camera_mean
        self.noise_dim = noise_dim
        self.max_residual = max_residual
        self.ranges = ranges or CameraRanges()
        self.register_buffer("bounds", self.ranges.bounds())
        az = self.ranges.azimuth
        self.wrapped_azimuth = (az[1] - az[0]) >= 2 * math.pi - 1e-6
        in_dim = 24 * 6 + noise_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)
        )
        self.pose_head = nn.Linear(hidden, 24 * 3)
        self.camera_head = nn.Linear(hidden, 10)  # 5 means and 5 spread logits
        nn.init.zeros_(self.pose_head.weight)
        nn.init.zeros_(self.pose_head.bias)
        nn.init.normal_(self.camera_head.weight, std=0.1)
        nn.init.zeros_(self.camera_head.bias)

    def forward(self, body_pose: Tensor, global_orient: Tensor, noise: Tensor) -> PoseCameraSample:
        """Args: real ``body_pose (B, 69)``, ``global_orient (B, 3)``, ``noise (B, noise_dim)``."""
        B = body_pose.shape[0]
        full = torch.cat([global_orient, body_pose], -1).reshape(B, 24, 3)
        rot = axis_angle_to_matrix(full)  # (B, 24, 3, 3)
        h = self.net(torch.cat([matrix_to_rot6d(rot).reshape(B, -1), noise], -1))
        residual = self.max_residual * torch.tanh(self.pose_head(h)).reshape(B, 24, 3)
        residual = residual * torch.tensor([0.3] + [1.0] * 23, device=h.device)[None, :, None]  # small root tilt
        new_rot = rot @ axis_angle_to_matrix(residual)
        new = matrix_to_axis_angle(new_rot).reshape(B, 72)
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        mu, spread = self.camera_head(h).chunk(2, dim=-1)
        sigma = self.min_camera_std + (self.max_camera_std - self.min_camera_std) * torch.sigmoid(spread)
        camera = lo + (hi - lo) * torch.sigmoid(self.max_camera_mean * torch.tanh(mu) + sigma * noise[:, :5])
        camera = torch.minimum(torch.maximum(camera, lo), hi)  # float32 rounding at a saturated sigmoid
        if self.wrapped_azimuth:
            az_sigma = self.min_azimuth_std + (self.max_azimuth_std - self.min_azimuth_std) * torch.sigmoid(spread[:, :1])
            angle = mu[:, :1] + az_sigma * noise[:, :1]
            azimuth = torch.remainder(angle - lo[0], 2 * math.pi) + lo[0]  # wrapped into [lo, lo + 2 pi)
            camera = torch.cat([azimuth, camera[:, 1:]], -1)
        return PoseCameraSample(body_pose=new[:, 3:], global_orient=new[:, :3], camera=camera, residual=residual)
