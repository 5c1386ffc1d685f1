"""``ns-posegen-export``: write sampled hard examples of a trained run as a labelled dataset.

Layout of ``--output-dir`` (written to a temporary sibling folder, renamed at the end)::

    images/000000.png ...   rendered RGB, H x W
    masks/000000.png  ...   alpha > 0.5 silhouettes (0 / 255)
    labels.npz              per-sample arrays (N first), see LABEL_FIELDS
    manifest.json           counts, conventions, the run, per-sample files and critic errors

Labels are exact: ``joints_*_cam = R @ joints_world + t`` for the body model's joints at the
exported (body_pose, global_orient, betas, transl), and ``joints_*_2d`` are those points projected
with ``K`` (OpenCV pinhole, pixels, no distortion).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import tyro
from rich.progress import Progress

from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError

LABEL_FIELDS: Dict[str, str] = {
    "body_pose": "(N, 69) SMPL body pose, axis-angle radians",
    "global_orient": "(N, 3) SMPL global orientation, axis-angle radians, world frame (y-up)",
    "transl": "(N, 3) SMPL translation, metres",
    "betas": "(N, S) SMPL shape coefficients",
    "K": "(N, 3, 3) intrinsics, pixels",
    "R": "(N, 3, 3) world->camera rotation (OpenCV: x right, y down, z forward)",
    "t": "(N, 3) world->camera translation, metres",
    "joints_smpl_cam": "(N, 24, 3) SMPL-24 joints, camera frame, metres",
    "joints_h36m_cam": "(N, 17, 3) H36M-17 joints, camera frame, metres",
    "joints_smpl_2d": "(N, 24, 2) SMPL-24 joints, pixels",
    "joints_h36m_2d": "(N, 17, 2) H36M-17 joints, pixels",
    "boxes": "(N, 4) person boxes x0, y0, x1, y1, pixels",
    "critic_pred": "(N, J, 3) the critic's root-relative prediction, camera frame, metres",
    "critic_error_mm": "(N,) the critic's MPJPE on the sample, millimetres",
}


@dataclass
class ExportConfig:
    """Export sampled hard examples of a posegen-human run."""

    load_config: Path
    """The run's config.yml (as for ns-export)."""
    output_dir: Path
    """Dataset folder to create."""
    num_samples: int = 64
    """Number of samples to write."""
    kind: str = "hard"
    """'hard' (the learned distribution) or 'prior' (mocap poses, uniform cameras)."""
    batch_size: int = 8
    """Samples rendered per batch."""
    seed: int = 0
    """Seed of the sample draw."""
    overwrite: bool = False
    """Replace an existing output folder."""


def _write_png(path: Path, array: np.ndarray) -> None:
    import cv2

    ok = cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array)
    if not ok:
        raise OSError(f"could not write {path}")


def export_samples(pipeline, output_dir: Path, num_samples: int, kind: str = "hard", batch_size: int = 8,
                   seed: int = 0, overwrite: bool = False, run_config: Path | None = None) -> Path:
    """Render ``num_samples`` samples with ``pipeline`` (a :class:`~posegen_ns.pipeline.PoseGenPipeline`)
    and write them to ``output_dir`` atomically.

    Raises:
        PoseGenInputError: ``output_dir`` exists and ``overwrite`` is false, or bad arguments.
    """
    output_dir = Path(output_dir)
    if kind not in ("hard", "prior"):
        raise PoseGenInputError(f"--kind must be 'hard' or 'prior', got {kind!r}")
    if num_samples < 1:
        raise PoseGenInputError(f"--num-samples must be at least 1, got {num_samples}")
    if output_dir.exists() and not overwrite:
        raise PoseGenInputError(f"output folder {output_dir} exists; pass --overwrite to replace it")
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    try:
        gen = torch.Generator().manual_seed(seed)
        arrays: Dict[str, list] = {k: [] for k in LABEL_FIELDS}
        files = []
        pipeline.eval()
        with torch.no_grad(), Progress(transient=True) as progress:
            task = progress.add_task("rendering samples", total=num_samples)
            done = 0
            while done < num_samples:
                n = min(batch_size, num_samples - done)
                s = pipeline.render_and_score(pipeline.draw(n, hard=kind == "hard", noise=gen))
                fields = {
                    "body_pose": s.body_pose, "global_orient": s.global_orient, "transl": s.transl, "betas": s.betas,
                    "K": s.K, "R": s.R, "t": s.t, "joints_smpl_cam": s.joints_smpl_cam, "joints_h36m_cam": s.joints_h36m_cam,
                    "joints_smpl_2d": s.joints_smpl_2d, "joints_h36m_2d": s.joints_h36m_2d, "boxes": s.boxes,
                    "critic_pred": s.pred_joints, "critic_error_mm": s.error * 1000.0,
                }
                for k, v in fields.items():
                    arrays[k].append(v.detach().cpu().numpy())
                rgb = (s.images.clamp(0, 1) * 255).round().byte().cpu().numpy()
                mask = ((s.alpha[..., 0] > 0.5).byte() * 255).cpu().numpy()
                for i in range(n):
                    name = f"{done + i:06d}.png"
                    _write_png(tmp / "images" / name, rgb[i])
                    _write_png(tmp / "masks" / name, mask[i])
                    files.append({"image": f"images/{name}", "mask": f"masks/{name}",
                                  "critic_error_mm": float(fields["critic_error_mm"][i])})
                done += n
                progress.update(task, advance=n)
        labels = {k: np.concatenate(v).astype(np.float32) for k, v in arrays.items()}
        np.savez(tmp / "labels.npz", **labels)
        H, W = rgb.shape[1:3]
        manifest = {
            "format": "posegen-ns dataset", "version": 1, "num_samples": num_samples, "kind": kind, "seed": seed,
            "image_size": {"height": int(H), "width": int(W)},
            "run_config": str(run_config) if run_config else None,
            "critic": {"name": pipeline.config.critic.name, "joint_set": pipeline.critic.joint_set},
            "body": str(pipeline.config.model.body or pipeline.datamanager.train_capture.body),
            "conventions": {"units": "metres, pixels, radians", "camera": "OpenCV K, R|t world->camera",
                            "world": "y-up", "rotations": "axis-angle"},
            "joint_sets": {"smpl24": list(SMPL_JOINT_NAMES), "h36m17": list(H36M_JOINT_NAMES)},
            "labels": LABEL_FIELDS,
            "critic_mean_mpjpe_mm": float(labels["critic_error_mm"].mean()),
            "samples": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output_dir.exists():  # overwrite: swap in the new folder, then drop the old one
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output_dir)
    return output_dir


def main(config: ExportConfig) -> Path:
    """Load the run (nerfstudio ``eval_setup``) and export."""
    from nerfstudio.utils.eval_utils import eval_setup

    if not config.load_config.is_file():
        raise PoseGenInputError(f"--load-config {config.load_config} does not exist; pass RUN/config.yml of an ns-train run")
    if config.output_dir.exists() and not config.overwrite:
        raise PoseGenInputError(f"output folder {config.output_dir} exists; pass --overwrite to replace it")
    _, pipeline, _, _ = eval_setup(config.load_config, test_mode="inference")
    out = export_samples(pipeline, config.output_dir, config.num_samples, config.kind, config.batch_size,
                         config.seed, config.overwrite, run_config=config.load_config)
    print(f"wrote {config.num_samples} samples to {out}")
    return out


def entrypoint() -> None:
    """Console script ``ns-posegen-export``."""
    main(tyro.cli(ExportConfig))


if __name__ == "__main__":
    entrypoint()
