"""nerfstudio model ``posegen-human``: the articulated human field trained on a capture.

Training renders B (frame, camera) images of the capture with each frame's body parameters and
fits them with an L1 photometric loss plus a mask (alpha vs. silhouette) loss and small
regularisers on the learned residuals. For the viewer, ``get_outputs_for_camera`` renders the
field from any camera in the pose chosen by ``viewer_pose`` (a capture frame, or a sampled hard
pose the pipeline puts there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import Model, ModelConfig
from pytorch_msssim import SSIM
from torch.nn import Parameter

from posegen_ns.body import load_body_model
from posegen_ns.field.human_field import FieldRender, HumanGaussians
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


class PoseGenHumanModel(Model):
    """Model over :class:`~posegen_ns.field.human_field.HumanGaussians`.

    Keyword arguments from the pipeline: ``capture`` (the training capture: its body source,
    ``betas`` and first frame's pose, used for the viewer).
    """

    config: PoseGenHumanModelConfig

    def populate_modules(self) -> None:
        capture = self.kwargs["capture"]
        body = load_body_model(self.config.body or capture.body)
        self.field = HumanGaussians(body, num_gaussians=self.config.num_gaussians)
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
        return {
            "field_geometry": [f.offsets, f.log_scales, f.quats, f.weight_residual],
            "field_appearance": [f.color_logits, f.opacity_logits],
        }

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
        out = self.render(
            batch["body_pose"], batch["global_orient"], batch["transl"], batch["K"], batch["R"], batch["t"], W, H,
            betas=batch["betas"],
        )
        return {"rgb": out.rgb, "accumulation": out.alpha, "depth": out.depth}

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
        K = torch.zeros(1, 3, 3, device=R.device)
        K[:, 0, 0], K[:, 1, 1] = cam.fx[:, 0], cam.fy[:, 0]
        K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = cam.cx[:, 0], cam.cy[:, 0], 1.0
        body_pose, global_orient, transl = (x.to(R.device)[None] for x in self.viewer_pose)
        out = self.render(body_pose, global_orient, transl, K, R, t, int(cam.width[0, 0]), int(cam.height[0, 0]))
        return {"rgb": out.rgb[0], "accumulation": out.alpha[0], "depth": out.depth[0]}

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        return {"psnr": psnr(outputs["rgb"].detach(), batch["image"])}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        f = self.field
        scales = f.log_scales.exp()
        return {
            "rgb_l1": (outputs["rgb"] - batch["image"]).abs().mean(),
            "mask_l1": self.config.mask_loss_weight * (outputs["accumulation"] - batch["mask"]).abs().mean(),
            "offset_reg": self.config.offset_reg_weight * (f.offsets**2).sum(-1).mean(),
            "weight_reg": self.config.weight_reg_weight * (f.weight_residual**2).mean(),
            "scale_reg": (torch.relu(scales - self.config.max_scale) ** 2).sum(-1).mean() * 100.0,
        }

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        pred = outputs["rgb"].reshape(-1, *outputs["rgb"].shape[-3:])
        gt = batch["image"].reshape(-1, *batch["image"].shape[-3:]).to(pred.device)
        metrics = {
            "psnr": float(psnr(pred, gt)),
            "ssim": float(self.ssim(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2))),
        }
        return metrics, {"img": torch.cat([gt[0], pred[0]], dim=1)}
