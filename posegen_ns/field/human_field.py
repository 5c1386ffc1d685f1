"""The articulated human field: canonical 3D Gaussians posed by the body's linear blend skinning.

Canonical Gaussians live on the rest (T-pose, zero-shape) body surface. Each carries skinning
weights interpolated from the body's vertex weights at its surface point, a learned per-Gaussian
weight refinement and a learned canonical offset (the "small learned residual"), and shape blend
shapes interpolated from the body's ``shapedirs`` so ``betas`` reshape it like the mesh. Posing
follows forward LBS as in Gaussian avatars (GART, Lei et al. CVPR 2024; GauHuman, Hu et al. CVPR
2024): ``x = sum_j w_j A_j [x_c; 1]`` with ``A`` the body's per-joint transforms, and each
Gaussian's orientation is turned by the rotation nearest to the blended ``sum_j w_j R_j``.

Optional pieces for field quality:
- :class:`PoseResidual`, a small pose-conditioned MLP giving each Gaussian a bounded non-rigid
  canonical offset (clothing and soft-tissue motion LBS cannot express; the non-rigid deformation
  of 3DGS-Avatar, Qian et al. CVPR 2024, and GART's pose-conditioned correction), zero at init;
- densification and pruning (:meth:`HumanGaussians.densify_and_prune`, the clone/split/prune
  rules of 3DGS, Kerbl et al. 2023, as GART applies them in canonical space): children inherit
  their parent's surface binding (face, barycentric coordinates, skinning weights, shape
  directions), so the field stays bound to the body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
from torch import Tensor, nn

from posegen_ns.body.model import BodyModel, BodyOutput
from posegen_ns.field.rasterize import rasterize_gaussians
from posegen_ns.geometry import axis_angle_to_matrix

PER_GAUSSIAN_PARAMETERS = ("offsets", "weight_residual", "log_scales", "quats", "opacity_logits", "color_logits")
"""Learned tensors with one row per Gaussian (their optimizer state is re-indexed on densification)."""
PER_GAUSSIAN_BUFFERS = ("canonical_means", "base_log_weights", "shapedirs", "face_idx", "bary")
"""Fixed tensors with one row per Gaussian (the surface binding)."""


@dataclass
class FieldRender:
    """Renders of the field. B images of H x W pixels."""

    rgb: Tensor  # (B, H, W, 3) in [0, 1]
    alpha: Tensor  # (B, H, W, 1) accumulated opacity
    depth: Tensor  # (B, H, W, 1) expected camera-frame z, metres
    body: BodyOutput  # the posed body (joints for labels)
    nonrigid: Tensor | None = None  # (B, N, 3) pose-dependent canonical offsets, metres (None without a PoseResidual)


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


def fourier_features(x: Tensor, num_freqs: int) -> Tensor:
    """NeRF positional encoding ``[x, sin(2^k pi x), cos(2^k pi x)]_{k<F}`` of ``(..., 3)`` metres ->
    ``(..., 3 + 6 F)`` (Mildenhall et al. ECCV 2020)."""
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * torch.pi  # (F,)
    xf = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (..., 3F)
    return torch.cat([x, xf.sin(), xf.cos()], -1)


class PoseResidual(nn.Module):
    """Pose-dependent non-rigid canonical offsets, ``delta(x_c, theta) (B, N, 3)`` metres.

    ``delta = max_offset * tanh(MLP([E(x_c), P(theta)]))`` with ``E`` the Fourier encoding of the
    Gaussian's canonical position and ``P`` a linear code of the pose feature SMPL's pose blend shapes
    use (``R_j(theta) - I`` for joints 1..23, Loper et al. 2015), as in the non-rigid modules of
    3DGS-Avatar (Qian et al. CVPR 2024) and GART (Lei et al. CVPR 2024). The last layer starts at
    zero, so the offset is exactly zero at init (the field starts as plain LBS) and bounded by
    ``max_offset`` in each axis.

    Args:
        num_joints: body joints excluding the root (23 for SMPL).
        pose_dim: size of the pose code ``P(theta)``.
        num_freqs: Fourier frequencies F of the position encoding.
        hidden: MLP width.
        max_offset: bound of each offset coordinate, metres.
    """

    def __init__(self, num_joints: int = 23, pose_dim: int = 16, num_freqs: int = 4, hidden: int = 64, max_offset: float = 0.03):
        super().__init__()
        self.num_freqs = num_freqs
        self.max_offset = max_offset
        self.pose_code = nn.Linear(num_joints * 9, pose_dim)
        self.in_pose = nn.Linear(pose_dim, hidden)
        self.in_pos = nn.Linear(3 + 6 * num_freqs, hidden, bias=False)
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, canonical: Tensor, body_pose: Tensor) -> Tensor:
        """Offsets for canonical positions ``(N, 3)`` metres and ``body_pose (B, 69)`` axis-angle
        radians -> ``(B, N, 3)`` metres."""
        B = body_pose.shape[0]
        rot = axis_angle_to_matrix(body_pose.reshape(B, -1, 3))  # (B, 23, 3, 3)
        feat = (rot - torch.eye(3, dtype=rot.dtype, device=rot.device)).flatten(1)  # (B, 207)
        # first layer split into pose and position parts: (B, 1, H) + (1, N, H), no (B, N, P+E) concat
        h = self.in_pose(self.pose_code(feat))[:, None] + self.in_pos(fourier_features(canonical, self.num_freqs))[None]
        h = self.hidden(torch.nn.functional.silu(h))
        return self.max_offset * torch.tanh(self.out(torch.nn.functional.silu(h)))


class HumanGaussians(nn.Module):
    """Canonical Gaussians skinned to a :class:`BodyModel`.

    Args:
        body: the body model whose skeleton and weights drive the Gaussians.
        num_gaussians: N, sampled area-uniformly on the rest surface.
        init_scale: initial isotropic scale in metres (default: from the mean surface spacing).
        seed: surface sampling seed.
        pose_residual: a :class:`PoseResidual` adding pose-dependent canonical offsets, or None.

    Attributes ``init_scale`` (metres) and the per-Gaussian tensors listed in
    ``PER_GAUSSIAN_PARAMETERS`` / ``PER_GAUSSIAN_BUFFERS``. N changes with
    :meth:`densify_and_prune`; loading a state dict with another N resizes the field first.
    """

    def __init__(
        self,
        body: BodyModel,
        num_gaussians: int = 4000,
        init_scale: float | None = None,
        seed: int = 0,
        pose_residual: PoseResidual | None = None,
    ):
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
        shapedirs = body.shapedirs.detach().float().cpu()  # (V, 3, S)
        sd = (shapedirs[corner] * bary[..., None, None]).sum(1)  # (N, 3, S)
        if init_scale is None:
            tri = verts[faces]
            area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1).sum()
            init_scale = float((area / num_gaussians).sqrt() * 0.6)
        self.init_scale = float(init_scale)
        self.pose_residual = pose_residual
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
        """Pose the Gaussians: :meth:`pose_with_residual` without the residual."""
        return self.pose_with_residual(body_pose, global_orient, betas, transl)[:3]

    def pose_with_residual(
        self, body_pose: Tensor, global_orient: Tensor, betas: Tensor, transl: Tensor
    ) -> tuple[Tensor, Tensor, BodyOutput, Tensor | None]:
        """Pose the Gaussians.

        Args:
            body_pose ``(B, 69)``, global_orient ``(B, 3)`` axis-angle radians; betas ``(B, S)``;
            transl ``(B, 3)`` metres.

        Returns:
            ``means (B, N, 3)`` world metres, ``quats (B, N, 4)`` wxyz, the posed body, and the
            pose-dependent canonical offsets ``(B, N, 3)`` metres (None without a :class:`PoseResidual`).
        """
        out = self.body(body_pose, global_orient, betas, transl)
        S = min(betas.shape[-1], self.shapedirs.shape[-1])
        B = body_pose.shape[0]
        x = (self.canonical_means + self.offsets)[None].expand(B, -1, -1)  # (B, N, 3)
        nonrigid = None
        if self.pose_residual is not None:
            nonrigid = self.pose_residual(self.canonical_means, body_pose)
            x = x + nonrigid
        x = x + torch.einsum("nks,bs->bnk", self.shapedirs[..., :S], betas[:, :S])  # (B, N, 3)
        T = torch.einsum("nj,bjkl->bnkl", self.skinning_weights(), out.transforms)  # (B, N, 4, 4)
        means = torch.einsum("bnkl,bnl->bnk", T[..., :3, :3], x) + T[..., :3, 3]
        rot = roma.special_procrustes(T[..., :3, :3])  # nearest rotation to the blended linear part
        q_xyzw = roma.rotmat_to_unitquat(rot)
        q_canon = torch.nn.functional.normalize(self.quats, dim=-1)
        q_canon_xyzw = torch.cat([q_canon[:, 1:], q_canon[:, :1]], -1)
        q = roma.quat_product(q_xyzw, q_canon_xyzw.expand_as(q_xyzw))
        quats = torch.cat([q[..., 3:], q[..., :3]], -1)  # back to wxyz
        return means, quats, out, nonrigid

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
        means, quats, out, nonrigid = self.pose_with_residual(body_pose, global_orient, betas, transl)
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
        return FieldRender(rgb=rgb, alpha=alpha, depth=depth, body=out, nonrigid=nonrigid)

    # ------------------------------------------------------------------ changing N
    def reindex(self, index: Tensor, updates: dict[str, Tensor] | None = None) -> None:
        """Rebuild every per-Gaussian tensor as ``old[index]`` (``index (N_new,)`` long), then replace
        the tensors named in ``updates`` (each ``(N_new, ...)``).

        The parameters become *new* ``nn.Parameter`` objects (autograd caches a leaf's shape, so a
        parameter cannot change size in place once it has been used): optimizers holding the old ones
        must be updated with :func:`reindex_optimizer_state`, as 3DGS/gsplat's strategies do.
        """
        updates = updates or {}
        for name in PER_GAUSSIAN_PARAMETERS:
            old = getattr(self, name)
            value = updates[name] if name in updates else old.detach()[index]
            setattr(self, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
        for name in PER_GAUSSIAN_BUFFERS:
            setattr(self, name, (updates[name] if name in updates else getattr(self, name)[index]).contiguous())

    def resize(self, num_gaussians: int) -> None:
        """Give every per-Gaussian tensor ``num_gaussians`` rows of zeros, in place (the parameters keep
        their identity, so an optimizer built on them stays valid). Meant for loading a checkpoint whose
        N differs, before any forward pass (nerfstudio loads checkpoints right after building the
        optimizers); afterwards use :meth:`reindex`."""
        n = int(num_gaussians)
        for name in PER_GAUSSIAN_PARAMETERS:
            p = getattr(self, name)
            p.data = p.data.new_zeros((n, *p.shape[1:]))
            p.grad = None
        for name in PER_GAUSSIAN_BUFFERS:
            b = getattr(self, name)
            setattr(self, name, b.new_zeros((n, *b.shape[1:])))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "canonical_means")
        if saved is not None and saved.shape[0] != self.num_gaussians:
            self.resize(saved.shape[0])  # a densified/pruned checkpoint: take its N
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    @torch.no_grad()
    def densify_and_prune(
        self,
        grad: Tensor,
        densify_fraction: float,
        max_num_gaussians: int,
        split_scale: float,
        prune_opacity: float,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, int]]:
        """Clone, split and prune Gaussians (3DGS's adaptive density control, Kerbl et al. 2023, §5).

        The Gaussians with the largest mean positional gradient ``grad (N,)`` (the top
        ``densify_fraction``, no more than ``max_num_gaussians`` in total) are densified: small ones
        (largest scale <= ``split_scale`` metres) are cloned, large ones are split into two children
        drawn from the parent Gaussian (canonical frame) with scales divided by 1.6. Gaussians with
        opacity below ``prune_opacity`` are removed. Children inherit the parent's surface binding
        (``face_idx``, ``bary``, skinning weights, shape directions) and learned values, so they stay
        skinned to the same body part.

        Returns:
            ``index (N_new,)`` long: the old row each new row comes from; ``fresh (N_new,)`` bool: rows
            that are new children (their optimizer state starts at zero); counts
            ``{"cloned", "split", "pruned", "num_gaussians"}``. The parameters are new objects
            (:meth:`reindex`): pass the old and new ones with ``index, fresh`` to
            :func:`reindex_optimizer_state` for every optimizer holding them.
        """
        N = self.num_gaussians
        dev = self.canonical_means.device
        keep = torch.sigmoid(self.opacity_logits) >= prune_opacity
        n_keep = int(keep.sum())
        budget = max(0, min(int(round(densify_fraction * N)), max_num_gaussians - n_keep))
        score = torch.where(keep & (grad > 0), grad, torch.full_like(grad, -1.0))
        chosen = torch.zeros(N, dtype=torch.bool, device=dev)
        if budget > 0:
            top = torch.topk(score, min(budget, N)).indices
            chosen[top[score[top] > 0]] = True
        big = self.log_scales.exp().amax(-1) > split_scale
        split, clone = chosen & big, chosen & ~big
        stay = keep & ~split
        stay_idx, clone_idx, split_idx = (torch.nonzero(m).flatten() for m in (stay, clone, split))
        index = torch.cat([stay_idx, clone_idx, split_idx, split_idx])
        fresh = torch.cat([torch.zeros(len(stay_idx), dtype=torch.bool, device=dev),
                           torch.ones(len(clone_idx) + 2 * len(split_idx), dtype=torch.bool, device=dev)])
        updates = {}
        if len(split_idx):
            # children drawn from the parent Gaussian: x = mu + R(q) (s * eps), eps ~ N(0, I)
            q = torch.nn.functional.normalize(self.quats[split_idx], dim=-1).repeat(2, 1)
            rot = roma.unitquat_to_rotmat(torch.cat([q[:, 1:], q[:, :1]], -1))
            s = self.log_scales[split_idx].exp().repeat(2, 1)
            eps = torch.randn(s.shape, generator=generator).to(dev)
            child = self.canonical_means[split_idx].repeat(2, 1) + torch.einsum("nij,nj->ni", rot, s * eps)
            n0 = len(stay_idx) + len(clone_idx)
            means = self.canonical_means[index].clone()
            means[n0:] = child
            log_scales = self.log_scales.data[index].clone()
            log_scales[n0:] -= math.log(1.6)
            updates = {"canonical_means": means, "log_scales": log_scales}
        self.reindex(index, updates)
        counts = {"cloned": len(clone_idx), "split": len(split_idx), "pruned": N - n_keep, "num_gaussians": len(index)}
        return index, fresh, counts


def reindex_optimizer_state(
    optimizer: torch.optim.Optimizer,
    old_params: list[nn.Parameter],
    new_params: list[nn.Parameter],
    index: Tensor,
    fresh: Tensor,
) -> None:
    """Move an optimizer from ``old_params`` to the re-indexed ``new_params`` (pairwise) after
    :meth:`HumanGaussians.reindex`: the new parameters take the old ones' places in the param groups,
    and the per-element state (e.g. Adam's ``exp_avg``, ``exp_avg_sq``) is re-indexed so row i is old
    row ``index[i]``, zeroed where ``fresh[i]`` (new children start without momentum, as in gsplat's
    strategies). Scalar state (``step``) is kept. Parameters the optimizer does not hold are skipped."""
    swap = {id(o): n for o, n in zip(old_params, new_params)}
    for group in optimizer.param_groups:
        group["params"] = [swap.get(id(p), p) for p in group["params"]]
    for old, new in zip(old_params, new_params):
        state = optimizer.state.pop(old, None)
        if state is None:
            continue
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.dim() > 0:
                value = value[index].clone()
                value[fresh] = 0
                state[key] = value
        optimizer.state[new] = state
