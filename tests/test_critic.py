"""Critic adapters: crop, protocol modes, HMR in SPIN's layout, registry, pre-training core."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch

from adapters.crop import crop_and_resize, image_to_crop
from posegen_ns.labels import boxes_from_joints
from adapters.hmr import (
    HMR,
    IMG_NORM_MEAN,
    IMG_NORM_STD,
    HMRCritic,
    HMRPrediction,
    build_hmr_critic,
    default_mean_params,
    load_spin_checkpoint,
    save_spin_checkpoint,
)
from posegen_ns.critic.evaluation import evaluate_critic, sampler_batches
from posegen_ns.critic.pretrain import LossWeights, pretrain_critic, supervised_losses
from adapters.registry import available_critics, load_critic
from posegen_ns.body import load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle, project_points
from posegen_ns.metrics import mpjpe


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


@pytest.fixture()
def critic(body):
    torch.manual_seed(0)
    return build_hmr_critic("resnet18", 64, body)


# ---- crop -----------------------------------------------------------------------------------
def _ramp(h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)  # value = x + w * y


def test_crop_identity_subwindow_and_downsample():
    img = _ramp()
    assert torch.allclose(crop_and_resize(img, torch.tensor([[0.0, 0, 4, 4]]), 4), img)
    assert torch.allclose(crop_and_resize(img, torch.tensor([[1.0, 1, 3, 3]]), 2), img[..., 1:3, 1:3])
    # 4x4 -> 2x2: output centre 0.5 samples image point 1.0, halfway between pixel centres 0.5 and 1.5
    out = crop_and_resize(img, torch.tensor([[0.0, 0, 4, 4]]), 2)
    assert torch.allclose(out, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_crop_zero_padding_and_half_pixel_shift():
    img = _ramp()
    # box starting 2 px left of the image: the first two output columns are outside -> zeros
    out = crop_and_resize(img, torch.tensor([[-2.0, 0, 2, 4]]), 4)
    assert torch.allclose(out[..., :2], torch.zeros(1, 1, 4, 2))
    assert torch.allclose(out[..., 2:], img[..., :2])
    # half-pixel shift: samples at x = 1, 2, 3, 4 -> averages of neighbours, the last with the zero border
    out = crop_and_resize(img, torch.tensor([[0.5, 0, 4.5, 4]]), 4)
    row0 = torch.tensor([0.5, 1.5, 2.5, 1.5])
    assert torch.allclose(out[0, 0, 0], row0)


def test_boxes_from_joints_numbers():
    joints = torch.tensor([[[0.0, 0.0], [10.0, 20.0], [4.0, 5.0]]])
    assert torch.allclose(boxes_from_joints(joints), torch.tensor([[-7.0, -2.0, 17.0, 22.0]]))
    assert torch.allclose(boxes_from_joints(joints, scale=1.0, aspect=0.5), torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
    # wide joints: the width decides the side
    wide = torch.tensor([[[0.0, 0.0], [30.0, 10.0]]])
    assert torch.allclose(boxes_from_joints(wide, scale=1.0), torch.tensor([[0.0, -10.0, 30.0, 20.0]]))
    box = torch.tensor([[-7.0, -2.0, 17.0, 22.0]])
    assert torch.allclose(image_to_crop(torch.tensor([[[5.0, 10.0], [-7.0, 22.0]]]), box, 64),
                          torch.tensor([[[32.0, 32.0], [0.0, 64.0]]]))


# ---- normalisation and initial estimate ----------------------------------------------------
def test_normalisation_constants_pinned(critic):
    assert IMG_NORM_MEAN == (0.485, 0.456, 0.406) and IMG_NORM_STD == (0.229, 0.224, 0.225)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
    one_std = torch.tensor([0.714, 0.680, 0.631]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)  # mean + std
    assert torch.allclose(critic.normalize(mean), torch.zeros(1, 3, 2, 2), atol=1e-6)
    assert torch.allclose(critic.normalize(one_std), torch.ones(1, 3, 2, 2), atol=1e-5)
    assert "img_mean" not in critic.hmr.state_dict()  # constants never enter the SPIN state dict


def test_initial_estimate_is_upright_rest_pose_facing_camera(critic, body):
    mp = default_mean_params()
    root = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0]))
    assert torch.allclose(mp["pose"][:6].reshape(3, 2), root[:, :2], atol=1e-6)
    assert torch.allclose(mp["pose"][6:], torch.tensor([1.0, 0, 0, 1, 0, 0]).repeat(23))
    assert mp["cam"].tolist() == pytest.approx([0.9, 0.0, 0.0])
    for dec in (critic.hmr.decpose, critic.hmr.decshape, critic.hmr.deccam):
        torch.nn.init.zeros_(dec.weight)
        torch.nn.init.zeros_(dec.bias)
    joints = critic.eval_mode()(torch.rand(1, 3, 64, 64), torch.tensor([[0.0, 0, 64, 64]]))
    rest = body(torch.zeros(1, 69)).joints_h36m
    expected = (rest - rest[:, :1]) * torch.tensor([1.0, -1.0, -1.0])  # pi about x: y down, z towards camera
    assert torch.allclose(joints, expected, atol=1e-5)
    assert joints[0, 10, 1] < -0.3  # head top above the pelvis in the image (y down)


# ---- modes and gradients -------------------------------------------------------------------
def test_train_mode_freezes_batchnorm(critic):
    images, boxes = torch.rand(2, 3, 80, 80), torch.tensor([[5.0, 5, 70, 70], [0, 0, 80, 80]])
    bn = critic.hmr.bn1
    before = bn.running_mean.clone(), bn.running_var.clone()
    critic.train_mode()
    assert critic.training and critic.hmr.drop1.training and not bn.training
    assert not any(m.training for m in critic.modules() if isinstance(m, torch.nn.BatchNorm2d))
    critic(images, boxes)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    critic.train()  # plain train() does update them: the check above can fail
    critic(images, boxes)
    assert not torch.equal(bn.running_mean, before[0])
    critic.eval_mode()
    assert not any(m.training for m in critic.modules())


def test_mpjpe_gradient_reaches_image_inside_box_only(critic):
    critic.eval_mode()
    images = torch.rand(2, 3, 96, 96, requires_grad=True)
    boxes = torch.tensor([[16.0, 16.0, 80.0, 80.0], [0.0, 0.0, 96.0, 96.0]])
    gt = 0.2 * torch.randn(2, 17, 3)
    loss = mpjpe(critic(images, boxes), gt).mean()
    loss.backward()
    g = images.grad
    assert torch.isfinite(g).all()
    assert g[0, :, 20:76, 20:76].abs().sum() > 0 and g[1].abs().sum() > 0
    assert g[0, :, :15].abs().sum() == 0 and g[0, :, :, 81:].abs().sum() == 0  # outside the box


# ---- SPIN layout and checkpoints -----------------------------------------------------------
def test_resnet50_layout_has_spin_keys():
    sd = HMR("resnet50").state_dict()
    assert len(sd) == 331 and "fc.weight" not in sd
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.1.weight", "layer4.2.conv3.weight",
                "fc1.bias", "fc2.weight", "decpose.weight", "decshape.bias", "deccam.weight"):
        assert key in sd, key
    assert sd["fc1.weight"].shape == (1024, 2048 + 144 + 13)
    assert sd["decpose.weight"].shape == (144, 1024)
    assert (sd["init_pose"].shape, sd["init_shape"].shape, sd["init_cam"].shape) == ((1, 144), (1, 10), (1, 3))


def test_spin_checkpoint_roundtrip_strict(tmp_path, critic, body):
    path = save_spin_checkpoint(critic.hmr, tmp_path / "model_checkpoint.pt", {"epoch": 3})
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "epoch"} and "decpose.weight" in ckpt["model"]
    torch.manual_seed(1)
    other = HMRCritic(HMR("resnet18"), body, 64).eval_mode()
    images, boxes = torch.rand(2, 3, 64, 64), torch.tensor([[0.0, 0, 64, 64], [8, 8, 56, 56]])
    critic.eval_mode()
    assert not torch.allclose(other(images, boxes), critic(images, boxes))
    assert load_spin_checkpoint(path, other.hmr) == {"epoch": 3}
    assert torch.allclose(other(images, boxes), critic(images, boxes), atol=1e-6)


def test_checkpoint_key_errors_name_key_and_file(tmp_path, critic):
    state = critic.hmr.state_dict()
    renamed = dict(state)
    renamed["fc1.w"] = renamed.pop("fc1.weight")
    torch.save({"model": renamed}, tmp_path / "renamed.pt")
    with pytest.raises(PoseGenInputError, match=r"renamed\.pt.*missing keys \['fc1\.weight'\].*unexpected keys \['fc1\.w'\]"):
        load_spin_checkpoint(tmp_path / "renamed.pt", HMR("resnet18"))
    missing = {k: v for k, v in state.items() if k != "decshape.bias"}
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(PoseGenInputError, match=r"missing\.pt.*'decshape\.bias'"):
        load_spin_checkpoint(tmp_path / "missing.pt", HMR("resnet18"))
    save_spin_checkpoint(critic.hmr, tmp_path / "r18.pt")
    with pytest.raises(PoseGenInputError, match=r"r18\.pt.*unexpected keys \[\]") as err:
        load_spin_checkpoint(tmp_path / "r18.pt", HMR("resnet34"))  # resnet34 has more blocks
    assert "layer1.2.conv1.weight" in str(err.value)
    with pytest.raises(PoseGenInputError, match="no 'model' state dict"):
        torch.save(state, tmp_path / "bare.pt")
        load_spin_checkpoint(tmp_path / "bare.pt", HMR("resnet18"))


# ---- registry ------------------------------------------------------------------------------
def test_registry_loads_and_lists(tmp_path, critic):
    assert "hmr" in {ep.name for ep in entry_points(group="posegen.critics")}
    assert "hmr" in available_critics()
    with pytest.raises(PoseGenInputError, match=r"unknown critic 'nope'; available critics: hmr"):
        load_critic("nope")
    path = save_spin_checkpoint(critic.hmr, tmp_path / "c.pt",
                                {"posegen": {"backbone": "resnet18", "input_size": 64, "body": "tiny"}})
    loaded = load_critic("hmr", checkpoint=path)
    assert isinstance(loaded, HMRCritic) and loaded.input_size == 64 and loaded.joint_set == "h36m17"
    images, boxes = torch.rand(1, 3, 64, 64), torch.tensor([[0.0, 0, 64, 64]])
    assert torch.allclose(loaded(images, boxes), critic.eval_mode()(images, boxes), atol=1e-6)
    # an official-style file (no posegen metadata) needs the SMPL body to be named
    save_spin_checkpoint(critic.hmr, tmp_path / "official.pt", {"epoch": 1})
    with pytest.raises(PoseGenInputError, match="smpl_model_path=PATH"):
        load_critic("hmr", checkpoint=tmp_path / "official.pt")
    with pytest.raises(PoseGenInputError, match="unknown options"):
        load_critic("hmr", bodyy="tiny")


def test_one_vocabulary_of_data_files_for_every_critic(tmp_path, critic):
    """``load_critic(name, checkpoint=..., smpl_model_path=..., smpl_mean_params=..., j_regressor_h36m=...,
    h36m_mean_beta=...)`` for SPIN/HMR and HybrIK alike; ``body`` stays an alias of ``smpl_model_path``."""
    from adapters.hybrik import HybrIKCritic
    from adapters.protocol import DATA_FILES

    assert DATA_FILES == ("smpl_model_path", "smpl_mean_params", "j_regressor_h36m", "h36m_mean_beta")
    official = save_spin_checkpoint(critic.hmr, tmp_path / "official.pt", {"epoch": 1})  # records no body
    images, boxes = torch.rand(1, 3, 64, 64), torch.tensor([[0.0, 0, 64, 64]])
    spin = load_critic("spin", checkpoint=official, smpl_model_path="tiny", backbone="resnet18", input_size=64,
                       h36m_mean_beta=None)
    alias = load_critic("spin", checkpoint=official, body="tiny", backbone="resnet18", input_size=64)
    assert isinstance(spin, HMRCritic) and spin.body.num_betas == alias.body.num_betas
    assert torch.allclose(spin(images, boxes), alias(images, boxes), atol=1e-6)
    # every critic accepts every data-file name (ignoring those it does not use)
    hybrik = load_critic("hybrik-res34", smpl_model_path="tiny", smpl_mean_params=tmp_path / "unused.npz",
                         input_size=64)
    assert isinstance(hybrik, HybrIKCritic) and hybrik.body.num_betas == spin.body.num_betas
    with pytest.raises(PoseGenInputError, match="disagree"):
        load_critic("hmr", smpl_model_path="tiny", body="open")


# ---- pre-training core ---------------------------------------------------------------------
def _blob_sampler(body, pool: int = 8, size: int = 64):
    """Fixed pool of tiny-body samples rendered as joint blobs; batches are random subsets."""
    g = torch.Generator().manual_seed(0)
    body_pose = 0.3 * torch.randn(pool, 69, generator=g)
    yaw = torch.zeros(pool, 3)
    yaw[:, 1] = 0.6 * torch.randn(pool, generator=g)
    root = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0])) @ axis_angle_to_matrix(yaw)
    orient = matrix_to_axis_angle(root)
    betas = 0.5 * torch.randn(pool, body.num_betas, generator=g)
    with torch.no_grad():
        out = body(body_pose, orient, betas, transl=torch.tensor([0.0, 0.0, 3.0]).expand(pool, 3))
    K = torch.tensor([[80.0, 0, size / 2], [0, 80.0, size / 2], [0, 0, 1]]).expand(pool, 3, 3)
    uv, joints_cam = project_points(out.joints_h36m, K, torch.eye(3).expand(pool, 3, 3), torch.zeros(pool, 3))
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    d2 = (xs[None, None] - uv[..., 0, None, None]) ** 2 + (ys[None, None] - uv[..., 1, None, None]) ** 2
    blobs = torch.exp(-d2 / 8.0)  # (P, 17, S, S)
    colours = torch.rand(17, 3, generator=g)
    images = torch.einsum("pjhw,jc->pchw", blobs, colours).clamp(0, 1)
    data = {"images": images, "boxes": boxes_from_joints(uv), "joints_h36m_cam": joints_cam, "joints_2d": uv,
            "body_pose": body_pose, "global_orient_cam": orient, "betas": betas}

    def sample_batch(batch_size: int, gen: torch.Generator) -> dict:
        idx = torch.randint(pool, (batch_size,), generator=gen)
        return {k: v[idx] for k, v in data.items()}

    return sample_batch


def test_supervised_losses_hand_case(body):
    joints = 0.3 * torch.randn(1, 17, 3)
    joints[:, 0] = 0.0
    cam = torch.tensor([[0.5, 0.1, -0.2]])
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    uv = (0.5 * (joints[..., :2] + cam[:, None, 1:]) + 1.0) * 50.0  # normalised [-1, 1] -> pixels of the box
    rot = axis_angle_to_matrix(0.2 * torch.randn(1, 24, 3))
    pred = HMRPrediction(joints=joints, rotmat=rot, betas=torch.zeros(1, 10), cam=cam, vertices=torch.zeros(1, 1, 3))
    batch = {"joints_h36m_cam": joints + torch.tensor([0.0, 0.0, 3.0]), "boxes": boxes, "joints_2d": uv,
             "global_orient_cam": matrix_to_axis_angle(rot[:, 0]), "body_pose": matrix_to_axis_angle(rot[:, 1:]).reshape(1, 69),
             "betas": torch.full((1, body.num_betas), 0.5)}
    losses = supervised_losses(pred, batch, body.num_betas, LossWeights())
    assert losses["joints"].item() < 1e-12 and losses["pose"].item() < 1e-10 and losses["keypoints_2d"].item() < 1e-10
    assert losses["betas"].item() == pytest.approx(0.25)
    assert losses["cam"].item() == pytest.approx(math.exp(-10.0))  # exp(-10 * 0.5)^2
    assert losses["loss"].item() == pytest.approx(0.001 * 0.25 + math.exp(-10.0), rel=1e-4)
    # with intrinsics instead of 2D labels, the 2D targets are the projections of joints_h36m_cam
    K = torch.tensor([[[200.0, 0, 50], [0, 200.0, 50], [0, 0, 1]]])
    batch["joints_2d"] = project_points(batch["joints_h36m_cam"], K, torch.eye(3)[None], torch.zeros(1, 3))[0]
    with_2d = supervised_losses(pred, batch, body.num_betas, LossWeights())["keypoints_2d"]
    batch["K"] = K
    del batch["joints_2d"]
    with_k = supervised_losses(pred, batch, body.num_betas, LossWeights())["keypoints_2d"]
    assert with_2d.item() > 1e-3 and with_k.item() == pytest.approx(with_2d.item(), rel=1e-6)
    del batch["K"]
    assert set(supervised_losses(pred, batch, body.num_betas, LossWeights())) == {"joints", "pose", "betas", "loss"}


def test_pretrain_reduces_loss(body):
    torch.manual_seed(0)
    critic = build_hmr_critic("resnet18", 32, body)
    for name, param in critic.hmr.named_parameters():  # speed: train the regressor head only (CPU test)
        param.requires_grad_(name.startswith(("fc", "dec")))
    sampler = _blob_sampler(body, size=48)
    history: list[dict] = []
    final = pretrain_critic(critic, sampler, steps=16, lr=1e-4, batch_size=8, log_every=4, progress=False,
                            history=history)
    assert [h["steps"] for h in history] == [4, 8, 12, 16] and final == history[-1]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["mpjpe_mm"] < history[0]["mpjpe_mm"]
    assert not critic.training
    ev = evaluate_critic(critic, sampler_batches(sampler, num_samples=10, batch_size=4)).overall()
    assert ev["num_images"] == 10 and 0 < ev["mpjpe_mm"] < 1000 and 0 <= ev["pck150"] <= 1


def test_pretrain_skips_non_finite_steps_and_stops_on_divergence(body):
    """A non-finite loss never reaches the weights; a run of them stops with a message naming the learning rate;
    the learning-rate drop applies from its step on."""
    torch.manual_seed(0)
    critic = build_hmr_critic("resnet18", 32, body)
    good = _blob_sampler(body, size=48)
    calls = {"n": 0}

    def poisoned(n, gen):  # every other batch has a NaN label
        calls["n"] += 1
        batch = good(n, gen)
        if calls["n"] % 2 == 0:
            batch["joints_h36m_cam"] = batch["joints_h36m_cam"] * float("nan")
        return batch

    history: list[dict] = []
    pretrain_critic(critic, poisoned, steps=4, lr=1e-4, batch_size=4, log_every=2, progress=False, history=history)
    assert all(math.isfinite(p.detach().abs().sum().item()) for p in critic.hmr.parameters())
    assert all(math.isfinite(h["loss"]) for h in history)  # windows average the finite steps only

    def always_nan(n, gen):
        batch = good(n, gen)
        batch["joints_h36m_cam"] = batch["joints_h36m_cam"] * float("nan")
        return batch

    with pytest.raises(RuntimeError, match="lower the learning rate"):
        pretrain_critic(critic, always_nan, steps=10, lr=1e-4, batch_size=4, log_every=5, progress=False, max_bad_steps=3)

    seen = []
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        pretrain_critic(critic, good, steps=4, lr=3e-4, batch_size=4, log_every=2, progress=False, lr_drop_at=3)
    finally:
        torch.optim.Adam.step = original
    assert seen == pytest.approx([3e-4, 3e-4, 1e-4, 1e-4])


def test_cosine_learning_rate_by_hand():
    """Warm-up then cosine decay to 2 % (posegen_ns.critic.pretrain.cosine_lr), values computed by hand."""
    from posegen_ns.critic.pretrain import cosine_lr

    assert cosine_lr(1.0, 1, 100, warmup_steps=10) == pytest.approx(0.1)  # warm-up: step / warmup
    assert cosine_lr(1.0, 10, 100, warmup_steps=10) == pytest.approx(1.0)
    # halfway through the decay: floor + (1 - floor) / 2 = 0.51
    assert cosine_lr(1.0, 55, 100, warmup_steps=10) == pytest.approx(0.51)
    assert cosine_lr(2.0, 100, 100, warmup_steps=10) == pytest.approx(0.04)  # the end: 2 % of lr
    assert cosine_lr(1.0, 0, 100) == pytest.approx(1.0)  # no warm-up: full rate at the start
