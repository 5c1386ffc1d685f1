"""The Human3.6M-like source set: what the SPIN-like critic is pre-trained on (source kind ``"h36m"``).

A small copy of the dataset a published estimator (SPIN, HybrIK) is trained on: everyday actions
(:data:`posegen_ns.data.splits.SOURCE_CLIPS`: walking, sitting down / getting up, bending and picking
up, standing and gesturing) from the shipped pose bank (:func:`~posegen_ns.data.pose_bank.load_shipped_pose_bank`),
performed by several subjects (random body shapes of the rendered body and a few clothing colours)
and seen by four fixed chest-height cameras around the subject, like Human3.6M's.

Splits (:data:`H36M_SPLITS`):

- ``"train"``: source-clip frames except every :data:`~posegen_ns.data.source_common.HELDOUT_EVERY`-th
  frame of each clip; H36M cameras (below).
- ``"heldout"``: the held-out frames of the same clips, H36M cameras (in-distribution test).
- ``"other"``: frames of every non-source clip (prior and evaluation motions: jumps, dance, sports,
  martial arts, floor, climbing, ...) from any azimuth and elevations in :data:`OTHER_ELEVATION_DEG`
  at :data:`OTHER_DISTANCE_M` (where an H36M-trained estimator fails).
- ``"other_motions"``: the same unusual motions, from the H36M cameras (motion gap only).
- ``"other_views"``: the held-out source frames from unusual views: any azimuth, looking down steeply
  (elevation in :data:`STEEP_ELEVATION_DEG`), nearer and farther (view gap only).

H36M cameras (:func:`h36m_views`): azimuths :data:`H36M_AZIMUTHS_DEG` (45/135/225/315 deg from the
body's facing direction, the :func:`posegen_ns.labels.orbit_cameras` convention) plus uniform jitter of
up to :data:`AZIMUTH_JITTER_DEG`; elevation (downward look at the pelvis) in :data:`H36M_ELEVATION_DEG`;
distance in :data:`H36M_DISTANCE_M`. The four cameras of a frame are used in turn (image ``i`` takes camera
``i % 4``), so each camera sees the same share of the set.

Subjects: body shape ``betas`` with the first :data:`NUM_SHAPE_BETAS` coefficients drawn from N(0, 1)
(clamped to +-2.5), the rest 0; clothing from :func:`~posegen_ns.data.appearance.make_body_appearance`
with a seed of :data:`SUBJECT_SEEDS` (seed 0 is the default capture's clothing). Evaluation of "a person
the critic never saw" should use another clothing seed.

Framing is the same as the narrow source's: each image is rendered at ``image_size`` with intrinsics
from :func:`posegen_ns.labels.fit_intrinsics` so the body fills :data:`~posegen_ns.data.source_common.FILL`
of it (the equivalent of cropping the person from a larger H36M frame), boxes by
:func:`posegen_ns.labels.person_boxes`. :func:`render_h36m_set` returns the arrays of
:func:`posegen_ns.data.source_poses.render_source_set`; ``make_source_sampler(..., kind="h36m")`` caches
them under their own key (kind and :data:`H36M_CACHE_VERSION`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from posegen_ns.data.poses import PoseBank
from posegen_ns.errors import PoseGenInputError

__all__ = [
    "H36M_SPLITS", "H36M_AZIMUTHS_DEG", "H36M_ELEVATION_DEG", "H36M_DISTANCE_M", "AZIMUTH_JITTER_DEG",
    "OTHER_ELEVATION_DEG", "OTHER_DISTANCE_M", "STEEP_ELEVATION_DEG", "NUM_SHAPE_BETAS", "SUBJECT_SEEDS",
    "H36M_CACHE_VERSION", "h36m_pose_bank", "h36m_views", "render_h36m_set",
]

H36M_SPLITS: tuple[str, ...] = ("train", "heldout", "other", "other_motions", "other_views")
"""Splits of the H36M-like source (module docstring)."""
H36M_AZIMUTHS_DEG: tuple[float, ...] = (45.0, 135.0, 225.0, 315.0)
"""The four camera azimuths, degrees about world +y from the body's facing direction."""
AZIMUTH_JITTER_DEG = 5.0
"""Uniform jitter of each camera's azimuth, +- degrees."""
H36M_ELEVATION_DEG = (5.0, 15.0)
"""Downward look of the H36M cameras at the pelvis (chest height at 4-5 m), degrees."""
H36M_DISTANCE_M = (4.0, 5.0)
"""Camera distance from the pelvis, metres."""
OTHER_ELEVATION_DEG = (-15.0, 45.0)
"""Elevations of the ``"other"`` split (any azimuth), degrees."""
OTHER_DISTANCE_M = (2.5, 6.0)
"""Distances of the ``"other"`` and ``"other_views"`` splits, metres."""
STEEP_ELEVATION_DEG = (30.0, 60.0)
"""Elevations of the ``"other_views"`` split (looking down steeply, any azimuth), degrees."""
NUM_SHAPE_BETAS = 4
"""Shape coefficients drawn per image (N(0, 1), clamped to +-2.5); the rest are 0."""
SUBJECT_SEEDS: tuple[int, ...] = (0, 11, 12, 13, 14)
"""Clothing seeds of the source's subjects (five, as H36M's training subjects S1, S5-S8)."""
H36M_CACHE_VERSION = 1
"""Bump when the renders of this module change (part of the cache key)."""


def h36m_pose_bank(split: str) -> PoseBank:
    """The poses of one split (module docstring) from the shipped pose bank.

    ``"train"`` / ``"heldout"`` / ``"other_views"``: :data:`~posegen_ns.data.splits.SOURCE_CLIPS` frames, split by
    position within each clip (every ``HELDOUT_EVERY``-th frame held out); ``"other"`` / ``"other_motions"``:
    every frame of the prior and evaluation clips.

    Raises:
        PoseGenInputError: unknown split.
    """
    from posegen_ns.data.pose_bank import load_shipped_pose_bank
    from posegen_ns.data.source_common import HELDOUT_EVERY
    from posegen_ns.data.splits import EVAL_CLIPS, PRIOR_CLIPS, SOURCE_CLIPS

    if split not in H36M_SPLITS:
        raise PoseGenInputError(f"h36m source split {split!r} is not one of {H36M_SPLITS}.")
    if split in ("other", "other_motions"):
        return load_shipped_pose_bank(PRIOR_CLIPS + EVAL_CLIPS)
    bank = load_shipped_pose_bank(SOURCE_CLIPS)
    position = torch.zeros(len(bank), dtype=torch.long)  # frame position inside its clip (time order per clip)
    seen: dict[str, int] = {}
    for i, name in enumerate(bank.clip_names):
        position[i] = seen.get(name, 0)
        seen[name] = int(position[i]) + 1
    held = position % HELDOUT_EVERY == 0
    return bank.select(~held if split == "train" else held)


def h36m_views(num: int, split: str, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Azimuth (radians, from the body's front), elevation (radians) and distance (metres) of ``num``
    cameras of ``split``, each ``(num,)`` float64 (module docstring)."""
    u = torch.rand(num, 3, generator=gen, dtype=torch.float64)

    def span(lo_hi: tuple[float, float], x: Tensor) -> Tensor:
        return lo_hi[0] + x * (lo_hi[1] - lo_hi[0])

    if split in ("train", "heldout", "other_motions"):
        base = torch.tensor(H36M_AZIMUTHS_DEG, dtype=torch.float64)[torch.arange(num) % len(H36M_AZIMUTHS_DEG)]
        az = torch.deg2rad(base + (u[:, 0] * 2 - 1) * AZIMUTH_JITTER_DEG)
        el = torch.deg2rad(span(H36M_ELEVATION_DEG, u[:, 1]))
        dist = span(H36M_DISTANCE_M, u[:, 2])
    else:
        az = (u[:, 0] * 2 - 1) * math.pi
        el = torch.deg2rad(span(OTHER_ELEVATION_DEG if split == "other" else STEEP_ELEVATION_DEG, u[:, 1]))
        dist = span(OTHER_DISTANCE_M, u[:, 2])
    return az, el, dist


@torch.no_grad()
def render_h36m_set(body: Any, image_size: int, split: str, num_images: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Render ``num_images`` labelled images of one split (module docstring) of ``body`` (a ``BodyModel``).

    Returns:
        numpy arrays as :func:`posegen_ns.data.source_poses.render_source_set`: ``images (N, S, S, 3)`` uint8,
        ``masks (N, S, S)`` bool, ``boxes (N, 4)`` xyxy pixels, ``joints_h36m_cam (N, 17, 3)`` metres,
        ``body_pose (N, 69)``, ``global_orient_cam (N, 3)``, ``betas (N, nb)``, ``K (N, 3, 3)``; and
        ``azimuth_deg (N,)`` (camera azimuth from the body's front, degrees), ``elevation_deg (N,)``,
        ``subject (N,)`` (index into :data:`SUBJECT_SEEDS`), ``clip_index (N,)`` into ``clip_names (C,)``.
    """
    from posegen_ns.data.appearance import make_body_appearance
    from posegen_ns.data.source_common import render_tight_labelled

    bank = h36m_pose_bank(split)
    gen = torch.Generator().manual_seed(seed)  # sampling on the CPU: the same set on every device
    idx = torch.randint(len(bank), (num_images,), generator=gen)
    go = bank.global_orient[idx].double()
    body_pose = bank.body_pose[idx].float()
    az, el, dist = h36m_views(num_images, split, gen)
    betas = torch.zeros(num_images, body.num_betas)
    nb = min(NUM_SHAPE_BETAS, body.num_betas)
    betas[:, :nb] = torch.randn(num_images, nb, generator=gen).clamp(-2.5, 2.5)
    subject = torch.randint(len(SUBJECT_SEEDS), (num_images,), generator=gen)
    appearances = [make_body_appearance(body, seed=s) for s in SUBJECT_SEEDS]
    out = render_tight_labelled(body, body_pose, go, betas, az, el, dist, image_size, appearances, subject)
    clips = bank.clips
    clip_index = np.array([clips.index(bank.clip_names[i]) for i in idx.tolist()], dtype=np.int16)
    return {
        **out,
        "body_pose": body_pose.numpy(),
        "betas": betas.float().numpy(),
        "azimuth_deg": torch.rad2deg(az).float().numpy(),
        "elevation_deg": torch.rad2deg(el).float().numpy(),
        "subject": subject.to(torch.int16).numpy(),
        "clip_index": clip_index,
        "clip_names": np.array(clips),
    }
