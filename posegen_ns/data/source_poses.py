"""The narrow "source" pose set that the default critic is pre-trained on.

It mimics a 3D pose estimator trained on a limited public dataset: people walking or standing,
seen from the front. Splits:

- ``"train"``: frames of the walking clips (manifest category ``walk_run`` or ``walk`` in the name),
  except every :data:`HELDOUT_EVERY`-th frame; frontal views (camera azimuth within
  :data:`SOURCE_AZIMUTH_DEG` of the body's facing direction, elevation in :data:`SOURCE_ELEVATION_DEG`).
- ``"heldout"``: the held-out frames of the same clips, same views (in-distribution test).
- ``"other"``: every frame of all other shipped clips, from any azimuth and elevations in
  :data:`OTHER_ELEVATION_DEG` (out-of-distribution test; where PoseGen should help).

Each image is rendered directly at ``image_size`` with the person centred and filling most of the
frame: the camera orbits the pelvis at a random distance (the camera rule of :mod:`posegen_ns.labels`), and
its intrinsics are chosen (:func:`posegen_ns.labels.fit_intrinsics`) so that
the projected body's bounding square spans :data:`FILL` of the image (the equivalent of cropping a
larger image, so ``K`` differs per image and is returned). Renders use the capture's appearance
(:mod:`posegen_ns.data.appearance`) and are cached as ``.npz`` in ``cache_dir()/source_images``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import read_cache, save_npz
from posegen_ns.data.appearance import make_body_appearance
from posegen_ns.data.default_capture import is_walking_clip
from posegen_ns.data.poses import PoseBank, body_id, load_pose_bank
from posegen_ns.errors import PoseGenInputError
from posegen_ns.data.source_common import FILL, HELDOUT_EVERY, RENDER_CHUNK, render_tight_labelled  # noqa: F401 (FILL, RENDER_CHUNK re-exported)

SPLITS = ("train", "heldout", "other")
SOURCE_AZIMUTH_DEG = 30.0
SOURCE_ELEVATION_DEG = (-5.0, 15.0)
OTHER_ELEVATION_DEG = (-15.0, 45.0)
DISTANCE_M = (2.5, 5.0)

POSE_STRIDE = 2
_CACHE_VERSION = 2  # 2: cameras by posegen_ns.labels (orbit the pelvis, azimuth from the body's front)

SampleBatch = Callable[[int, torch.Generator], dict]


def source_pose_bank(body: Any, split: str) -> PoseBank:
    """The poses of one split (module docstring) from the shipped clips, fitted to ``body``.

    Raises:
        PoseGenInputError: unknown split, or no clip of the split among the shipped clips.
    """
    if split not in SPLITS:
        raise PoseGenInputError(f"source split {split!r} is not one of {SPLITS}.")
    bank = load_pose_bank(body, stride=POSE_STRIDE)
    walking = torch.tensor([is_walking_clip(n, c) for n, c in zip(bank.clip_names, bank.categories)])
    # position of each frame inside its clip (bank order is time order per clip)
    position = torch.zeros(len(bank), dtype=torch.long)
    seen: dict[str, int] = {}
    for i, name in enumerate(bank.clip_names):
        position[i] = seen.get(name, 0)
        seen[name] = int(position[i]) + 1
    held = position % HELDOUT_EVERY == 0
    keep = {"train": walking & ~held, "heldout": walking & held, "other": ~walking}[split]
    if not bool(keep.any()):
        raise PoseGenInputError(f"No shipped clip gives source split {split!r} (clips: {bank.clips}).")
    return bank.select(keep)


def _views(num: int, split: str, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Azimuth (radians, from the body's front), elevation (radians) and distance (metres) of ``num`` cameras."""
    u = torch.rand(num, 3, generator=gen, dtype=torch.float64)
    if split == "other":
        az = (u[:, 0] * 2 - 1) * math.pi
        lo, hi = OTHER_ELEVATION_DEG
    else:
        az = (u[:, 0] * 2 - 1) * math.radians(SOURCE_AZIMUTH_DEG)
        lo, hi = SOURCE_ELEVATION_DEG
    el = torch.deg2rad(lo + u[:, 1] * (hi - lo))
    dist = DISTANCE_M[0] + u[:, 2] * (DISTANCE_M[1] - DISTANCE_M[0])
    return az, el, dist


@torch.no_grad()
def render_source_set(body, image_size: int, split: str, num_images: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Render ``num_images`` labelled images of one split (module docstring).

    Returns:
        numpy arrays: ``images (N, S, S, 3)`` uint8, ``boxes (N, 4)``, ``joints_h36m_cam (N, 17, 3)``,
        ``body_pose (N, 69)``, ``global_orient_cam (N, 3)``, ``betas (N, nb)``, ``K (N, 3, 3)``,
        ``masks (N, S, S)`` bool.
    """
    bank = source_pose_bank(body, split)
    gen = torch.Generator().manual_seed(seed)  # sampling on the CPU: the same set on every device
    idx = torch.randint(len(bank), (num_images,), generator=gen)
    body_pose = bank.body_pose[idx].float()
    az, el, dist = _views(num_images, split, gen)
    betas = torch.zeros(num_images, body.num_betas)
    out = render_tight_labelled(body, body_pose, bank.global_orient[idx].double(), betas, az, el, dist, image_size,
                                [make_body_appearance(body)])
    return {**out, "body_pose": body_pose.numpy(), "betas": betas.float().numpy()}


def _cache_root() -> Path:
    from posegen_ns.body.smpl_files import cache_dir

    return cache_dir() / "source_images"


SOURCE_KINDS = ("narrow", "h36m")
"""Source sets: ``"narrow"`` (this module: walking, frontal views; the default) and ``"h36m"``
(:mod:`posegen_ns.data.h36m_source`: Human3.6M-like actions, cameras and subjects)."""

_BATCH_KEYS = ("images", "boxes", "joints_h36m_cam", "body_pose", "global_orient_cam", "betas", "K")


def source_cache_path(body, image_size: int, split: str, num_images: int, seed: int, kind: str = "narrow") -> Path:
    """``cache_dir()/source_images/<body-id>-<split>-s<size>-n<count>-seed<seed>-v<version>.npz`` for the
    ``"narrow"`` kind; ``<body-id>-h36m-<split>-...-v<H36M_CACHE_VERSION>.npz`` for ``"h36m"``."""
    if kind == "h36m":
        from posegen_ns.data.h36m_source import H36M_CACHE_VERSION

        return _cache_root() / f"{body_id(body)}-h36m-{split}-s{image_size}-n{num_images}-seed{seed}-v{H36M_CACHE_VERSION}.npz"
    return _cache_root() / f"{body_id(body)}-{split}-s{image_size}-n{num_images}-seed{seed}-v{_CACHE_VERSION}.npz"


def _read_source_cache(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a source-render cache file; raises if it is unreadable or lacks a batch key."""
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    missing = [k for k in _BATCH_KEYS if k not in data]
    if missing:
        raise ValueError(f"keys {missing} missing")
    return data


def make_source_sampler(
    body: Any, image_size: int, split: str, num_images: int = 2000, seed: int = 0, kind: str = "narrow"
) -> SampleBatch:
    """Render (once, cached) a split of the source set and return a batch sampler over it.

    Args:
        body: :class:`~posegen_ns.body.BodyModel` or body source name / SMPL path.
        image_size: image side S, pixels.
        split: ``"train"``, ``"heldout"`` or ``"other"`` (module docstring); the ``"h36m"`` kind also has
            ``"other_motions"`` and ``"other_views"`` (:data:`posegen_ns.data.h36m_source.H36M_SPLITS`).
        num_images: images rendered for the split.
        seed: pose and view sampling.
        kind: which source set (:data:`SOURCE_KINDS`); ``"narrow"`` is the default critic's.

    Returns:
        ``sample(batch_size, generator) -> dict`` with (B = batch_size) ``images (B, 3, S, S)`` float
        in [0, 1]; ``boxes (B, 4)`` xyxy pixels, a square around the projected H36M joints with
        margin 1.2; ``joints_h36m_cam (B, 17, 3)`` camera frame (OpenCV), metres;
        ``body_pose (B, 69)``; ``global_orient_cam (B, 3)`` (``R_cam R(global_orient)`` as axis-angle);
        ``betas (B, nb)``; ``K (B, 3, 3)``.

    Raises:
        PoseGenInputError: unknown split or bad sizes.
    """
    from posegen_ns.body import BodyModel, load_body_model
    from posegen_ns.data.h36m_source import H36M_SPLITS, render_h36m_set

    if kind not in SOURCE_KINDS:
        raise PoseGenInputError(f"make_source_sampler: kind {kind!r} is not one of {SOURCE_KINDS}.")
    splits = H36M_SPLITS if kind == "h36m" else SPLITS
    if split not in splits:
        raise PoseGenInputError(f"make_source_sampler: split {split!r} is not one of {splits}.")
    if image_size < 8 or num_images < 1:
        raise PoseGenInputError("make_source_sampler: need image_size >= 8 and num_images >= 1.")
    if not isinstance(body, BodyModel):
        body = load_body_model(body)
    path = source_cache_path(body, image_size, split, num_images, seed, kind)
    data = read_cache(path, _read_source_cache, f"'{split}' {kind} source renders")  # a damaged file is re-rendered
    if data is None:
        print(f"posegen-ns: rendering {num_images} '{split}' {kind} source images at {image_size}px (cached in {path.parent})")
        render = render_h36m_set if kind == "h36m" else render_source_set
        data = render(body, image_size, split, num_images, seed)
        save_npz(path, data, compressed=True)
    tensors = {k: torch.from_numpy(data[k]) for k in _BATCH_KEYS}
    n = tensors["images"].shape[0]

    def sample(batch_size: int, generator: torch.Generator) -> dict:
        idx = torch.randint(n, (batch_size,), generator=generator, device=generator.device).cpu()
        batch = {k: v[idx] for k, v in tensors.items()}
        batch["images"] = batch["images"].permute(0, 3, 1, 2).float() / 255.0
        return batch

    return sample

