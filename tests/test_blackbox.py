"""Black-box critics: the numpy wrapper, the worker protocol (no mediapipe needed), BlazePose's
landmark map, and the ES / score-function gradient estimators."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from adapters.blackbox import (
    BLAZEPOSE_PYTHON_ENV,
    BlackBoxCritic,
    SubprocessPredictor,
    es_gradient,
    es_perturb,
    es_surrogate,
    load_blazepose_critic,
    score_function_surrogate,
)
from adapters.blazepose_worker import LSP14_NAMES, landmarks_to_lsp14, square_crop
from adapters.registry import load_critic
from posegen_ns.body.joint_sets import JOINT_SETS
from posegen_ns.errors import PoseGenInputError


# ---- the wrapper --------------------------------------------------------------------------------
def test_blackbox_critic_quantises_reroots_and_has_no_gradient():
    seen = {}

    def fn(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        seen["images"], seen["boxes"] = images, boxes
        out = np.zeros((images.shape[0], 14, 3), dtype=np.float32)
        out[:, :, 0] = np.arange(14)  # x = joint index; hips (2, 3) -> mid-hip x = 2.5
        out[:, :, 2] = 5.0
        return out

    critic = BlackBoxCritic(fn, "lsp14", name="toy")
    images = torch.tensor([0.0, 0.5, 1.0, 1.2, 0.499, 0.501]).reshape(1, 3, 1, 2).requires_grad_(True)
    joints = critic(images, torch.tensor([[0.0, 0.0, 2.0, 1.0]]))
    assert seen["images"].dtype == np.uint8 and seen["images"].shape == (1, 3, 1, 2)
    assert seen["images"].flatten().tolist() == [0, 128, 255, 255, 127, 128]  # round(255 x), clamped
    assert seen["boxes"].dtype == np.float32
    assert joints.shape == (1, 14, 3) and not joints.requires_grad and not critic.differentiable
    assert torch.allclose(joints[0, :, 0], torch.arange(14.0) - 2.5) and torch.all(joints[..., 2] == 0)
    with pytest.raises(RuntimeError, match=r"toy returned shape \(1, 14, 3\); expected \(1, 17, 3\)"):
        BlackBoxCritic(fn, "h36m17", name="toy")(images, torch.zeros(1, 4))
    with pytest.raises(PoseGenInputError, match="unknown joint set"):
        BlackBoxCritic(fn, "coco")


# ---- the worker protocol ------------------------------------------------------------------------
def test_worker_joint_names_are_matched_by_name():
    pred = SubprocessPredictor(sys.executable, args=("--backend", "echo"), joint_names=tuple(reversed(LSP14_NAMES)))
    try:
        out = pred(np.zeros((1, 3, 2, 2), np.uint8), np.array([[0, 0, 2, 2]], np.float32))
        assert np.allclose(out[0], np.linspace(-0.5, 0.5, 42, dtype=np.float32).reshape(14, 3)[::-1])
    finally:
        pred.close()
    bad = SubprocessPredictor(sys.executable, args=("--backend", "echo"), joint_names=("pelvis",))
    with pytest.raises(RuntimeError, match=r"does not provide the joints \['pelvis'\]"):
        bad.start()


def test_worker_echo_roundtrip_errors_and_close():
    pred = SubprocessPredictor(sys.executable, args=("--backend", "echo"))
    info = pred.start()
    assert info["joint_set"] == "lsp14" and tuple(info["joint_names"]) == LSP14_NAMES
    assert sorted(LSP14_NAMES) == sorted(JOINT_SETS["lsp14"])  # same joints; the client matches them by name
    images = np.stack([np.zeros((3, 4, 5), np.uint8), np.full((3, 4, 5), 255, np.uint8)])
    boxes = np.array([[0, 0, 5, 4], [1, 1, 3, 3]], np.float32)
    out = pred(images, boxes)
    base = np.linspace(-0.5, 0.5, 42, dtype=np.float32).reshape(14, 3)
    assert out.dtype == np.float32 and np.allclose(out[0], base) and np.allclose(out[1], 2 * base)
    with pytest.raises(RuntimeError, match=r"(?s)failed on this batch: ERROR: .*boxes \(B, 4\); got"):
        pred(images, boxes[:1])  # a bad request: the worker answers with an error and keeps serving
    assert np.allclose(pred(images[1:], boxes[1:])[0], 2 * base)
    proc = pred._proc
    pred.close()
    assert proc.poll() == 0  # exited cleanly when its stdin closed


def test_blazepose_critic_through_the_registry_with_echo_worker():
    critic = load_critic("blazepose", python=sys.executable, worker_args=("--backend", "echo"), body="tiny")
    try:
        assert critic.joint_set == "lsp14" and not critic.differentiable
        joints = critic(torch.zeros(2, 3, 8, 8), torch.tensor([[0.0, 0, 8, 8]] * 2))
        names = JOINT_SETS["lsp14"]
        base = torch.linspace(-0.5, 0.5, 42).reshape(14, 3)[[LSP14_NAMES.index(n) for n in names]]  # by name
        hips = base[[names.index("left_hip"), names.index("right_hip")]].mean(0)
        assert torch.allclose(joints[0], base - hips, atol=1e-6)
    finally:
        critic.close()


def test_blazepose_environment_errors(monkeypatch, tmp_path):
    monkeypatch.delenv(BLAZEPOSE_PYTHON_ENV, raising=False)
    with pytest.raises(PoseGenInputError, match=r"python3 -m venv \.venv-blazepose && \.venv-blazepose/bin/pip install mediapipe==0\.10\.21"):
        load_critic("blazepose")
    with pytest.raises(PoseGenInputError, match="takes no checkpoint"):
        load_blazepose_critic(tmp_path / "x.pt", python=sys.executable)
    with pytest.raises(PoseGenInputError, match="unknown options"):
        load_blazepose_critic(python=sys.executable, complexity=2)
    missing = load_critic("blazepose", python=str(tmp_path / "bin" / "python"))
    with pytest.raises(PoseGenInputError, match="does not exist; create it with"):
        missing(torch.zeros(1, 3, 8, 8), torch.tensor([[0.0, 0, 8, 8]]))
    if _has_mediapipe():
        return
    # this interpreter has no mediapipe: the worker reports it and the error says how to set up
    critic = load_critic("blazepose", python=sys.executable)
    with pytest.raises(PoseGenInputError, match=r"failed to start.*mediapipe.*pip install mediapipe==0\.10\.21"):
        critic(torch.zeros(1, 3, 8, 8), torch.tensor([[0.0, 0, 8, 8]]))


def _has_mediapipe() -> bool:
    import importlib.util

    return importlib.util.find_spec("mediapipe") is not None


# ---- the BlazePose map --------------------------------------------------------------------------
def test_landmarks_to_lsp14_map():
    world = np.zeros((33, 3), np.float32)
    world[:, 0] = np.arange(33)  # x = landmark index
    world[7], world[8] = (0, -0.6, 0), (0, -0.6, 0.2)  # ears
    world[11], world[12] = (0.2, -0.4, 0), (-0.2, -0.4, 0)  # shoulders
    lsp = landmarks_to_lsp14(world)
    assert np.array_equal(lsp[:12], world[[27, 25, 23, 24, 26, 28, 16, 14, 12, 11, 13, 15]])
    assert np.allclose(lsp[12], (0.0, -0.4, 0.0))  # thorax = mid-shoulders
    assert np.allclose(lsp[13], (0.0, -0.6 - 0.6 * 0.2, 0.1 + 0.6 * 0.1))  # head top above the ears
    names = dict(zip(LSP14_NAMES, lsp[:, 0]))
    assert names["left_ankle"] == 27 and names["right_wrist"] == 16  # BlazePose LEFT_ANKLE, RIGHT_WRIST


def test_square_crop_pads_with_black():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    crop = square_crop(img, np.array([0.0, 0.0, 4.0, 4.0]), scale=1.5)  # centre (2, 2), side 6
    assert crop.shape == (6, 6, 3)
    assert np.all(crop[0] == 0) and np.all(crop[:, 0] == 0)  # rows / columns above and left of the image
    assert np.array_equal(crop[1:5, 1:6], img[:, 0:5])


# ---- gradient estimators ------------------------------------------------------------------------
def _reward(x: torch.Tensor) -> torch.Tensor:
    """A non-differentiable objective: numpy, maximised at x = 3."""
    return torch.from_numpy(-((x.detach().numpy() - 3.0) ** 2).sum(-1))


def test_es_surrogate_gives_the_gradient_and_climbs():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 3, requires_grad=True)
    points, eps = es_perturb(x, 512, 0.1, g)
    assert points.shape == (2, 512, 3) and torch.allclose(eps[:, 256:], -eps[:, :256])
    rewards = _reward(points)  # (2, 512)
    grad = es_gradient(rewards, eps, 0.1)
    assert torch.allclose(grad, torch.full((2, 3), 6.0), rtol=0.3)  # d/dx -(x-3)^2 = 6 at 0
    es_surrogate(x, rewards, eps, 0.1).backward()
    assert torch.allclose(x.grad, -grad / 2)  # minimising the surrogate ascends the reward
    opt = torch.optim.SGD([x], lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        points, eps = es_perturb(x, 16, 0.1, g)
        es_surrogate(x, _reward(points), eps, 0.1).backward()
        opt.step()
    assert torch.allclose(x.detach(), torch.full((2, 3), 3.0), atol=0.3)
    with pytest.raises(ValueError, match="NaN"):
        es_gradient(torch.tensor([[float("nan"), 0.0]]), eps[:1, :2], 0.1)


def test_score_function_surrogate_sign_and_baseline():
    torch.manual_seed(0)
    mu = torch.zeros(1, requires_grad=True)
    grads = {}
    for baseline in ("loo", None):
        est = []
        for _ in range(40):
            a = (mu + torch.randn(256)).detach()  # samples of the stochastic policy N(mu, 1)
            log_prob = torch.distributions.Normal(mu, 1.0).log_prob(a)
            reward = 100.0 - (a - 3.0) ** 2  # a constant offset: only the baseline removes its variance
            (g,) = torch.autograd.grad(score_function_surrogate(log_prob, reward, baseline), mu)
            est.append(g.item())
        grads[baseline] = torch.tensor(est)
    # d/dmu E[-(a-3)^2] = -2 (mu - 3) = 6: the surrogate's gradient is its negative
    assert grads["loo"].mean().item() == pytest.approx(-6.0, rel=0.1)
    assert grads[None].mean().item() == pytest.approx(-6.0, rel=0.5)
    assert grads["loo"].std() < 0.2 * grads[None].std()  # the baseline reduces the variance
    r = torch.tensor([1.0, 2.0, 6.0])
    lp = torch.zeros(3, requires_grad=True)
    (g,) = torch.autograd.grad(score_function_surrogate(lp, r, "loo"), lp)
    assert torch.allclose(g, -(r - torch.tensor([4.0, 3.5, 1.5])) / 3)  # leave-one-out means


@pytest.mark.skipif(not os.environ.get(BLAZEPOSE_PYTHON_ENV), reason=f"needs {BLAZEPOSE_PYTHON_ENV} (a Python with mediapipe)")
def test_real_blazepose_on_rendered_people():
    from posegen_ns.body import load_body_model
    from posegen_ns.body.joint_sets import H36M_TO_LSP14
    from posegen_ns.data.source_poses import make_source_sampler
    from posegen_ns.metrics import pa_mpjpe

    batch = make_source_sampler(load_body_model("open"), 192, "heldout", num_images=8)(8, torch.Generator().manual_seed(0))
    critic = load_critic("blazepose")
    try:
        pred = critic(batch["images"], batch["boxes"])
    finally:
        critic.close()
    found = torch.isfinite(pred).all(-1).all(-1)
    assert found.sum() >= 6
    gt = batch["joints_h36m_cam"][:, list(H36M_TO_LSP14)]
    assert pa_mpjpe(pred[found], gt[found]).mean() < 0.15
