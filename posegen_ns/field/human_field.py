"""The articulated human field: canonical 3D Gaussians posed by the body's linear blend skinning.

Canonical Gaussians live on the rest (T-pose, zero-shape) body surface. Each carries skinning
weights interpolated from the body's vertex weights at its surface point, a learned per-Gaussian
weight refinement and a learned canonical offset (the "small learned residual"), and shape blend
shapes interpolated from the body's ``shapedirs`` so ``betas`` reshape it like the mesh. Posing
follows forward LBS as in Gaussian avatars (GART, Lei et al. CVPR 2024; GauHuman, Hu et al. CVPR
2024): ``x = sum_j w_j A_j [x_c; 1]`` with ``A`` the body's per-joint transforms, and each
Gaussian's orientation is turned by the rotation nearest to the blended ``sum_j w_j R_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import roma
import torch
from torch import Tensor, nn

from posegen_ns.body.model import BodyModel, BodyOutput
from posegen_ns.field.rasterize import rasterize_gaussians


@dataclass
class FieldRender:
    """Renders of the field. B images of H x W pixels."""

    rgb: Tensor  # (B, H, W, 3) in [0, 1]
    alpha: Tensor  # (B, H, W, 1) accumulated opacity
    depth: Tensor  # (B, H, W, 1) expected camera-frame z, metres
    body: BodyOutput  # the posed body (joints for labels)


def sample_surface(vertices: Tensor, faces: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Area-weighted random points on a triangle mesh.

    Args:
        vertices: ``(V, 3)``; faces: ``(F, 3)`` long; num: number of points.

    Returns:
        ``face_idx (num,)`` long and barycentric coordinates ``(num, 3)``.
    """
    tri = vertices[faces]  # (F, 3, 3)
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    face_idx = torch.multinomial(area / area.sum(), num, replacement=True, generator=generator)
    u = torch.rand(num, 2, generator=generator)
    flip = u.sum(-1) > 1
    u[flip] = 1 - u[flip]
    bary = torch.stack([1 - u[:, 0] - u[:, 1], u[:, 0], u[:, 1]], dim=-1)
    return face_idx, bary


class HumanGaussians(nn.Module):
    """Canonical Gaussians skinned to a :class:`BodyModel`.

    Args:
        body: the body model whose skeleton and weights drive the Gaussians.
        num_gaussians: N, sampled area-uniformly on the rest surface.
        init_scale: initial isotropic scale in metres (default: from the mean surface spacing).
        seed: surface sampling seed.
    """

    def __init__(self, body: BodyModel, num_gaussians: int = 4000, init_scale: float | None = None, seed: int = 0):
        super().__init__()
        self.body = body
        gen = torch.Generator().manual_seed(seed)
        verts = body.v_template.detach().float().cpu()
        faces = body.faces.cpu()
        face_idx, bary = sample_surface(verts, faces, num_gaussians, gen)
        corner = faces[face_idx]  # (N, 3)
        w = lambda x: (x[corner] * bary[..., None]).sum(1)  # noqa: E731 - barycentric interpolation
        means = w(verts)
        weights = w(body.lbs_weights.detach().float().cpu())
        shapedirs = body.smpl.shapedirs.detach().float().cpu()  # (V, 3, S)
        sd = (shapedirs[corner] * bary[..., None, None]).sum(1)  # (N, 3, S)
        if init_scale is None:
            tri = verts[faces]
            area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1).sum()
            init_scale = float((area / num_gaussians).sqrt() * 0.6)
        self.register_buffer("canonical_means", means)  # (N, 3) rest-pose surface points
        self.register_buffer("base_log_weights", weights.clamp_min(1e-6).log())  # (N, 24)
        self.register_buffer("shapedirs", sd)  # (N, 3, S)
        self.register_buffer("face_idx", face_idx)
        self.register_buffer("bary", bary)
        self.offsets = nn.Parameter(torch.zeros(num_gaussians, 3))
        self.weight_residual = nn.Parameter(torch.zeros(num_gaussians, 24))
        self.log_scales = nn.Parameter(torch.full((num_gaussians, 3), float(torch.tensor(init_scale).log())))
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(num_gaussians, 1))  # wxyz
        self.opacity_logits = nn.Parameter(torch.full((num_gaussians,), 2.0))
        self.color_logits = nn.Parameter(torch.zeros(num_gaussians, 3))

    @property
    def num_gaussians(self) -> int:
        return int(self.canonical_means.shape[0])

    def skinning_weights(self) -> Tensor:
        """``(N, 24)`` refined skinning weights (softmax of base log-weights + learned residual)."""
        return torch.softmax(self.base_log_weights + self.weight_residual, dim=-1)

    def pose(
        self, body_pose: Tensor, global_orient: Tensor, betas: Tensor, transl: Tensor
    ) -> tuple[Tensor, Tensor, BodyOutput]:
        """Pose the Gaussians.

        Args:
            body_pose ``(B, 69)``, global_orient ``(B, 3)`` axis-angle radians; betas ``(B, S)``;
            transl ``(B, 3)`` metres.

        Returns:
            ``means (B, N, 3)`` world metres, ``quats (B, N, 4)`` wxyz, and the posed body.
        """
        out = self.body(body_pose, global_orient, betas, transl)
        S = min(betas.shape[-1], self.shapedirs.shape[-1])
        x = self.canonical_means + self.offsets  # (N, 3)
        x = x + torch.einsum("nks,bs->bnk", self.shapedirs[..., :S], betas[:, :S])  # (B, N, 3)
        T = torch.einsum("nj,bjkl->bnkl", self.skinning_weights(), out.transforms)  # (B, N, 4, 4)
        means = torch.einsum("bnkl,bnl->bnk", T[..., :3, :3], x) + T[..., :3, 3]
        rot = roma.special_procrustes(T[..., :3, :3])  # nearest rotation to the blended linear part
        q_xyzw = roma.rotmat_to_unitquat(rot)
        q_canon = torch.nn.functional.normalize(self.quats, dim=-1)
        q_canon_xyzw = torch.cat([q_canon[:, 1:], q_canon[:, :1]], -1)
        q = roma.quat_product(q_xyzw, q_canon_xyzw.expand_as(q_xyzw))
        quats = torch.cat([q[..., 3:], q[..., :3]], -1)  # back to wxyz
        return means, quats, out

    def render(
        self,
        body_pose: Tensor,
        global_orient: Tensor,
        betas: Tensor,
        transl: Tensor,
        K: Tensor,
        R: Tensor,
        t: Tensor,
        width: int,
        height: int,
        background: Tensor | None = None,
        backend: str = "auto",
    ) -> FieldRender:
        """Render B (pose, camera) pairs, differentiably in pose, shape, translation and camera.

        Args:
            body_pose ``(B, 69)``, global_orient ``(B, 3)``, betas ``(B, S)``, transl ``(B, 3)``;
            K ``(B, 3, 3)`` pixels; R ``(B, 3, 3)``, t ``(B, 3)`` OpenCV world->camera.
            background ``(3,)`` in [0, 1] (default black). backend: see ``rasterize_gaussians``.
        """
        means, quats, out = self.pose(body_pose, global_orient, betas, transl)
        B = means.shape[0]
        viewmats = torch.eye(4, dtype=R.dtype, device=R.device).repeat(B, 1, 1)
        viewmats[:, :3, :3] = R
        viewmats[:, :3, 3] = t
        N = self.num_gaussians
        rgb, alpha, depth = rasterize_gaussians(
            means,
            quats,
            self.log_scales.exp().expand(B, N, 3),
            torch.sigmoid(self.opacity_logits).expand(B, N),
            torch.sigmoid(self.color_logits).expand(B, N, 3),
            viewmats,
            K,
            width,
            height,
            background=background,
            backend=backend,
        )
        return FieldRender(rgb=rgb, alpha=alpha, depth=depth, body=out)
