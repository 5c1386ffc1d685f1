"""``ns-posegen-export``: write sampled hard examples of a trained run as a labelled dataset.

Layout of ``--output-dir``::

    images/act_02_000000.png ...  rendered RGB, H x W (named by sample index, :func:`image_name`)
    masks/act_02_000000.png  ...  alpha > 0.5 silhouettes (0 / 255), same names
    labels.npz                    per-sample arrays (N first, index order), see LABEL_FIELDS
    manifest.json                 counts, conventions, the run, per-sample files and critic errors
    spin.npz                      SPIN's dataset_extras layout (posegen_ns.dataset_formats)
    annotations/posegen_protocol_2.json   COCO-style 3D keypoints in HybrIK's H36mSMPL layout
    annotations/posegen_protocol_1.json   the same file (hard link), for HybrIK's protocol 1

Labels are exact: ``joints_*_cam = R @ joints_world + t`` for the body model's joints at the
exported (body_pose, global_orient, betas, transl), and ``joints_*_2d`` are those points projected
with ``K`` (OpenCV pinhole, pixels, no distortion).

Streaming, resume, shards
-------------------------
Samples are rendered in batches of ``--batch-size``; batch ``b`` holds samples
``[b * batch_size, (b + 1) * batch_size)``. The draw of sample ``i`` uses its own generator seeded
from ``(seed, i)`` (:func:`sample_seed`), so it does not depend on batching, sharding or restarts.
Everything is written into a partial folder next to the output (``.NAME.partial``): each batch's
images and masks, then its labels as ``.batches/labels-<first sample index>.npz`` (atomic rename:
a batch counts as done once that file exists), and ``progress.json`` (the export's fingerprint:
run, checkpoint digest, sample count, kind, seed, batch size, shard). When every batch is done the
labels are concatenated in index order, the dataset files are written and the folder is renamed
to ``--output-dir`` (replacing it only with ``--overwrite``).

If the process is killed (Ctrl-C, SIGTERM, ``kill -9``, a lost machine), running the same command
again continues from the partial folder (``--no-resume`` starts over); batches whose labels file is
missing are rendered again, so no sample is lost or written twice, and the result is byte-identical
to an uninterrupted export. An I/O error (a full disk, a read-only folder) also keeps the partial folder and
says what to free or fix (:func:`export_io_error`); every file is written atomically (:mod:`posegen_ns.atomic_io`).
Another Python error inside the export removes the partial folder instead.

Datasets bigger than one machine: ``--num-shards M --shard-index K`` renders the batches
``b % M == K`` into ``OUTPUT/shard-K`` (a complete dataset of its samples, original indices), one
process per GPU or machine, and the subcommand ``ns-posegen-export merge`` joins them (``export`` is the
default subcommand, so ``ns-posegen-export --load-config ...`` and ``ns-posegen-export export --load-config ...``
are the same command)::

    for K in 0 1 2 3; do
      CUDA_VISIBLE_DEVICES=$K ns-posegen-export --load-config RUN/config.yml --output-dir big \\
          --num-samples 1000000 --batch-size 256 --num-shards 4 --shard-index $K &
    done; wait
    ns-posegen-export merge --shards-dir big --output-dir big-merged   # hard links when possible

The merged dataset equals (byte for byte, manifest aside) the one a single process writes.

One command instead of the launch loop: ``--engine ray --num-workers N`` runs the batches as Ray tasks
(:func:`ray_renderer`, :mod:`posegen_ns.engine`) on the cluster of ``RAY_ADDRESS`` (else a local Ray); every worker
loads the run once and writes its batches into the same partial folder, a worker that dies is restarted and its
batches run again, and the dataset equals the local export's byte for byte (README, "Scaling out").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import tyro

from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, SMPL_JOINT_NAMES
from adapters.hybrik_ik import leaf_vertex_ids, rest_joints_29, twist_angles
from posegen_ns.dataset_formats import (
    COCO3D_LOADER,
    HYBRIK29_JOINT_NAMES,
    HYBRIK_ANNOTATION_NAME,
    is_official_smpl,
    save_npz_deterministic,
    silhouette_boxes,
    write_hybrik_annotations,
    write_spin_npz,
)
from posegen_ns.cli import load_run, progress, run_console_script
from posegen_ns.data.capture_data import write_png
from posegen_ns.engine import Engine, WorkerError, check_engine, ray_session
from posegen_ns.atomic_io import (
    IO_ERRNOS_DENIED, IO_ERRNOS_FULL, folder_size, human_bytes, remove_stale_temporaries, write_json, write_text,
)
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, project_points
from posegen_ns.labels import camera_frame_smpl, concat_samples

FORMAT_VERSION = 3

LABEL_FIELDS: Dict[str, str] = {
    "sample_index": "(N,) int64 sample index (names the image and mask files)",
    "body_pose": "(N, 69) SMPL body pose, axis-angle radians",
    "global_orient": "(N, 3) SMPL global orientation, axis-angle radians, world frame (y-up)",
    "transl": "(N, 3) SMPL translation, metres",
    "betas": "(N, S) SMPL shape coefficients",
    "global_orient_cam": "(N, 3) SMPL global orientation in the camera frame (R @ R_global), axis-angle radians",
    "transl_cam": "(N, 3) SMPL translation posing the body in the camera frame with global_orient_cam, metres",
    "K": "(N, 3, 3) intrinsics, pixels",
    "R": "(N, 3, 3) world->camera rotation (OpenCV: x right, y down, z forward)",
    "t": "(N, 3) world->camera translation, metres",
    "joints_smpl_cam": "(N, 24, 3) SMPL-24 joints, camera frame, metres",
    "joints_h36m_cam": "(N, 17, 3) H36M-17 joints, camera frame, metres",
    "joints_smpl_2d": "(N, 24, 2) SMPL-24 joints, pixels",
    "joints_h36m_2d": "(N, 17, 2) H36M-17 joints, pixels",
    "joints_hybrik29_cam": "(N, 29, 3) HybrIK's 29 joints: SMPL-24, then head top, left / right middle finger tip, "
                           "left / right big toe (the body's leaf vertices, adapters.hybrik_ik.leaf_vertex_ids, "
                           "posed), camera frame, metres",
    "joints_hybrik29_2d": "(N, 29, 2) the same 29 joints, pixels",
    "twist_angle": "(N, 23) twist of SMPL joints 1..23 about their rest bones (HybrIK's angle_twist, "
                   "adapters.hybrik_ik.twist_angles), radians in (-pi, pi]; NaN where undefined",
    "has_smpl": "(N,) 1 when the body is an official SMPL model (pose/betas are SMPL parameters), else 0 "
                "(posegen_ns.dataset_formats.is_official_smpl)",
    "boxes": "(N, 4) person boxes x0, y0, x1, y1 (square, 1.2 x the H36M-17 joints' extent, "
             "posegen_ns.labels.person_boxes), pixels",
    "mask_boxes": "(N, 4) tight silhouette boxes x0, y0, x1, y1 (x1, y1 exclusive), pixels; `boxes` where the mask is empty",
    "mask_area": "(N,) silhouette area, pixels",
    "critic_pred": "(N, J, 3) the critic's root-relative prediction, camera frame, metres",
    "critic_error_mm": "(N,) the critic's MPJPE on the sample, millimetres",
}

_PARTIAL_SUFFIX = ".partial"
_BATCHES = ".batches"
_PROGRESS = "progress.json"
_LOCK = ".lock"


@dataclass
class ExportConfig:
    """Export sampled hard examples of a posegen-human run (the default subcommand; ``merge`` joins shards)."""

    load_config: Path
    """The run's config.yml (as for ns-export)."""
    output_dir: Path
    """Dataset folder to create (with --num-shards: the folder that receives shard-K)."""
    num_samples: int = 64
    """Number of samples to write (in all shards together)."""
    kind: str = "hard"
    """'hard' (the learned distribution) or 'prior' (mocap poses, uniform cameras)."""
    batch_size: int = 8
    """Samples rendered per batch (also the unit of resume and of sharding)."""
    seed: int = 0
    """Seed of the sample draw (sample i is drawn from a generator seeded by (seed, i))."""
    overwrite: bool = False
    """Replace an existing output folder (and discard a partial export with other settings)."""
    resume: bool = True
    """Continue an interrupted export with the same settings from its partial folder; --no-resume starts over."""
    num_shards: int = 1
    """Split the export into this many shards (separate processes / GPUs / machines)."""
    shard_index: int = 0
    """Which shard this process writes (0 .. num_shards-1), into OUTPUT_DIR/shard-K."""
    image_workers: int = 4
    """Threads encoding PNG files while the next batch renders."""
    engine: Engine = "local"
    """'local' (this process) or 'ray' (batches as Ray tasks on the RAY_ADDRESS cluster, else a local Ray; same bytes)."""
    num_workers: Optional[int] = None
    """--engine ray: workers; default one per GPU of the cluster, else one per torch.get_num_threads() CPUs."""


@dataclass
class MergeConfig:
    """Merge the shards written by ``ns-posegen-export --num-shards M --shard-index K`` into one dataset."""

    shards_dir: Path
    """The --output-dir the shards were written to (holds shard-0 .. shard-{M-1})."""
    output_dir: Path
    """Merged dataset folder to create."""
    overwrite: bool = False
    """Replace an existing output folder."""
    remove_shards: bool = False
    """Delete the shard folders after a successful merge."""


# ------------------------------------------------------------------------------------------ helpers
def sample_seed(seed: int, index: int) -> int:
    """64-bit seed of sample ``index``'s draw: ``numpy.random.SeedSequence(seed, spawn_key=(index,))``,
    so samples get independent streams that depend only on ``(seed, index)``."""
    words = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


HYBRIK_EVAL_ACTION = 2
"""The Human3.6M action number in every image name. HybrIK's H36M evaluation
(``H36mSMPL.evaluate_*``) parses the action from the image path: the two digits after the first
``"act_"`` (with ``k = path.find('act')``, ``int(path[k + 4:k + 6]) - 2`` indexes its 15 actions
2..16), and crashes on names without them; every sample is filed under action 2 ('Directions') of its
per-action table, so read only its overall figures. The parse looks at the *whole* path: the
dataset folder's own path must not contain ``act`` (e.g. ``/data/extract/...``)."""


def image_name(index: int, num_samples: int) -> str:
    """File name of sample ``index``: ``act_02_<index>.png``, the index zero-padded to at least 6
    digits, the same width for all samples of an export (:data:`HYBRIK_EVAL_ACTION`). A function of
    ``(index, num_samples)`` only, so resume, shards and merge name every sample alike."""
    return f"act_{HYBRIK_EVAL_ACTION:02d}_{index:0{max(6, len(str(num_samples - 1)))}d}.png"


def shard_batches(num_samples: int, batch_size: int, shard_index: int = 0, num_shards: int = 1) -> List[tuple[int, int]]:
    """``[(start, stop), ...]`` sample ranges of the batches ``b`` with ``b % num_shards == shard_index``."""
    starts = range(0, num_samples, batch_size)
    return [(s, min(s + batch_size, num_samples)) for b, s in enumerate(starts) if b % num_shards == shard_index]


def model_digest(pipeline) -> str:
    """SHA-1 of the pipeline's state dict (field, sampler, critic): the checkpoint the export used."""
    h = hashlib.sha1()
    for key, value in sorted(pipeline.state_dict().items()):
        if not torch.is_tensor(value):
            continue
        v = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}:{v.dtype}:{tuple(value.shape)}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, indent=1)  # atomic (posegen_ns.atomic_io)


def draw_samples(pipeline, indices: Sequence[int], hard: bool, seed: int):
    """The (pose, camera) draws of samples ``indices``: each from ``pipeline.draw(1, ...)`` with a
    generator seeded by :func:`sample_seed` ``(seed, i)``."""
    return concat_samples([
        pipeline.draw(1, hard=hard, noise=torch.Generator().manual_seed(sample_seed(seed, i))) for i in indices
    ])


def hybrik_labels(body, s) -> Dict[str, torch.Tensor]:
    """HybrIK's extra labels of labelled samples ``s`` (:class:`~posegen_ns.labels.SampleBatch`, B
    samples) posed by ``body`` (:class:`~posegen_ns.body.BodyModel`):

    - ``joints_hybrik29_cam (B, 29, 3)`` metres, camera frame, and ``joints_hybrik29_2d (B, 29, 2)``
      pixels: SMPL-24 (``s.joints_smpl_*`` as they are) then the 5 leaf vertices
      (:func:`adapters.hybrik_ik.leaf_vertex_ids`: HybrIK's SMPL vertices on SMPL, the equivalent
      extreme vertices on other meshes) of the posed mesh, projected by
      :func:`posegen_ns.geometry.project_points` as the other joints;
    - ``twist_angle (B, 23)`` radians (:func:`adapters.hybrik_ik.twist_angles` of ``body_pose``
      about the shaped rest bones);
    - ``has_smpl (B,)`` 1 / 0 (:func:`posegen_ns.dataset_formats.is_official_smpl`).
    """
    B = s.body_pose.shape[0]
    betas = s.betas.to(body.v_template)
    ids = leaf_vertex_ids(body)
    verts = body(s.body_pose.to(betas), s.global_orient.to(betas), betas, s.transl.to(betas)).vertices
    leaf_2d, leaf_cam = project_points(verts[:, ids.to(verts.device)], s.K.to(betas), s.R.to(betas), s.t.to(betas))
    rotmat = axis_angle_to_matrix(s.body_pose.to(betas).reshape(B, 23, 3))
    return {
        "joints_hybrik29_cam": torch.cat([s.joints_smpl_cam.to(betas), leaf_cam], 1),
        "joints_hybrik29_2d": torch.cat([s.joints_smpl_2d.to(betas), leaf_2d], 1),
        "twist_angle": twist_angles(rotmat, rest_joints_29(body, betas, ids)),
        "has_smpl": torch.full((B,), float(is_official_smpl(body))),
    }


def render_batch(pipeline, indices: Sequence[int], hard: bool, seed: int) -> tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Render and label samples ``indices``.

    Returns:
        ``labels`` (LABEL_FIELDS, numpy, ``B`` first), ``rgb (B, H, W, 3)`` uint8, ``mask (B, H, W)``
        uint8 (0 / 255).
    """
    s = pipeline.render_and_score(draw_samples(pipeline, indices, hard, seed))
    body = pipeline.model.body
    rest_pelvis = body.rest_joints(s.betas)[:, 0]  # (B, 3)
    orient_cam, transl_cam = camera_frame_smpl(s.global_orient, s.transl, rest_pelvis, s.R, s.t)
    mask = s.alpha[..., 0] > 0.5  # (B, H, W)
    mask_boxes, mask_area = silhouette_boxes(mask)
    empty = torch.isnan(mask_boxes[:, 0])
    mask_boxes[empty] = s.boxes[empty].to(mask_boxes)
    fields = {
        "body_pose": s.body_pose, "global_orient": s.global_orient, "transl": s.transl, "betas": s.betas,
        "global_orient_cam": orient_cam, "transl_cam": transl_cam,
        "K": s.K, "R": s.R, "t": s.t, "joints_smpl_cam": s.joints_smpl_cam, "joints_h36m_cam": s.joints_h36m_cam,
        "joints_smpl_2d": s.joints_smpl_2d, "joints_h36m_2d": s.joints_h36m_2d, "boxes": s.boxes,
        "mask_boxes": mask_boxes, "mask_area": mask_area, "critic_pred": s.pred_joints, "critic_error_mm": s.error * 1000.0,
        **hybrik_labels(body, s),
    }
    labels = {"sample_index": np.asarray(indices, dtype=np.int64)}
    labels.update({k: v.detach().float().cpu().numpy() for k, v in fields.items()})
    labels = {k: labels[k] for k in LABEL_FIELDS}
    rgb = (s.images.clamp(0, 1) * 255).round().byte().cpu().numpy()
    return labels, rgb, (mask.byte() * 255).cpu().numpy()


def _manifest(labels: Dict[str, np.ndarray], meta: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    n = meta["num_samples"]
    files = [
        {"index": int(i), "image": f"images/{image_name(int(i), n)}", "mask": f"masks/{image_name(int(i), n)}",
         "critic_error_mm": float(e)}
        for i, e in zip(labels["sample_index"], labels["critic_error_mm"])
    ]
    return {
        "format": "posegen-ns dataset", "version": FORMAT_VERSION, "num_samples": len(files),
        "num_samples_total": n, "kind": meta["kind"], "seed": meta["seed"], "batch_size": meta["batch_size"],
        "image_size": {"height": meta["height"], "width": meta["width"]},
        "run_config": meta["run_config"], "model_digest": meta["model_digest"],
        "critic": meta["critic"], "body": meta["body"],
        "conventions": {"units": "metres, pixels, radians", "camera": "OpenCV K, R|t world->camera",
                        "world": "y-up", "rotations": "axis-angle",
                        "pixels": "u = fx x / z + cx; pixel (x, y) covers [x, x+1) x [y, y+1)"},
        "joint_sets": {"smpl24": list(SMPL_JOINT_NAMES), "h36m17": list(H36M_JOINT_NAMES),
                       "hybrik29": list(HYBRIK29_JOINT_NAMES)},
        "labels": LABEL_FIELDS,
        "formats": {
            "labels.npz": "posegen-ns labels (this manifest's 'labels')",
            "spin.npz": "SPIN datasets/base_dataset.py dataset_extras layout (see posegen_ns.dataset_formats)",
            f"annotations/{HYBRIK_ANNOTATION_NAME}_protocol_2.json": (
                f"COCO-style 3D keypoints (29 joints, twists) for {COCO3D_LOADER}, root = this folder, "
                f"TRAIN_SET '{HYBRIK_ANNOTATION_NAME}' (see posegen_ns.dataset_formats); _protocol_1.json is the same file"),
        },
        **extra,
        "critic_mean_mpjpe_mm": float(labels["critic_error_mm"].mean()) if len(files) else float("nan"),
        "samples": files,
    }


def write_dataset_files(folder: Path, labels: Dict[str, np.ndarray], meta: Dict[str, Any], extra: Dict[str, Any]) -> None:
    """Write ``labels.npz``, ``spin.npz``, HybrIK's ``annotations/`` and ``manifest.json`` into
    ``folder`` (whose ``images/`` and ``masks/`` already hold the samples of ``labels``)."""
    n = meta["num_samples"]
    images = [f"images/{image_name(int(i), n)}" for i in labels["sample_index"]]
    masks = [f"masks/{image_name(int(i), n)}" for i in labels["sample_index"]]
    save_npz_deterministic(folder / "labels.npz", labels)
    write_spin_npz(folder / "spin.npz", labels, images, masks)
    write_hybrik_annotations(folder, labels, images, meta["width"], meta["height"],
                             info={"run_config": meta["run_config"], "body": meta["body"]})
    _write_json(folder / "manifest.json", _manifest(labels, meta, extra))


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and then deleted."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_lock(folder: Path) -> None:
    """Refuse if another live process on this host holds ``folder``'s lock (a lock left by a
    killed process does not count)."""
    lock = folder / _LOCK
    if not lock.exists():
        return
    host, _, pid = lock.read_text().strip().rpartition(" ")
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
        raise PoseGenInputError(
            f"another export (pid {pid}) is writing {folder}; wait for it to finish or stop it, then run again"
        )


def _acquire_lock(folder: Path) -> Path:
    """Mark ``folder`` as being written by this process (see :func:`_check_lock`)."""
    _check_lock(folder)
    lock = folder / _LOCK
    write_text(lock, f"{socket.gethostname()} {os.getpid()}")
    return lock


def _fingerprint_diff(a: Dict[str, Any], b: Dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


# ------------------------------------------------------------------------------------------ export
def export_samples(pipeline, output_dir: Path, num_samples: int, kind: str = "hard", batch_size: int = 8,
                   seed: int = 0, overwrite: bool = False, run_config: Path | None = None, resume: bool = True,
                   shard_index: int = 0, num_shards: int = 1, image_workers: int = 4,
                   renderer: Optional[Callable[..., None]] = None) -> Path:
    """Render ``num_samples`` samples with ``pipeline`` (a :class:`~posegen_ns.pipeline.PoseGenPipeline`)
    and write them to ``output_dir`` (or ``output_dir/shard-K`` with ``num_shards > 1``), streaming
    batch by batch and resumable (see the module docstring).

    ``renderer`` renders the missing batches of the plan into the partial folder instead of this process, called
    as ``renderer(pipeline, partial, plan, meta, fingerprint, hard=..., workers=image_workers)`` (e.g.
    :func:`ray_renderer`); the driver finalises as without it.

    Returns:
        The dataset folder written.

    Raises:
        PoseGenInputError: the output folder exists and ``overwrite`` is false; bad arguments; a
            partial export with other settings is in the way; another process writes the same folder; an I/O
            error (:func:`export_io_error`: the partial folder is kept for resume).
        KeyboardInterrupt: on Ctrl-C / SIGTERM (under ``main``); the partial folder is kept for resume.
        posegen_ns.engine.WorkerError: a Ray worker failed (``renderer``); the partial folder is kept for resume.
    """
    output_dir = Path(output_dir)
    if kind not in ("hard", "prior"):
        raise PoseGenInputError(f"--kind must be 'hard' or 'prior', got {kind!r}")
    if num_samples < 1:
        raise PoseGenInputError(f"--num-samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise PoseGenInputError(f"--batch-size must be at least 1, got {batch_size}")
    if seed < 0:
        raise PoseGenInputError(f"--seed must be >= 0, got {seed}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise PoseGenInputError(f"--shard-index must be in [0, --num-shards={num_shards}), got {shard_index}")
    target = output_dir / f"shard-{shard_index}" if num_shards > 1 else output_dir
    if target.exists() and not overwrite:
        raise PoseGenInputError(f"output folder {target} exists; pass --overwrite to replace it")
    plan = shard_batches(num_samples, batch_size, shard_index, num_shards)
    if not plan:
        raise PoseGenInputError(
            f"shard {shard_index} of {num_shards} gets no batch: {num_samples} samples make "
            f"{-(-num_samples // batch_size)} batches of {batch_size}; use fewer shards or a smaller --batch-size"
        )
    H, W = pipeline.image_hw
    meta = {
        "num_samples": num_samples, "kind": kind, "seed": seed, "batch_size": batch_size,
        "height": int(H), "width": int(W),
        "run_config": str(Path(run_config).resolve()) if run_config else None,
        "model_digest": model_digest(pipeline),
        "critic": {"name": pipeline.config.critic.name, "joint_set": pipeline.critic.joint_set},
        "body": str(pipeline.config.model.body or pipeline.datamanager.train_capture.body),
    }
    fingerprint = {"version": FORMAT_VERSION, **{k: meta[k] for k in ("run_config", "model_digest", "num_samples",
                   "kind", "seed", "batch_size")}, "shard_index": shard_index, "num_shards": num_shards}
    shard_info = {"shard": {"index": shard_index, "num_shards": num_shards} if num_shards > 1 else None,
                  "fingerprint": fingerprint}

    tmp = target.with_name(f".{target.name}{_PARTIAL_SUFFIX}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        state = _open_partial(tmp, fingerprint, resume, overwrite)
        if state is None:
            (tmp / "images").mkdir(parents=True)
            (tmp / "masks").mkdir()
            (tmp / _BATCHES).mkdir()
            _write_json(tmp / _PROGRESS, {"fingerprint": fingerprint, "meta": meta, "state": "rendering",
                                          "total": sum(b - a for a, b in plan), "done": 0})
        lock = _acquire_lock(tmp)
        remove_stale_temporaries(tmp)  # files a killed process was writing (posegen_ns.atomic_io)
    except OSError as err:  # cannot even start: a read-only or full output folder
        raise export_io_error(err, tmp, plan) from err
    try:
        if state != "finalized":
            (renderer or _render_all)(pipeline, tmp, plan, meta, fingerprint, hard=kind == "hard", workers=image_workers)
            labels = _gather(tmp, plan)
            write_dataset_files(tmp, labels, meta, shard_info)
            progress = json.loads((tmp / _PROGRESS).read_text())
            _write_json(tmp / _PROGRESS, {**progress, "state": "finalized"})
        shutil.rmtree(tmp / _BATCHES, ignore_errors=True)
        lock.unlink(missing_ok=True)
        _swap_in(tmp, target)
        (target / _PROGRESS).unlink(missing_ok=True)
    except OSError as err:  # a full disk, a read-only folder: what was written is valid; keep it for resume
        lock.unlink(missing_ok=True)
        raise export_io_error(err, tmp, plan) from err
    except Exception as exc:
        if getattr(exc, "keep_partial", False):  # posegen_ns.engine.WorkerError: what was written is valid
            lock.unlink(missing_ok=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # an error, not an interruption: nothing half-written stays
        raise
    except BaseException:  # KeyboardInterrupt / SystemExit: keep the partial folder for --resume
        lock.unlink(missing_ok=True)
        raise
    return target


def export_io_error(err: OSError, partial: Path, plan: Sequence[tuple[int, int]]) -> PoseGenInputError:
    """The message for an I/O error of an export (``err``: a full disk, a read-only folder, a failing disk): what
    happened to which file, how many samples of ``plan`` are kept in the ``partial`` folder, what to free or fix,
    and that running the same command again resumes."""
    total = sum(b - a for a, b in plan)
    done = sum(b - a for a, b in plan if _batch_file(partial, a).exists())
    where = Path(err.filename) if err.filename else partial
    kept = (f"{done} of {total} samples are written and kept in {partial}" if done else
            f"no sample was finished yet ({partial} is kept)" if partial.exists() else "nothing was written")
    again = "then run the same command again to resume" if partial.exists() else "then run the same command again"
    if err.errno in IO_ERRNOS_FULL:
        size = folder_size(partial) if partial.exists() else 0
        need = (f"about {human_bytes(1.5 * size / done * (total - done) + 1e6)}" if done else
                "room for the dataset (at least a few MB per 100 samples)")
        return PoseGenInputError(
            f"export: no space left on the disk of {where} ({err.strerror}); {kept}. Free {need} on that disk "
            f"(or raise the quota), {again}."
        )
    if err.errno in IO_ERRNOS_DENIED:
        folder = where if where.is_dir() else where.parent
        return PoseGenInputError(
            f"export: cannot write {where} ({err.strerror}: a read-only file system or missing permission); {kept}. "
            f"Make {folder} writable, {again} (or pass an --output-dir on a writable disk)."
        )
    return PoseGenInputError(
        f"export: I/O error on {where} ({err.strerror or err}); {kept}. Check or free that disk, {again}."
    )


def _open_partial(tmp: Path, fingerprint: Dict[str, Any], resume: bool, overwrite: bool) -> Optional[str]:
    """Decide what to do with an existing partial folder: returns its state ('rendering' /
    'finalized') to resume, or None after making room for a fresh start."""
    if not tmp.exists():
        return None
    _check_lock(tmp)
    try:
        progress = json.loads((tmp / _PROGRESS).read_text())
    except (OSError, ValueError):  # killed before anything was rendered: nothing to keep
        shutil.rmtree(tmp)
        return None
    if progress.get("fingerprint") == fingerprint:
        if resume:
            return progress.get("state", "rendering")
        shutil.rmtree(tmp)  # --no-resume: start over
        return None
    if not overwrite:
        why = _fingerprint_diff(progress.get("fingerprint") or {}, fingerprint)
        raise PoseGenInputError(
            f"a partial export with other settings is in {tmp} ({why}); run the command that started it again to "
            f"resume it, or pass --overwrite to discard it"
        )
    shutil.rmtree(tmp)
    return None


def _batch_file(tmp: Path, start: int) -> Path:
    return tmp / _BATCHES / f"labels-{start:09d}.npz"


def _render_all(pipeline, tmp: Path, plan, meta, fingerprint, hard: bool, workers: int) -> None:
    """Render the batches of ``plan`` whose labels file is missing; PNGs are encoded on a thread
    pool while the next batch renders, and a batch's labels file is written only after its images."""
    n = meta["num_samples"]
    todo = [(a, b) for a, b in plan if not _batch_file(tmp, a).exists()]
    total = sum(b - a for a, b in plan)
    done = total - sum(b - a for a, b in todo)
    if done:
        print(f"resuming the export in {tmp}: {done} of {total} samples already written")
    pipeline.eval()

    def commit(pending) -> None:
        nonlocal done
        start, futures, labels = pending
        for f in futures:
            f.result()
        save_npz_deterministic(_batch_file(tmp, start), labels)
        done += len(labels["sample_index"])
        _write_json(tmp / _PROGRESS, {"fingerprint": fingerprint, "meta": meta, "state": "rendering",
                                      "total": total, "done": done})

    with torch.no_grad(), progress("rendering samples", total, completed=done, suffix="img/s") as advance, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        pending = None
        for a, b in todo:
            labels, rgb, mask = render_batch(pipeline, range(a, b), hard, meta["seed"])
            futures = []
            for j, i in enumerate(range(a, b)):
                name = image_name(i, n)
                futures.append(pool.submit(write_png, tmp / "images" / name, rgb[j]))
                futures.append(pool.submit(write_png, tmp / "masks" / name, mask[j]))
            if pending is not None:
                commit(pending)
            pending = (a, futures, labels)
            advance(b - a)
        if pending is not None:
            commit(pending)


def _gather(tmp: Path, plan) -> Dict[str, np.ndarray]:
    """Concatenate the per-batch labels of ``plan`` in sample-index order."""
    parts: Dict[str, list] = {k: [] for k in LABEL_FIELDS}
    for a, _ in plan:
        with np.load(_batch_file(tmp, a)) as z:
            for k in LABEL_FIELDS:
                parts[k].append(z[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------ engine
def write_batch(pipeline, batch: tuple[int, int], partial: Path, num_samples: int, hard: bool, seed: int,
                image_workers: int = 4) -> int:
    """Render samples ``batch = (start, stop)`` and write them into the partial folder ``partial`` as the local
    export does: images and masks, then the batch's labels file (atomically and last: the batch is done once it
    exists). A batch whose labels file exists is skipped, so a task that runs again (a retried Ray task) writes
    no sample twice. The unit of work of an export worker (:func:`ray_renderer`).

    Returns:
        The number of samples written (0 when skipped).

    Raises:
        OSError: a file could not be written.
    """
    start, stop = batch
    if _batch_file(partial, start).exists():
        return 0
    pipeline.eval()
    with torch.no_grad():
        labels, rgb, mask = render_batch(pipeline, range(start, stop), hard, seed)
    with ThreadPoolExecutor(max(1, image_workers)) as pool:
        futures = [pool.submit(write_png, partial / folder / image_name(i, num_samples), arrays[j])
                   for j, i in enumerate(range(start, stop)) for folder, arrays in (("images", rgb), ("masks", mask))]
        for f in futures:
            f.result()
    save_npz_deterministic(_batch_file(partial, start), labels)
    return stop - start


def load_export_worker(run_config: Path, digest: str):
    """What an export worker loads once: the run's pipeline (:func:`posegen_ns.cli.load_run`), checked to be the
    checkpoint the driver fingerprinted (:func:`model_digest` equal to ``digest``).

    Raises:
        PoseGenInputError: the worker loaded another checkpoint (the run folder differs on its node).
    """
    pipeline = load_run(run_config)
    got = model_digest(pipeline)
    if got != digest:
        raise PoseGenInputError(
            f"--load-config {run_config}: the worker on {socket.gethostname()} loaded a checkpoint with another digest "
            f"({got[:12]} vs the driver's {digest[:12]}); give every node the same run folder (a shared file system) "
            f"and do not train into it while exporting"
        )
    return pipeline


def ray_renderer(run_config: Path, num_workers: Optional[int] = None, quiet: bool = False) -> Callable[..., None]:
    """A ``renderer`` for :func:`export_samples` that renders on Ray (call the export inside
    :func:`posegen_ns.engine.ray_session`): the missing batches become tasks (:func:`posegen_ns.engine.run_tasks`)
    on ``num_workers`` workers, each loading ``run_config`` once (:func:`load_export_worker`) and writing its
    batches into the same partial folder (:func:`write_batch`); the driver shows one progress bar and keeps
    ``progress.json``. The dataset is the local export's, byte for byte, whatever the number of workers."""
    from posegen_ns.engine import run_tasks

    def render_all(pipeline, tmp: Path, plan, meta, fingerprint, hard: bool, workers: int) -> None:
        todo = [(a, b) for a, b in plan if not _batch_file(tmp, a).exists()]
        total = sum(b - a for a, b in plan)
        done = total - sum(b - a for a, b in todo)
        if done:
            print(f"resuming the export in {tmp}: {done} of {total} samples already written")

        def on_result(i: int, _written: int) -> None:
            nonlocal done
            done += todo[i][1] - todo[i][0]
            _write_json(tmp / _PROGRESS, {"fingerprint": fingerprint, "meta": meta, "state": "rendering",
                                          "total": total, "done": done})

        run_tasks(
            functools.partial(load_export_worker, Path(run_config).resolve(), meta["model_digest"]),
            functools.partial(write_batch, partial=tmp.resolve(), num_samples=meta["num_samples"], hard=hard,
                              seed=meta["seed"], image_workers=workers),
            todo, [f"batch {a // meta['batch_size']} (samples {a}..{b - 1})" for a, b in todo],
            num_workers=num_workers, sizes=[b - a for a, b in todo], description="rendering samples", suffix="img/s",
            completed=done, quiet=quiet, on_result=on_result,
        )

    return render_all


# ------------------------------------------------------------------------------------------ merge
def merge_shards(shards_dir: Path, output_dir: Path, overwrite: bool = False, remove_shards: bool = False) -> Path:
    """Join ``shards_dir/shard-0 .. shard-{M-1}`` (one sharded export) into the dataset ``output_dir``.

    Images and masks are hard-linked from the shards where the file system allows (else copied);
    labels are concatenated in sample-index order and the dataset files written as by a single
    process, so ``labels.npz``, ``spin.npz``, ``annotations/`` and the images equal an unsharded export's.

    Raises:
        PoseGenInputError: ``output_dir`` exists (without ``overwrite``), shards missing or
            unfinished, or shards of different exports.
    """
    shards_dir, output_dir = Path(shards_dir), Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise PoseGenInputError(f"output folder {output_dir} exists; pass --overwrite to replace it")
    found = sorted(shards_dir.glob("shard-*/manifest.json"))
    if not found:
        raise PoseGenInputError(f"--shards-dir {shards_dir} holds no finished shard (shard-K/manifest.json)")
    manifests = {p.parent: json.loads(p.read_text()) for p in found}
    first = next(iter(manifests.values()))
    fp0 = {k: v for k, v in first["fingerprint"].items() if k != "shard_index"}
    M = fp0["num_shards"]
    indices = {}
    for folder, m in manifests.items():
        fp = {k: v for k, v in m["fingerprint"].items() if k != "shard_index"}
        if fp != fp0:
            raise PoseGenInputError(f"{folder} is a shard of another export ({_fingerprint_diff(fp, fp0)})")
        indices[m["fingerprint"]["shard_index"]] = folder
    missing = sorted(set(range(M)) - set(indices))
    if missing:
        raise PoseGenInputError(
            f"shards {missing} of {M} are missing or unfinished in {shards_dir}; run ns-posegen-export with "
            f"--num-shards {M} --shard-index K for each (it resumes an interrupted shard), then merge again"
        )
    tmp = output_dir.with_name(f".{output_dir.name}.merging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        parts: Dict[str, list] = {k: [] for k in LABEL_FIELDS}
        for k in range(M):
            folder = indices[k]
            for sample in manifests[folder]["samples"]:
                for key in ("image", "mask"):
                    _link_or_copy(folder / sample[key], tmp / sample[key])
            with np.load(folder / "labels.npz") as z:
                for key in LABEL_FIELDS:
                    parts[key].append(z[key])
        labels = {k: np.concatenate(v) for k, v in parts.items()}
        order = np.argsort(labels["sample_index"], kind="stable")
        labels = {k: v[order] for k, v in labels.items()}
        N = fp0["num_samples"]
        if not np.array_equal(labels["sample_index"], np.arange(N)):
            raise PoseGenInputError(f"shards in {shards_dir} do not hold samples 0..{N - 1} exactly once")
        meta = {"num_samples": N, "kind": first["kind"], "seed": first["seed"], "batch_size": first["batch_size"],
                "height": first["image_size"]["height"], "width": first["image_size"]["width"],
                "run_config": first["run_config"], "model_digest": first["model_digest"],
                "critic": first["critic"], "body": first["body"]}
        fingerprint = {**fp0, "shard_index": 0, "num_shards": 1}
        write_dataset_files(tmp, labels, meta, {"shard": None, "fingerprint": fingerprint,
                                                "merged_from": [str(indices[k]) for k in range(M)]})
    except OSError as err:  # a full disk, a read-only folder: the shards are intact, the merge can simply run again
        shutil.rmtree(tmp, ignore_errors=True)
        raise PoseGenInputError(
            f"merge: cannot write {err.filename or tmp} ({err.strerror or err}); the shards in {shards_dir} are intact: "
            f"free space on (or make writable) the disk of {output_dir}, then run the merge again."
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, output_dir)
    if remove_shards:
        for folder in indices.values():
            shutil.rmtree(folder, ignore_errors=True)
    return output_dir


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ------------------------------------------------------------------------------------------ CLI
def _interrupt_on_sigterm() -> None:
    """Turn SIGTERM (schedulers, ``kill``) into KeyboardInterrupt so the partial folder is kept."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def main(config: ExportConfig) -> Path:
    """``ns-posegen-export [export]``: load the run (:func:`posegen_ns.cli.load_run`) and export."""
    target = config.output_dir / f"shard-{config.shard_index}" if config.num_shards > 1 else config.output_dir
    if target.exists() and not config.overwrite:
        raise PoseGenInputError(f"output folder {target} exists; pass --overwrite to replace it")
    check_engine(config.engine, config.num_workers)
    _interrupt_on_sigterm()
    pipeline = load_run(config.load_config)
    on_ray = config.engine == "ray"
    try:
        with ray_session(config.num_workers) if on_ray else contextlib.nullcontext():
            out = export_samples(pipeline, config.output_dir, config.num_samples, config.kind, config.batch_size,
                                 config.seed, config.overwrite, run_config=config.load_config, resume=config.resume,
                                 shard_index=config.shard_index, num_shards=config.num_shards,
                                 image_workers=config.image_workers,
                                 renderer=ray_renderer(config.load_config, config.num_workers) if on_ray else None)
    except KeyboardInterrupt:
        print(f"interrupted; the partial export is kept next to {target}: run the same command again to resume")
        raise
    except WorkerError:
        print(f"a Ray worker failed (below); the partial export is kept next to {target}: run the same command "
              f"again to resume")
        raise
    n = sum(b - a for a, b in shard_batches(config.num_samples, config.batch_size, config.shard_index, config.num_shards))
    print(f"wrote {n} samples to {out}")
    return out


def merge_main(config: MergeConfig) -> Path:
    """``ns-posegen-export merge``: join the shards."""
    out = merge_shards(config.shards_dir, config.output_dir, config.overwrite, config.remove_shards)
    print(f"merged {config.shards_dir}/shard-* into {out}")
    return out


Commands = Union[
    Annotated[ExportConfig, tyro.conf.subcommand("export", description=ExportConfig.__doc__)],
    Annotated[MergeConfig, tyro.conf.subcommand("merge", description=MergeConfig.__doc__)],
]
"""The subcommands of ``ns-posegen-export`` (as nerfstudio's ``ns-export``): ``export`` (the default: its word
may be left out) and ``merge``."""


def run_command(config: ExportConfig | MergeConfig) -> Path:
    """Run the subcommand ``config`` is the settings of (:func:`main` or :func:`merge_main`)."""
    return merge_main(config) if isinstance(config, MergeConfig) else main(config)


def entrypoint() -> None:
    """Console script ``ns-posegen-export``: ``ns-posegen-export [export] --load-config ... --output-dir ...`` or
    ``ns-posegen-export merge --shards-dir ... --output-dir ...``. ``export`` is the default subcommand, and its
    options cascade to the top level, so the command line of ns-export (no subcommand word) keeps working."""
    run_console_script(
        "ns-posegen-export", Commands, run_command,
        default=ExportConfig(load_config=tyro.MISSING, output_dir=tyro.MISSING),
        config=(tyro.conf.CascadeSubcommandArgs,),
    )


if __name__ == "__main__":
    entrypoint()
