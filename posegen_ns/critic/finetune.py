"""Fine-tuning a critic on PoseGen's labelled samples mixed with its source data.

PoseGen (Gholami et al., AAAI 2024; released code ``mgholamikn/PoseGen``) fine-tunes the pre-trained
estimator on its rendered hard samples mixed with real training data, drops unusable samples, and
keeps BatchNorm frozen. Here:

- **Losses**: SPIN's supervised terms, :func:`posegen_ns.critic.pretrain.supervised_losses` (3D joints, 24
  rotation matrices, betas, 2D keypoints in crop coordinates and the camera-scale regulariser), the
  same function that pre-trained the critic.
- **Mixing**: every step uses one batch of samples and ``source_fraction`` of its images from the
  source set (the data the critic was pre-trained on; SPIN mixes datasets by fixed fractions the
  same way). The two parts may have different image sizes, so their losses are computed apart and
  averaged weighted by image count (= the mean over one concatenated batch).
- **Schedule**: ``lr_schedule="cosine"`` decays the rate over the run's steps to 2 % (one cosine cycle, as in
  pre-training, :func:`posegen_ns.critic.pretrain.cosine_lr`) and ``max_grad_norm`` clips the gradient: with a
  few dozen steps a constant rate leaves the result at the mercy of the last batches (measured: one repeat of
  five at +15 % MPJPE over the others with the constant rate).
- **Weight averaging**: ``average_tail=f`` ends the run with the uniform mean of the weights after each of the last
  ``ceil(f N)`` of its ``N`` steps instead of the last step's weights (tail averaging, Jain et al., JMLR 2018; SWA,
  Izmailov et al., UAI 2018, with a constant rate), through ``torch.optim.swa_utils.AveragedModel``: with a few dozen
  steps on a few hundred images the last iterate depends on the last batches, the tail mean much less.
- **BatchNorm frozen**: :meth:`adapters.protocol.Critic.train_mode` (running statistics used, never
  updated), as SPIN/HMR fine-tuning on small batches needs.
- **Per-sample outlier filter** (:func:`outlier_mask`): drops samples whose labels are not finite or
  have a joint behind the camera, whose 2D joints project outside the image (the person is cut off: the label cannot be read from the
  image), whose critic box lies mostly outside the image, or whose critic error exceeds a bound (a
  render artefact or a degenerate pose; PoseGen's release filters its fine-tuning samples on the
  critic's loss in the same spirit). ``min_error_mm`` optionally keeps only samples the critic gets
  wrong, as the release does (``loss >= 0.02``).

Batch dictionaries use :mod:`posegen_ns.critic.pretrain`'s layout (B images of H x W pixels):
``images (B, 3, H, W)`` in [0, 1]; ``boxes (B, 4)`` xyxy pixels; ``joints_h36m_cam (B, 17, 3)``
camera frame (OpenCV axes), metres; ``body_pose (B, 69)``; ``global_orient_cam (B, 3)`` axis-angle in
the camera frame; ``betas (B, nb)``; optional ``joints_2d (B, 17, 2)`` pixels or ``K (B, 3, 3)``;
optional ``error (B,)`` the critic's MPJPE on the sample when it was drawn, metres.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import math

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from posegen_ns.critic.pretrain import LossWeights, SampleBatch, cosine_lr, supervised_losses
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import project_points
from posegen_ns.labels import camera_frame_orient

FILTER_REASONS: tuple[str, ...] = ("non_finite", "joints_outside", "box_outside", "error_above", "error_below")
"""Reasons :func:`outlier_mask` drops a sample, in the order they are checked (``non_finite`` also counts
a joint behind the camera)."""


@dataclass
class FinetuneConfig:
    """Fine-tuning of the critic on samples (module docstring)."""

    lr: float = 5e-5
    """Adam learning rate (SPIN's fine-tuning rate)."""
    source_fraction: float = 0.5
    """Fraction of each step's images drawn from the source (pre-training) set; 0 = samples only."""
    max_error_mm: float = 600.0
    """Drop samples on which the critic's MPJPE exceeds this (mm): gross failures, render artefacts."""
    min_error_mm: float = 0.0
    """Drop samples on which the critic's MPJPE is below this (mm); PoseGen's release keeps only hard ones."""
    joint_margin_px: float = 0.0
    """Drop samples with a 2D joint more than this many pixels outside the image."""
    max_box_outside: float = 0.3
    """Drop samples whose critic box has more than this fraction of its area outside the image."""
    weights: LossWeights = field(default_factory=LossWeights)
    """SPIN's supervised loss weights (:class:`posegen_ns.critic.pretrain.LossWeights`)."""
    lr_schedule: str = "constant"
    """'constant', or 'cosine': one cosine decay from ``lr`` to 2 % of it over the fine-tuning steps."""
    max_grad_norm: Optional[float] = None
    """Clip the gradient's global norm to this (None: no clipping)."""
    average_tail: float = 0.0
    """End with the uniform mean of the weights after each of the last ``ceil(average_tail N)`` of the ``N`` steps
    (tail averaging, module docstring); 0 = the last step's weights."""
    dropout: bool = True
    """Keep the critic's dropout layers active while fine-tuning (SPIN's regressor has two, p = 0.5); False puts them in
    eval mode, so a fine-tuning run depends on its batches and source images alone."""
    colour_noise: float = 0.0
    """SPIN's colour noise (its ``noise_factor``, 0.4 there): each training image's R, G, B are scaled by factors drawn
    uniformly from ``[1 - c, 1 + c]`` and clipped to [0, 1], sample and source images alike (:func:`colour_noise`);
    0 = off."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.source_fraction < 1.0:
            raise PoseGenInputError(
                f"FinetuneConfig.source_fraction must be in [0, 1) (got {self.source_fraction}); 1 would leave no samples."
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise PoseGenInputError(f"FinetuneConfig.lr_schedule must be 'constant' or 'cosine' (got {self.lr_schedule!r}).")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise PoseGenInputError(f"FinetuneConfig.max_grad_norm must be > 0 or None (got {self.max_grad_norm}).")
        if not 0.0 <= self.average_tail <= 1.0:
            raise PoseGenInputError(
                f"FinetuneConfig.average_tail must be in [0, 1] (got {self.average_tail}): the share of the last steps whose "
                "weights are averaged; 0 keeps the last step's."
            )
        if not 0.0 <= self.colour_noise < 1.0:
            raise PoseGenInputError(
                f"FinetuneConfig.colour_noise must be in [0, 1) (got {self.colour_noise}): channel factors are drawn from "
                "[1 - c, 1 + c]; 0 turns the noise off."
            )
        if self.max_error_mm <= self.min_error_mm:
            raise PoseGenInputError(
                f"FinetuneConfig: max_error_mm ({self.max_error_mm}) must exceed min_error_mm ({self.min_error_mm})."
            )


@dataclass
class FinetuneStats:
    """What :func:`finetune_critic` did: ``steps``, samples ``kept`` / ``dropped`` (and per reason of
    :data:`FILTER_REASONS`), source images used, and the total loss of every step (``losses``)."""

    steps: int = 0
    kept: int = 0
    dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=lambda: {r: 0 for r in FILTER_REASONS})
    source_images: int = 0
    losses: list[float] = field(default_factory=list)

    def add_filter(self, keep: Tensor, reasons: dict[str, int]) -> None:
        """Count one filtered batch: ``keep (B,)`` bool and the per-reason drop counts."""
        self.kept += int(keep.sum())
        self.dropped += int((~keep).sum())
        for k, v in reasons.items():
            self.dropped_by[k] = self.dropped_by.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary: counts, first/last loss, per-reason drops."""
        return {
            "steps": self.steps, "kept": self.kept, "dropped": self.dropped, "source_images": self.source_images,
            "dropped_by": dict(self.dropped_by),
            "first_loss": self.losses[0] if self.losses else float("nan"),
            "last_loss": self.losses[-1] if self.losses else float("nan"),
        }


def batch_from_samples(samples: Any, num_betas: int) -> dict[str, Tensor]:
    """A :class:`posegen_ns.labels.SampleBatch` as a fine-tuning batch dict (module docstring), detached.

    ``global_orient_cam = R R(global_orient)`` as axis-angle (the sample's world orientation seen by its
    camera); ``betas`` cut or zero-padded to the critic body's ``num_betas``; ``joints_2d`` are the
    projected H36M-17 joints (pixels of ``images``); ``error`` the critic's MPJPE (metres).
    """
    B = samples.images.shape[0]
    go_cam = camera_frame_orient(samples.global_orient, samples.R)
    betas = samples.betas[:, :num_betas]
    if betas.shape[1] < num_betas:
        betas = torch.cat([betas, betas.new_zeros(B, num_betas - betas.shape[1])], 1)
    out = {
        "images": samples.images.permute(0, 3, 1, 2), "boxes": samples.boxes, "joints_h36m_cam": samples.joints_h36m_cam,
        "body_pose": samples.body_pose, "global_orient_cam": go_cam, "betas": betas, "joints_2d": samples.joints_h36m_2d,
        "error": samples.error,
    }
    return {k: v.detach().contiguous() for k, v in out.items()}


def outlier_mask(batch: dict[str, Tensor], cfg: FinetuneConfig) -> tuple[Tensor, dict[str, int]]:
    """Per-sample outlier filter (module docstring).

    Args:
        batch: a fine-tuning batch; uses ``images`` (for H, W), ``boxes``, ``joints_h36m_cam``,
            ``joints_2d`` (or ``K``, else the 2D check is skipped) and ``error`` (else the error checks
            are skipped; NaN error = a failed detection, kept: a miss is a hard case).
        cfg: thresholds.

    Returns:
        ``keep (B,)`` bool and ``{reason: count}`` over :data:`FILTER_REASONS`; each dropped sample
        counts once, under the first reason that applies.
    """
    H, W = batch["images"].shape[-2:]
    B = batch["images"].shape[0]
    dev = batch["images"].device
    j2d = batch.get("joints_2d")
    if j2d is None and "K" in batch:
        eye = torch.eye(3, device=dev).expand(B, 3, 3)
        j2d, _ = project_points(batch["joints_h36m_cam"], batch["K"], eye, torch.zeros(B, 3, device=dev))
    checks: dict[str, Tensor] = {}
    finite = torch.isfinite(batch["joints_h36m_cam"]).flatten(1).all(1) & torch.isfinite(batch["boxes"]).all(1)
    finite &= (batch["joints_h36m_cam"][..., 2] > 0).all(1)  # every joint in front of the camera
    if j2d is not None:
        finite &= torch.isfinite(j2d).flatten(1).all(1)
    checks["non_finite"] = ~finite
    if j2d is not None:
        m = cfg.joint_margin_px
        j = torch.nan_to_num(j2d, nan=-1e9)
        inside = (j[..., 0] >= -m) & (j[..., 0] <= W + m) & (j[..., 1] >= -m) & (j[..., 1] <= H + m)
        checks["joints_outside"] = ~inside.all(1)
    x0, y0, x1, y1 = torch.nan_to_num(batch["boxes"]).unbind(-1)
    area = ((x1 - x0) * (y1 - y0)).clamp_min(1e-9)
    inner = (x1.clamp(0, W) - x0.clamp(0, W)).clamp_min(0) * (y1.clamp(0, H) - y0.clamp(0, H)).clamp_min(0)
    checks["box_outside"] = (1.0 - inner / area) > cfg.max_box_outside
    err = batch.get("error")
    if err is not None:
        err_mm = err.detach().to(dev) * 1000.0
        checks["error_above"] = err_mm > cfg.max_error_mm  # NaN compares False: kept
        checks["error_below"] = err_mm < cfg.min_error_mm
    keep = torch.ones(B, dtype=torch.bool, device=dev)
    reasons = {r: 0 for r in FILTER_REASONS}
    for r in FILTER_REASONS:
        if r in checks:
            hit = checks[r] & keep
            reasons[r] = int(hit.sum())
            keep &= ~hit
    return keep, reasons


def select(batch: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """The rows of every tensor of ``batch`` where ``keep (B,)`` is true."""
    return {k: v[keep] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == keep.shape[0] else v for k, v in batch.items()}


def colour_noise(images: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    """SPIN's per-channel colour noise (``pn`` in SPIN's ``datasets/base_dataset.py``, Kolotouros et al. ICCV 2019):
    ``clip(images * u, 0, 1)`` with one factor per image and channel, ``u ~ U[1 - factor, 1 + factor]``.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        factor: half-width of the factors' range, in [0, 1); 0 returns ``images`` itself.
        generator: CPU generator of the factors (the run's seed).

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    if factor <= 0:
        return images
    u = 1.0 + factor * (2.0 * torch.rand(images.shape[0], images.shape[1], 1, 1, generator=generator) - 1.0)
    return (images * u.to(images.device, images.dtype)).clamp(0.0, 1.0)


def source_count(num_samples: int, source_fraction: float) -> int:
    """Source images to add to ``num_samples`` samples so that they make ``source_fraction`` of the
    step: ``round(n f / (1 - f))``, at least one when ``f > 0`` (also when every sample was dropped)."""
    if source_fraction <= 0:
        return 0
    return max(1, round(num_samples * source_fraction / (1.0 - source_fraction)))


def finetune_losses(
    critic: Any, batch: dict[str, Tensor] | None, source_batch: dict[str, Tensor] | None, weights: LossWeights
) -> dict[str, Tensor]:
    """SPIN's supervised losses (:func:`posegen_ns.critic.pretrain.supervised_losses`) of the critic on a
    (filtered) sample batch and a source batch, each term averaged weighted by image count.

    Args:
        critic: an :class:`adapters.hmr.HMRCritic` (anything with ``predict`` returning an
            ``HMRPrediction`` and ``body.num_betas``); its mode is left as it is.
        batch, source_batch: fine-tuning batches (either may be ``None`` or empty, not both).

    Returns:
        ``{'loss', 'joints', 'pose', 'betas', ...}`` scalar tensors (``'loss'`` the weighted sum).

    Raises:
        PoseGenInputError: the critic has no ``predict`` (a black-box or non-SMPL critic cannot be fine-tuned here),
            or both batches are empty.
    """
    if not hasattr(critic, "predict"):
        raise PoseGenInputError(
            f"fine-tuning needs an SMPL-regressing critic with predict() (hmr/spin); {type(critic).__name__} has none."
        )
    device = next(critic.parameters()).device
    parts = []
    for b in (batch, source_batch):
        if b is None or b["images"].shape[0] == 0:
            continue
        b = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in b.items()}
        pred = critic.predict(b["images"], b["boxes"])
        parts.append((b["images"].shape[0], supervised_losses(pred, b, critic.body.num_betas, weights)))
    if not parts:
        raise PoseGenInputError("finetune_losses: both the sample batch and the source batch are empty.")
    total = sum(n for n, _ in parts)
    keys = set.intersection(*(set(l) for _, l in parts))
    return {k: sum(n * l[k] for n, l in parts) / total for k in sorted(keys)}


def finetune_critic(
    critic: Any,
    batches: Iterable[dict[str, Tensor]],
    cfg: FinetuneConfig,
    source: SampleBatch | None = None,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    stats: FinetuneStats | None = None,
) -> FinetuneStats:
    """Fine-tune ``critic`` in place: one Adam step per batch of ``batches`` (a list or a stream).

    Each step filters the batch (:func:`outlier_mask`), adds :func:`source_count` images from
    ``source`` (``source(n, generator) -> batch``, e.g. :func:`posegen_ns.data.source_poses.make_source_sampler`;
    ``None`` = samples only), and minimises :func:`finetune_losses` with BatchNorm frozen
    (``critic.train_mode()``). A step whose samples were all dropped trains on source images alone
    (or is skipped without a source). The critic is left in ``eval_mode()``. With ``cfg.lr_schedule ==
    "cosine"`` the rate of batch ``i`` (1-based) of ``N = len(batches)`` is ``cosine_lr(cfg.lr, i, N)``. With
    ``cfg.average_tail = f > 0`` the critic ends with the mean of its weights after each batch ``i > N - ceil(f N)``
    that made a step (buffers, e.g. BatchNorm's frozen statistics, are left as they are).

    Args:
        critic: the critic to train (an :class:`adapters.hmr.HMRCritic`).
        batches: fine-tuning batches (module docstring).
        cfg: learning rate, mixing, filter thresholds, loss weights.
        source: the source-set sampler.
        seed: seed of the source sampler's generator.
        optimizer: an optimizer over the critic's parameters to continue (default: a new Adam at ``cfg.lr``).
        stats: statistics to add to (default: new).

    Returns:
        :class:`FinetuneStats` (kept / dropped counts, loss per step).

    Raises:
        PoseGenInputError: a cosine schedule or tail averaging with ``batches`` of unknown length (a stream).
    """
    stats = stats or FinetuneStats()
    params = [p for p in critic.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = optimizer or torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    total = None
    if cfg.lr_schedule == "cosine" or cfg.average_tail > 0:
        if not hasattr(batches, "__len__"):
            raise PoseGenInputError(
                "finetune_critic: a cosine schedule or tail averaging needs a list of batches (its length sets the decay "
                "and the averaged steps)."
            )
        total = len(batches)
    average = None
    first_averaged = total - math.ceil(cfg.average_tail * total) if cfg.average_tail > 0 and total else None
    critic.train_mode()
    if not cfg.dropout:
        for m in critic.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.eval()
    try:
        for i, batch in enumerate(batches):
            if cfg.lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(cfg.lr, i + 1, total)
            keep, reasons = outlier_mask(batch, cfg)
            stats.add_filter(keep, reasons)
            kept = select(batch, keep)
            n_src = source_count(int(keep.sum()), cfg.source_fraction) if source is not None else 0
            src = source(n_src, gen) if n_src else None
            if int(keep.sum()) == 0 and src is None:
                continue
            if cfg.colour_noise > 0:
                kept = {**kept, "images": colour_noise(kept["images"], cfg.colour_noise, gen)}
                if src is not None:
                    src = {**src, "images": colour_noise(src["images"], cfg.colour_noise, gen)}
            losses = finetune_losses(critic, kept, src, cfg.weights)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            stats.steps += 1
            stats.source_images += n_src
            stats.losses.append(float(losses["loss"].detach()))
            if first_averaged is not None and i >= first_averaged:
                average = average or AveragedModel(critic, use_buffers=False)
                average.update_parameters(critic)  # the first call copies, later ones keep the running mean
        if average is not None:
            with torch.no_grad():
                for p_avg, p in zip(average.module.parameters(), params):
                    p.copy_(p_avg)
    finally:
        critic.eval_mode()
    return stats
