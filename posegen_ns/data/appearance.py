"""How the ground-truth body looks, and one function that poses and renders it.

:class:`BodyAppearance` dresses a body model: the body's own skin texture where it has one
(``texture_data``: ``vt``, ``ft``, ``texture``), else a flat skin colour, under clothing-like regions
(shirt, trousers, shoes) from :func:`posegen_ns.render.part_colors`. A mild Lambertian term with a
fixed world light (flat per face, two-sided) gives limbs in front of the torso some relief.

:func:`render_body` is used by the capture writer, the source-pose sampler and the exporter's checks,
so the three see the same person.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from posegen_ns.render.mesh import MeshRender, part_colors, render_mesh

DEFAULT_LIGHT = (0.3, 0.8, 0.5)
"""World direction towards the light (y-up): above, in front of a body facing +z, a little to its left."""


@dataclass
class BodyAppearance:
    """Colours of one body mesh (V vertices, F faces).

    Attributes:
        vertex_colors: ``(V, 3)`` in [0, 1]: clothing colours, and the flat skin tone on skin.
        texture_weight: ``(V,)`` in [0, 1]: 1 where the skin texture shows (skin), 0 on clothing.
        uv: ``(T, 2)`` texture coordinates (OBJ convention, v up) or None.
        uv_faces: ``(F, 3)`` indices into ``uv`` or None.
        texture: ``(Ht, Wt, 3)`` float in [0, 1] or None (then skin is the flat skin tone).
        shading: strength of the Lambertian term: colour * (1 - shading + shading * |n . l|).
        light_dir: ``(3,)`` unit world direction towards the light.
    """

    vertex_colors: Tensor
    texture_weight: Tensor
    uv: Tensor | None = None
    uv_faces: Tensor | None = None
    texture: Tensor | None = None
    shading: float = 0.3
    light_dir: Tensor | None = None

    def to(self, device: torch.device | str) -> "BodyAppearance":
        """A copy with every tensor on ``device``."""
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return BodyAppearance(
            move(self.vertex_colors), move(self.texture_weight), move(self.uv), move(self.uv_faces),
            move(self.texture), self.shading, move(self.light_dir),
        )


def make_body_appearance(body, seed: int = 0, clothing: bool = True, shading: float = 0.3) -> BodyAppearance:
    """Dress ``body`` (a :class:`~posegen_ns.body.BodyModel`).

    Args:
        body: the body model (its ``lbs_weights`` define the regions; its ``texture_data`` the skin).
        seed: picks the clothing colours (:func:`posegen_ns.render.part_colors`; 0: red shirt, denim
            trousers, white shoes).
        clothing: False gives skin everywhere.
        shading: Lambertian strength in [0, 1] (0: unlit colours).

    Returns:
        The :class:`BodyAppearance` on the body's device.
    """
    weights = body.lbs_weights.detach()
    colors, use_texture = part_colors(weights.float(), seed=seed)
    if not clothing:
        skin = colors[use_texture][:1] if bool(use_texture.any()) else torch.tensor([[0.80, 0.62, 0.52]])
        colors = skin.to(colors).expand_as(colors).clone()
        use_texture = torch.ones_like(use_texture)
    dev = weights.device
    tex = body.texture_data
    uv = uv_faces = texture = None
    if "vt" in tex and "texture" in tex:
        uv = torch.as_tensor(tex["vt"], dtype=torch.float32, device=dev).reshape(-1, 2)
        uv_faces = torch.as_tensor(tex["ft"], dtype=torch.long, device=dev) if "ft" in tex else None
        img = torch.as_tensor(tex["texture"], device=dev)
        if img.ndim == 2:
            img = img[..., None].expand(*img.shape, 3)
        texture = (img[..., :3].float() / 255.0) if img.dtype == torch.uint8 else img[..., :3].float()
    return BodyAppearance(
        vertex_colors=colors.float().to(dev),
        texture_weight=use_texture.float().to(dev),
        uv=uv, uv_faces=uv_faces, texture=texture,
        shading=float(shading),
        light_dir=F.normalize(torch.tensor(DEFAULT_LIGHT), dim=0).to(dev),
    )


@torch.no_grad()
def render_vertices(
    vertices: Tensor,  # (B, V, 3)
    faces: Tensor,  # (F, 3)
    appearance: BodyAppearance,
    K: Tensor,  # (B, 3, 3)
    R: Tensor,  # (B, 3, 3)
    t: Tensor,  # (B, 3)
    width: int,
    height: int,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> MeshRender:
    """Render posed body meshes (world metres, OpenCV cameras) with ``appearance``.

    Returns:
        :class:`~posegen_ns.render.MeshRender`: ``rgb (B, H, W, 3)`` in [0, 1], ``mask (B, H, W)``,
        ``depth (B, H, W)``, ``face_index (B, H, W)``.
    """
    vertices = vertices.float()
    out = render_mesh(
        vertices, faces, K.float(), R.float(), t.float(), width, height,
        vertex_colors=appearance.vertex_colors[None],
        uv=appearance.uv, uv_faces=appearance.uv_faces, texture=appearance.texture,
        texture_weight=appearance.texture_weight if appearance.texture is not None else None,
        background=background,
    )
    if appearance.shading > 0:
        light = appearance.light_dir if appearance.light_dir is not None else F.normalize(torch.tensor(DEFAULT_LIGHT), dim=0)
        tri = vertices[:, faces.long()]  # (B, F, 3, 3)
        normals = F.normalize(torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1), dim=-1)
        lambert = (normals @ light.to(normals)).abs()  # (B, F) two-sided
        fi = out.face_index.clamp_min(0).reshape(out.face_index.shape[0], -1)  # (B, H*W)
        lit = torch.gather(lambert, 1, fi).reshape(out.face_index.shape)  # (B, H, W)
        factor = torch.where(out.face_index >= 0, 1.0 - appearance.shading + appearance.shading * lit, 1.0)
        out = MeshRender(rgb=out.rgb * factor[..., None], mask=out.mask, depth=out.depth, face_index=out.face_index)
    return out


@torch.no_grad()
def render_body(
    body,
    appearance: BodyAppearance,
    body_pose: Tensor,  # (B, 69)
    global_orient: Tensor,  # (B, 3)
    betas: Tensor | None,  # (B, nb) or None
    transl: Tensor | None,  # (B, 3) or None
    K: Tensor,  # (B, 3, 3)
    R: Tensor,  # (B, 3, 3)
    t: Tensor,  # (B, 3)
    width: int,
    height: int,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> MeshRender:
    """Pose ``body`` (SMPL axis-angle, metres) and render it from B OpenCV cameras.

    Args:
        body: a :class:`~posegen_ns.body.BodyModel`.
        appearance: from :func:`make_body_appearance` for the same body.
        body_pose, global_orient, betas, transl: one row per image (see ``BodyModel.forward``).
        K, R, t: one camera per image.
        width, height: image size, pixels.
        background: RGB of empty pixels in [0, 1].

    Returns:
        :class:`~posegen_ns.render.MeshRender` (B images).
    """
    verts = body(body_pose, global_orient, betas, transl).vertices
    return render_vertices(verts, body.faces, appearance, K, R, t, width, height, background)
