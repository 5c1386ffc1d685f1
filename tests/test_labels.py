"""The labelling core (posegen_ns.labels): the one camera rule against hand-built cameras (an asymmetric
rotation, so a transposed R fails), ground truth per joint set, framing, person boxes, concatenation and
render-and-score with a stand-in renderer and critic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from posegen_ns import labels as L
from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import H36M_TO_LSP14
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, project_points
from posegen_ns.metrics import root_align
from posegen_ns.sampler import CameraRanges, PoseCameraSample


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


@pytest.fixture(scope="module")
def posed(body):
    g = torch.Generator().manual_seed(0)
    yaw = torch.tensor([0.5, -2.0])
    go = torch.stack([torch.zeros(2), yaw, torch.zeros(2)], -1)  # turned about +y only: yaw known by hand
    out = body(0.3 * torch.randn(2, 69, generator=g), go)
    return go, yaw, out


def _hand_camera(pelvis, yaw_plus_az, el, d):
    """Camera centre and OpenCV axes (right, down, forward) built from the geometry, no rotation matrix."""
    c = pelvis + d * torch.stack([math.cos(el) * torch.sin(yaw_plus_az), torch.full_like(yaw_plus_az, math.sin(el)),
                                  math.cos(el) * torch.cos(yaw_plus_az)], -1)
    fwd = torch.nn.functional.normalize(pelvis - c, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(fwd, torch.tensor([[0.0, 1.0, 0.0]]).expand_as(fwd), dim=-1), dim=-1)
    down = torch.cross(fwd, right, dim=-1)
    return c, right, down, fwd


def test_camera_rule_and_camera_frame_gt_against_hand_geometry(posed):
    go, yaw, out = posed
    pelvis = out.joints[:, 0]
    az, el, d, f, S = 0.7, 0.4, 3.0, 100.0, 64
    K, R, t = L.orbit_cameras(go, pelvis, torch.full((2,), az), torch.full((2,), el), torch.full((2,), d),
                              torch.full((2,), f), S, S)
    assert (R - R.transpose(1, 2)).abs().amax() > 0.3  # an asymmetric rotation: R and R^T differ
    c, right, down, fwd = _hand_camera(pelvis, yaw + az, el, d)
    torch.testing.assert_close(-torch.einsum("bji,bj->bi", R, t), c, atol=1e-5, rtol=0)  # camera centre
    torch.testing.assert_close(K[0], torch.tensor([[f, 0, S / 2], [0, f, S / 2], [0, 0, 1.0]]))
    # camera-frame ground truth = hand coordinates of (joint - centre) on the camera axes, re-rooted at the pelvis
    for joint_set, world in (("smpl24", out.joints), ("h36m17", out.joints_h36m), ("lsp14", out.joints_lsp)):
        rel = world - c[:, None]
        hand = torch.stack([(rel * right[:, None]).sum(-1), (rel * down[:, None]).sum(-1), (rel * fwd[:, None]).sum(-1)], -1)
        expected = root_align(hand, L.root_of(joint_set))
        gt = L.camera_gt(joint_set, out, R, t)
        torch.testing.assert_close(gt, expected, atol=1e-5, rtol=0)
        wrong = root_align(L.to_camera(L.joints_in(joint_set, out), R.transpose(1, 2), t), L.root_of(joint_set))
        assert (wrong - expected).abs().amax() > 0.05  # a transposed R fails this test
    # the pelvis lies on the optical axis at the orbit distance: it projects to the image centre
    uv, cam = project_points(pelvis[:, None], K, R, t)
    torch.testing.assert_close(uv[:, 0], torch.full((2, 2), S / 2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(cam[:, 0, 2], torch.full((2,), d), atol=1e-5, rtol=0)


def test_frontal_camera_sees_the_left_hip_on_the_image_right(posed):
    go, _, out = posed
    K, R, t = L.orbit_cameras(go, out.joints[:, 0], torch.zeros(2), torch.zeros(2), torch.full((2,), 3.0),
                              torch.full((2,), 50.0), 32, 32)
    uv, _ = project_points(out.joints, K, R, t)
    assert bool((uv[:, 1, 0] > uv[:, 2, 0]).all())  # SMPL joint 1 = left hip, 2 = right hip
    # world-fixed azimuth ignores the body's heading: camera on +z of the pelvis
    _, R2, t2 = L.orbit_cameras(go, out.joints[:, 0], torch.zeros(2), torch.zeros(2), torch.full((2,), 3.0),
                                torch.full((2,), 50.0), 32, 32, relative_to_body=False)
    torch.testing.assert_close(-torch.einsum("bji,bj->bi", R2, t2), out.joints[:, 0] + torch.tensor([0, 0, 3.0]), atol=1e-5, rtol=0)


def test_body_yaw_and_camera_frame_orient():
    go = torch.tensor([[0.0, 0.5, 0.0], [0.0, -2.0, 0.0]])
    torch.testing.assert_close(L.body_yaw(go), torch.tensor([0.5, -2.0]))
    R = axis_angle_to_matrix(torch.tensor([[0.2, -0.4, 0.9], [1.0, 0.1, -0.3]]))
    got = axis_angle_to_matrix(L.camera_frame_orient(go, R))
    torch.testing.assert_close(got, R @ axis_angle_to_matrix(go), atol=1e-6, rtol=0)


def test_roots_and_joint_sets(posed):
    _, _, out = posed
    assert L.root_of("h36m17") == 0 and L.root_of("smpl24") == 0 and L.root_of("lsp14") == "midhip_lsp"
    assert torch.equal(L.joints_in("lsp14", out), out.joints_h36m[:, list(H36M_TO_LSP14)])
    gt = L.gt_from_camera_joints("lsp14", out.joints_h36m, out.joints)
    torch.testing.assert_close(0.5 * (gt[:, 2] + gt[:, 3]), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(L.gt_from_camera_joints("smpl24", out.joints_h36m, out.joints), out.joints - out.joints[:, :1])
    with pytest.raises(PoseGenInputError, match="coco17"):
        L.root_of("coco17")


def test_framing_and_intrinsics(body):
    betas = torch.zeros(body.num_betas)
    h = L.subject_height(body, betas)
    verts = body(torch.zeros(1, 69), betas=betas[None]).vertices[0]
    assert h == pytest.approx(float(verts[:, 1].max() - verts[:, 1].min()), rel=1e-6)
    assert L.framing_focal(1.6, 100, 4.0, 0.5) == pytest.approx(0.5 * 100 * 4.0 / 1.6)
    K = L.intrinsics(torch.tensor([10.0, 20.0]), 40, 30)
    torch.testing.assert_close(K[1], torch.tensor([[20.0, 0, 20], [0, 20, 15], [0, 0, 1]]))
    # tight framing: the points' bounding square spans `fill` of the image, centred
    pts = torch.tensor([[[-0.5, -1.0, 4.0], [0.5, 1.0, 4.0]]])
    Kf = L.fit_intrinsics(pts, 100, 0.8)
    uv, _ = project_points(pts, Kf, torch.eye(3)[None], torch.zeros(1, 3))
    assert float(uv[0, 1, 1] - uv[0, 0, 1]) == pytest.approx(80.0) and float(uv[0, :, 0].mean()) == pytest.approx(50.0)


def test_person_boxes_use_h36m_joints():
    j = torch.tensor([[[0.0, 0.0], [10.0, 20.0]] + [[5.0, 10.0]] * 15])
    torch.testing.assert_close(L.person_boxes(j), torch.tensor([[-7.0, -2.0, 17.0, 22.0]]))
    with pytest.raises(PoseGenInputError, match="H36M-17"):
        L.person_boxes(torch.zeros(1, 24, 2))


def test_concat_samples_keeps_none_fields():
    a = PoseCameraSample(torch.zeros(2, 69), torch.zeros(2, 3), torch.zeros(2, 5), residual=torch.zeros(2, 24, 3))
    b = PoseCameraSample(torch.ones(3, 69), torch.ones(3, 3), torch.ones(3, 5))
    c = L.concat_samples([a, b])
    assert c.body_pose.shape == (5, 69) and c.residual is None and float(c.camera[2:].min()) == 1.0
    with pytest.raises(PoseGenInputError):
        L.concat_samples([])


def test_camera_params_by_name_round_trip():
    cam = torch.arange(10.0).reshape(2, 5)
    named = CameraRanges.unpack(cam)
    assert list(named) == list(CameraRanges.names()) and torch.equal(named["roll"], cam[:, 3])
    assert torch.equal(CameraRanges.pack(**named), cam)
    s = PoseCameraSample(torch.randn(2, 69), torch.randn(2, 3), cam)
    back = PoseCameraSample.from_flat(s.flat())
    assert torch.equal(back.camera, cam) and torch.equal(back.global_orient, s.global_orient)


def test_render_and_score_labels_and_boxes(body, posed):
    go, _, out = posed
    B, S = 2, 48
    betas = torch.zeros(B, body.num_betas)
    pelvis = body.rest_joints(betas)[:, 0]
    torch.testing.assert_close(pelvis, out.joints[:, 0], atol=1e-6, rtol=0)  # transl 0: the rest pelvis in any pose
    K, R, t = L.orbit_cameras(go, pelvis, torch.full((B,), 2.0), torch.full((B,), 0.2), torch.full((B,), 3.0),
                              torch.full((B,), 60.0), S, S)
    pose = torch.zeros(B, 69, requires_grad=True)

    def render(body_pose, global_orient, transl, K, R, t, width, height, betas=None):
        o = body(body_pose, global_orient, betas, transl)
        rgb = torch.zeros(body_pose.shape[0], height, width, 3) + o.vertices.mean() * 0  # stand-in image
        return SimpleNamespace(rgb=rgb, alpha=rgb[..., :1], body=o)

    class Oracle(torch.nn.Module):
        joint_set = "h36m17"
        seen = None

        def forward(self, images, boxes):
            Oracle.seen = boxes
            return torch.zeros(images.shape[0], 17, 3)

    s = L.render_and_score(render, Oracle(), pose, go, betas, K, R, t, S, S)
    o = body(pose, go, betas)
    uv, _ = project_points(o.joints_h36m, K, R, t)
    torch.testing.assert_close(s.boxes, L.person_boxes(uv))
    assert torch.equal(Oracle.seen, s.boxes)
    gt = L.camera_gt("h36m17", o, R, t)
    torch.testing.assert_close(s.error, gt.norm(dim=-1).mean(-1))
    s.error.sum().backward()  # the error reaches the pose through the labels
    assert pose.grad is not None and float(pose.grad.abs().sum()) > 0
