"""HybrIK critics: official key layouts, strict loading, preprocessing, read-out, IK, gradients."""

from __future__ import annotations

import pytest
import roma
import torch

from adapters.hybrik import (
    BBOX_3D_SHAPE_M,
    HYBRIK_IMG_MEAN,
    HYBRIK_IMG_STD,
    HybrIKCritic,
    HybrIKHRNet,
    HybrIKResNet,
    HybrIKSMPLBuffers,
    body_from_smpl_buffers,
    box_centre_offset,
    build_hybrik_critic,
    hybrik_children_map,
    load_hybrik_state,
    save_hybrik_checkpoint,
    soft_argmax_3d,
    square_boxes,
    uvd_to_camera,
)
from adapters.hybrik_ik import HYBRIK_CHILD_24, HYBRIK_PARENTS_29, hybrik_ik, leaf_vertex_ids, rotation_between
from adapters.registry import load_critic
from posegen_ns.body import load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.metrics import mpjpe

S = 64  # crop side in tests (heatmaps 16 x 16); the released models use 256


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions on a shared 2-core machine: one thread is far faster (no spin contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


@pytest.fixture(scope="module")
def res34(body):
    torch.manual_seed(0)
    critic = build_hybrik_critic("res34", body=body, input_size=S)
    with torch.no_grad():  # informative random heads (the init makes near-uniform heatmaps)
        critic.net.final_layer.weight.normal_(0, 0.05)
        critic.net.decphi.weight.normal_(0, 0.02)
    return critic


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 72, 96, generator=g)
    boxes = torch.tensor([[20.0, 4.0, 60.0, 70.0], [0.0, 0.0, 96.0, 72.0]])
    return images, boxes


# ---- layouts ------------------------------------------------------------------------------------
def test_res34_layout_matches_simple3dpose_smpl_cam():
    sd = HybrIKResNet(34).state_dict()
    assert len(sd) == 259
    shapes = {
        "preact.conv1.weight": (64, 3, 7, 7), "preact.layer3.5.conv2.weight": (256, 256, 3, 3),
        "preact.layer4.0.downsample.0.weight": (512, 256, 1, 1), "deconv_layers.0.weight": (512, 256, 4, 4),
        "deconv_layers.7.running_var": (256,), "final_layer.weight": (29 * 64, 256, 1, 1), "fc1.weight": (1024, 512),
        "fc2.weight": (1024, 1024), "decshape.weight": (10, 1024), "decphi.weight": (46, 1024),
        "deccam.weight": (3, 1024), "decsigma.weight": (29, 1024), "init_shape": (10,), "init_cam": (3,),
        "smpl.parents": (29,), "smpl.children_map": (29,), "smpl.posedirs": (207, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("preact.fc", "avg_pool", "drop")) for k in sd)
    assert sd["init_cam"].tolist() == pytest.approx([0.9, 0.0, 0.0])
    assert sd["smpl.parents"].tolist() == list(HYBRIK_PARENTS_29)
    assert "decsigma.weight" not in HybrIKResNet(34, with_sigma=False).state_dict()


def test_hrw48_layout_matches_hrnet_smpl_cam():
    with torch.device("meta"):  # full width, no memory or init cost
        sd = HybrIKHRNet(48).state_dict()
    assert len(sd) == 1975
    shapes = {
        "preact.conv2.weight": (64, 64, 3, 3), "preact.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "preact.transition1.0.0.weight": (48, 256, 3, 3), "preact.transition1.1.0.0.weight": (96, 256, 3, 3),
        "preact.transition3.3.0.0.weight": (384, 192, 3, 3),
        "preact.stage3.3.branches.2.3.conv2.weight": (192, 192, 3, 3),
        "preact.stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
        "preact.stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
        "preact.stage4.2.fuse_layers.3.0.1.0.weight": (48, 48, 3, 3),
        "preact.incre_modules.3.0.downsample.0.weight": (1024, 384, 1, 1),
        "preact.downsamp_modules.2.0.bias": (1024,), "preact.final_feat_layer.0.weight": (2048, 1024, 1, 1),
        "preact.final_layer.weight": (1856, 48, 1, 1), "decshape.weight": (10, 2048), "decphi.weight": (46, 2048),
        "deccam.weight": (1, 2048), "decsigma.weight": (29, 2048), "init_cam": (1,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # ModuleList entries that are None keep their index: no transition for unchanged branches
    assert not any(k.startswith(("preact.transition2.0", "preact.transition2.1", "preact.transition3.2")) for k in sd)
    assert not any(k.startswith(("fc1", "preact.stage2.0.fuse_layers.0.0", "deconv")) for k in sd)
    # stage 4: 3 modules x (4 branches x 4 blocks x 12 keys + 6 upsampling fuses x 6 + 10 stride-2 steps x 6)
    assert sum(k.startswith("preact.stage4.") for k in sd) == 3 * (4 * 4 * 12 + 6 * 6 + 10 * 6)


def test_smpl_buffers_and_children_map(body):
    assert hybrik_children_map().tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 27, 28, 15, 16, 17, 24, 18, 19, 20,
                                              21, 22, 23, 25, 26, -1, -1, -1, -1, -1]
    assert HYBRIK_CHILD_24[1:] == tuple(hybrik_children_map()[1:24].tolist())
    buf = HybrIKSMPLBuffers.from_body(body)
    V = body.num_vertices
    assert buf.posedirs.shape == (207, 3 * V) and buf.shapedirs.shape == (V, 3, body.num_betas)
    # the buffers rebuild the same body (what happens when an official checkpoint comes without body=)
    pose = 0.3 * torch.randn(2, 69)
    betas = torch.randn(2, body.num_betas)
    return_body = body_from_smpl_buffers(buf)
    assert torch.allclose(return_body(pose, betas=betas).vertices, body(pose, betas=betas).vertices, atol=1e-6)
    assert torch.allclose(return_body(pose).joints_h36m, body(pose).joints_h36m, atol=1e-6)


# ---- checkpoints --------------------------------------------------------------------------------
def test_res34_both_layouts_load_strictly(tmp_path, res34, body):
    images, boxes = _inputs()
    ref, ref_pred = res34(images, boxes, return_params=True)
    state = res34.net.state_dict()
    save_hybrik_checkpoint(res34.net, tmp_path / "new.pth")  # raw state dict, as released
    torch.save({"model": {f"module.{k}": v for k, v in state.items() if not k.startswith("decsigma.")}},
               tmp_path / "old.pth")  # the layout without decsigma, wrapped, DataParallel prefix
    for name, sigma in (("new.pth", True), ("old.pth", False)):
        torch.manual_seed(7)
        loaded = load_critic("hybrik-res34", checkpoint=tmp_path / name, body=body, input_size=S)
        assert isinstance(loaded, HybrIKCritic) and loaded.joint_set == "smpl24" and not loaded.training
        assert (loaded.net.decsigma is not None) == sigma
        joints, pred = loaded(images, boxes, return_params=True)
        assert torch.allclose(joints, ref, atol=1e-6)
        assert (pred.sigma is not None) == sigma
        if sigma:
            assert torch.allclose(pred.sigma, ref_pred.sigma)


def test_hrnet_narrow_roundtrip_and_body_from_checkpoint(tmp_path, body, monkeypatch):
    monkeypatch.setenv("POSEGEN_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    critic = build_hybrik_critic("hrw48", body=body, input_size=S, width=4)
    with torch.no_grad():
        critic.net.preact.final_layer.weight.normal_(0, 0.1)
        critic.net.decsigma.bias.fill_(-4.0)  # small sigmas: the scale refinement has weight
    path = save_hybrik_checkpoint(critic.net, tmp_path / "hrnet.pth", wrap=True)
    images, boxes = _inputs(1)
    ref, pred = critic(images, boxes, return_params=True)
    assert not torch.allclose(pred.cam_scale, critic.net.init_cam.expand(2) + critic.net.deccam.bias)  # refined
    loaded = load_critic("hybrik-hrw48", checkpoint=path, input_size=S)  # width and body from the file
    assert loaded.net.width == 4 and loaded.body.num_vertices == body.num_vertices
    assert torch.allclose(loaded(images, boxes), ref, atol=1e-5)
    assert torch.allclose(loaded.joints_h36m(images, boxes), critic.joints_h36m(images, boxes), atol=1e-5)


def test_checkpoint_key_errors_name_key_and_file(tmp_path, res34):
    state = res34.net.state_dict()
    renamed = dict(state)
    renamed["fc1.w"] = renamed.pop("fc1.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(PoseGenInputError, match=r"renamed\.pth.*missing keys \['fc1\.weight'\].*unexpected keys \['fc1\.w'\]"):
        load_hybrik_state(tmp_path / "renamed.pth", HybrIKResNet(34))
    torch.save({k: v for k, v in state.items() if k != "smpl.lbs_weights"}, tmp_path / "missing.pth")
    with pytest.raises(PoseGenInputError, match=r"missing\.pth.*missing keys \['smpl\.lbs_weights'\]"):
        load_hybrik_state(tmp_path / "missing.pth", HybrIKResNet(34))
    save_hybrik_checkpoint(res34.net, tmp_path / "res.pth")
    with pytest.raises(PoseGenInputError, match=r"res\.pth.*HybrIKHRNet.*unexpected keys \['deconv_layers\.0\.weight'") as err:
        load_hybrik_state(tmp_path / "res.pth", HybrIKHRNet(4))  # a ResNet file into the HRNet
    assert "more)" in str(err.value) and len(str(err.value)) < 4000  # long lists are shortened
    torch.save({k: v for k, v in state.items() if k != "decphi.bias"}, tmp_path / "phi.pth")
    with pytest.raises(PoseGenInputError, match=r"phi\.pth.*'decphi\.bias'"):
        load_critic("hybrik-res34", checkpoint=tmp_path / "phi.pth", body="tiny", input_size=S)
    with pytest.raises(PoseGenInputError, match="does not exist"):
        load_critic("hybrik-hrw48", checkpoint=tmp_path / "nope.pth", body="tiny")
    with pytest.raises(PoseGenInputError, match="unknown options"):
        load_critic("hybrik-res34", body="tiny", smpl_mean_param="x")


# ---- preprocessing, read-out, camera ------------------------------------------------------------
def test_preprocessing_pinned(res34):
    assert HYBRIK_IMG_MEAN == (0.406, 0.457, 0.480) and HYBRIK_IMG_STD == (0.225, 0.224, 0.229)
    colour = torch.tensor([0.406 + 0.225, 0.457, 0.480 - 0.229]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(res34.normalize(colour), torch.tensor([1.0, 0.0, -1.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2), atol=1e-6)
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1.0  # channel order: R first
    expected = torch.tensor([(1 - 0.406) / 0.225, -0.457 / 0.224, -0.480 / 0.229])
    assert torch.allclose(res34.normalize(red).flatten(), expected, atol=1e-6)
    # boxes: squared about the centre, then scaled by HybrIK's scale_mult 1.25
    assert torch.allclose(square_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), 1.25), torch.tensor([[-5.0, 15.0, 45.0, 65.0]]))
    assert torch.allclose(res34.crop_boxes(torch.tensor([[2.0, 0.0, 6.0, 8.0]])), torch.tensor([[-1.0, -1.0, 9.0, 9.0]]))
    off = box_centre_offset(torch.tensor([[-5.0, 15.0, 45.0, 65.0]]), (100, 200))
    assert torch.allclose(off, torch.tensor([[-1.6, -0.2]]))
    # the crop the network sees: a constant image -> constant normalised crop inside the box
    img = torch.full((1, 3, 40, 40), 0.5)
    crop = res34.crop(img, torch.tensor([[10.0, 10.0, 26.0, 26.0]]))  # 16 * 1.25 = 20 px, inside the image
    assert crop.shape == (1, 3, S, S)
    assert torch.allclose(crop, res34.normalize(torch.full((1, 3, 1, 1), 0.5)).expand(1, 3, S, S), atol=1e-6)


def test_soft_argmax_and_camera_hand_values():
    logits = torch.full((1, 2, 64, 8, 8), -1e4)
    logits[0, 0, 10, 3, 5] = 0.0  # one-hot at depth bin 10, row 3, column 5
    logits[0, 1, 40, 0, 0] = logits[0, 1, 40, 0, 1] = 0.0  # half-half between columns 0 and 1
    uvd = soft_argmax_3d(logits)
    assert torch.allclose(uvd[0, 0], torch.tensor([5 / 8 - 0.5, 3 / 8 - 0.5, 10 / 64 - 0.5]))
    assert torch.allclose(uvd[0, 1], torch.tensor([0.5 / 8 - 0.5, -0.5, 40 / 64 - 0.5]))
    assert BBOX_3D_SHAPE_M == (2.2, 2.2, 2.2)
    uvd = torch.tensor([[[0.25, -0.1, 0.1]]])
    xyz = uvd_to_camera(uvd, torch.tensor([1.0]), torch.tensor([[0.1, 0.0]]))
    Z = 1000.0 / 256.0 + 0.1 * 2.2
    assert torch.allclose(xyz[0, 0], torch.tensor([0.35 * 0.256 * Z, -0.1 * 0.256 * Z, Z]))


# ---- IK -----------------------------------------------------------------------------------------
def _posed_skeleton(rest: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Forward kinematics of the 29-joint tree (leaves rigid with their parents)."""
    P = HYBRIK_PARENTS_29
    bone = rest.clone()
    bone[:, 1:] = rest[:, 1:] - rest[:, list(P[1:])]
    G, x = [rot[:, 0]], [torch.zeros_like(rest[:, 0])]
    for j in range(1, 29):
        x.append(x[P[j]] + (G[P[j]] @ bone[:, j, :, None])[..., 0])
        G.append(G[P[j]] @ rot[:, j] if j < 24 else None)
    return torch.stack(x, 1)


def _twists(rest: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """(cos, sin) of each joint's twist about its rest bone: R = swing @ twist."""
    P = HYBRIK_PARENTS_29
    out = []
    for i in range(1, 24):
        a = rest[:, HYBRIK_CHILD_24[i]] - rest[:, i]
        twist = rotation_between(a, (rot[:, i] @ a[..., None])[..., 0]).transpose(-1, -2) @ rot[:, i]
        unit = a / a.norm(dim=-1, keepdim=True)
        axial = torch.stack([twist[:, 2, 1] - twist[:, 1, 2], twist[:, 0, 2] - twist[:, 2, 0], twist[:, 1, 0] - twist[:, 0, 1]], -1)
        out.append(torch.stack([(twist.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2, (axial * unit).sum(-1) / 2], -1))
    assert P[1] == 0
    return torch.stack(out, 1)


def test_ik_recovers_rotations_and_documents_gradient_stops(body):
    torch.manual_seed(0)
    B = 3
    rest = torch.randn(B, 29, 3, dtype=torch.float64) * 0.2
    rot = roma.random_rotmat((B, 24), dtype=torch.float64)
    joints = _posed_skeleton(rest, rot) + torch.tensor([0.3, -0.2, 4.0], dtype=torch.float64)  # any origin
    phis = 2.5 * _twists(rest, rot)  # unnormalised, as the network predicts them
    for adaptive in (True, False):
        ik = hybrik_ik(joints, phis, rest, adaptive=adaptive)
        assert torch.allclose(ik.rotmat, rot, atol=1e-4)  # HybrIK's 1e-8 guards cost ~1e-5
        assert torch.allclose(ik.posed_joints, (joints - joints[:, :1])[:, :24], atol=1e-5)
    # gradients: the root uses detached joints; adaptive swings keep them; naive swings do not
    j = joints.clone().requires_grad_(True)
    ph = phis.clone().requires_grad_(True)
    root = torch.autograd.grad(hybrik_ik(j, ph, rest).rotmat[:, 0].sum(), j, allow_unused=True)[0]
    assert root is None or root.abs().max() == 0
    g_adaptive = torch.autograd.grad(hybrik_ik(j, ph, rest).rotmat[:, 4].sum(), j)[0]
    assert g_adaptive[:, 7].abs().sum() > 0  # left knee's swing follows the predicted ankle
    naive = hybrik_ik(j, ph, rest, adaptive=False).rotmat[:, 4].sum()
    g_naive, g_phi = torch.autograd.grad(naive, [j, ph], allow_unused=True)
    assert g_naive is None or g_naive.abs().max() == 0
    assert g_phi[:, 3].abs().sum() > 0  # the twist of joint 4 always has a gradient
    # 15 mm fallback: a displaced knee target makes the hip swing follow the predicted bone direction
    moved = joints.clone()
    moved[:, 4] += torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64)
    adaptive, naive = hybrik_ik(moved, phis, rest), hybrik_ik(moved, phis, rest, adaptive=False)
    assert torch.allclose(adaptive.rotmat[:, 1], naive.rotmat[:, 1], atol=1e-9)
    assert not torch.allclose(adaptive.rotmat[:, 1], rot[:, 1], atol=1e-3)


def test_leaf_vertices_of_non_smpl_mesh(body):
    ids = leaf_vertex_ids(body)
    owner = body.lbs_weights.argmax(1)
    v = body.v_template
    assert owner[ids].tolist() == [15, 22, 23, 10, 11]
    head = (owner == 15).nonzero().flatten()
    assert v[ids[0], 1] == v[head, 1].max()  # head top: highest head vertex
    assert v[ids[1], 0] > 0 > v[ids[2], 0]  # left hand on +x


# ---- critic -------------------------------------------------------------------------------------
def test_mesh_output_and_modes(res34, body):
    images, boxes = _inputs()
    res34.eval_mode()
    mesh = res34.predict_mesh(images, boxes)
    assert mesh.joints_h36m.shape == (2, 17, 3) and mesh.vertices.shape == (2, body.num_vertices, 3)
    assert torch.allclose(mesh.joints_h36m[:, 0], torch.zeros(2, 3), atol=1e-7)
    R = mesh.rotmat
    # rotations up to HybrIK's 1e-8 guards, which matter for the near-zero bones of a random network
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=5e-3)
    assert torch.allclose(mesh.prediction.joints29[:, 0], torch.zeros(2, 3))
    pred = mesh.prediction  # root depth from the scale: f / (256 s) + d_root * 2.2 m
    assert torch.allclose(pred.cam_root[:, 2], 1000.0 / (256.0 * pred.cam_scale) + 2.2 * pred.uvd[:, 0, 2], rtol=1e-5)
    res34.train_mode()
    assert res34.net.drop1.training and not res34.net.preact.bn1.training
    res34.eval_mode()


def test_mpjpe_gradient_reaches_image_through_crop(res34):
    res34.eval_mode()
    images, boxes = _inputs()
    images.requires_grad_(True)
    gt = 0.2 * torch.randn(2, 24, 3)
    mpjpe(res34(images, boxes), gt).mean().backward()
    g = images.grad
    assert torch.isfinite(g).all() and g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    x1 = res34.crop_boxes(boxes[:1])[0, 2].item()  # square box of sample 0 ends at x = 81.25
    assert x1 == pytest.approx(81.25)
    assert g[0, :, :, 82:].abs().sum() == 0 and g[0, :, :, 60:80].abs().sum() > 0  # nothing right of the box
