"""``ns-posegen-eval``: how well a critic (3D pose estimator) does on a subject rendered in given motions.

Two modes, one console script:

- **Motions** (``--poses BVH_OR_NPZ_DIR``): the capture's subject (its body model and betas) is posed
  in every (strided) frame of every motion file, rendered from a camera set, and the critic's 3D
  joints are compared with the exact joints of the posed body. Appearance: the capture writer's
  (:func:`~posegen_ns.data.appearance.make_body_appearance`, mesh rasteriser), or with
  ``--load-config RUN/config.yml`` the trained human field of that ``ns-train`` run
  (``pipeline.model.render``).
- **Benchmarks** (``--benchmark 3dpw|h36m-p1|h36m-p2|mpi-inf-3dhp``): a benchmark's own images and
  SPIN's ``dataset_extras`` npz; see :mod:`posegen_ns.benchmarks`.

Camera set (motions mode): ``--cameras N`` azimuths ``2 pi c / N`` (relative to the direction the
body faces, so azimuth 0 is a frontal view; world-fixed with ``--no-azimuth-relative-to-body``) at
every elevation of ``--elevations`` (degrees), all at ``--distance`` metres from the pelvis and looking
at it, principal point at the image centre. The focal length frames the subject like the capture and
the pipeline's sampler: the subject's rest-pose height spans ``--fill`` of the image height at
``--distance`` (0.75 at 3 m is the pipeline's ``base_focal`` for a 1.75 m person). Critic boxes come
from the projected H36M-17 joints (:func:`adapters.crop.boxes_from_joints`, ``--box-scale``), as the
default critic was trained.

Metrics (:mod:`posegen_ns.metrics`, in the critic's joint set, :func:`gt_joints_for`): MPJPE and
PA-MPJPE in millimetres, 3D-PCK at 150 mm and its AUC over 0..150 mm, per image, then averaged per
clip and over all images (``overall`` weights every image equally). The JSON written by ``--json`` is
``{"overall": {...}, "clips": {name: {...}}, "views": {name: {...}}, "config": {...}}`` with metric
keys ``mpjpe_mm``, ``pa_mpjpe_mm``, ``pck150``, ``auc``, ``num_images``.

Example::

    ns-posegen-eval --capture ~/.cache/posegen-ns/default_capture_v1 --poses ../shared/data/mocap/cmu \\
        --exclude-capture-clips --stride 16 --json eval.json
"""

from __future__ import annotations

import fnmatch
import json as jsonlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from adapters.crop import boxes_from_joints
from adapters.protocol import Critic
from posegen_ns.body.model import BodyModel, BodyOutput
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, orbit_extrinsics, project_points
from posegen_ns.metrics import Root, auc, mpjpe, pa_mpjpe, pck, root_align

METRIC_KEYS: tuple[str, ...] = ("mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc")
"""Per-image metrics computed by :func:`per_sample_metrics` (mm, mm, fraction, fraction)."""

RenderFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int], Tensor]
"""``render(body_pose (B, 69), global_orient (B, 3), transl (B, 3), K (B, 3, 3), R (B, 3, 3), t (B, 3),
size) -> rgb (B, size, size, 3)`` in [0, 1]: the subject in the given poses and OpenCV cameras."""


# ---- ground truth ---------------------------------------------------------------------------------
def gt_joints_for(joint_set: str, body_output: BodyOutput) -> tuple[Tensor, Root]:
    """Ground-truth joints of a posed body in a critic's joint set, and the root to align them at.

    Args:
        joint_set: the critic's ``joint_set``: ``"h36m17"`` (``body_output.joints_h36m``, the body's
            H36M regressor, SPIN's order), ``"smpl24"`` (``body_output.joints``) or ``"lsp14"``
            (``body_output.joints_lsp``, the H36M-17 subset :data:`~posegen_ns.body.joint_sets.H36M_TO_LSP14`).
        body_output: the posed body (any frame: world or camera).

    Returns:
        ``joints (B, J, 3)`` in the frame of ``body_output`` (not root-aligned) and the
        :data:`~posegen_ns.metrics.Root` for :mod:`posegen_ns.metrics`: ``0`` (pelvis) for
        H36M-17 and SMPL-24, ``"midhip_lsp"`` (mean of the two hips; SPIN's LSP pelvis) for LSP-14.

    Raises:
        PoseGenInputError: an unknown joint set.
    """
    if joint_set == "h36m17":
        return body_output.joints_h36m, 0
    if joint_set == "smpl24":
        return body_output.joints, 0
    if joint_set == "lsp14":
        return body_output.joints_lsp, "midhip_lsp"
    raise PoseGenInputError(f"critic joint set {joint_set!r} is not one of 'h36m17', 'smpl24', 'lsp14'.")


def to_camera(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """World points ``(B, J, 3)`` -> OpenCV camera frame ``R x + t`` ``(B, J, 3)``; ``R (B, 3, 3)``, ``t (B, 3)``."""
    return torch.einsum("bij,bnj->bni", R, points) + t[:, None, :]


def camera_gt(joint_set: str, body_output: BodyOutput, R: Tensor, t: Tensor) -> tuple[Tensor, Root]:
    """Root-relative ground truth ``(B, J, 3)`` in the camera frame (what a critic predicts) for a
    world-frame ``body_output`` seen by cameras ``R (B, 3, 3)``, ``t (B, 3)``; and its root."""
    joints, root = gt_joints_for(joint_set, body_output)
    return root_align(to_camera(joints, R, t), root), root


# ---- metrics --------------------------------------------------------------------------------------
def per_sample_metrics(pred: Tensor, gt: Tensor, root: Root = 0) -> dict[str, Tensor]:
    """Per-image metrics of :data:`METRIC_KEYS`, each ``(B,)``, for ``pred``, ``gt`` ``(B, J, 3)``
    metres (same frame and joint order): MPJPE and PA-MPJPE in mm, PCK@150 mm and AUC (0..150 mm)
    as fractions, errors after aligning both sets at ``root`` (PA-MPJPE: similarity Procrustes)."""
    pred, gt = pred.detach().double(), gt.detach().double()
    return {
        "mpjpe_mm": 1000.0 * mpjpe(pred, gt, root),
        "pa_mpjpe_mm": 1000.0 * pa_mpjpe(pred, gt),
        "pck150": pck(pred, gt, 0.150, root),
        "auc": auc(pred, gt, root=root),
    }


def summarize(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of per-image metric arrays ``(N,)`` plus ``num_images``."""
    n = len(next(iter(values.values()))) if values else 0
    out = {k: float(np.mean(v)) if n else float("nan") for k, v in values.items()}
    out["num_images"] = n
    return out


class MetricAccumulator:
    """Collects per-image metrics under group names (clips, views) and summarises them."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {}

    def add(self, kind: str, names: Sequence[str], metrics: dict[str, Tensor]) -> None:
        """Add a batch: ``names[b]`` is the group of image ``b`` within ``kind`` (e.g. ``"clips"``)."""
        arrays = {k: v.cpu().numpy() for k, v in metrics.items()}
        names = list(names)
        store = self.groups.setdefault(kind, {})
        for name in dict.fromkeys(names):
            sel = np.array([n == name for n in names])
            group = store.setdefault(name, {})
            for k, v in arrays.items():
                group.setdefault(k, []).append(v[sel])

    def summary(self, kind: str) -> dict[str, dict[str, float]]:
        """``{group: summarize(...)}`` for one kind, in insertion order."""
        return {
            name: summarize({k: np.concatenate(v) for k, v in group.items()})
            for name, group in self.groups.get(kind, {}).items()
        }


# ---- cameras --------------------------------------------------------------------------------------
def view_ring(num_cameras: int, elevations_deg: Sequence[float]) -> tuple[Tensor, Tensor, list[str]]:
    """The camera set: every one of ``num_cameras`` azimuths ``2 pi c / N`` at every elevation.

    Returns:
        ``azimuth (V,)``, ``elevation (V,)`` radians (float64), and V names ``"az045_el+20"``;
        ``V = num_cameras * len(elevations_deg)``, elevation-major.

    Raises:
        PoseGenInputError: no cameras or no elevations.
    """
    if num_cameras < 1 or len(elevations_deg) == 0:
        raise PoseGenInputError(f"--cameras must be >= 1 and --elevations non-empty (got {num_cameras}, {list(elevations_deg)}).")
    az_deg = [360.0 * c / num_cameras for c in range(num_cameras)]
    pairs = [(a, e) for e in elevations_deg for a in az_deg]
    names = [f"az{round(a):03d}_el{round(e):+03d}" for a, e in pairs]
    az = torch.tensor([math.radians(a) for a, _ in pairs], dtype=torch.float64)
    el = torch.tensor([math.radians(e) for _, e in pairs], dtype=torch.float64)
    return az, el, names


def framing_focal(body: BodyModel, betas: Tensor, resolution: int, distance: float, fill: float) -> float:
    """Focal length (pixels) at which the subject's rest-pose height spans ``fill`` of a
    ``resolution``-pixel image at ``distance`` metres: ``f = fill * resolution * distance / height``."""
    with torch.no_grad():
        verts = body(torch.zeros(1, 69, device=betas.device), betas=betas[None]).vertices[0]  # (V, 3)
    height = float(verts[:, 1].max() - verts[:, 1].min())
    return fill * resolution * distance / max(height, 1e-3)


def eval_cameras(
    global_orient: Tensor,  # (B, 3)
    pelvis: Tensor,  # (B, 3)
    azimuth: Tensor,  # (B,)
    elevation: Tensor,  # (B,)
    distance: float,
    focal: float,
    resolution: int,
    relative_to_body: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """OpenCV cameras orbiting the pelvis (world y-up, metres, radians).

    Azimuth is about world +y and, with ``relative_to_body``, measured from the direction the body
    faces (its +z axis rotated by ``global_orient``; as the pipeline's sampler), so 0 is frontal.

    Returns:
        ``K (B, 3, 3)`` (focal ``focal`` px, principal point at the image centre), ``R (B, 3, 3)``,
        ``t (B, 3)``, float32.
    """
    B = global_orient.shape[0]
    az = azimuth.to(pelvis)
    if relative_to_body:
        forward = axis_angle_to_matrix(global_orient.float())[:, :, 2]  # (B, 3) body front in the world
        az = az + torch.atan2(forward[:, 0], forward[:, 2]).to(az)
    dist = torch.full_like(az, float(distance))
    R, t = orbit_extrinsics(az, elevation.to(az), dist, pelvis)
    K = torch.zeros(B, 3, 3, dtype=pelvis.dtype, device=pelvis.device)
    K[:, 0, 0] = K[:, 1, 1] = focal
    K[:, 0, 2] = K[:, 1, 2] = resolution / 2.0
    K[:, 2, 2] = 1.0
    return K.float(), R.float(), t.float()


# ---- renderers ------------------------------------------------------------------------------------
def mesh_renderer(body: BodyModel, betas: Tensor, appearance_seed: int = 0) -> RenderFn:
    """A :data:`RenderFn` drawing the body mesh dressed by :func:`~posegen_ns.data.appearance.make_body_appearance`
    (the capture writer's look) with the CPU/GPU z-buffer rasteriser; ``betas (nb,)``."""
    from posegen_ns.data.appearance import make_body_appearance, render_vertices

    appearance = make_body_appearance(body, seed=appearance_seed)

    @torch.no_grad()
    def render(body_pose, global_orient, transl, K, R, t, size):
        b = betas[None].expand(body_pose.shape[0], -1)
        verts = body(body_pose, global_orient, b, transl).vertices
        return render_vertices(verts, body.faces, appearance, K, R, t, size, size).rgb.clamp(0, 1)

    return render


def field_renderer(model: Any) -> RenderFn:
    """A :data:`RenderFn` from a trained posegen-human model (``pipeline.model``): its Gaussian field
    in the subject's betas (``model.render``)."""

    @torch.no_grad()
    def render(body_pose, global_orient, transl, K, R, t, size):
        return model.render(body_pose, global_orient, transl, K, R, t, size, size).rgb.clamp(0, 1)

    return render


# ---- the evaluation loop --------------------------------------------------------------------------
@dataclass
class EvalBatch:
    """B rendered images of one clip with their labels (camera frame, OpenCV axes, metres)."""

    clip: str
    images: Tensor  # (B, 3, H, W) RGB in [0, 1]
    boxes: Tensor  # (B, 4) xyxy pixels
    gt: Tensor  # (B, J, 3) root-relative joints in the critic's joint set
    root: Root  # root of the joint set (for the metrics)
    frame_index: Tensor  # (B,) frame within the clip (after striding)
    view_index: Tensor  # (B,) index into the camera set


@dataclass
class ViewConfig:
    """The camera set and framing (see the module docstring)."""

    num_cameras: int = 8
    elevations_deg: tuple[float, ...] = (0.0, 20.0)
    distance: float = 3.0
    fill: float = 0.75
    resolution: int = 128
    relative_to_body: bool = True
    box_scale: float = 1.2


def iter_eval_batches(
    motions: Sequence[Any],
    body: BodyModel,
    betas: Tensor,  # (nb,)
    render: RenderFn,
    joint_set: str,
    views: ViewConfig,
    batch_size: int = 32,
) -> Iterator[EvalBatch]:
    """Render every (frame, view) pair of every motion, clip by clip, frames outer and views inner
    (image ``k`` of a clip is frame ``k // V``, view ``k % V``). Deterministic order.

    Args:
        motions: :class:`~posegen_ns.mocap.Motion` objects fitted to ``body``; their translation is
            ignored (the pelvis is the orbit centre; labels are root-relative), their betas too
            (the subject's ``betas`` are used).
        body: the subject's body model; ``betas`` its shape, on the body's device.
        render: a :data:`RenderFn`.
        joint_set: the critic's joint set (:func:`gt_joints_for`).
        views: the camera set.
        batch_size: images per batch.
    """
    dev = betas.device
    az_all, el_all, _ = view_ring(views.num_cameras, views.elevations_deg)
    V = az_all.shape[0]
    focal = framing_focal(body, betas, views.resolution, views.distance, views.fill)
    for motion in motions:
        T = len(motion)
        for s in range(0, T * V, batch_size):
            k = torch.arange(s, min(s + batch_size, T * V))
            fi, vi = k // V, k % V
            bp = motion.body_pose[fi].to(dev).float()
            go = motion.global_orient[fi].to(dev).float()
            transl = torch.zeros(len(k), 3, device=dev)
            with torch.no_grad():
                out = body(bp, go, betas[None].expand(len(k), -1), transl)
            K, R, t = eval_cameras(go, out.joints[:, 0], az_all[vi].to(dev), el_all[vi].to(dev), views.distance, focal,
                                   views.resolution, views.relative_to_body)
            rgb = render(bp, go, transl, K, R, t, views.resolution)  # (B, S, S, 3)
            uv, _ = project_points(out.joints_h36m, K, R, t)
            gt, root = camera_gt(joint_set, out, R, t)
            yield EvalBatch(
                clip=motion.name, images=rgb.permute(0, 3, 1, 2).contiguous(), boxes=boxes_from_joints(uv, views.box_scale),
                gt=gt, root=root, frame_index=fi, view_index=vi,
            )


@torch.no_grad()
def score_batches(critic: Critic, batches: Iterator[EvalBatch], view_names: Sequence[str] | None = None,
                  progress: Callable[[int], None] | None = None) -> MetricAccumulator:
    """Run ``critic`` on every batch and accumulate per-image metrics under ``"clips"``,
    ``"views"`` (names from ``view_names``) and ``"overall"``."""
    acc = MetricAccumulator()
    device = _module_device(critic)
    for batch in batches:
        pred = critic(batch.images.to(device), batch.boxes.to(device))
        m = per_sample_metrics(pred.to(batch.gt.device), batch.gt, batch.root)
        B = batch.gt.shape[0]
        acc.add("clips", [batch.clip] * B, m)
        acc.add("overall", ["overall"] * B, m)
        if view_names is not None:
            acc.add("views", [view_names[int(v)] for v in batch.view_index], m)
        if progress is not None:
            progress(B)
    return acc


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


# ---- configuration and CLI ------------------------------------------------------------------------
@dataclass
class EvalConfig:
    """Evaluate a 3D pose critic on the capture's subject rendered in given motions, or on a benchmark's files."""

    capture: Path | None = None
    """Capture folder (native format or ZJU-MoCap) whose subject (body model + betas) is rendered."""
    poses: Path | None = None
    """A folder of motion files (.bvh / AMASS .npz, searched recursively) or one such file."""
    critic: str = "hmr"
    """Critic name (built-in 'hmr'/'spin', an entry point of 'posegen.critics', or 'run': the critic of --load-config's run)."""
    checkpoint: str = "default"
    """Critic weights: 'default' (for hmr: the project's pre-trained default critic, built on first use), 'none' (random), or a file path."""
    critic_body: str | None = None
    """Body the hmr critic predicts with: 'open', 'tiny' or an SMPL file path; default the subject's body (benchmarks: 'open')."""
    backbone: Literal["resnet18", "resnet34", "resnet50"] | None = None
    """hmr backbone; default from the checkpoint (resnet18 for the default critic, resnet50 for SPIN's file)."""
    input_size: int | None = None
    """hmr crop side in pixels; default from the checkpoint."""
    j_regressor_h36m: Path | None = None
    """SPIN's J_regressor_h36m.npy, needed by official SMPL files (critic and ground-truth bodies)."""
    cameras: int = 8
    """Cameras on the ring around the pelvis (azimuths 360 c / N degrees)."""
    elevations: tuple[float, ...] = (0.0, 20.0)
    """Camera elevations in degrees; every azimuth is used at every elevation."""
    distance: float = 3.0
    """Camera distance from the pelvis, metres."""
    fill: float = 0.75
    """Fraction of the image height the subject's rest-pose height spans (sets the focal length)."""
    azimuth_relative_to_body: bool = True
    """Measure azimuths from the direction the body faces (0 = frontal); else world-fixed."""
    resolution: int | None = None
    """Rendered image side in pixels; default the capture's image height."""
    box_scale: float = 1.2
    """Critic box side relative to the extent of the projected H36M-17 joints."""
    stride: int = 8
    """Keep every N-th frame of each motion."""
    max_frames: int | None = None
    """At most this many frames per motion (after the stride)."""
    exclude: tuple[str, ...] = ()
    """Skip motion files whose name (stem) matches any of these shell patterns, e.g. '*walk*'."""
    exclude_capture_clips: bool = False
    """Skip motions that the capture itself contains (the clips the field and critic were trained on)."""
    appearance_seed: int = 0
    """Clothing colours of the mesh rendering (the capture writer's seed; default capture: 0)."""
    load_config: Path | None = None
    """RUN/config.yml of an ns-train posegen-human run: render with its trained field instead of the mesh."""
    benchmark: Literal["3dpw", "h36m-p1", "h36m-p2", "mpi-inf-3dhp"] | None = None
    """Evaluate on a benchmark's own files instead (SPIN's dataset_extras npz + images)."""
    dataset_npz: Path | None = None
    """The benchmark's npz in SPIN's layout (3dpw_test.npz, h36m_valid_protocol1/2.npz, mpi_inf_3dhp_test.npz)."""
    image_root: Path | None = None
    """Folder the npz's 'imgname' paths are relative to."""
    gt_body: str | None = None
    """3DPW without 'S': body that turns the npz's SMPL pose/shape into joints (SMPL neutral file); default the critic body."""
    gt_body_male: str | None = None
    """3DPW: male SMPL file for rows with gender 'm' (SPIN's protocol); default --gt-body."""
    gt_body_female: str | None = None
    """3DPW: female SMPL file for rows with gender 'f'; default --gt-body."""
    max_images: int | None = None
    """Benchmarks: evaluate only the first N rows of the npz."""
    batch_size: int = 32
    """Images per critic call."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    json: Path | None = None
    """Also write the results as JSON to this file."""
    quiet: bool = False
    """No progress output (the table is still printed)."""


def load_eval_critic(cfg: EvalConfig, body_source: str, pipeline: Any = None) -> Critic:
    """The critic of ``cfg`` (see :class:`EvalConfig`); ``body_source`` is the default hmr body."""
    from adapters.registry import load_critic

    if cfg.critic == "run":
        if pipeline is None:
            raise PoseGenInputError("--critic run takes the critic of a trained run: pass --load-config RUN/config.yml.")
        return pipeline.critic
    checkpoint: Any = None if cfg.checkpoint.lower() == "none" else cfg.checkpoint
    if cfg.critic not in ("hmr", "spin"):
        return load_critic(cfg.critic, checkpoint=checkpoint)
    body = cfg.critic_body or body_source
    if checkpoint == "default":
        from adapters.pretrain import default_critic_checkpoint

        checkpoint = default_critic_checkpoint(body=body)
    elif checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise PoseGenInputError(f"--checkpoint {checkpoint} does not exist; pass 'default', 'none' or a critic file.")
    opts = {"body": body, "backbone": cfg.backbone, "input_size": cfg.input_size, "j_regressor_h36m": cfg.j_regressor_h36m}
    if checkpoint is not None and cfg.critic_body is None:
        opts["body"] = None  # the file records its body (if it does not, load_critic says so)
    return load_critic(cfg.critic, checkpoint=checkpoint, **{k: v for k, v in opts.items() if v is not None})


def motion_paths(poses: Path, exclude: Sequence[str] = (), skip_names: Sequence[str] = ()) -> list[Path]:
    """Motion files of ``--poses`` (a file or a folder searched recursively), minus those whose stem
    matches a pattern of ``exclude`` or is in ``skip_names``.

    Raises:
        PoseGenInputError: missing path, no motion files, or nothing left after exclusion.
    """
    from posegen_ns.data.poses import motion_files

    poses = Path(poses).expanduser()
    if poses.is_file():
        files = [poses]
    elif poses.is_dir():
        files = motion_files(poses)
    else:
        raise PoseGenInputError(f"--poses {poses} does not exist; pass a folder of .bvh / AMASS .npz files or one file.")
    skip = set(skip_names)
    kept = [p for p in files if p.stem not in skip and not any(fnmatch.fnmatch(p.stem, pat) for pat in exclude)]
    if not kept:
        raise PoseGenInputError(
            f"--poses {poses}: all {len(files)} motion files were excluded (--exclude {list(exclude)}"
            f"{', --exclude-capture-clips' if skip else ''})."
        )
    return kept


def _manifest_for(poses: Path) -> Path | None:
    poses = Path(poses).expanduser()
    base = poses.parent if poses.is_file() else poses
    for d in (base, base.parent):
        if (d / "manifest.csv").is_file():
            return d / "manifest.csv"
    return None


def _subject(cfg: EvalConfig, device: str):
    """``(body, betas (nb,), render, pipeline, body_source, clip_names, default_resolution)``."""
    from posegen_ns.body import load_body_model

    if cfg.load_config is not None:
        from nerfstudio.utils.eval_utils import eval_setup

        if not Path(cfg.load_config).is_file():
            raise PoseGenInputError(f"--load-config {cfg.load_config} does not exist; pass RUN/config.yml of an ns-train run.")
        _, pipeline, _, _ = eval_setup(Path(cfg.load_config), test_mode="inference")
        model = pipeline.model
        capture = getattr(pipeline.datamanager, "train_capture", None)
        body = model.body
        betas = model.betas.float()
        source = str(model.config.body or (capture.body if capture is not None else "open"))
        clips = list(capture.clip_names) if capture is not None else []
        res = int(pipeline.image_hw[0]) if hasattr(pipeline, "image_hw") else 128
        return body, betas, field_renderer(model), pipeline, source, clips, res
    if cfg.capture is None:
        raise PoseGenInputError("pass --capture DIR (whose subject is rendered) or --load-config RUN/config.yml.")
    from posegen_ns.data.capture import read_capture

    capture = read_capture(cfg.capture)
    body = load_body_model(capture.body, j_regressor_h36m=cfg.j_regressor_h36m).to(device)
    betas = capture.betas[: body.num_betas].float().to(device)
    if betas.shape[0] < body.num_betas:
        betas = torch.cat([betas, torch.zeros(body.num_betas - betas.shape[0], device=device)])
    render = mesh_renderer(body, betas, cfg.appearance_seed)
    return body, betas, render, None, capture.body, list(capture.clip_names), capture.height


def evaluate_motions_cli(cfg: EvalConfig) -> dict[str, Any]:
    """Motions mode of ``ns-posegen-eval`` (module docstring); returns the results dict."""
    from posegen_ns.mocap import clip_category, load_motion

    if cfg.poses is None:
        raise PoseGenInputError("pass --poses BVH_OR_NPZ_DIR (motions to render), or --benchmark with --dataset-npz.")
    if cfg.stride < 1 or cfg.batch_size < 1 or cfg.distance <= 0 or not 0 < cfg.fill <= 2:
        raise PoseGenInputError("need --stride >= 1, --batch-size >= 1, --distance > 0 and 0 < --fill <= 2.")
    if cfg.critic == "run" and cfg.load_config is None:
        raise PoseGenInputError("--critic run takes the critic of a trained run: pass --load-config RUN/config.yml.")
    device = cfg.device
    body, betas, render, pipeline, source, capture_clips, default_res = _subject(cfg, device)
    files = motion_paths(cfg.poses, cfg.exclude, capture_clips if cfg.exclude_capture_clips else ())
    critic = load_eval_critic(cfg, source, pipeline).to(device).eval()
    views = ViewConfig(cfg.cameras, tuple(cfg.elevations), cfg.distance, cfg.fill, int(cfg.resolution or default_res),
                       cfg.azimuth_relative_to_body, cfg.box_scale)
    _, _, view_names = view_ring(views.num_cameras, views.elevations_deg)
    body_cpu = body if next(body.buffers()).device.type == "cpu" else None
    fit_body = body_cpu or _cpu_copy(body)
    say = _say(cfg.quiet)
    say(f"fitting {len(files)} motion files to the subject's body (cached after the first run)")
    motions = [load_motion(p, fit_body, stride=cfg.stride, max_frames=cfg.max_frames) for p in files]
    total = sum(len(m) for m in motions) * len(view_names)
    say(f"rendering {sum(len(m) for m in motions)} frames x {len(view_names)} views at {views.resolution} px; critic '{cfg.critic}'")
    with _progress(cfg.quiet, total) as advance:
        acc = score_batches(
            critic, iter_eval_batches(motions, body, betas, render, critic.joint_set, views, cfg.batch_size), view_names, advance
        )
    manifest = _manifest_for(cfg.poses)
    clips = acc.summary("clips")
    for name in clips:
        clips[name] = {"category": clip_category(name, manifest), "frames": next(len(m) for m in motions if m.name == name),
                       **clips[name]}
    return {
        "overall": acc.summary("overall")["overall"],
        "clips": clips,
        "views": acc.summary("views"),
        "config": _config_dict(cfg) | {"joint_set": critic.joint_set, "focal_px": framing_focal(body, betas, views.resolution, views.distance, views.fill)},
    }


def _cpu_copy(body: BodyModel) -> BodyModel:
    import copy

    return copy.deepcopy(body).cpu()


def _config_dict(cfg: EvalConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Run ``ns-posegen-eval`` for ``cfg``: evaluate, print the table, write ``--json``; returns the results."""
    if cfg.benchmark is not None:
        if cfg.poses is not None:
            raise PoseGenInputError("pass either --benchmark (with --dataset-npz, --image-root) or --poses, not both.")
        from posegen_ns.benchmarks import evaluate_benchmark_cli

        result = evaluate_benchmark_cli(cfg)
        title = f"ns-posegen-eval: {cfg.benchmark} ({result['overall'].get('protocol', '')})"
        group = "sequence"
    else:
        result = evaluate_motions_cli(cfg)
        title = f"ns-posegen-eval: critic '{cfg.critic}' on {cfg.poses}"
        group = "clip"
    print_results(result, title, group)
    if cfg.json is not None:
        path = Path(cfg.json).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(jsonlib.dumps(result, indent=1, default=str))
    return result


def print_results(result: dict[str, Any], title: str, group: str = "clip") -> None:
    """Print ``result['clips']`` and ``result['overall']`` as a rich table (mm, %, AUC)."""
    from rich.console import Console
    from rich.table import Table

    clips = result.get("clips", {})
    has_cat = any("category" in v for v in clips.values())
    table = Table(title=title)
    table.add_column(group)
    if has_cat:
        table.add_column("category")
    for col in ("images", "MPJPE mm", "PA-MPJPE mm", "PCK@150 %", "AUC"):
        table.add_column(col, justify="right")

    def row(name: str, m: dict[str, Any], style: str | None = None) -> None:
        cells = [name] + ([str(m.get("category", ""))] if has_cat else [])
        cells += [str(m["num_images"]), f"{m['mpjpe_mm']:.1f}", f"{m['pa_mpjpe_mm']:.1f}", f"{100 * m['pck150']:.1f}", f"{m['auc']:.3f}"]
        table.add_row(*cells, style=style)

    for name, m in clips.items():
        row(name, m)
    table.add_section()
    row("overall", result["overall"], style="bold")
    longest = max([len(str(n)) for n in clips] + [len(str(m.get("category", ""))) for m in clips.values()] + [7])
    Console(width=max(Console().width, 2 * longest + 75)).print(table)


def _say(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda msg: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda msg: console.print(f"[bold]ns-posegen-eval[/bold] {msg}")


class _progress:
    """Context manager yielding ``advance(n)``: a transient rich progress bar on stderr unless quiet."""

    def __init__(self, quiet: bool, total: int):
        self.quiet, self.total, self.bar = quiet, total, None

    def __enter__(self) -> Callable[[int], None]:
        if self.quiet:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            transient=True, console=Console(stderr=True))
        self.bar.__enter__()
        task = self.bar.add_task("evaluating", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def entrypoint() -> None:
    """Console script ``ns-posegen-eval``."""
    import tyro

    cfg = tyro.cli(EvalConfig)
    try:
        run(cfg)
    except PoseGenInputError as exc:
        raise SystemExit(f"ns-posegen-eval: {exc}") from None


if __name__ == "__main__":
    entrypoint()
