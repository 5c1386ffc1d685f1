"""Tests of the CPU z-buffer mesh renderer and clothing colours (posegen_ns.render.mesh)."""

from __future__ import annotations

import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import intrinsics_from_fov, orbit_extrinsics
from posegen_ns.render import part_colors, render_mesh


def _identity_camera(f: float, c: float):
    K = torch.tensor([[[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]]])
    return K, torch.eye(3)[None], torch.zeros(1, 3)


def test_single_triangle_coverage_by_hand():
    # With f = z = 2 and c = 0 a camera point (x, y, 2) lands on pixel coordinates (x, y).
    K, R, t = _identity_camera(2.0, 0.0)
    verts = torch.tensor([[[1.0, 1.0, 2.0], [7.2, 1.0, 2.0], [1.0, 7.2, 2.0]]])
    faces = torch.tensor([[0, 1, 2]])
    out = render_mesh(verts, faces, K, R, t, 10, 10, background=(0.25, 0.5, 0.75))
    # Pixel (i, j) has centre (i + 0.5, j + 0.5): inside iff i >= 1, j >= 1 and i + j + 1 <= 8.2.
    j, i = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")  # j row (y), i column (x)
    expected = (i >= 1) & (j >= 1) & (i + j <= 7)
    assert expected.sum() == 21
    assert torch.equal(out.mask[0].bool(), expected)
    assert torch.equal(out.face_index[0], torch.where(expected, 0, -1))
    torch.testing.assert_close(out.depth[0], torch.where(expected, 2.0, 0.0))
    torch.testing.assert_close(out.rgb[0][expected], torch.full((21, 3), 0.7))  # default grey
    torch.testing.assert_close(out.rgb[0][~expected], torch.tensor([0.25, 0.5, 0.75]).expand(79, 3))


def test_depth_on_a_tilted_triangle_equals_plane_depth():
    # The triangle lies on the plane z = 2 + 0.5 x (camera frame).
    K, R, t = _identity_camera(10.0, 10.0)
    verts = torch.tensor([[[-1.0, -1.0, 1.5], [1.0, -1.0, 2.5], [0.0, 1.0, 2.0]]])
    out = render_mesh(verts, torch.tensor([[0, 1, 2]]), K, R, t, 20, 20)
    # Ray through pixel (10, 10): direction (0.05, 0.05, 1); z = 2 + 0.5 * 0.05 z.
    assert out.mask[0, 10, 10] == 1
    assert out.depth[0, 10, 10].item() == pytest.approx(2.0 / 0.975, rel=1e-5)
    # pixel (x=11, y=9): direction (0.15, -0.05, 1); z = 2 / (1 - 0.075)
    assert out.mask[0, 9, 11] == 1
    assert out.depth[0, 9, 11].item() == pytest.approx(2.0 / 0.925, rel=1e-5)


def test_nearer_triangle_wins_regardless_of_order():
    K, R, t = _identity_camera(10.0, 10.0)
    near = [[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]]
    far = [[-2.0, -2.0, 3.0], [2.0, -2.0, 3.0], [0.0, 2.0, 3.0]]
    colors = torch.tensor([[1.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 0.0]] * 3)[None]
    verts = torch.tensor([near + far])
    for faces, near_face in ((torch.tensor([[0, 1, 2], [3, 4, 5]]), 0), (torch.tensor([[3, 4, 5], [0, 1, 2]]), 1)):
        out = render_mesh(verts, faces, K, R, t, 20, 20, vertex_colors=colors)
        assert out.face_index[0, 10, 10] == near_face
        assert out.depth[0, 10, 10].item() == pytest.approx(2.0)
        torch.testing.assert_close(out.rgb[0, 10, 10], torch.tensor([1.0, 0.0, 0.0]))
        # where only the far triangle covers (near its lower corners), it shows
        assert out.face_index[0, 4, 4] == 1 - near_face
        assert out.depth[0, 4, 4].item() == pytest.approx(3.0)
        torch.testing.assert_close(out.rgb[0, 4, 4], torch.tensor([0.0, 1.0, 0.0]))


def _checker(n_cells: int = 8, texels: int = 8) -> torch.Tensor:
    idx = torch.arange(n_cells * texels) // texels
    cells = ((idx[:, None] + idx[None, :]) % 2).float()  # (Ht, Wt)
    return torch.stack([cells, 1 - cells, 0.5 * torch.ones_like(cells)], -1)


def test_perspective_correct_uv_on_a_slanted_textured_quad():
    f, c, size = 20.0, 16.0, 32
    K, R, t = _identity_camera(f, c)
    A, B, D = torch.tensor([-1.0, -1.0, 1.5]), torch.tensor([1.0, -1.0, 6.0]), torch.tensor([-1.0, 1.0, 1.5])
    C = B + D - A
    verts = torch.stack([A, B, C, D])[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # (s, r) on the quad
    tex = _checker()
    out = render_mesh(verts, faces, K, R, t, size, size, uv=uv, texture=tex)

    # By hand: intersect each pixel's ray with the quad, A + s (B - A) + r (D - A) = lam * dir.
    rows, cols = torch.nonzero(out.mask[0].bool(), as_tuple=True)
    dirs = torch.stack([(cols + 0.5 - c) / f, (rows + 0.5 - c) / f, torch.ones_like(cols, dtype=torch.float)], -1)
    M = torch.stack([(B - A).expand_as(dirs), (D - A).expand_as(dirs), -dirs], -1)  # (P, 3, 3)
    s, r, lam = torch.linalg.solve(M, (-A).expand_as(dirs)).unbind(-1)
    torch.testing.assert_close(out.depth[0, rows, cols], lam * dirs[:, 2], rtol=1e-4, atol=1e-5)
    # Texel lookup, OBJ convention: v = r up, so image row = (1 - r) * Ht.
    Ht, Wt = tex.shape[:2]
    tu, tv = s * Wt, (1 - r) * Ht
    interior = ((tu % 8 - 4).abs() < 3) & ((tv % 8 - 4).abs() < 3)  # >= 1 texel from a cell edge
    expected = tex[tv.long().clamp(0, Ht - 1), tu.long().clamp(0, Wt - 1)]
    assert interior.sum() > 100
    torch.testing.assert_close(out.rgb[0, rows, cols][interior], expected[interior], atol=1e-5, rtol=0)
    as_uint8 = render_mesh(verts, faces, K, R, t, size, size, uv=uv, texture=(tex * 255).round().to(torch.uint8))
    torch.testing.assert_close(as_uint8.rgb, out.rgb, atol=3e-3, rtol=0)
    # An affine (screen-space) interpolation would be far off: the quad's far half is squeezed.
    assert (s > 0.5).float().mean() < 0.35

    # texture_weight: 1 shows the texture, 0 the vertex colours; both without weight multiply.
    red = torch.tensor([1.0, 0.0, 0.0]).expand(1, 4, 3)
    tw = render_mesh(verts, faces, K, R, t, size, size, vertex_colors=red, uv=uv, texture=tex,
                     texture_weight=torch.ones(4))
    vc = render_mesh(verts, faces, K, R, t, size, size, vertex_colors=red, uv=uv, texture=tex,
                     texture_weight=torch.zeros(1, 4))
    mod = render_mesh(verts, faces, K, R, t, size, size, vertex_colors=red, uv=uv, texture=tex)
    torch.testing.assert_close(tw.rgb, out.rgb)
    torch.testing.assert_close(vc.rgb[0, rows, cols], red[0, :1].expand(rows.numel(), 3))
    torch.testing.assert_close(mod.rgb, out.rgb * torch.tensor([1.0, 0.0, 0.0]))


def _tiny_scene(batch: int = 2):
    body = load_body_model("tiny")
    out = body(torch.zeros(batch, 69), torch.zeros(batch, 3), torch.zeros(batch, body.num_betas),
               torch.zeros(batch, 3))
    R, t = orbit_extrinsics(torch.linspace(0.0, 1.5, batch), torch.full((batch,), 0.2),
                            torch.full((batch,), 3.0), torch.zeros(batch, 3))
    K = intrinsics_from_fov(0.8, 64, 48).expand(batch, 3, 3)
    return body, out.vertices, K, R, t


def test_mask_face_index_depth_consistency_on_a_body():
    body, verts, K, R, t = _tiny_scene()
    colors, _ = part_colors(body.lbs_weights)
    out = render_mesh(verts, body.faces, K, R, t, 64, 48, vertex_colors=colors[None], background=(0.0, 0.0, 1.0))
    assert out.rgb.shape == (2, 48, 64, 3) and out.face_index.dtype == torch.long
    covered = out.face_index >= 0
    assert 50 < covered[0].sum() < 64 * 48 and 50 < covered[1].sum()
    assert torch.equal(out.mask.bool(), covered)
    assert (out.depth[covered] > 2.0).all() and (out.depth[~covered] == 0).all()
    torch.testing.assert_close(out.rgb[~covered], torch.tensor([0.0, 0.0, 1.0]).expand(int((~covered).sum()), 3))
    # every covered pixel centre lies inside its face's projection
    b, y, x = torch.nonzero(covered, as_tuple=True)
    cam = torch.einsum("bij,bvj->bvi", R, verts) + t[:, None]
    pix = torch.einsum("bij,bvj->bvi", K, cam / cam[..., 2:])[..., :2]
    tri = pix[b[:, None], body.faces[out.face_index[b, y, x]]]  # (P, 3, 2)
    p = torch.stack([x, y], -1) + 0.5
    e = [torch.linalg.det(torch.stack([tri[:, (k + 1) % 3] - tri[:, k], p - tri[:, k]], -1)) for k in range(3)]
    e = torch.stack(e, -1)
    assert ((e >= -1e-4).all(-1) | (e <= 1e-4).all(-1)).all()
    # chunking does not change the image
    small = render_mesh(verts, body.faces, K, R, t, 64, 48, vertex_colors=colors[None], background=(0.0, 0.0, 1.0),
                        max_pairs=200)
    assert torch.equal(small.face_index, out.face_index)
    torch.testing.assert_close(small.rgb, out.rgb)


def test_triangles_behind_the_camera_are_culled():
    K, R, t = _identity_camera(10.0, 10.0)
    front = [[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]]
    behind = [[-1.0, -1.0, -2.0], [1.0, -1.0, -2.0], [0.0, 1.0, -2.0]]
    straddling = [[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, -0.5]]
    only_behind = render_mesh(torch.tensor([behind + straddling]), torch.tensor([[0, 1, 2], [3, 4, 5]]), K, R, t,
                              20, 20)
    assert only_behind.mask.sum() == 0 and (only_behind.face_index == -1).all()
    mixed = render_mesh(torch.tensor([behind + front]), torch.tensor([[0, 1, 2], [3, 4, 5]]), K, R, t, 20, 20)
    assert mixed.mask.sum() > 0 and set(mixed.face_index.unique().tolist()) == {-1, 1}


def test_part_colors_regions_and_seeds():
    body = load_body_model("tiny")
    w = body.lbs_weights
    colors, use_tex = part_colors(w)
    assert colors.shape == (w.shape[0], 3) and use_tex.shape == (w.shape[0],) and use_tex.dtype == torch.bool
    dominant = w.argmax(1)

    def region(name):
        return dominant == SMPL_JOINT_NAMES.index(name)

    for skin in ("head", "neck", "left_elbow", "right_wrist", "left_hand"):
        assert use_tex[region(skin)].all(), skin
    for cloth in ("spine2", "left_shoulder", "pelvis", "right_knee", "left_foot"):
        assert not use_tex[region(cloth)].any(), cloth
    shirt, trousers, shoes = (colors[region(n)][0] for n in ("spine2", "left_hip", "right_ankle"))
    torch.testing.assert_close(shirt, torch.tensor([0.68, 0.16, 0.17]))  # seed 0: red shirt
    assert (shirt - trousers).abs().max() > 0.2 and (trousers - shoes).abs().max() > 0.2
    torch.testing.assert_close(colors[region("left_shoulder")][0], shirt)
    again, _ = part_colors(w, seed=0)
    assert torch.equal(again, colors)
    others = [part_colors(w, seed=s)[0] for s in (1, 2, 3)]
    assert any(not torch.allclose(o, colors) for o in others)
    assert all(((o >= 0) & (o <= 1)).all() for o in others)


def test_input_errors():
    K, R, t = _identity_camera(10.0, 10.0)
    verts = torch.zeros(1, 3, 3)
    faces = torch.tensor([[0, 1, 2]])
    with pytest.raises(PoseGenInputError, match="uv"):
        render_mesh(verts, faces, K, R, t, 8, 8, texture=torch.zeros(4, 4, 3))
    with pytest.raises(PoseGenInputError, match="vertex_colors"):
        render_mesh(verts, faces, K, R, t, 8, 8, vertex_colors=torch.zeros(3, 3))
    with pytest.raises(PoseGenInputError, match="K"):
        render_mesh(verts, faces, K[0], R, t, 8, 8)
