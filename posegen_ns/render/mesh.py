"""A CPU z-buffer triangle rasteriser (pure torch, vectorised) for rendering ground-truth bodies.

It makes the synthetic capture: the textured body mesh seen by OpenCV pinhole cameras, with exact
masks, depth and per-pixel face indices. It is not differentiable (it makes ground truth).

Conventions: vertices in metres (world), ``x_cam = R x_world + t``, pixel ``(x, y)`` has its centre
at ``(x + 0.5, y + 0.5)`` in the coordinates ``K`` maps to (as gsplat and the Gaussian rasteriser
in :mod:`posegen_ns.field.rasterize`). Texture coordinates follow OBJ: ``u`` right, ``v`` up, so
``v = 1`` is the texture image's top row.

Algorithm: project; for each triangle, enumerate the pixel centres in its screen bounding box
(flat, without padding, in chunks of at most ``max_pairs`` pairs); keep those inside by the edge
functions; depth by interpolating ``1/z`` linearly in screen space; visibility by a
``scatter_reduce('amin')`` of depth per pixel, ties going to the lower face index; attributes by
perspective-correct barycentrics ``b_i = (w_i / z_i) / sum_j (w_j / z_j)`` (Heckbert & Moreton 1991).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError

DEFAULT_COLOR = 0.7
"""Grey used when neither vertex colours nor a texture is given."""


@dataclass
class MeshRender:
    """Rendered images; B images of H x W pixels."""

    rgb: Tensor  # (B, H, W, 3) float in [0, 1]
    mask: Tensor  # (B, H, W) float in {0, 1}
    depth: Tensor  # (B, H, W) camera z, metres; 0 where empty
    face_index: Tensor  # (B, H, W) long; -1 where empty


@torch.no_grad()
def render_mesh(
    vertices: Tensor,  # (B, V, 3)
    faces: Tensor,  # (F, 3)
    K: Tensor,  # (B, 3, 3)
    R: Tensor,  # (B, 3, 3)
    t: Tensor,  # (B, 3)
    width: int,
    height: int,
    vertex_colors: Tensor | None = None,  # (B or 1, V, 3)
    uv: Tensor | None = None,  # (T, 2)
    uv_faces: Tensor | None = None,  # (F, 3)
    texture: Tensor | None = None,  # (Ht, Wt, 3)
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    texture_weight: Tensor | None = None,  # (B or 1, V) or (V,)
    near: float = 0.01,
    max_pairs: int = 4_000_000,
) -> MeshRender:
    """Render a triangle mesh with a z-buffer.

    Args:
        vertices: ``(B, V, 3)`` world positions, metres.
        faces: ``(F, 3)`` long vertex indices (no back-face culling: both sides are drawn).
        K, R, t: ``(B, 3, 3)``, ``(B, 3, 3)``, ``(B, 3)`` OpenCV cameras, one per mesh.
        width, height: image size W, H, pixels.
        vertex_colors: ``(B or 1, V, 3)`` in [0, 1], interpolated perspective-correctly.
        uv: ``(T, 2)`` texture coordinates (OBJ convention, v up); ``uv_faces (F, 3)`` indexes them
            (default: ``faces``, i.e. one uv per vertex).
        texture: ``(Ht, Wt, 3)`` float in [0, 1] (or uint8, divided by 255), sampled bilinearly
            (``F.grid_sample``, border padding).
        background: RGB of empty pixels.
        texture_weight: per-vertex weight of the texture against ``vertex_colors`` (interpolated),
            e.g. the "use texture" mask of :func:`part_colors`. With both colours and a texture but
            no weight, the texture is modulated (multiplied) by the vertex colours. With neither,
            the mesh is grey.
        near: triangles with any vertex at camera z < near are culled (not clipped), metres.
        max_pairs: memory bound, (triangle, pixel) candidates handled at once.

    Returns:
        :class:`MeshRender` with ``rgb (B, H, W, 3)``, ``mask (B, H, W)``, ``depth (B, H, W)``,
        ``face_index (B, H, W)``.

    Raises:
        PoseGenInputError: on inconsistent shapes or a texture without ``uv``.
    """
    B, V, _ = vertices.shape
    H, W = int(height), int(width)
    dev, dt = vertices.device, vertices.dtype
    _check_mesh_inputs(vertices, faces, K, R, t, vertex_colors, uv, uv_faces, texture)
    faces = faces.long()
    nF = faces.shape[0]

    vc = torch.einsum("bij,bvj->bvi", R.to(dt), vertices) + t.to(dt)[:, None, :]  # (B, V, 3) camera
    z = vc[..., 2]  # (B, V)
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    p = torch.einsum("bij,bvj->bvi", K.to(dt), vc / zs[..., None])[..., :2]  # (B, V, 2) pixels
    tri_p = p[:, faces].reshape(B * nF, 3, 2)  # (B*F, 3, 2)
    tri_z = z[:, faces].reshape(B * nF, 3)  # (B*F, 3)
    p0, p1, p2 = tri_p.unbind(1)
    area2 = _cross(p1 - p0, p2 - p0)  # (B*F,) twice the signed screen area

    lo, hi = tri_p.min(1).values, tri_p.max(1).values  # (B*F, 2)
    size = torch.tensor([W, H], device=dev)
    b0 = torch.ceil((lo - 0.5).clamp(-1, max(W, H))).long().clamp_min(0)  # first pixel index inside bbox
    b1 = torch.minimum(torch.floor((hi - 0.5).clamp(-1, max(W, H))).long(), size - 1)
    valid = (tri_z >= near).all(1) & (area2.abs() > 1e-12) & (b1 >= b0).all(1)
    valid &= torch.isfinite(tri_p).all(2).all(1)
    ids = torch.nonzero(valid).flatten()  # (G,) flat (image, face) ids
    counts = (b1[ids] - b0[ids] + 1).prod(1)  # (G,) candidate pixels per triangle
    chunk_of = torch.div(torch.cumsum(counts, 0) - counts, max_pairs, rounding_mode="floor")
    bounds = [0]  # chunk boundaries in ids: each chunk holds at most max_pairs candidates (or one triangle)
    if ids.numel():
        bounds = torch.searchsorted(chunk_of, torch.arange(int(chunk_of[-1]) + 2, device=dev)).tolist()

    zbuf = torch.full((B * H * W,), float("inf"), dtype=dt, device=dev)
    kept: list[tuple[Tensor, ...]] = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        tid = ids[s:e]
        tri, pix, px, py = _enumerate_pixels(tid, b0[tid], b1[tid], counts[s:e], nF, H, W)
        pc = torch.stack([px, py], -1).to(dt) + 0.5  # (M, 2) pixel centres
        q0, q1, q2 = p0[tri], p1[tri], p2[tri]
        a2 = area2[tri]
        w0 = _cross(q2 - q1, pc - q1) / a2
        w1 = _cross(q0 - q2, pc - q2) / a2
        w2 = _cross(q1 - q0, pc - q0) / a2
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        tri, pix, w = tri[inside], pix[inside], torch.stack([w0, w1, w2], -1)[inside]  # w: (M, 3) screen bary
        zinv = (w / tri_z[tri]).sum(-1)
        zp = 1.0 / zinv  # (M,) perspective-correct depth
        zbuf.scatter_reduce_(0, pix, zp, reduce="amin")
        front = zp <= zbuf[pix]
        kept.append((tri[front], pix[front], w[front], zp[front]))
        if len(kept) > 1:  # prune earlier chunks against the updated z-buffer
            kept = [tuple(x[k[3] <= zbuf[k[1]]] for x in k) for k in kept]

    rgb = torch.tensor(background, dtype=dt, device=dev).expand(B * H * W, 3).clone()
    depth = torch.zeros(B * H * W, dtype=dt, device=dev)
    face_index = torch.full((B * H * W,), -1, dtype=torch.long, device=dev)
    if kept:
        tri, pix, w, zp = (torch.cat(x) for x in zip(*kept))
        win = zp == zbuf[pix]
        tri, pix, w, zp = tri[win], pix[win], w[win], zp[win]
        best = torch.full((B * H * W,), B * nF, dtype=torch.long, device=dev)
        best.scatter_reduce_(0, pix, tri, reduce="amin")  # ties in depth: lowest face wins
        win = tri == best[pix]
        tri, pix, w, zp = tri[win], pix[win], w[win], zp[win]
        bary = w / tri_z[tri] * zp[:, None]  # (M, 3) perspective-correct barycentrics
        bimg, fidx = tri // nF, tri % nF
        rgb[pix] = _shade(bimg, fidx, bary, faces, vertex_colors, uv, uv_faces, texture, texture_weight, dt)
        depth[pix] = zp
        face_index[pix] = fidx
    return MeshRender(
        rgb=rgb.reshape(B, H, W, 3),
        mask=(face_index >= 0).to(dt).reshape(B, H, W),
        depth=depth.reshape(B, H, W),
        face_index=face_index.reshape(B, H, W),
    )


def _check_mesh_inputs(vertices, faces, K, R, t, vertex_colors, uv, uv_faces, texture) -> None:
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise PoseGenInputError(f"render_mesh: vertices has shape {tuple(vertices.shape)}; expected (B, V, 3).")
    B, V = vertices.shape[:2]
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise PoseGenInputError(f"render_mesh: faces has shape {tuple(faces.shape)}; expected (F, 3).")
    for name, x, shape in (("K", K, (B, 3, 3)), ("R", R, (B, 3, 3)), ("t", t, (B, 3))):
        if tuple(x.shape) != shape:
            raise PoseGenInputError(f"render_mesh: {name} has shape {tuple(x.shape)}; expected {shape} (B={B}).")
    if vertex_colors is not None and (vertex_colors.dim() != 3 or vertex_colors.shape[0] not in (1, B)
                                      or vertex_colors.shape[1:] != (V, 3)):
        raise PoseGenInputError(
            f"render_mesh: vertex_colors has shape {tuple(vertex_colors.shape)}; expected ({B} or 1, {V}, 3)."
        )
    if texture is not None:
        if uv is None:
            raise PoseGenInputError("render_mesh: a texture was given without uv; pass uv (T, 2) (and uv_faces).")
        if texture.dim() != 3 or texture.shape[-1] != 3:
            raise PoseGenInputError(f"render_mesh: texture has shape {tuple(texture.shape)}; expected (Ht, Wt, 3).")
        if uv_faces is not None and uv_faces.shape != faces.shape:
            raise PoseGenInputError(
                f"render_mesh: uv_faces has shape {tuple(uv_faces.shape)}; expected {tuple(faces.shape)} like faces."
            )
        if uv_faces is None and uv.shape[0] != V:
            raise PoseGenInputError(f"render_mesh: uv has {uv.shape[0]} rows but no uv_faces; pass uv_faces (F, 3).")


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """2D cross product ``a_x b_y - a_y b_x`` of ``(..., 2)`` tensors."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _enumerate_pixels(tid: Tensor, b0: Tensor, b1: Tensor, counts: Tensor, nF: int, H: int, W: int):
    """Every pixel of each triangle's bounding box ``[b0, b1]`` (inclusive, (G, 2) as x, y).

    Returns ``tri (M,)`` flat triangle ids, ``pix (M,)`` flat pixel ids ``image*H*W + y*W + x`` and
    the pixel columns/rows ``px, py (M,)``.
    """
    total = int(counts.sum())
    box = torch.repeat_interleave(torch.arange(tid.numel(), device=tid.device), counts, output_size=total)
    local = torch.arange(total, device=tid.device) - (torch.cumsum(counts, 0) - counts)[box]
    bw = (b1[:, 0] - b0[:, 0] + 1)[box]
    px = b0[box, 0] + local % bw
    py = b0[box, 1] + torch.div(local, bw, rounding_mode="floor")
    tri = tid[box]
    pix = (tri // nF) * (H * W) + py * W + px
    return tri, pix, px, py


def _shade(bimg, fidx, bary, faces, vertex_colors, uv, uv_faces, texture, texture_weight, dt) -> Tensor:
    """Colour ``(M, 3)`` of visible samples from perspective-correct barycentrics ``bary (M, 3)``."""
    fv = faces[fidx]  # (M, 3) vertex ids
    cv = None
    if vertex_colors is not None:
        vcb = vertex_colors.to(dt)
        bi = bimg if vcb.shape[0] > 1 else torch.zeros_like(bimg)
        cv = (vcb[bi[:, None], fv] * bary[..., None]).sum(1)  # (M, 3)
    if texture is None:
        return cv if cv is not None else torch.full((fidx.numel(), 3), DEFAULT_COLOR, dtype=dt, device=bary.device)
    tf = (uv_faces if uv_faces is not None else faces).long()[fidx]  # (M, 3)
    uvs = (uv.to(dt)[tf] * bary[..., None]).sum(1)  # (M, 2)
    grid = torch.stack([2.0 * uvs[:, 0] - 1.0, 1.0 - 2.0 * uvs[:, 1]], -1)  # v up -> image rows down
    tex = texture.to(dt) / 255.0 if texture.dtype == torch.uint8 else texture.to(dt)
    tex = tex.permute(2, 0, 1)[None]  # (1, 3, Ht, Wt)
    ct = F.grid_sample(tex, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    ct = ct[0, :, 0].T  # (M, 3)
    if cv is None:
        return ct
    if texture_weight is None:
        return ct * cv
    tw = texture_weight.to(dt)
    tw = tw[None] if tw.dim() == 1 else tw  # (B or 1, V)
    bi = bimg if tw.shape[0] > 1 else torch.zeros_like(bimg)
    wt = (tw[bi[:, None], fv] * bary).sum(1, keepdim=True)  # (M, 1)
    return wt * ct + (1.0 - wt) * cv


# ----------------------------------------------------------------------------------------------
# Clothing-like colours
# ----------------------------------------------------------------------------------------------

_SHIRT_JOINTS = ("spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder", "right_shoulder")
"""Joints whose skinned vertices form the shirt: torso and upper arms. (In SMPL the ``*_shoulder``
joints drive the upper arm and ``*_elbow`` the forearm, which stays skin: a short-sleeved shirt.)"""
_TROUSER_JOINTS = ("pelvis", "left_hip", "right_hip", "left_knee", "right_knee")
"""Hips and thighs (``*_hip``) and shins (``*_knee``): full-length trousers."""
_SHOE_JOINTS = ("left_ankle", "right_ankle", "left_foot", "right_foot")
"""Feet (``*_ankle``) and toes (``*_foot``)."""

_SHIRTS = (
    (0.68, 0.16, 0.17), (0.16, 0.24, 0.47), (0.18, 0.44, 0.27), (0.88, 0.87, 0.83),
    (0.86, 0.64, 0.20), (0.10, 0.50, 0.55), (0.47, 0.26, 0.56), (0.93, 0.50, 0.35),
)
_TROUSERS = (
    (0.20, 0.29, 0.48), (0.10, 0.10, 0.12), (0.64, 0.57, 0.41), (0.36, 0.36, 0.39),
    (0.40, 0.28, 0.18), (0.33, 0.37, 0.22),
)
_SHOES = ((0.90, 0.90, 0.88), (0.08, 0.08, 0.08), (0.36, 0.21, 0.11), (0.60, 0.10, 0.12))


def part_colors(lbs_weights: Tensor, seed: int = 0, jitter: float = 0.04) -> tuple[Tensor, Tensor]:
    """Paint a body like a dressed person from its SMPL-24 skinning weights.

    Each vertex takes the region of its dominant joint: shirt (spine, collars, upper arms),
    trousers (pelvis, thighs, shins), shoes (feet, toes); head, neck, forearms and hands are skin,
    left to the texture.

    Args:
        lbs_weights: ``(V, 24)`` skinning weights in SMPL joint order.
        seed: picks the shirt/trouser/shoe colours from small palettes and jitters them by up to
            ``jitter`` per channel; seed 0 gives a red shirt, denim trousers and white shoes.

    Returns:
        ``colors (V, 3)`` in [0, 1] (skin vertices get a neutral skin tone, used where no texture
        exists) and ``use_texture (V,)`` bool (True for skin vertices); pass
        ``use_texture.float()`` as ``render_mesh(texture_weight=...)``.
    """
    if lbs_weights.dim() != 2 or lbs_weights.shape[1] != len(SMPL_JOINT_NAMES):
        raise PoseGenInputError(f"part_colors: lbs_weights has shape {tuple(lbs_weights.shape)}; expected (V, 24).")
    gen = torch.Generator().manual_seed(int(seed))

    def pick(palette) -> Tensor:
        i = 0 if seed == 0 else int(torch.randint(len(palette), (1,), generator=gen))
        c = torch.tensor(palette[i])
        if seed != 0:
            c = c + (torch.rand(3, generator=gen) * 2 - 1) * jitter
        return c.clamp(0, 1)

    shirt, trousers, shoes = pick(_SHIRTS), pick(_TROUSERS), pick(_SHOES)
    skin = torch.tensor((0.80, 0.62, 0.52))
    dominant = lbs_weights.argmax(1)  # (V,)
    colors = skin.expand(lbs_weights.shape[0], 3).clone()
    use_texture = torch.ones(lbs_weights.shape[0], dtype=torch.bool)
    for names, color in ((_SHIRT_JOINTS, shirt), (_TROUSER_JOINTS, trousers), (_SHOE_JOINTS, shoes)):
        idx = torch.tensor([SMPL_JOINT_NAMES.index(n) for n in names])
        sel = torch.isin(dominant.cpu(), idx)
        colors[sel] = color
        use_texture[sel] = False
    return colors.to(lbs_weights), use_texture.to(lbs_weights.device)
