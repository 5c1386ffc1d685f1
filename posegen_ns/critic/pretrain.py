"""Pre-training of the project's default critic (an :class:`~adapters.hmr.HMRCritic`).

The default critic stands in for an estimator trained on a limited public dataset: it is trained
on renders of a narrow "source" pose set and evaluated on held-out source poses and on all other
shipped mocap. This module holds the training core, independent of how images are made
(``sample_batch``), the console script ``ns-posegen-pretrain-critic`` and the cached default critic
(:func:`default_critic_checkpoint`). Scores on held-out renders come from
:func:`posegen_ns.critic.evaluation.evaluate_critic`. Two source sets exist (``--source``): ``narrow``
(walking seen from the front; the default critic) and ``h36m`` (:mod:`posegen_ns.data.h36m_source`: everyday
actions from four H36M-like cameras, several subjects; a critic like SPIN). ``--eval-every`` records the
held-out curve and ``--target-mpjpe-mm`` stops at a held-out target.

``sample_batch(batch_size, generator) -> dict`` returns (B = batch_size):
    ``images`` (B, 3, H, W) RGB in [0, 1]; ``boxes`` (B, 4) xyxy pixels;
    ``joints_h36m_cam`` (B, 17, 3) camera frame (OpenCV axes), metres;
    ``body_pose`` (B, 69) axis-angle; ``global_orient_cam`` (B, 3) axis-angle in the camera frame;
    ``betas`` (B, num_betas of the critic's body);
    optional ``joints_2d`` (B, 17, 2) pixels of ``images``, or ``K`` (B, 3, 3) intrinsics from which
    they are projected: either enables the 2D/camera terms.

Losses follow SPIN's supervised terms (Kolotouros et al., ICCV 2019, ``train/trainer.py``): MSE on
root-relative 3D joints (weight 5), MSE on the 24 rotation matrices (1), MSE on betas (0.001).
With ``joints_2d``, also SPIN's 2D keypoint MSE in crop coordinates normalised to [-1, 1] (5),
with the weak-perspective camera ``x_n = s (X + tx)``, ``y_n = s (Y + ty)`` applied to the
root-relative 3D joints (SPIN's perspective camera with its 5000 px focal length is this in the
limit), and SPIN's scale regulariser ``exp(-10 s)^2`` (1). Without 2D labels the camera is left
unsupervised (the critic's 3D output does not use it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from adapters.crop import image_to_crop
from adapters.hmr import HMRCritic, HMRPrediction, build_hmr_critic, default_critic_path, save_spin_checkpoint
from posegen_ns.atomic_io import check_torch_file, check_writable, read_cache
from posegen_ns.cli import progress as cli_progress
from posegen_ns.cli import run_console_script
from posegen_ns.critic.evaluation import evaluate_critic, sampler_batches
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, project_points
from posegen_ns.metrics import mpjpe, pa_mpjpe

SampleBatch = Callable[[int, torch.Generator], dict]
"""``sample_batch(batch_size, generator) -> dict`` (keys in the module docstring)."""


@dataclass
class LossWeights:
    """Weights of the supervised losses (SPIN's defaults)."""

    joints: float = 5.0
    """Root-relative H36M-17 joints, MSE in m^2."""
    pose: float = 1.0
    """24 rotation matrices (global orientation in the camera frame + body pose), MSE."""
    betas: float = 0.001
    """Shape coefficients, MSE."""
    keypoints_2d: float = 5.0
    """2D joints in normalised crop coordinates, MSE (only with ``joints_2d`` or ``K`` in the batch)."""
    cam: float = 1.0
    """Keeps the weak-perspective scale positive, ``exp(-10 s)^2`` (only with 2D targets)."""


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def supervised_losses(pred: HMRPrediction, batch: dict, num_betas: int, weights: LossWeights) -> dict[str, Tensor]:
    """SPIN-style supervised losses of one batch; ``'loss'`` is the weighted sum (scalar tensors)."""
    gt_joints = batch["joints_h36m_cam"] - batch["joints_h36m_cam"][:, :1]  # (B, 17, 3)
    B = gt_joints.shape[0]
    gt_rot = axis_angle_to_matrix(
        torch.cat([batch["global_orient_cam"].reshape(B, 1, 3), batch["body_pose"].reshape(B, 23, 3)], dim=1)
    )  # (B, 24, 3, 3)
    losses = {
        "joints": ((pred.joints - gt_joints) ** 2).mean(),
        "pose": ((pred.rotmat - gt_rot) ** 2).mean(),
        "betas": ((pred.betas[:, :num_betas] - batch["betas"]) ** 2).mean(),
    }
    joints_2d = batch.get("joints_2d")
    if joints_2d is None and "K" in batch:
        eye = torch.eye(3, dtype=gt_joints.dtype, device=gt_joints.device).expand(B, 3, 3)
        joints_2d, _ = project_points(batch["joints_h36m_cam"], batch["K"], eye, torch.zeros_like(gt_joints[:, 0]))
    if joints_2d is not None:
        s, txy = pred.cam[:, None, :1], pred.cam[:, None, 1:]  # (B, 1, 1), (B, 1, 2)
        proj = s * (pred.joints[..., :2] + txy)  # (B, 17, 2) normalised crop coordinates
        target = image_to_crop(joints_2d, batch["boxes"], 2) - 1.0  # [-1, 1] over the box
        losses["keypoints_2d"] = ((proj - target) ** 2).mean()
        losses["cam"] = torch.exp(-10.0 * pred.cam[:, 0]).pow(2).mean()
    losses["loss"] = sum(getattr(weights, k) * v for k, v in losses.items())
    return losses


def pretrain_critic(
    critic: HMRCritic,
    sample_batch: SampleBatch,
    steps: int,
    lr: float,
    batch_size: int,
    log_every: int,
    progress: bool = True,
    seed: int = 0,
    weights: LossWeights | None = None,
    freeze_bn: bool = False,
    history: list[dict[str, float]] | None = None,
    on_window: Callable[[int, dict[str, float]], bool] | None = None,
    lr_drop_at: int | None = None,
    lr_drop_factor: float = 3.0,
    max_bad_steps: int = 20,
    max_grad_norm: float | None = None,
    lr_schedule: Literal["constant", "cosine"] = "constant",
    warmup_steps: int = 0,
) -> dict[str, float]:
    """Train ``critic.hmr`` with Adam on batches from ``sample_batch``.

    Args:
        critic: the critic to train in place (its device is used).
        sample_batch: batch source (module docstring).
        steps, lr, batch_size: optimisation settings.
        log_every: steps per logged window (progress bar fields and ``history`` rows).
        progress: show a rich progress bar.
        seed: seed of the ``torch.Generator`` passed to ``sample_batch``.
        weights: loss weights (default :class:`LossWeights`).
        freeze_bn: use ``critic.train_mode()`` (frozen BatchNorm statistics, for fine-tuning a
            pre-trained network) instead of ``critic.train()`` (needed from scratch).
        history: if given, one dict per window is appended (step, losses, mpjpe_mm, pa_mpjpe_mm).
        on_window: if given, called as ``on_window(step, metrics)`` after each logged window (it may
            evaluate the critic; the train/BatchNorm mode is restored afterwards); returning True stops
            training there (e.g. a held-out target reached). ``metrics`` may be updated in place (it is
            the ``history`` row).
        lr_drop_at: divide the learning rate by ``lr_drop_factor`` from this step on (a step schedule; measured on
            the H36M-like source: a constant 3e-4 oscillated between 86 and 442 mm held-out MPJPE and then produced
            NaN poses, a drop to 1e-4 after 1500 steps reached 74 mm at step 1600).
        max_bad_steps: a step whose loss is not finite is skipped (no update); this many in a row stop training
            with an error.
        max_grad_norm: clip the gradient's global norm to this (None: no clipping). Typical norms on the H36M-like
            source are 5-12 (measured over the first 30 steps at 128 px), so 20 only stops explosions.
        lr_schedule: 'constant' (with the optional ``lr_drop_at``) or 'cosine': after ``warmup_steps`` of linear
            warm-up, the rate follows ``lr * (0.02 + 0.98 * (1 + cos(pi * p)) / 2)`` with ``p`` the fraction of the
            remaining steps done (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts), ending at 2 % of ``lr``.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` (cosine schedule only).

    Raises:
        RuntimeError: ``max_bad_steps`` consecutive non-finite losses (the optimisation diverged: lower ``lr``).

    Returns:
        Metrics of the last window: ``loss`` and each loss term, ``mpjpe_mm``, ``pa_mpjpe_mm``
        (on the training batches, root-relative H36M-17), ``steps``. The critic is left in eval mode.
    """
    weights = weights or LossWeights()
    device = next(critic.hmr.parameters()).device
    opt = torch.optim.Adam(critic.hmr.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    critic.train_mode() if freeze_bn else critic.train()
    window: dict[str, float] = {}
    count = 0
    bad = 0
    last: dict[str, float] = {}
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {lr_schedule!r}")
    with cli_progress("pretrain critic", steps, quiet=not progress) as advance:
        for step in range(1, steps + 1):
            if lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(lr, step, steps, warmup_steps)
            elif lr_drop_at is not None and step == lr_drop_at:
                for group in opt.param_groups:
                    group["lr"] = lr / lr_drop_factor
            batch = _to(sample_batch(batch_size, gen), device)
            pred = critic.predict(batch["images"], batch["boxes"])
            losses = supervised_losses(pred, batch, critic.body.num_betas, weights)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(losses["loss"]):  # skipped: no update, not averaged into the window
                bad += 1
                if bad >= max_bad_steps:
                    raise RuntimeError(f"pre-training diverged: {bad} steps in a row with a non-finite loss (at step {step}); "
                                       f"lower the learning rate (now {opt.param_groups[0]['lr']:g}).")
            else:
                bad = 0
                losses["loss"].backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(critic.hmr.parameters(), max_grad_norm)
                opt.step()
                with torch.no_grad():
                    gt = batch["joints_h36m_cam"]
                    row = {k: float(v) for k, v in losses.items()}
                    row["mpjpe_mm"] = 1000.0 * float(mpjpe(pred.joints, gt, root=0).mean())
                    row["pa_mpjpe_mm"] = 1000.0 * float(pa_mpjpe(pred.joints, gt).mean())
                for k, v in row.items():
                    window[k] = window.get(k, 0.0) + v
                count += 1
            if (step % log_every == 0 or step == steps) and count > 0:
                last = {k: v / count for k, v in window.items()}
                last["steps"] = step
                if on_window is not None:
                    stop = bool(on_window(step, last))
                    critic.train_mode() if freeze_bn else critic.train()
                else:
                    stop = False
                if history is not None:
                    history.append(dict(last))
                window, count = {}, 0
                if stop:
                    advance(steps - step + 1, f"stopped at step {step}")
                    break
                advance(1, f"loss {last['loss']:.4f}  MPJPE {last['mpjpe_mm']:.1f} mm  PA {last['pa_mpjpe_mm']:.1f} mm")
            else:
                advance(1)
    critic.eval_mode()
    return last


def cosine_lr(lr: float, step: int, steps: int, warmup_steps: int = 0, floor: float = 0.02) -> float:
    """Learning rate of ``step`` (1-based) of ``steps`` under linear warm-up then cosine decay to ``floor * lr``
    (SGDR, Loshchilov & Hutter, ICLR 2017, one cycle): ``lr * step / warmup_steps`` during warm-up, then
    ``lr * (floor + (1 - floor) * (1 + cos(pi * p)) / 2)`` with ``p = (step - warmup_steps) / (steps - warmup_steps)``."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    p = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p))))


# ---- console script -------------------------------------------------------------------------
@dataclass
class PretrainCriticConfig:
    """Pre-train the default HMR critic on renders of the source pose set."""

    output: Path = field(default_factory=default_critic_path)
    """Checkpoint to write (SPIN layout, loadable with ``load_critic('hmr', checkpoint=...)``)."""
    body: str = "open"
    """Body the critic predicts for and the renders show: 'open', 'tiny' or an SMPL file path."""
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    """torchvision ResNet backbone."""
    input_size: int = 128
    """Crop side seen by the network, pixels."""
    image_size: int = 192
    """Side of the rendered source images, pixels."""
    steps: int = 20000
    """Optimisation steps."""
    lr: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 32
    """Samples per step."""
    log_every: int = 100
    """Steps per progress-bar update."""
    eval_samples: int = 512
    """Samples per evaluation split ('heldout', 'other')."""
    num_images: int = 2000
    """Distinct source renders to train on (rendered once and cached)."""
    backbone_weights: Path | None = None
    """Optional torchvision ImageNet state_dict for the backbone (random init otherwise)."""
    seed: int = 0
    """Seed of the sample generator and of the network initialisation."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    source: Literal["narrow", "h36m"] = "narrow"
    """Source set (:data:`posegen_ns.data.source_poses.SOURCE_KINDS`): 'narrow' (walking, frontal views: the
    default critic) or 'h36m' (:mod:`posegen_ns.data.h36m_source`: H36M-like actions, four cameras, several
    subjects: a critic like SPIN; also scored on its 'other_motions' and 'other_views' splits)."""
    eval_every: int = 0
    """Score the held-out split every this many steps (a multiple of ``log_every``; 0: only at the end); the
    curve is printed and kept in the checkpoint's metadata (``curve``)."""
    target_mpjpe_mm: float = 0.0
    """Stop once the held-out MPJPE (at an ``eval_every`` check) is at most this (0: run all ``steps``)."""
    lr_drop_at: int | None = None
    """Divide the learning rate by 3 from this step on (None: constant). The 'h36m' default critic drops at 75 % of
    its steps."""
    max_grad_norm: float | None = None
    """Clip the gradient's global norm to this (None: no clipping; the 'h36m' default critic uses 20)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """'constant' (with ``lr_drop_at``) or 'cosine' (warm-up, then decay to 2 % of ``lr``; the 'h36m' default
    critic uses it)."""
    warmup_steps: int = 0
    """Linear warm-up steps of the cosine schedule."""
    keep_best: bool = False
    """With ``eval_every``: save the weights of the best held-out check, not the last step's (a late divergence
    cannot spoil the checkpoint; the held-out figure is then the one the choice was made on)."""
    overwrite: bool = False
    """Replace an existing ``--output`` (without it an existing file, the shared default critic included, is
    never overwritten)."""


def check_pretrain_config(cfg: PretrainCriticConfig) -> None:
    """Refuse, before any work, settings that would train nothing or fail late: counts below 1, a learning
    rate <= 0, an existing ``--output`` without ``--overwrite``, an ``--output`` that cannot be written.

    Raises:
        PoseGenInputError: the first bad option, named with its value and the fix.
    """
    for flag, value, least in (("--steps", cfg.steps, 1), ("--batch-size", cfg.batch_size, 1),
                               ("--log-every", cfg.log_every, 1), ("--num-images", cfg.num_images, 1),
                               ("--eval-samples", cfg.eval_samples, 1), ("--input-size", cfg.input_size, 8),
                               ("--image-size", cfg.image_size, 8), ("--eval-every", cfg.eval_every, 0),
                               ("--warmup-steps", cfg.warmup_steps, 0)):
        if value < least:
            raise PoseGenInputError(f"{flag} must be at least {least}, got {value}.")
    if not cfg.lr > 0:
        raise PoseGenInputError(f"--lr must be positive, got {cfg.lr}.")
    output = Path(cfg.output).expanduser()
    if output.exists() and not output.is_dir() and not cfg.overwrite:
        shared = " (the shared default critic, read by checkpoint='default')" if output == default_critic_path() else ""
        raise PoseGenInputError(
            f"--output {output}{shared} already exists; pass --overwrite to replace it, or another --output."
        )
    check_writable(output, "--output")


def run_pretrain(cfg: PretrainCriticConfig) -> dict[str, dict[str, float]]:
    """Train, save and evaluate the default critic; returns ``{'train'|'heldout'|'other': metrics}``.

    Raises:
        PoseGenInputError: bad settings (:func:`check_pretrain_config`), checked before any work.
    """
    check_pretrain_config(cfg)
    # the image source (renders of the default capture body in source poses): imported here, as it loads the
    # mesh renderer, which fine-tuning and loss computations do not need
    from adapters.hmr import load_backbone_weights
    from posegen_ns.body import load_body_model
    from posegen_ns.data.source_poses import make_source_sampler

    torch.manual_seed(cfg.seed)
    body = load_body_model(cfg.body)
    critic = build_hmr_critic(cfg.backbone, cfg.input_size, body)
    if cfg.backbone_weights is not None:
        load_backbone_weights(critic.hmr, cfg.backbone_weights)
    critic.to(cfg.device)
    splits = ("heldout", "other", "other_motions", "other_views") if cfg.source == "h36m" else ("heldout", "other")
    samplers = {split: make_source_sampler(body, cfg.image_size, split, num_images=cfg.eval_samples, kind=cfg.source)
                for split in splits}
    train_sampler = make_source_sampler(body, cfg.image_size, "train", num_images=cfg.num_images, kind=cfg.source)

    def score(split: str) -> dict[str, float]:
        batches = sampler_batches(samplers[split], cfg.eval_samples, cfg.batch_size, seed=cfg.seed + 1)
        return evaluate_critic(critic, batches).overall()

    curve: list[dict[str, float]] = []
    start = time.perf_counter()

    def on_window(step: int, metrics: dict[str, float]) -> bool:
        if cfg.eval_every <= 0 or step % cfg.eval_every:
            return False
        held = score("heldout")
        curve.append({"steps": step, "train_seconds": time.perf_counter() - start, "heldout_mpjpe_mm": held["mpjpe_mm"],
                      "heldout_pa_mpjpe_mm": held["pa_mpjpe_mm"], "train_mpjpe_mm": metrics["mpjpe_mm"]})
        print(f"step {step}: held-out MPJPE {held['mpjpe_mm']:.1f} mm  PA-MPJPE {held['pa_mpjpe_mm']:.1f} mm  "
              f"({curve[-1]['train_seconds']:.0f} s of training and checks)", flush=True)
        if cfg.keep_best and math.isfinite(held["mpjpe_mm"]) and held["mpjpe_mm"] < best["mpjpe_mm"]:
            best.update(mpjpe_mm=held["mpjpe_mm"], steps=step,
                        state={k: v.detach().cpu().clone() for k, v in critic.hmr.state_dict().items()})
        return cfg.target_mpjpe_mm > 0 and held["mpjpe_mm"] <= cfg.target_mpjpe_mm

    best: dict = {"mpjpe_mm": math.inf, "steps": None, "state": None}
    train = pretrain_critic(critic, train_sampler, cfg.steps, cfg.lr, cfg.batch_size, cfg.log_every, seed=cfg.seed,
                            on_window=on_window, lr_drop_at=cfg.lr_drop_at, max_grad_norm=cfg.max_grad_norm,
                            lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps)
    train["seconds"] = time.perf_counter() - start
    if best["state"] is not None and best["steps"] != train.get("steps"):
        critic.hmr.load_state_dict(best["state"])
        print(f"kept the weights of step {best['steps']} (best held-out MPJPE {best['mpjpe_mm']:.1f} mm)")
        train["steps"] = best["steps"]
    results = {"train": train}
    for split in splits:
        results[split] = score(split)
    meta = {"backbone": cfg.backbone, "input_size": cfg.input_size, "body": cfg.body, "steps": int(train.get("steps", cfg.steps)),
            "image_size": cfg.image_size, "source": cfg.source, "metrics": results, "curve": curve,
            "recipe": {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps,
                       "lr_drop_at": cfg.lr_drop_at, "max_grad_norm": cfg.max_grad_norm, "batch_size": cfg.batch_size,
                       "num_images": cfg.num_images}}
    save_spin_checkpoint(critic.hmr, cfg.output, {"posegen": meta})
    print(f"saved {cfg.output}")
    for split in splits:
        m = results[split]
        print(f"{split:>8}: MPJPE {m['mpjpe_mm']:.1f} mm  PA-MPJPE {m['pa_mpjpe_mm']:.1f} mm  "
              f"PCK@150 {100 * m['pck150']:.1f} %  AUC {m['auc']:.3f}  ({m['num_images']} samples)")
    return results


def entrypoint() -> None:
    """Console script ``ns-posegen-pretrain-critic``."""
    run_console_script("ns-posegen-pretrain-critic", PretrainCriticConfig, run_pretrain)


H36M_RECIPE: dict = {"tag": "cos", "warmup_fraction": 0.03, "max_grad_norm": 20.0}
"""Pre-training recipe of the 'h36m' default critic beside Adam at 3e-4: cosine decay after a warm-up of this
fraction of the steps, gradient norm clipped at 20, best held-out check kept. ``tag`` names it in the cache file,
so a change of recipe never reuses a checkpoint of another."""


def default_critic_checkpoint(
    body: str, steps: int, input_size: int, backbone: str, batch_size: int = 16, eval_samples: int = 128,
    num_images: int = 1500, source: str = "narrow",
) -> Path:
    """The default critic for ``body``, pre-trained once and cached.

    Used for the critic ``'default'`` (:func:`posegen_ns.critic.loading.load_configured_critic`, whose
    :class:`~posegen_ns.critic.loading.CriticConfig` holds the defaults of ``steps``, ``input_size`` and
    ``backbone``) by ``ns-train posegen-human`` and ``ns-posegen-eval``: the checkpoint lives in
    ``cache_dir()/critics/`` under a name made of the body file's hash and the settings, and is
    trained on first use with :func:`run_pretrain` (renders of the source pose set at
    ``1.5 * input_size`` pixels). ``source`` picks the source set (:class:`PretrainCriticConfig`); a
    non-default one is part of the file name; the 'h36m' critic trains with :data:`H36M_RECIPE` (a cosine
    schedule, gradient clipping and the best held-out check kept; a constant rate diverged, a step drop at 75 %
    left the held-out curve noisy: 115 mm at 1600 steps). Returns its path.
    """
    import hashlib

    from posegen_ns.body import body_model_path
    from posegen_ns.body.smpl_files import cache_dir

    body_id = hashlib.sha1(Path(body_model_path(body)).read_bytes()).hexdigest()[:10]
    kind = "" if source == "narrow" else f"{source}-{H36M_RECIPE['tag']}-"
    path = cache_dir() / "critics" / f"default-{kind}{body_id}-{backbone}-{input_size}px-{steps}steps.pt"
    if read_cache(path, check_torch_file, "default critic") is None:  # missing, or damaged (named, then rebuilt)
        print(f"pre-training the default critic ({source} source, {backbone}, {input_size} px, {steps} steps) -> {path}")
        run_pretrain(PretrainCriticConfig(
            output=path, overwrite=True, body=str(body), backbone=backbone, input_size=input_size, image_size=int(1.5 * input_size),
            steps=steps, batch_size=batch_size, lr=3e-4, log_every=max(1, steps // 20), eval_samples=eval_samples,
            num_images=num_images, source=source,
            **(dict(lr_schedule="cosine", warmup_steps=int(H36M_RECIPE["warmup_fraction"] * steps),
                    max_grad_norm=H36M_RECIPE["max_grad_norm"], eval_every=max(1, steps // 20), keep_best=True)
               if source == "h36m" else {}),
        ))
    return path
