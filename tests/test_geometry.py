"""Camera and rotation conventions."""

import math

import torch

from posegen_ns.geometry import (
    look_at_extrinsics,
    matrix_to_rot6d,
    nerfstudio_c2w_to_opencv,
    opencv_to_nerfstudio_c2w,
    orbit_extrinsics,
    project_points,
    rot6d_to_matrix,
)


def test_rot6d_round_trip_and_layout():
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    r6 = matrix_to_rot6d(R[None])
    assert torch.allclose(r6, torch.tensor([[0.0, -1.0, 1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(rot6d_to_matrix(r6)[0], R, atol=1e-6)


def test_frontal_orbit_camera_sees_body_left_on_image_right():
    # azimuth 0: camera on +z looking at the origin; SMPL's left (+x) appears on the image's right
    R, t = orbit_extrinsics(torch.zeros(1), torch.zeros(1), torch.full((1,), 3.0), torch.zeros(1, 3))
    K = torch.tensor([[[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]]])
    pts = torch.tensor([[[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0]]])
    uv, cam = project_points(pts, K, R, t)
    assert torch.allclose(cam[0, 0], torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)
    assert torch.allclose(uv[0, 0], torch.tensor([50.0, 50.0]), atol=1e-5)
    assert abs(uv[0, 1, 0].item() - (50.0 + 10.0)) < 1e-4  # facing the person, their left is on our right
    assert uv[0, 2, 1] < 50.0  # world up is image up


def test_opencv_nerfstudio_round_trip():
    R, t = look_at_extrinsics(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3))
    c2w = opencv_to_nerfstudio_c2w(R, t)
    assert torch.allclose(c2w[0, :, 3], torch.tensor([1.0, 2.0, 3.0]), atol=1e-6)
    # OpenGL camera looks down its -z axis: towards the origin
    view_dir = -c2w[0, :, 2]
    assert torch.allclose(view_dir, -torch.tensor([1.0, 2.0, 3.0]) / math.sqrt(14), atol=1e-6)
    R2, t2 = nerfstudio_c2w_to_opencv(c2w)
    assert torch.allclose(R2, R, atol=1e-6) and torch.allclose(t2, t, atol=1e-6)
