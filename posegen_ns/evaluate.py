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
at it, principal point at the image centre: the camera rule of :mod:`posegen_ns.labels`. The focal
length is the framing rule the pipeline's sampler uses too (:func:`posegen_ns.labels.framing_focal`):
the subject's rest-pose height spans ``--fill`` of the image height at ``--distance`` (the sampler: 0.75
at 3 m, times its focal scale). Critic boxes come from the projected H36M-17 joints
(:func:`posegen_ns.labels.person_boxes`, ``--box-scale``), as in fine-tuning and the critic's source renders.

Metrics (:mod:`posegen_ns.metrics`, in the critic's joint set, :func:`posegen_ns.labels.camera_gt`): MPJPE and
PA-MPJPE in millimetres, 3D-PCK at 150 mm and its AUC over 0..150 mm, per image, then averaged per
clip and over all images (``overall`` weights every image equally). The JSON written by ``--json`` is
``{"overall": {...}, "clips": {name: {...}}, "views": {name: {...}}, "config": {...}}`` with metric
keys ``mpjpe_mm``, ``pa_mpjpe_mm``, ``pck150``, ``auc``, ``num_images``.

``--engine ray [--num-workers N]`` (motions mode) scores the motions as Ray tasks, one per motion, on workers that
each load the subject and the critic once (:func:`evaluate_motions_on_ray`, :mod:`posegen_ns.engine`): the same
figures as in one process.

Example::

    ns-posegen-eval --capture ~/.cache/posegen-ns/default_capture_v1 --poses ../shared/data/mocap/cmu \\
        --exclude-capture-clips --stride 16 --json eval.json
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from adapters.protocol import Critic
from posegen_ns.body.model import BodyModel
from posegen_ns.atomic_io import check_writable, write_json
from posegen_ns.cli import jsonable, load_run, progress, run_console_script, say_for
from posegen_ns.errors import PoseGenInputError, require_folder
from posegen_ns.geometry import project_points
from posegen_ns.labels import camera_gt, framing_focal, orbit_cameras, person_boxes, root_of, subject_height
from posegen_ns.critic.evaluation import EvalBatch, MetricAccumulator, evaluate_critic
from posegen_ns.engine import Engine, check_engine, ray_session

RenderFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int], Tensor]
"""``render(body_pose (B, 69), global_orient (B, 3), transl (B, 3), K (B, 3, 3), R (B, 3, 3), t (B, 3),
size) -> rgb (B, size, size, 3)`` in [0, 1]: the subject in the given poses and OpenCV cameras."""


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


def labelled_mesh_renderer(body: BodyModel, appearance_seed: int = 0):
    """The mesh renderer in :func:`posegen_ns.labels.render_and_score`'s form: ``render(body_pose, global_orient,
    transl, K, R, t, width, height, betas)`` -> object with ``rgb (B, H, W, 3)``, ``alpha (B, H, W, 1)`` (the
    silhouette) and ``body`` (the posed :class:`~posegen_ns.body.model.BodyOutput`); no gradients."""
    from types import SimpleNamespace

    from posegen_ns.data.appearance import make_body_appearance, render_vertices

    appearance = make_body_appearance(body, seed=appearance_seed)

    @torch.no_grad()
    def render(body_pose, global_orient, transl, K, R, t, width, height, betas=None):
        out = body(body_pose, global_orient, betas, transl)
        r = render_vertices(out.vertices, body.faces, appearance, K, R, t, width, height)
        return SimpleNamespace(rgb=r.rgb.clamp(0, 1), alpha=r.mask.float()[..., None], body=out)

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
class ViewConfig:
    """The camera set and framing (see the module docstring)."""

    num_cameras: int = 8
    elevations_deg: tuple[float, ...] = (0.0, 20.0)
    distance: float = 3.0
    fill: float = 0.75
    resolution: int = 128
    relative_to_body: bool = True
    box_scale: float = 1.2
    distance_scales: tuple[float, ...] = (1.0,)
    """Every view again at ``distance * scale`` for each scale (nearer and farther, same focal length: the person
    is smaller or larger in the image, as in MPI-INF-3DHP); ``(1.0,)`` = one distance."""


def view_set(views: ViewConfig) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """The cameras of ``views``: :func:`view_ring` at every distance scale (scale-major).

    Returns:
        ``azimuth (V,)``, ``elevation (V,)`` radians, ``distance (V,)`` metres (float64) and V names
        (``"az045_el+20"``, with ``"_d1.4"`` appended when there are several distances).

    Raises:
        PoseGenInputError: no cameras, elevations or distance scales, or a scale <= 0.
    """
    az, el, names = view_ring(views.num_cameras, views.elevations_deg)
    scales = tuple(views.distance_scales)
    if not scales or min(scales) <= 0:
        raise PoseGenInputError(f"distance scales must be positive and non-empty (got {list(scales)}).")
    if len(scales) == 1:
        return az, el, torch.full_like(az, views.distance * scales[0]), names
    return (az.repeat(len(scales)), el.repeat(len(scales)),
            torch.tensor([views.distance * s for s in scales for _ in names], dtype=torch.float64),
            [f"{n}_d{views.distance * s:.1f}" for s in scales for n in names])


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
        joint_set: the critic's joint set (:func:`posegen_ns.labels.camera_gt`).
        views: the camera set.
        batch_size: images per batch.
    """
    dev = betas.device
    az_all, el_all, dist_all, _ = view_set(views)
    V = az_all.shape[0]
    focal = framing_focal(subject_height(body, betas), views.resolution, views.distance, views.fill)
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
            n = len(k)
            K, R, t = orbit_cameras(go, out.joints[:, 0], az_all[vi].to(dev), el_all[vi].to(dev),
                                    dist_all[vi].to(dev), torch.full((n,), focal),
                                    views.resolution, views.resolution, relative_to_body=views.relative_to_body)
            K, R, t = K.float(), R.float(), t.float()
            rgb = render(bp, go, transl, K, R, t, views.resolution)  # (B, S, S, 3)
            uv, _ = project_points(out.joints_h36m, K, R, t)
            yield EvalBatch(
                clip=motion.name, images=rgb.permute(0, 3, 1, 2).contiguous(), boxes=person_boxes(uv, views.box_scale),
                gt=camera_gt(joint_set, out, R, t), root=root_of(joint_set), frame_index=fi, view_index=vi,
            )


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
    engine: Engine = "local"
    """'local' (this process) or 'ray' (motions as Ray tasks on the RAY_ADDRESS cluster, else a local Ray; same figures)."""
    num_workers: int | None = None
    """--engine ray: workers; default one per GPU of the cluster (with a cuda --device), else one per torch.get_num_threads() CPUs."""


def load_eval_critic(cfg: EvalConfig, body_source: str, pipeline: Any = None) -> Critic:
    """The critic of ``cfg`` (see :class:`EvalConfig`): ``--critic run`` takes ``pipeline.critic``, any other
    name goes through the one loading policy (:func:`posegen_ns.critic.loading.load_configured_critic`, the
    defaults of ``ns-train``'s ``--pipeline.critic.*``); ``body_source`` is the subject's body."""
    from posegen_ns.critic.loading import critic_config_from_flags, load_configured_critic

    if cfg.critic == "run":
        if pipeline is None:
            raise PoseGenInputError("--critic run takes the critic of a trained run: pass --load-config RUN/config.yml.")
        return pipeline.critic
    ccfg = critic_config_from_flags(cfg.critic, cfg.checkpoint, cfg.critic_body, cfg.backbone, cfg.input_size,
                                    cfg.j_regressor_h36m)
    return load_configured_critic(ccfg, body_source)


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


def _subject(cfg: EvalConfig, device: str):
    """``(body, betas (nb,), render, pipeline, body_source, clip_names, default_resolution)``."""
    from posegen_ns.body import load_body_model

    if cfg.load_config is not None:
        pipeline = load_run(cfg.load_config)
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
    from posegen_ns.mocap import clip_category, load_motion, manifest_for

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
    _, _, _, view_names = view_set(views)
    body_cpu = body if next(body.buffers()).device.type == "cpu" else None
    fit_body = body_cpu or _cpu_copy(body)
    say = say_for("ns-posegen-eval", cfg.quiet)
    say(f"fitting {len(files)} motion files to the subject's body (cached after the first run)")
    motions = [load_motion(p, fit_body, stride=cfg.stride, max_frames=cfg.max_frames) for p in files]
    total = sum(len(m) for m in motions) * len(view_names)
    say(f"rendering {sum(len(m) for m in motions)} frames x {len(view_names)} views at {views.resolution} px; critic '{cfg.critic}'")
    if cfg.engine == "ray":
        acc = evaluate_motions_on_ray(cfg, critic, motions, views, view_names)
    else:
        with progress("evaluating", total, cfg.quiet) as advance:
            acc = evaluate_critic(
                critic, iter_eval_batches(motions, body, betas, render, critic.joint_set, views, cfg.batch_size),
                view_names, progress=advance,
            )
    manifest = manifest_for(cfg.poses)
    clips = acc.summary("clips")
    for name in clips:
        clips[name] = {"category": clip_category(name, manifest), "frames": next(len(m) for m in motions if m.name == name),
                       **clips[name]}
    return {
        "overall": acc.overall(),
        "clips": clips,
        "views": acc.summary("views"),
        "config": jsonable(cfg) | {"joint_set": critic.joint_set, "focal_px": framing_focal(subject_height(body, betas), views.resolution, views.distance, views.fill)},
    }


def _cpu_copy(body: BodyModel) -> BodyModel:
    import copy

    return copy.deepcopy(body).cpu()


# ---- on Ray (posegen_ns.engine) -------------------------------------------------------------------
def load_eval_worker(cfg: EvalConfig) -> tuple[BodyModel, Tensor, RenderFn, Critic]:
    """What an evaluation worker loads once: the subject (``body``, ``betas (nb,)``, its renderer) and the critic of
    ``cfg`` as the driver does, on ``cfg.device``."""
    body, betas, render, pipeline, source, _, _ = _subject(cfg, cfg.device)
    return body, betas, render, load_eval_critic(cfg, source, pipeline).to(cfg.device).eval()


def evaluate_motion(worker: tuple[BodyModel, Tensor, RenderFn, Critic], motion: Any, views: ViewConfig,
                    view_names: Sequence[str], batch_size: int, critic_state: dict[str, Tensor]) -> MetricAccumulator:
    """One evaluation task: the per-image metrics of every (frame, view) of ``motion`` (batches as in one process,
    :func:`iter_eval_batches`), scored by the worker's critic (:func:`load_eval_worker`) with the driver's weights
    ``critic_state`` (its ``state_dict``: random or run-specific weights are the same on every worker)."""
    body, betas, render, critic = worker
    critic.load_state_dict(critic_state)
    return evaluate_critic(critic, iter_eval_batches([motion], body, betas, render, critic.joint_set, views, batch_size),
                           view_names)


def evaluate_motions_on_ray(cfg: EvalConfig, critic: Critic, motions: Sequence[Any], views: ViewConfig,
                            view_names: Sequence[str]) -> MetricAccumulator:
    """``--engine ray``: one Ray task per motion (:func:`posegen_ns.engine.run_tasks`; each worker loads the subject
    and the critic once, :func:`load_eval_worker`); the per-motion accumulators are joined in motion order
    (:meth:`~posegen_ns.critic.evaluation.MetricAccumulator.extend`), so every figure equals the local engine's.

    Raises:
        posegen_ns.engine.WorkerError: a worker failed (named with the motion).
    """
    from posegen_ns.engine import run_tasks

    state = {k: v.detach().cpu() for k, v in critic.state_dict().items()}
    with ray_session(cfg.num_workers, cfg.quiet):
        parts = run_tasks(
            functools.partial(load_eval_worker, cfg),
            functools.partial(evaluate_motion, views=views, view_names=list(view_names), batch_size=cfg.batch_size,
                              critic_state=state),
            list(motions), [f"motion {m.name}" for m in motions], num_workers=cfg.num_workers,
            sizes=[len(m) * len(view_names) for m in motions], description="evaluating", quiet=cfg.quiet,
            use_gpus=str(cfg.device).startswith("cuda"),
        )
    acc = MetricAccumulator()
    for part in parts:
        acc.extend(part)
    return acc


def evaluate_benchmark_cli(cfg: EvalConfig) -> dict[str, Any]:
    """Benchmark mode of ``ns-posegen-eval`` (:mod:`posegen_ns.benchmarks`); returns the results dict."""
    from posegen_ns.benchmarks import PROTOCOLS, evaluate_benchmark, load_benchmark
    from posegen_ns.body import load_body_model

    if cfg.dataset_npz is None or cfg.image_root is None:
        raise PoseGenInputError(f"--benchmark {cfg.benchmark} needs --dataset-npz PATH and --image-root DIR.")
    image_root = require_folder(cfg.image_root, "--image-root", "pass the folder the npz's 'imgname' paths are relative to")
    critic_body = cfg.critic_body or "open"
    gt_source = cfg.gt_body or critic_body
    bodies = None
    protocol = PROTOCOLS[cfg.benchmark]
    if protocol.gt == "S_or_smpl":
        bodies = {"neutral": load_body_model(gt_source, j_regressor_h36m=cfg.j_regressor_h36m)}
        for key, src in (("m", cfg.gt_body_male), ("f", cfg.gt_body_female)):
            if src is not None:
                bodies[key] = load_body_model(src, j_regressor_h36m=cfg.j_regressor_h36m)
    data = load_benchmark(protocol, cfg.dataset_npz, bodies, cfg.max_images)
    critic = load_eval_critic(cfg, critic_body).to(cfg.device).eval()
    with progress("evaluating", len(data), cfg.quiet) as advance:
        result = evaluate_benchmark(critic, data, image_root, cfg.batch_size, advance)
    result["config"] = jsonable(cfg) | {"joint_set": getattr(critic, "joint_set", "h36m17")}
    return result


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Run ``ns-posegen-eval`` for ``cfg``: evaluate, print the table, write ``--json``; returns the results.

    Raises:
        PoseGenInputError: bad options or files; a ``--json`` path that cannot be written (checked first).
    """
    json_path = check_writable(cfg.json, "--json") if cfg.json is not None else None  # before the evaluation
    check_engine(cfg.engine, cfg.num_workers)
    if cfg.benchmark is not None:
        if cfg.poses is not None:
            raise PoseGenInputError("pass either --benchmark (with --dataset-npz, --image-root) or --poses, not both.")
        if cfg.engine != "local":
            raise PoseGenInputError("--engine ray splits motions (--poses); a --benchmark runs with --engine local.")
        result = evaluate_benchmark_cli(cfg)
        title = f"ns-posegen-eval: {cfg.benchmark} ({result['overall'].get('protocol', '')})"
        group = "sequence"
    else:
        result = evaluate_motions_cli(cfg)
        title = f"ns-posegen-eval: critic '{cfg.critic}' on {cfg.poses}"
        group = "clip"
    print_results(result, title, group)
    if json_path is not None:
        write_json(json_path, result, indent=1, default=str)  # atomic (posegen_ns.atomic_io)
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


def entrypoint() -> None:
    """Console script ``ns-posegen-eval``."""
    run_console_script("ns-posegen-eval", EvalConfig, run)


if __name__ == "__main__":
    entrypoint()
