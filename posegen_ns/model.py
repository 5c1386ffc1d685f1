"""nerfstudio model ``posegen-human``: the articulated human field trained on a capture.

Training renders B (frame, camera) images of the capture with each frame's body parameters and
fits them with an L1 photometric loss plus a mask (alpha vs. silhouette) loss and small
regularisers on the learned residuals (static offsets, skinning-weight residual, the pose-dependent
non-rigid offsets, per-frame pose refinement). Training callbacks
(:meth:`PoseGenHumanModel.get_training_callbacks`) accumulate each Gaussian's positional gradient and
periodically densify and prune the Gaussians, re-indexing the optimizers' state so nerfstudio's
optimizers stay consistent. For the viewer, ``get_outputs_for_camera`` renders the field from any
camera in the pose chosen by ``viewer_pose`` (a capture frame, or a sampled hard pose the pipeline
puts there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig
from pytorch_msssim import SSIM
from torch.nn import Parameter

from posegen_ns.body import load_body_model
from posegen_ns.field.human_field import (
    PER_GAUSSIAN_PARAMETERS,
    FieldRender,
    HumanGaussians,
    PoseResidual,
    reindex_optimizer_state,
)
from posegen_ns.geometry import nerfstudio_c2w_to_opencv


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1], ``(..., H, W, 3)`` -> scalar over everything."""
    return -10.0 * torch.log10(torch.mean((pred - gt) ** 2).clamp_min(1e-10))


@dataclass
class PoseGenHumanModelConfig(ModelConfig):
    """The human field: canonical Gaussians on the body surface, posed by LBS."""

    _target: Type = field(default_factory=lambda: PoseGenHumanModel)
    body: Optional[str] = None
    """Body model ('open', 'tiny' or an SMPL file). Default: the one the capture was made with."""
    num_gaussians: int = 4000
    """Number of canonical Gaussians sampled on the rest surface."""
    mask_loss_weight: float = 0.5
    """Weight of the L1 loss between rendered alpha and the capture's mask."""
    offset_reg_weight: float = 10.0
    """Weight of the squared norm (m^2) of the learned canonical offsets."""
    weight_reg_weight: float = 1e-3
    """Weight of the squared learned skinning-weight residual."""
    max_scale: float = 0.03
    """Scales above this (metres) are penalised, keeping Gaussians from smearing across limbs."""
    background: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour of renders (the capture's is black)."""
    rasterizer: Literal["auto", "torch", "gsplat"] = "auto"
    """Rasteriser backend: gsplat on CUDA, the pure-torch one on CPU ('auto' picks by device)."""
    pose_residual: bool = True
    """Add the pose-dependent non-rigid offset MLP (field.human_field.PoseResidual) to the canonical positions."""
    pose_residual_max_offset: float = 0.03
    """Bound (metres) of each coordinate of the pose-dependent offset."""
    pose_residual_hidden: int = 64
    """Width of the pose-residual MLP."""
    pose_residual_reg_weight: float = 10.0
    """Weight of the mean squared pose-dependent offset (m^2)."""
    densify: bool = True
    """Clone/split Gaussians with large positional gradients and prune transparent ones during fitting."""
    densify_from: int = 200
    """First step at which the Gaussians are densified and pruned."""
    densify_until: int = 1200
    """No densification after this step."""
    densify_every: int = 200
    """Steps between densifications (gradients are averaged over this window)."""
    densify_fraction: float = 0.1
    """Fraction of the Gaussians (largest mean positional gradient) cloned or split each time."""
    max_num_gaussians: int = 20000
    """Densification never makes more Gaussians than this."""
    split_scale_factor: float = 1.5
    """A densified Gaussian is split (else cloned) when its largest scale exceeds this times the initial scale."""
    prune_opacity: float = 0.02
    """Gaussians with opacity below this are pruned at each densification."""
    pose_refine: bool = False
    """Learn a per-frame correction of the capture's body_pose / global_orient (for captures with fitted, noisy poses)."""
    pose_refine_reg_weight: float = 1.0
    """Weight of the mean squared per-frame pose correction (radians^2)."""


class PoseGenHumanModel(Model):
    """Model over :class:`~posegen_ns.field.human_field.HumanGaussians`.

    Keyword arguments from the pipeline: ``capture`` (the training capture: its body source,
    ``betas`` and first frame's pose, used for the viewer).
    """

    config: PoseGenHumanModelConfig

    def populate_modules(self) -> None:
        capture = self.kwargs["capture"]
        body = load_body_model(self.config.body or capture.body)
        cfg = self.config
        residual = PoseResidual(hidden=cfg.pose_residual_hidden, max_offset=cfg.pose_residual_max_offset) if cfg.pose_residual else None
        self.field = HumanGaussians(body, num_gaussians=cfg.num_gaussians, pose_residual=residual)
        # per-frame (global_orient (3), body_pose (69)) corrections of the training capture, radians
        self.pose_refine = torch.nn.Parameter(torch.zeros(capture.num_frames, 72)) if cfg.pose_refine else None
        self._grad_sum: Optional[torch.Tensor] = None  # (N,) summed positional gradient norms since the last densification
        self._grad_count: Optional[torch.Tensor] = None  # (N,) steps in which each Gaussian got a gradient
        self.register_buffer("betas", capture.betas.float()[: body.num_betas].clone())
        self.register_buffer("background", torch.tensor(self.config.background, dtype=torch.float32))
        # pose shown in the viewer: (body_pose (69,), global_orient (3,), transl (3,))
        self.viewer_pose = (
            capture.body_pose[0].float().clone(),
            capture.global_orient[0].float().clone(),
            capture.transl[0].float().clone(),
        )
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)

    @property
    def body(self):
        """The :class:`~posegen_ns.body.model.BodyModel` driving the field."""
        return self.field.body

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        f = self.field
        geometry = [f.offsets, f.log_scales, f.quats, f.weight_residual]
        if f.pose_residual is not None:
            geometry += list(f.pose_residual.parameters())
        if self.pose_refine is not None:
            geometry.append(self.pose_refine)
        return {
            "field_geometry": geometry,
            "field_appearance": [f.color_logits, f.opacity_logits],
        }

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """After every step: accumulate each Gaussian's positional gradient; every ``densify_every``
        steps in ``[densify_from, densify_until]``: :meth:`densify_and_prune` with the trainer's optimizers."""
        if not self.config.densify:
            return []
        cfg = self.config
        after = [TrainingCallbackLocation.AFTER_TRAIN_ITERATION]
        return [
            TrainingCallback(after, self.accumulate_gradients, update_every_num_iters=1),
            TrainingCallback(
                after, self.densify_and_prune, iters=tuple(range(cfg.densify_from, cfg.densify_until + 1, cfg.densify_every)),
                args=[training_callback_attributes.optimizers],
            ),
        ]

    @torch.no_grad()
    def accumulate_gradients(self, step: int) -> None:
        """Add the norm of each Gaussian's canonical-position gradient (``field.offsets.grad (N, 3)``,
        metres) to the running statistics; GART's canonical counterpart of 3DGS's view-space gradient."""
        grad = self.field.offsets.grad
        if grad is None:
            return
        norm = grad.norm(dim=-1)
        if self._grad_sum is None or self._grad_sum.shape != norm.shape:
            self._grad_sum, self._grad_count = torch.zeros_like(norm), torch.zeros_like(norm)
        self._grad_sum += norm
        self._grad_count += (norm > 0).float()

    @torch.no_grad()
    def densify_and_prune(self, optimizers=None, step: int = 0) -> Dict[str, int]:
        """Clone/split/prune the Gaussians (:meth:`HumanGaussians.densify_and_prune`) from the gradients
        accumulated since the last call, and re-index the state of every optimizer in ``optimizers``
        (nerfstudio ``Optimizers`` or an iterable of ``torch.optim.Optimizer``). Does nothing while the
        field is frozen (the pipeline's loop phase) or before any gradient was accumulated.

        Returns the counts ``{"cloned", "split", "pruned", "num_gaussians"}`` (empty when skipped).
        """
        f, cfg = self.field, self.config
        if not f.offsets.requires_grad or self._grad_sum is None or self._grad_sum.shape[0] != f.num_gaussians:
            return {}
        mean_grad = self._grad_sum / self._grad_count.clamp_min(1)
        old = [getattr(f, name) for name in PER_GAUSSIAN_PARAMETERS]
        index, fresh, counts = f.densify_and_prune(
            mean_grad, cfg.densify_fraction, cfg.max_num_gaussians, cfg.split_scale_factor * f.init_scale,
            cfg.prune_opacity, generator=torch.Generator().manual_seed(step),
        )
        new = [getattr(f, name) for name in PER_GAUSSIAN_PARAMETERS]
        if hasattr(optimizers, "optimizers"):  # nerfstudio Optimizers: its parameter lists too
            swap = {id(o): n for o, n in zip(old, new)}
            for name, params in optimizers.parameters.items():
                optimizers.parameters[name] = [swap.get(id(p), p) for p in params]
            opts: Iterable = optimizers.optimizers.values()
        else:
            opts = optimizers or []
        for opt in opts:
            reindex_optimizer_state(opt, old, new, index, fresh)
        self._grad_sum = self._grad_count = None
        return counts

    def render(
        self, body_pose, global_orient, transl, K, R, t, width: int, height: int, betas: Optional[torch.Tensor] = None
    ) -> FieldRender:
        """Render B (pose, camera) pairs; shapes as :meth:`HumanGaussians.render`. ``betas``
        defaults to the capture subject's."""
        if betas is None:
            betas = self.betas[None].expand(body_pose.shape[0], -1)
        return self.field.render(
            body_pose, global_orient, betas, transl, K, R, t, width, height,
            background=self.background, backend=self.config.rasterizer,
        )

    def render_batch(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Render a datamanager batch; returns ``rgb (B, H, W, 3)``, ``accumulation``, ``depth`` ``(B, H, W, 1)``."""
        H, W = batch["image"].shape[1:3]
        body_pose, global_orient = self.refined_pose(batch)
        out = self.render(
            body_pose, global_orient, batch["transl"], batch["K"], batch["R"], batch["t"], W, H, betas=batch["betas"],
        )
        outputs = {"rgb": out.rgb, "accumulation": out.alpha, "depth": out.depth}
        if out.nonrigid is not None:
            outputs["nonrigid"] = out.nonrigid
        return outputs

    def refined_pose(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The batch's ``body_pose (B, 69)`` and ``global_orient (B, 3)`` plus the learned per-frame
        correction for training frames (``batch["train_frame"] >= 0``) when ``pose_refine`` is on. The
        correction is added to the axis-angle vectors (a first-order rotation composition, fine for the
        small corrections the regulariser allows)."""
        body_pose, global_orient = batch["body_pose"], batch["global_orient"]
        if self.pose_refine is None or "train_frame" not in batch:
            return body_pose, global_orient
        frame = batch["train_frame"]
        delta = self.pose_refine[frame.clamp_min(0)] * (frame >= 0).to(self.pose_refine.dtype)[:, None]
        return body_pose + delta[:, 3:], global_orient + delta[:, :3]

    def get_outputs(self, ray_bundle) -> Dict[str, torch.Tensor]:
        if not isinstance(ray_bundle, Cameras):
            raise TypeError("posegen-human renders whole images: pass Cameras, not a RayBundle")
        return self.get_outputs_for_camera(ray_bundle)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        """Render the viewer pose from a nerfstudio camera (OpenGL c2w) -> ``rgb (H, W, 3)``,
        ``accumulation``, ``depth`` ``(H, W, 1)``."""
        cam = camera[0:1] if camera.shape else camera.reshape((1,))
        R, t = nerfstudio_c2w_to_opencv(cam.camera_to_worlds.float())
        K = cam.get_intrinsics_matrices().to(R)  # (1, 3, 3) pixels
        body_pose, global_orient, transl = (x.to(R.device)[None] for x in self.viewer_pose)
        out = self.render(body_pose, global_orient, transl, K, R, t, int(cam.width[0, 0]), int(cam.height[0, 0]))
        return {"rgb": out.rgb[0], "accumulation": out.alpha[0], "depth": out.depth[0]}

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        return {"psnr": psnr(outputs["rgb"].detach(), batch["image"])}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        f, cfg = self.field, self.config
        scales = f.log_scales.exp()
        losses = {
            "rgb_l1": (outputs["rgb"] - batch["image"]).abs().mean(),
            "mask_l1": cfg.mask_loss_weight * (outputs["accumulation"] - batch["mask"]).abs().mean(),
            "offset_reg": cfg.offset_reg_weight * (f.offsets**2).sum(-1).mean(),
            "weight_reg": cfg.weight_reg_weight * (f.weight_residual**2).mean(),
            "scale_reg": (torch.relu(scales - cfg.max_scale) ** 2).sum(-1).mean() * 100.0,
        }
        if "nonrigid" in outputs:
            losses["nonrigid_reg"] = cfg.pose_residual_reg_weight * (outputs["nonrigid"] ** 2).sum(-1).mean()
        if self.pose_refine is not None:
            losses["pose_refine_reg"] = cfg.pose_refine_reg_weight * (self.pose_refine**2).sum(-1).mean()
        return losses

    @torch.no_grad()
    def image_quality(self, batches: Iterable[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """Render datamanager batches (e.g. ``PoseGenDataManager.split_batches``) and average over
        images: PSNR (dB) of the whole image, PSNR over the person's pixels only (capture mask or
        rendered alpha > 0.5; the black background inflates whole-image PSNR), and SSIM (Wang et al.
        2004, pytorch_msssim, 11-px Gaussian window). ``num_images`` 0 (and NaN metrics) for no batches."""
        whole, person, ssim = [], [], []
        for batch in batches:
            out = self.render_batch(batch)
            for i in range(out["rgb"].shape[0]):
                whole.append(float(psnr(out["rgb"][i], batch["image"][i])))
                sel = (batch["mask"][i, ..., 0] > 0.5) | (out["accumulation"][i, ..., 0] > 0.5)
                person.append(float(psnr(out["rgb"][i][sel], batch["image"][i][sel])))
                ssim.append(float(self.ssim(out["rgb"][i : i + 1].permute(0, 3, 1, 2), batch["image"][i : i + 1].permute(0, 3, 1, 2))))
        n = len(whole)
        mean = lambda xs: sum(xs) / n if n else float("nan")  # noqa: E731
        return {"psnr": mean(whole), "psnr_person": mean(person), "ssim": mean(ssim), "num_images": n}

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        pred = outputs["rgb"].reshape(-1, *outputs["rgb"].shape[-3:])
        gt = batch["image"].reshape(-1, *batch["image"].shape[-3:]).to(pred.device)
        metrics = {
            "psnr": float(psnr(pred, gt)),
            "ssim": float(self.ssim(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2))),
        }
        return metrics, {"img": torch.cat([gt[0], pred[0]], dim=1)}
