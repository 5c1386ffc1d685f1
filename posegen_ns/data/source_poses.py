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
frame: the camera orbits the body's centre at a random distance, and its intrinsics are chosen so that
the projected body's bounding square spans :data:`FILL` of the image (the equivalent of cropping a
larger image, so ``K`` differs per image and is returned). Renders use the capture's appearance
(:mod:`posegen_ns.data.appearance`) and are cached as ``.npz`` in ``cache_dir()/source_images``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adapters.crop import boxes_from_joints
from posegen_ns.data.appearance import make_body_appearance, render_vertices
from posegen_ns.data.default_capture import is_walking_clip
from posegen_ns.data.poses import PoseBank, body_id, load_pose_bank
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle, orbit_extrinsics, project_points

SPLITS = ("train", "heldout", "other")
HELDOUT_EVERY = 5
SOURCE_AZIMUTH_DEG = 30.0
SOURCE_ELEVATION_DEG = (-5.0, 15.0)
OTHER_ELEVATION_DEG = (-15.0, 45.0)
DISTANCE_M = (2.5, 5.0)
FILL = 0.85
BOX_SCALE = 1.2
POSE_STRIDE = 2
RENDER_CHUNK = 32
_CACHE_VERSION = 1

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


def _views(num: int, facing: Tensor, split: str, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Azimuth, elevation (radians) and distance (metres) of ``num`` cameras; ``facing (num,)``."""
    u = torch.rand(num, 3, generator=gen, dtype=torch.float64)
    if split == "other":
        az = (u[:, 0] * 2 - 1) * math.pi
        lo, hi = OTHER_ELEVATION_DEG
    else:
        az = facing + (u[:, 0] * 2 - 1) * math.radians(SOURCE_AZIMUTH_DEG)
        lo, hi = SOURCE_ELEVATION_DEG
    el = torch.deg2rad(lo + u[:, 1] * (hi - lo))
    dist = DISTANCE_M[0] + u[:, 2] * (DISTANCE_M[1] - DISTANCE_M[0])
    return az, el, dist


def fit_intrinsics(points_cam: Tensor, image_size: int, fill: float = FILL) -> Tensor:
    """Intrinsics ``K (B, 3, 3)`` that centre ``points_cam (B, N, 3)`` (camera frame, z > 0) in a
    square image and make their bounding square span ``fill`` of it."""
    xy = points_cam[..., :2] / points_cam[..., 2:3]  # (B, N, 2) normalised image coordinates
    lo, hi = xy.amin(1), xy.amax(1)  # (B, 2)
    f = fill * image_size / (hi - lo).amax(-1).clamp_min(1e-6)  # (B,)
    c = 0.5 * image_size - f[:, None] * 0.5 * (lo + hi)  # (B, 2)
    K = torch.zeros(points_cam.shape[0], 3, 3, dtype=points_cam.dtype, device=points_cam.device)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, c[:, 0], c[:, 1], 1.0
    return K


@torch.no_grad()
def render_source_set(body, image_size: int, split: str, num_images: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Render ``num_images`` labelled images of one split (module docstring).

    Returns:
        numpy arrays: ``images (N, S, S, 3)`` uint8, ``boxes (N, 4)``, ``joints_h36m_cam (N, 17, 3)``,
        ``body_pose (N, 69)``, ``global_orient_cam (N, 3)``, ``betas (N, nb)``, ``K (N, 3, 3)``,
        ``masks (N, S, S)`` bool.
    """
    bank = source_pose_bank(body, split)
    dev = body.v_template.device
    gen = torch.Generator().manual_seed(seed)  # sampling on the CPU: the same set on every device
    idx = torch.randint(len(bank), (num_images,), generator=gen)
    go = bank.global_orient[idx].double()
    body_pose = bank.body_pose[idx].float()
    R_go = axis_angle_to_matrix(go)  # (N, 3, 3)
    fwd = R_go[:, :, 2]  # body +z (its front) in the world
    facing = torch.atan2(fwd[:, 0], fwd[:, 2])
    az, el, dist = _views(num_images, facing, split, gen)
    betas = torch.zeros(num_images, body.num_betas)
    out = body(body_pose.to(dev), go.float().to(dev), betas.to(dev))  # no translation
    verts, joints = out.vertices.double(), out.joints_h36m.double()
    centre = 0.5 * (verts.amin(1) + verts.amax(1))  # (N, 3) centre of the body's box
    az, el, dist, R_go = az.to(dev), el.to(dev), dist.to(dev), R_go.to(dev)
    R, t = orbit_extrinsics(az, el, dist, centre)
    verts_cam = torch.einsum("bij,bvj->bvi", R, verts) + t[:, None]
    K = fit_intrinsics(verts_cam, image_size)
    uv, joints_cam = project_points(joints, K, R, t)
    appearance = make_body_appearance(body)
    images = np.zeros((num_images, image_size, image_size, 3), dtype=np.uint8)
    masks = np.zeros((num_images, image_size, image_size), dtype=bool)
    for s in range(0, num_images, RENDER_CHUNK):
        sl = slice(s, s + RENDER_CHUNK)
        r = render_vertices(verts[sl].float(), body.faces, appearance, K[sl].float(), R[sl].float(), t[sl].float(), image_size, image_size)
        images[sl] = (r.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        masks[sl] = (r.mask > 0.5).cpu().numpy()
    return {
        "images": images,
        "masks": masks,
        "boxes": boxes_from_joints(uv, scale=BOX_SCALE).float().cpu().numpy(),
        "joints_h36m_cam": joints_cam.float().cpu().numpy(),
        "body_pose": body_pose.numpy(),
        "global_orient_cam": matrix_to_axis_angle(R @ R_go).float().cpu().numpy(),
        "betas": betas.float().numpy(),
        "K": K.float().cpu().numpy(),
    }


def _cache_root() -> Path:
    from posegen_ns.body.smpl_files import cache_dir

    return cache_dir() / "source_images"


def source_cache_path(body, image_size: int, split: str, num_images: int, seed: int) -> Path:
    """``cache_dir()/source_images/<body-id>-<split>-s<size>-n<count>-seed<seed>-v1.npz``."""
    return _cache_root() / f"{body_id(body)}-{split}-s{image_size}-n{num_images}-seed{seed}-v{_CACHE_VERSION}.npz"


def make_source_sampler(body: Any, image_size: int, split: str, num_images: int = 2000, seed: int = 0) -> SampleBatch:
    """Render (once, cached) a split of the source set and return a batch sampler over it.

    Args:
        body: :class:`~posegen_ns.body.BodyModel` or body source name / SMPL path.
        image_size: image side S, pixels.
        split: ``"train"``, ``"heldout"`` or ``"other"`` (module docstring).
        num_images: images rendered for the split.
        seed: pose and view sampling.

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

    if split not in SPLITS:
        raise PoseGenInputError(f"make_source_sampler: split {split!r} is not one of {SPLITS}.")
    if image_size < 8 or num_images < 1:
        raise PoseGenInputError("make_source_sampler: need image_size >= 8 and num_images >= 1.")
    if not isinstance(body, BodyModel):
        body = load_body_model(body)
    path = source_cache_path(body, image_size, split, num_images, seed)
    data = None
    if path.is_file():
        try:
            with np.load(path) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception:  # noqa: BLE001 - a damaged cache is re-rendered
            data = None
    if data is None:
        print(f"posegen-ns: rendering {num_images} '{split}' source images at {image_size}px (cached in {path.parent})")
        data = render_source_set(body, image_size, split, num_images, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **data)
        os.replace(tmp, path)
    tensors = {k: torch.from_numpy(v) for k, v in data.items() if k != "masks"}
    n = tensors["images"].shape[0]

    def sample(batch_size: int, generator: torch.Generator) -> dict:
        idx = torch.randint(n, (batch_size,), generator=generator, device=generator.device).cpu()
        batch = {k: v[idx] for k, v in tensors.items()}
        batch["images"] = batch["images"].permute(0, 3, 1, 2).float() / 255.0
        return batch

    return sample

