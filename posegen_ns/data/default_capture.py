"""The default capture: the open body, dressed, in real mocap poses, seen by a calibrated camera ring.

:func:`build_default_capture` makes a complete multi-camera capture without any download, so that
``ns-train posegen-human`` runs out of the box:

- **Poses**: the mocap clips (the shipped CMU clips by default) fitted to the body
  (:func:`posegen_ns.data.poses.load_pose_bank`, cached), every ``frame_stride``-th frame, at most
  ``max_frames_per_clip`` per clip spread evenly over the clip.
- **Treadmill**: each frame's horizontal root translation is removed (the pelvis is put on the
  vertical axis x = z = 0; its height and the body's rotation are kept), so the subject stays in
  view of fixed cameras whatever the clip's path; as if the person moved on a treadmill.
- **Cameras**: ``num_cameras`` OpenCV cameras on a ring, evenly spaced in azimuth (camera 0 in
  front of a body facing +z), at elevations cycling through :data:`ELEVATIONS_DEG`, all looking at the
  median pelvis height on the axis, with a :data:`FOV_DEG` vertical field of view; their common
  distance is the smallest at which every vertex of every frame projects into every image with
  :data:`MARGIN` to spare.
- **Appearance**: the body's skin texture under shirt / trousers / shoes colours
  (:mod:`posegen_ns.data.appearance`), black background, exact masks from the z-buffer.
- **Split**: by clip; by default one clip that is not a walk is held out (novel poses).

The result is written in the native format (:func:`posegen_ns.data.capture.write_capture`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from posegen_ns.data.appearance import make_body_appearance, render_vertices
from posegen_ns.data.capture import Capture, write_capture
from posegen_ns.data.poses import PoseBank, load_pose_bank, motion_files
from posegen_ns.cli import progress, say_for
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import intrinsics_from_fov, orbit_extrinsics

DEFAULT_CAPTURE_NAME = "default_capture_v1"
FOV_DEG = 40.0
"""Vertical (and horizontal: images are square) field of view of the ring cameras."""
ELEVATIONS_DEG = (5.0, 20.0, 35.0)
"""Camera elevations above the target, cycled over the ring."""
MARGIN = 1.08
"""The body's extent may reach 1 / MARGIN of the half-image (in normalised image coordinates)."""
RENDER_CHUNK = 48
"""Images rendered per rasteriser call."""


def is_walking_clip(name: str, category: str) -> bool:
    """Walking/running clips: manifest category ``walk_run`` or ``walk`` in the name."""
    return category == "walk_run" or "walk" in name.lower()


def choose_heldout_clips(clips: Sequence[str], categories: Sequence[str], seed: int = 0) -> list[str]:
    """One held-out clip, picked with ``seed`` among the clips that are not walks (else the last
    clip); none when there is a single clip."""
    if len(clips) < 2:
        return []
    candidates = [c for c, cat in zip(clips, categories) if not is_walking_clip(c, cat)]
    if not candidates:
        return [clips[-1]]
    return [candidates[int(np.random.default_rng(seed).integers(len(candidates)))]]


def _select_frames(bank: PoseBank, max_frames_per_clip: int) -> PoseBank:
    keep: list[int] = []
    for clip in bank.clips:
        idx = [i for i, c in enumerate(bank.clip_names) if c == clip]
        if len(idx) > max_frames_per_clip:
            pick = np.unique(np.linspace(0, len(idx) - 1, max_frames_per_clip).round().astype(int))
            idx = [idx[i] for i in pick]
        keep.extend(idx)
    return bank.select(keep)


def ring_cameras(
    num_cameras: int, target: torch.Tensor, radius: float, resolution: int, points: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cameras on a ring around ``target (3,)``: azimuths ``2 pi c / C``, elevations cycling through
    :data:`ELEVATIONS_DEG`, vertical field of view :data:`FOV_DEG`, square ``resolution`` images.

    The shared distance is the smallest that keeps ``points (P, 3)`` (world, e.g. every vertex of every
    frame) in every image with :data:`MARGIN` to spare; without points, the sphere of ``radius``
    metres around the target is kept in view (an upper bound of the former when the points lie in it).

    Returns:
        ``K (C, 3, 3)``, ``R (C, 3, 3)``, ``t (C, 3)`` (OpenCV, float32).
    """
    fov = math.radians(FOV_DEG)
    az, el = _ring_angles(num_cameras)
    targets = target.double().expand(num_cameras, 3)
    far = MARGIN * radius / math.sin(0.5 * fov)
    distance = far if points is None else _fit_distance(points.double(), az, el, targets, far, math.tan(0.5 * fov) / MARGIN)
    R, t = orbit_extrinsics(az, el, torch.full_like(az, distance), targets)
    K = intrinsics_from_fov(fov, resolution, resolution).expand(num_cameras, 3, 3)
    return K.float().contiguous(), R.float(), t.float()


def _ring_angles(num_cameras: int) -> tuple[torch.Tensor, torch.Tensor]:
    az = torch.arange(num_cameras, dtype=torch.float64) * (2 * math.pi / num_cameras)
    el = torch.tensor([math.radians(ELEVATIONS_DEG[c % len(ELEVATIONS_DEG)]) for c in range(num_cameras)], dtype=torch.float64)
    return az, el


def best_target(points: torch.Tensor, num_cameras: int, pelvis_heights: torch.Tensor, candidates: int = 17) -> torch.Tensor:
    """The look-at point ``(3,)`` on the vertical axis, at the pelvis height (between the lowest and the
    highest of ``pelvis_heights (T,)``) that lets the ring come closest while keeping ``points (P, 3)``
    in view: the subject as large as possible in the images."""
    az, el = _ring_angles(num_cameras)
    limit = math.tan(0.5 * math.radians(FOV_DEG)) / MARGIN
    points = points.double()
    best = None
    for h in torch.linspace(float(pelvis_heights.min()), float(pelvis_heights.max()), candidates).tolist():
        target = torch.tensor([0.0, h, 0.0], dtype=torch.float64)
        d = _fit_distance(points, az, el, target.expand(num_cameras, 3), float("inf"), limit)
        if best is None or d < best[0] - 1e-9:
            best = (d, target)
    return best[1].float()


def _fit_distance(points: torch.Tensor, az, el, targets, far: float, limit: float) -> float:
    """Smallest camera distance (at most ``far``) at which every point projects within ``limit``
    (normalised image coordinates) of the image centre of every camera.

    A camera looking at the target from distance ``d`` sees ``q = R (p - target) + (0, 0, d)``
    (``R`` does not depend on ``d``), so ``|q_x| <= limit q_z`` holds iff ``d >= |(R(p - target))_x| /
    limit - (R(p - target))_z``; the same for y. Closed form, no search.
    """
    R, _ = orbit_extrinsics(az, el, torch.ones_like(az), targets)
    rel = torch.einsum("cij,cpj->cpi", R, points[None] - targets[:, None])  # (C, P, 3)
    need = rel[..., :2].abs().amax(-1) / limit - rel[..., 2]  # (C, P)
    need = torch.maximum(need, 0.05 - rel[..., 2])  # and in front of the camera
    return min(float(need.max()), far)


def build_default_capture(
    output_dir: Path | str,
    mocap_dir: Path | str | None = None,
    body: str = "open",
    num_cameras: int = 6,
    resolution: int = 128,
    frame_stride: int = 8,
    max_frames_per_clip: int = 12,
    heldout_clips: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = True,
) -> Path:
    """Render the default capture (module docstring) and write it in the native format.

    Args:
        output_dir: destination folder (written atomically).
        mocap_dir: folder of ``.bvh`` / AMASS ``.npz`` clips; default the shipped CMU clips.
        body: body source (``"open"``, ``"tiny"``) or SMPL file path.
        num_cameras: cameras on the ring.
        resolution: image side, pixels (square images).
        frame_stride: keep every ``frame_stride``-th mocap frame.
        max_frames_per_clip: at most this many frames per clip, spread evenly over it.
        heldout_clips: clip names (file stems) for the ``"heldout"`` split; default one non-walking clip.
        seed: clothing colours and the held-out clip choice.
        overwrite: replace an existing ``output_dir``.
        verbose: print progress.

    Returns:
        ``output_dir``.

    Raises:
        PoseGenInputError: bad arguments, an existing ``output_dir`` without ``overwrite``, unknown
            held-out clip names, or unreadable clips.
    """
    from posegen_ns.body import load_body_model

    out = Path(output_dir).expanduser()
    if out.exists() and not overwrite:
        raise PoseGenInputError(f"Output folder {out} already exists; pass overwrite=True (--overwrite) or choose another folder.")
    if num_cameras < 1 or resolution < 8 or frame_stride < 1 or max_frames_per_clip < 1:
        raise PoseGenInputError(
            "build_default_capture: need num_cameras >= 1, resolution >= 8, frame_stride >= 1, max_frames_per_clip >= 1."
        )
    say = say_for("posegen-ns", quiet=not verbose)
    t0 = time.perf_counter()
    model = load_body_model(body)
    if mocap_dir is None:
        from posegen_ns.mocap import shipped_clips_dir

        mocap_dir = shipped_clips_dir()
    files = motion_files(mocap_dir)
    say(f"fitting {len(files)} mocap clips from {mocap_dir} to body '{body}' (cached after the first run)")
    bank = _select_frames(load_pose_bank(model, files, stride=frame_stride), max_frames_per_clip)
    t_fit = time.perf_counter() - t0
    clips = bank.clips
    cats = [bank.categories[bank.clip_names.index(c)] for c in clips]
    held = choose_heldout_clips(clips, cats, seed) if heldout_clips is None else list(heldout_clips)
    unknown = sorted(set(held) - set(clips))
    if unknown:
        raise PoseGenInputError(f"build_default_capture: held-out clips {unknown} are not among the clips {clips}.")

    N = len(bank)
    betas = torch.zeros(model.num_betas)
    with torch.no_grad():
        J0 = model(torch.zeros(1, 69), betas=betas[None]).rest_joints[0, 0]  # (3,) rest pelvis
        transl = bank.transl.clone()
        transl[:, 0] = -J0[0]  # treadmill: pelvis (= J0 + transl) on the vertical axis
        transl[:, 2] = -J0[2]
        verts = model(bank.body_pose, bank.global_orient, betas.expand(N, -1), transl).vertices  # (N, V, 3)
    points = verts[:, ::3].reshape(-1, 3)  # a third of the vertices bound the extent well enough
    target = best_target(points, num_cameras, J0[1] + transl[:, 1])
    radius = float((verts - target).norm(dim=-1).max())
    K, R, t = ring_cameras(num_cameras, target, radius, resolution, points=points)
    appearance = make_body_appearance(model, seed=seed)

    C = num_cameras
    images = torch.zeros(N, C, resolution, resolution, 3, dtype=torch.uint8)
    masks = torch.zeros(N, C, resolution, resolution, dtype=torch.bool)
    pairs = [(i, c) for i in range(N) for c in range(C)]
    say(f"rendering {N} frames x {C} cameras at {resolution}x{resolution} ({len(clips)} clips; held out: {held or 'none'})")
    t1 = time.perf_counter()
    with progress("rendering", len(pairs), quiet=not verbose) as advance:
        for s in range(0, len(pairs), RENDER_CHUNK):
            chunk = pairs[s : s + RENDER_CHUNK]
            fi = torch.tensor([p[0] for p in chunk])
            ci = torch.tensor([p[1] for p in chunk])
            r = render_vertices(verts[fi], model.faces, appearance, K[ci], R[ci], t[ci], resolution, resolution)
            images[fi, ci] = (r.rgb.clamp(0, 1) * 255).round().to(torch.uint8)
            masks[fi, ci] = r.mask > 0.5
            advance(len(chunk))
    t_render = time.perf_counter() - t1
    capture = Capture(
        images=images, masks=masks, K=K, R=R, t=t,
        global_orient=bank.global_orient.float(), body_pose=bank.body_pose.float(), transl=transl.float(),
        betas=betas.float(), clip_names=list(bank.clip_names), frame_ids=bank.frame_ids.long(),
        split=["heldout" if c in held else "train" for c in bank.clip_names],
        body=str(body), camera_names=[f"cam{c:02d}" for c in range(C)],
    )
    write_capture(capture, out, overwrite=overwrite)
    say(
        f"wrote {out}: {N} frames x {C} cameras in {time.perf_counter() - t0:.1f} s "
        f"(fit {t_fit:.1f} s, render {t_render:.1f} s); mean mask coverage {masks.float().mean():.1%}"
    )
    return out


def default_capture_dir() -> Path:
    """``cache_dir()/default_capture_v1``, built with :func:`build_default_capture` defaults on first use."""
    from posegen_ns.body.smpl_files import cache_dir

    path = cache_dir() / DEFAULT_CAPTURE_NAME
    if not (path / "capture.json").is_file():
        print(f"posegen-ns: building the default capture in {path} (open body, shipped CMU clips; once, about 20-60 s)")
        build_default_capture(path, overwrite=True)
    return path
