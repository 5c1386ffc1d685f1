"""Field quality: train the human field on a capture and report PSNR / SSIM on held-out frames (novel
view) and held-out clips (novel pose), with and without each field feature (ablation).

    python scripts/field_quality.py [--data CAPTURE_DIR] [--resolution 256] [--steps 600]
                                    [--variants lbs residual densify full full+refine] [--json PATH]

Capture: ``--data`` (a capture folder), else the default capture (``~/.cache/posegen-ns``); with
``--resolution R`` other than the default capture's, the default capture re-rendered at R x R (what
``ns-posegen-capture --resolution R`` writes), built once into ``cache_dir()/default_capture_{R}px``.

Splits: training uses every camera but ``--heldout-camera`` on the capture's training frames.
*Novel view*: the training frames seen from the held-out camera. *Novel pose*: every camera on the
capture's held-out clips. Metrics per split (``PoseGenHumanModel.image_quality``): PSNR over the whole
image (dB; the black background inflates it), PSNR over the person's pixels (mask or rendered alpha),
SSIM. LPIPS is not reported: nerfstudio's LPIPS downloads AlexNet weights, and none are supplied
locally.

Variants (model config overrides of ``PoseGenHumanModelConfig``; every variant starts from the same
seed and sees the same batches):
- ``lbs``: canonical Gaussians + LBS + static offset + skinning-weight residual (no pose residual,
  no densification);
- ``residual``: ``lbs`` + the pose-dependent non-rigid residual;
- ``densify``: ``lbs`` + densification and pruning;
- ``full``: both (the model's defaults);
- ``full+refine``: ``full`` + per-frame pose refinement.

Training: the training loop of ``ns-train posegen-human``'s phase 1 (same losses, same Adam
optimizers and learning rates from the method config, the model's densification callbacks), for
``--steps`` steps of ``--images-per-batch`` images; densification runs at 1/5, 2/5, 3/5 and 4/5 of the
steps. Reported per variant: the metrics, the final number of Gaussians, training seconds.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

# Passive OpenMP waiting on a shared CPU (see scripts/bench_render.py): re-exec once with it set.
if "OMP_WAIT_POLICY" not in os.environ and __name__ == "__main__":
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import tyro  # noqa: E402

from posegen_ns.atomic_io import check_writable, write_json  # noqa: E402

VARIANTS = {
    "lbs": {"pose_residual": False, "densify": False},
    "residual": {"pose_residual": True, "densify": False},
    "densify": {"pose_residual": False, "densify": True},
    "full": {"pose_residual": True, "densify": True},
    "full+refine": {"pose_residual": True, "densify": True, "pose_refine": True},
}


@dataclass
class FieldQualityConfig:
    """Field-quality ablation on a capture."""

    data: Optional[Path] = None
    """Capture folder (default: the default capture)."""
    resolution: Optional[int] = None
    """Use the default capture re-rendered at this image side (pixels); built and cached on first use."""
    steps: int = 600
    """Training steps per variant."""
    images_per_batch: int = 4
    """(frame, camera) images per step."""
    num_gaussians: int = 6000
    """Initial number of Gaussians."""
    heldout_camera: int = 1
    """Camera index held out of training (the novel-view split)."""
    variants: Tuple[str, ...] = ("lbs", "residual", "densify", "full")
    """Variants to train, from: lbs, residual, densify, full, full+refine."""
    eval_stride: int = 1
    """Evaluate every k-th image of each split (1: all)."""
    seed: int = 0
    """Seed of the field initialisation and the batch order."""
    json: Optional[Path] = None
    """Also write the results here as JSON."""


def capture_dir(cfg: FieldQualityConfig) -> Path:
    """The capture to use (see the module docstring)."""
    from posegen_ns.data.capture import read_capture
    from posegen_ns.data.default_capture import build_default_capture, default_capture_dir

    if cfg.data is not None:
        return cfg.data
    path = default_capture_dir()
    if cfg.resolution is None or read_capture(path).width == cfg.resolution:
        return path
    from posegen_ns.body.smpl_files import cache_dir

    path = cache_dir() / f"default_capture_{cfg.resolution}px"
    if not (path / "capture.json").is_file():
        build_default_capture(path, resolution=cfg.resolution, overwrite=True)
    return path


def train_variant(cfg: FieldQualityConfig, data: Path, name: str) -> dict:
    """Train one variant and evaluate it on both splits."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    from posegen_ns.configs import posegen_human
    from posegen_ns.datamanager import PoseGenDataManagerConfig
    from posegen_ns.model import PoseGenHumanModelConfig

    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    dm = PoseGenDataManagerConfig(
        data=data, images_per_batch=cfg.images_per_batch, seed=cfg.seed, heldout_cameras=(cfg.heldout_camera,)
    ).setup()
    every = max(1, cfg.steps // 5)
    mcfg = PoseGenHumanModelConfig(
        num_gaussians=cfg.num_gaussians, densify_from=every, densify_every=every, densify_until=4 * every, **VARIANTS[name]
    )
    torch.manual_seed(cfg.seed)
    model = mcfg.setup(scene_box=dm.train_dataset.scene_box, num_train_data=len(dm.train_dataset), capture=dm.train_capture)
    groups = model.get_param_groups()
    optimizers = Optimizers({k: posegen_human.config.optimizers[k] for k in groups}, groups)
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=None, trainer=None))
    model.train()
    started = time.perf_counter()
    for step in range(cfg.steps):  # nerfstudio's Trainer.train_iteration, phase 1 of PoseGenPipeline
        optimizers.zero_grad_all()
        _, batch = dm.next_train(step)
        outputs = model.render_batch(batch)
        loss = sum(model.get_loss_dict(outputs, batch).values())
        loss.backward()
        optimizers.optimizer_step_all()
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        if (step + 1) % max(1, cfg.steps // 4) == 0:
            print(f"  [{name}] step {step + 1}/{cfg.steps}  loss {float(loss.detach()):.4f}  N {model.field.num_gaussians}  "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    train_s = time.perf_counter() - started
    model.eval()
    result = {"variant": name, "train_s": train_s, "num_gaussians": model.field.num_gaussians}
    for split in ("novel_view", "novel_pose"):
        cap, frames, cams = dm.split_pairs(split)
        keep = torch.arange(0, len(frames), cfg.eval_stride)
        batches = (dm.capture_batch(cap, frames[i], cams[i])[1] for i in torch.split(keep, 8))
        result.update({f"{split}_{k}": v for k, v in model.image_quality(batches).items()})
    return result


def main(cfg: FieldQualityConfig) -> list[dict]:
    """Fit and score every variant of ``cfg``; print a line each, write ``--json``; returns the results."""
    if cfg.json is not None:
        check_writable(cfg.json, "--json")  # fail now, not after the fits
    torch.manual_seed(cfg.seed)
    data = capture_dir(cfg)
    from posegen_ns.data.capture import read_capture

    cap = read_capture(data)
    held = sorted(set(cap.clip_names[i] for i, s in enumerate(cap.split) if s == "heldout"))
    print(f"capture {data}: {cap.num_frames} frames x {cap.num_cameras} cameras at {cap.width}x{cap.height}; "
          f"novel view: camera {cfg.heldout_camera} on the training frames; novel pose: clips {held or 'none (training frames)'}")
    print(f"{cfg.steps} steps x {cfg.images_per_batch} images, {cfg.num_gaussians} initial Gaussians, "
          f"torch {torch.__version__} on {torch.get_num_threads()} threads")
    results = []
    for name in cfg.variants:
        results.append(train_variant(cfg, data, name))
        r = results[-1]
        print(f"  [{name}] novel view PSNR {r['novel_view_psnr']:.2f} dB, novel pose PSNR {r['novel_pose_psnr']:.2f} dB, "
              f"{r['train_s']:.0f} s", flush=True)
    header = (f"{'variant':<12} {'N':>6} {'train s':>8} | {'view PSNR':>9} {'person':>7} {'SSIM':>6} | "
              f"{'pose PSNR':>9} {'person':>7} {'SSIM':>6}")
    print("\nPSNR (dB) whole image / person pixels, SSIM; novel view = held-out camera, novel pose = held-out clips")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['variant']:<12} {r['num_gaussians']:>6} {r['train_s']:>8.0f} | {r['novel_view_psnr']:>9.2f} "
              f"{r['novel_view_psnr_person']:>7.2f} {r['novel_view_ssim']:>6.3f} | {r['novel_pose_psnr']:>9.2f} "
              f"{r['novel_pose_psnr_person']:>7.2f} {r['novel_pose_ssim']:>6.3f}")
    if cfg.json is not None:
        write_json(cfg.json, {"config": {k: str(v) for k, v in vars(cfg).items()}, "results": results}, indent=2)
    return results


if __name__ == "__main__":
    main(tyro.cli(FieldQualityConfig))
