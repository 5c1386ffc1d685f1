"""The human field: LBS of Gaussians, differentiable rendering, nerfstudio camera path."""

import torch

from posegen_ns.body import load_body_model
from posegen_ns.field.human_field import HumanGaussians
from posegen_ns.geometry import axis_angle_to_matrix, opencv_to_nerfstudio_c2w, orbit_extrinsics


def _field(n=200):
    torch.manual_seed(0)
    return HumanGaussians(load_body_model("tiny"), num_gaussians=n)


def test_rest_pose_leaves_gaussians_at_canonical_positions():
    f = _field()
    means, quats, _ = f.pose(torch.zeros(1, 69), torch.zeros(1, 3), torch.zeros(1, 2), torch.zeros(1, 3))
    torch.testing.assert_close(means[0], f.canonical_means, atol=1e-6, rtol=0)
    torch.testing.assert_close(quats[0].abs(), torch.tensor([1.0, 0, 0, 0]).expand_as(quats[0]), atol=1e-6, rtol=0)


def test_rigidly_skinned_gaussians_follow_their_joint():
    """Tiny-body weights are one-hot, so each Gaussian moves with one joint: x' = A_j x (hand check
    with a 90-degree global rotation about y plus a translation)."""
    f = _field()
    go = torch.tensor([[0.0, torch.pi / 2, 0.0]])
    transl = torch.tensor([[0.1, 0.2, 0.3]])
    means, _, out = f.pose(torch.zeros(1, 69), go, torch.zeros(1, 2), transl)
    pelvis = out.rest_joints[0, 0]
    R = axis_angle_to_matrix(go)[0]
    expected = (f.canonical_means - pelvis) @ R.T + pelvis + transl[0]
    torch.testing.assert_close(means[0], expected, atol=1e-5, rtol=0)


def test_render_is_differentiable_in_pose_and_camera():
    f = _field(300)
    R, t = orbit_extrinsics(torch.zeros(1), torch.zeros(1), torch.full((1,), 3.0), torch.zeros(1, 3))
    R = R.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    pose = (0.2 * torch.randn(1, 69)).requires_grad_(True)
    K = torch.tensor([[[60.0, 0, 16], [0, 60.0, 16], [0, 0, 1]]])
    out = f.render(pose, torch.zeros(1, 3), torch.zeros(1, 2), torch.zeros(1, 3), K, R, t, 32, 32)
    assert out.rgb.shape == (1, 32, 32, 3) and out.alpha.shape == (1, 32, 32, 1)
    assert out.alpha.max() > 0.5  # the body is in view
    (out.rgb.mean() + out.alpha.mean()).backward()
    for g in (pose.grad, R.grad, t.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_viewer_camera_path_matches_opencv_path(tmp_path):
    """``PoseGenHumanModel.get_outputs_for_camera`` (nerfstudio OpenGL c2w) renders the same image
    as the OpenCV K, R, t path."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.data.scene_box import SceneBox

    from posegen_ns.model import PoseGenHumanModelConfig

    class _Capture:
        body = "tiny"
        betas = torch.zeros(2)
        body_pose = 0.1 * torch.ones(1, 69)
        global_orient = torch.zeros(1, 3)
        transl = torch.zeros(1, 3)

    model = PoseGenHumanModelConfig(num_gaussians=200).setup(
        scene_box=SceneBox(torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=1, capture=_Capture()
    )
    R, t = orbit_extrinsics(torch.tensor([0.7]), torch.tensor([0.2]), torch.full((1,), 3.0), torch.zeros(1, 3))
    K = torch.tensor([[[50.0, 0, 20], [0, 55.0, 18], [0, 0, 1]]])
    cam = Cameras(camera_to_worlds=opencv_to_nerfstudio_c2w(R, t), fx=50.0, fy=55.0, cx=20.0, cy=18.0, width=40, height=36)
    viewer = model.get_outputs_for_camera(cam)
    direct = model.render(_Capture.body_pose, _Capture.global_orient, _Capture.transl, K, R, t, 40, 36)
    assert viewer["rgb"].shape == (36, 40, 3)
    torch.testing.assert_close(viewer["rgb"], direct.rgb[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(viewer["depth"], direct.depth[0], atol=1e-4, rtol=0)
