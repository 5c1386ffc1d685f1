"""The GPU path: gsplat against the torch rasteriser, the model, the pipeline's phases and the exporter on CUDA,
and the ``auto`` backend's fallback to the torch rasteriser when gsplat cannot be used.

Tests marked ``cuda`` need a CUDA device and are skipped without one; ``pytest -m cuda`` selects them
(``scripts/gpu_check.sh`` runs them on the GPU device machine). The fallback tests run everywhere (gsplat is
replaced by monkeypatching).

With ``POSEGEN_CUDA_REPORT=FILE`` the cuda tests append what they measured (differences between backends and
devices) as JSON lines, so a device run keeps its figures even where an assertion fails. A developer without a
GPU can dry-run the cuda tests' code on the CPU with ``POSEGEN_TEST_CUDA_DEVICE=cpu pytest -m cuda
tests/test_cuda.py``: every comparison then runs torch against torch and CPU against CPU (it checks the tests,
not the GPU).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import posegen_ns.field.rasterize as rz
from posegen_ns.field.rasterize import auto_backend, gsplat_status, rasterize_gaussians

DEVICE = os.environ.get("POSEGEN_TEST_CUDA_DEVICE", "cuda")
"""Device of the cuda tests ('cpu' only for a dry run of the tests' own code; see the module docstring)."""
GSPLAT = "gsplat" if DEVICE == "cuda" else "torch"
"""The backend compared with the torch rasteriser (torch itself in a CPU dry run)."""

needs_cuda = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_test(fn):
    """Mark a test ``cuda`` (selected by ``-m cuda``) and skip it without a CUDA device."""
    return pytest.mark.cuda(needs_cuda(fn))


ALPHA_VISIBLE = 0.02
"""Pixels compared between renderers: accumulated alpha above this in the reference."""


def _record(test: str, **figures) -> None:
    """Append measured figures to ``$POSEGEN_CUDA_REPORT`` (JSON lines) when it is set."""
    path = os.environ.get("POSEGEN_CUDA_REPORT")
    if path:
        row = {"test": test, "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)", **figures}
        with open(path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")


@pytest.fixture()
def fresh_gsplat_state(monkeypatch):
    """``auto``'s memory of gsplat reset for the test (and restored after it)."""
    for key, value in (("ok", None), ("reason", ""), ("ran", False), ("told", False)):
        monkeypatch.setitem(rz._GSPLAT, key, value)
    return rz._GSPLAT


# ------------------------------------------------------------------------------------ auto's fallback (CPU)


def _scene(n: int = 20, seed: int = 0, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    g = dict(
        means=torch.randn(n, 3, generator=gen) * torch.tensor([0.3, 0.25, 0.2]),
        quats=torch.randn(n, 4, generator=gen),
        scales=torch.rand(n, 3, generator=gen) * 0.06 + 0.01,
        opacities=torch.rand(n, generator=gen) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=gen),
    )
    return {k: v.to(device) for k, v in g.items()}


def _cameras(C: int, W: int, H: int, device: str = "cpu"):
    """``viewmats (C, 4, 4)`` on a ring 2-2.6 m around the origin, ``Ks (C, 3, 3)`` (0.9 rad vertical field of
    view, principal points a little off centre)."""
    from posegen_ns.geometry import intrinsics_from_fov, orbit_extrinsics

    az = torch.linspace(0.0, 2.0, C)
    R, t = orbit_extrinsics(az, 0.25 * torch.sin(3 * az), 2.0 + 0.3 * (1 + torch.cos(az)), torch.zeros(C, 3))
    viewmats = torch.eye(4).repeat(C, 1, 1)
    viewmats[:, :3, :3], viewmats[:, :3, 3] = R, t
    Ks = intrinsics_from_fov(0.9, W, H).repeat(C, 1, 1)
    Ks[:, 0, 2] += torch.linspace(-1.3, 1.7, C)
    return viewmats.to(device), Ks.to(device)


def test_auto_falls_back_to_torch_with_one_line_when_gsplat_cannot_be_imported(fresh_gsplat_state, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gsplat", None)  # `import gsplat` raises ImportError
    assert auto_backend("cpu") == "torch"
    assert capsys.readouterr().out == ""  # nothing to say off CUDA
    assert auto_backend(torch.device("cuda")) == "torch"
    assert auto_backend("cuda:0") == "torch"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    assert "uses the torch backend on CUDA because gsplat cannot be imported or built (ModuleNotFoundError" in lines[0]
    assert "--pipeline.model.rasterizer torch" in lines[0]
    ok, reason = gsplat_status()
    assert not ok and reason.startswith("gsplat cannot be imported or built")


def test_auto_falls_back_when_gsplat_has_no_kernels(fresh_gsplat_state, monkeypatch, capsys):
    """gsplat imports but found no nvcc to build its kernels (its ``_C`` stays None)."""
    import types

    backend = types.ModuleType("gsplat.cuda._backend")
    backend._C = None
    monkeypatch.setitem(sys.modules, "gsplat", types.ModuleType("gsplat"))
    monkeypatch.setitem(sys.modules, "gsplat.cuda", types.ModuleType("gsplat.cuda"))
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", backend)
    assert auto_backend("cuda") == "torch"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "nvcc is not on PATH" in out[0]
    backend._C = object()
    fresh_gsplat_state["ok"] = None
    assert auto_backend("cuda") == "gsplat" and auto_backend("cpu") == "torch"
    assert capsys.readouterr().out == ""  # told once per process


def test_auto_falls_back_and_renders_when_the_first_gsplat_call_fails(fresh_gsplat_state, monkeypatch, capsys):
    """A kernel that was built but cannot run (e.g. built for another GPU): the first call under ``auto`` falls
    back to the torch rasteriser for the rest of the process; an explicit ``backend="gsplat"`` still raises."""
    monkeypatch.setattr(rz, "auto_backend", lambda device: "gsplat" if rz._GSPLAT["ok"] is not False else "torch")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(rz, "_rasterize_gsplat", broken)
    g = _scene()
    viewmats, Ks = _cameras(2, 24, 20)
    out = rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=24, height=20, backend="auto")
    ref = rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=24, height=20, backend="torch")
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "its first call failed (RuntimeError: CUDA error: no kernel image" in lines[0]
    rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=24, height=20, backend="auto")  # torch from now on
    assert capsys.readouterr().out == ""
    with pytest.raises(RuntimeError, match="no kernel image"):
        rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=24, height=20, backend="gsplat")


def test_posegen_gsplat_0_turns_gsplat_off_without_trying_it(fresh_gsplat_state, monkeypatch, capsys):
    monkeypatch.setenv("POSEGEN_GSPLAT", "0")
    monkeypatch.setitem(sys.modules, "gsplat", None)  # would fail if it were tried; the reason must be the variable
    assert auto_backend("cuda") == "torch"
    assert gsplat_status() == (False, "POSEGEN_GSPLAT=0 turns it off")
    assert "because POSEGEN_GSPLAT=0 turns it off" in capsys.readouterr().out


def test_a_failure_after_gsplat_ran_is_not_hidden(fresh_gsplat_state, monkeypatch):
    """Once gsplat has rendered under ``auto``, later errors (bad inputs, out of memory) are raised, not
    turned into a silent change of backend."""
    monkeypatch.setattr(rz, "auto_backend", lambda device: "gsplat")
    calls = {"n": 0}

    def flaky(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("second call failed")
        C = viewmats.shape[0]
        return torch.zeros(C, height, width, 3), torch.zeros(C, height, width, 1), torch.zeros(C, height, width, 1)

    monkeypatch.setattr(rz, "_rasterize_gsplat", flaky)
    g = _scene()
    viewmats, Ks = _cameras(1, 8, 8)
    rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=8, height=8)
    assert fresh_gsplat_state["ran"]
    with pytest.raises(RuntimeError, match="second call failed"):
        rasterize_gaussians(**g, viewmats=viewmats, Ks=Ks, width=8, height=8)


# ------------------------------------------------------------------------------------ gsplat vs torch (CUDA)


def _compare_images(ref, out) -> dict:
    """Differences of ``out`` from ``ref`` (each ``rgb, alpha, depth``): alpha over all pixels, rgb where the
    reference's alpha > ALPHA_VISIBLE, depth (relative) where it is > 0.5 (expected depth divides by alpha); the
    largest difference and the 99th percentile (gsplat drops a Gaussian's tail beyond 3 sigma outside the tiles
    its 3-sigma square touches, alpha < 0.011 x opacity, which the torch rasteriser keeps down to 1/255)."""
    rgb_r, a_r, d_r = (x.detach().float().cpu() for x in ref)
    rgb_o, a_o, d_o = (x.detach().float().cpu() for x in out)
    vis = a_r[..., 0] > ALPHA_VISIBLE
    solid = a_r[..., 0] > 0.5
    da = (a_o - a_r).abs().flatten()
    drgb = (rgb_o - rgb_r).abs()[vis].flatten()
    ddep = ((d_o - d_r).abs() / d_r.abs().clamp_min(1e-6))[solid].flatten()
    q = lambda x: float(torch.quantile(x, 0.99)) if x.numel() else 0.0  # noqa: E731
    return {
        "visible_pixels": int(vis.sum()), "solid_pixels": int(solid.sum()),
        "alpha_max_abs": float(da.max()), "alpha_p99_abs": q(da), "alpha_mean_abs": float(da.mean()),
        "rgb_max_abs": float(drgb.max()), "rgb_p99_abs": q(drgb), "rgb_mean_abs": float(drgb.mean()),
        "depth_max_rel": float(ddep.max()) if ddep.numel() else 0.0, "depth_p99_rel": q(ddep),
    }


def _grad_agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.detach().double().flatten().cpu(), b.detach().double().flatten().cpu()
    return {"rel": float((a - b).norm() / b.norm().clamp_min(1e-30)),
            "cos": float(torch.nn.functional.cosine_similarity(a, b, dim=0)), "norm": float(b.norm())}


@cuda_test
@pytest.mark.parametrize("layout", ["shared", "per_camera"])
def test_gsplat_matches_the_torch_rasteriser_on_random_scenes(layout):
    """Random scenes (300 Gaussians, 3 cameras, 64 x 48): images agree where alpha > 0.02, and the gradients of
    a fixed random loss of rgb, alpha and depth w.r.t. means, quats, scales, opacities, colours and viewmats agree
    (relative L2 difference and cosine)."""
    if DEVICE == "cuda":
        ok, reason = gsplat_status()
        assert ok, f"gsplat cannot run here: {reason}"
    torch.manual_seed(0)
    C, W, H = 3, 64, 48
    if layout == "shared":
        g = _scene(300, seed=11, device=DEVICE)
    else:
        parts = [_scene(300, seed=11 + c, device=DEVICE) for c in range(C)]
        g = {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
    viewmats, Ks = _cameras(C, W, H, DEVICE)
    bg = torch.tensor([0.1, 0.2, 0.3], device=DEVICE)
    gen = torch.Generator().manual_seed(3)
    w_rgb, w_alpha, w_depth = (torch.randn(C, H, W, k, generator=gen).to(DEVICE) for k in (3, 1, 1))

    def run(backend):
        leaves = {k: v.clone().requires_grad_(True) for k, v in g.items()}
        vm = viewmats.clone().requires_grad_(True)
        rgb, alpha, depth = rasterize_gaussians(**leaves, viewmats=vm, Ks=Ks, width=W, height=H, background=bg,
                                                backend=backend)
        seen = (alpha.detach() > ALPHA_VISIBLE).float()
        loss = (rgb * w_rgb).sum() + (alpha * w_alpha).sum() + 0.1 * (depth * w_depth * seen).sum()
        loss.backward()
        return (rgb, alpha, depth), {**{k: v.grad for k, v in leaves.items()}, "viewmats": vm.grad}

    ref, ref_grads = run("torch")
    out, out_grads = run(GSPLAT)
    images = _compare_images(ref, out)
    grads = {k: _grad_agreement(out_grads[k], ref_grads[k]) for k in ref_grads}
    _record(f"gsplat_vs_torch[{layout}]", images=images, gradients=grads)
    assert images["visible_pixels"] > 0.1 * C * W * H and images["solid_pixels"] > 0  # the scene covers the images
    assert images["alpha_max_abs"] < 5e-2 and images["alpha_p99_abs"] < 1e-2 and images["alpha_mean_abs"] < 1e-3, images
    assert images["rgb_max_abs"] < 5e-2 and images["rgb_p99_abs"] < 1e-2 and images["rgb_mean_abs"] < 2e-3, images
    assert images["depth_max_rel"] < 2e-2 and images["depth_p99_rel"] < 5e-3, images
    for name, agreement in grads.items():
        assert agreement["norm"] > 0, name
        assert agreement["cos"] > 0.98 and agreement["rel"] < 0.15, (name, agreement)


# ------------------------------------------------------------------------------------ the model, the pipeline


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    from posegen_ns.data.default_capture import build_default_capture

    return build_default_capture(tmp_path_factory.mktemp("cuda") / "capture", body="tiny", num_cameras=2, resolution=40,
                                 frame_stride=24, max_frames_per_clip=3, verbose=False)


@cuda_test
def test_model_render_on_cuda_matches_cpu(capture_dir):
    """One posegen-human model (tiny body, 400 Gaussians, its pose residual) on the CPU (torch rasteriser) and a
    copy on CUDA (``auto``: gsplat): the posed body agrees to 1e-4 m, the images where alpha > 0.02, and the
    gradient of the image w.r.t. the body pose points the same way."""
    from posegen_ns.datamanager import PoseGenDataManagerConfig
    from posegen_ns.model import PoseGenHumanModelConfig

    dm = PoseGenDataManagerConfig(data=capture_dir, images_per_batch=3).setup()
    torch.manual_seed(0)
    model = PoseGenHumanModelConfig(num_gaussians=400).setup(
        scene_box=dm.train_dataset.scene_box, num_train_data=len(dm.train_dataset), capture=dm.train_capture)
    with torch.no_grad():  # a field that is not at its initial values (non-zero residual, varied colours)
        for p in model.field.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    gpu = copy.deepcopy(model).to(DEVICE)
    _, batch = dm.next_train(0)
    H, W = batch["image"].shape[1:3]
    keys = ("body_pose", "global_orient", "transl", "K", "R", "t", "betas")

    def run(m, device):
        b = {k: batch[k].to(device) for k in keys}
        pose = b["body_pose"].clone().requires_grad_(True)
        out = m.render(pose, b["global_orient"], b["transl"], b["K"], b["R"], b["t"], W, H, betas=b["betas"])
        (out.rgb.sum() + out.alpha.sum()).backward()
        return out, pose.grad

    ref, ref_grad = run(model, "cpu")
    out, out_grad = run(gpu, DEVICE)
    assert out.rgb.device.type == torch.device(DEVICE).type
    joints = float((out.body.joints.detach().cpu() - ref.body.joints.detach()).abs().max())
    images = _compare_images((ref.rgb, ref.alpha, ref.depth), (out.rgb, out.alpha, out.depth))
    grad = _grad_agreement(out_grad, ref_grad)
    _record("model_render_cuda_vs_cpu", backend=auto_backend(DEVICE), joints_max_abs_m=joints, images=images,
            body_pose_gradient=grad)
    assert joints < 1e-4
    assert images["visible_pixels"] > 0
    assert images["alpha_p99_abs"] < 1e-2 and images["alpha_mean_abs"] < 1e-3 and images["rgb_mean_abs"] < 3e-3, images
    assert grad["cos"] > 0.98, grad


def _tiny_trainer_config(capture: Path, output_dir: Path):
    """posegen-human-tiny on ``capture``: 1 field step then sampler steps, on ``DEVICE``."""
    from posegen_ns.configs import posegen_human_tiny

    cfg = copy.deepcopy(posegen_human_tiny.config)
    cfg.data = cfg.pipeline.datamanager.data = capture
    cfg.output_dir = output_dir
    cfg.pipeline.field_steps = 1
    cfg.max_num_iterations = 3
    cfg.machine.device_type = DEVICE
    cfg.vis = "tensorboard"
    cfg.set_timestamp()
    return cfg


@pytest.fixture(scope="module")
def cuda_trainer(capture_dir, tmp_path_factory):
    """A nerfstudio Trainer of posegen-human-tiny set up on ``DEVICE`` (pipeline, critic, optimizers)."""
    cfg = _tiny_trainer_config(capture_dir, tmp_path_factory.mktemp("cuda_run"))
    cfg.save_config()
    torch.manual_seed(0)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


@cuda_test
def test_one_phase1_and_one_phase2_step_on_cuda(cuda_trainer):
    """Step 0 fits the field (phase 1) and step 1 trains the sampler against the critic (phase 2), through
    nerfstudio's train_iteration (optimizers included), everything on the GPU."""
    pipeline = cuda_trainer.pipeline
    assert next(pipeline.model.parameters()).device.type == torch.device(DEVICE).type
    assert next(pipeline.critic.parameters()).device.type == torch.device(DEVICE).type
    assert pipeline.config.phase_at(0)[0] == "field" and pipeline.config.phase_at(1)[0] == "loop"
    field0 = {k: v.detach().clone() for k, v in pipeline.model.field.named_parameters()}
    gen0 = {k: v.detach().clone() for k, v in pipeline.generator.named_parameters()}
    _, losses1, _ = cuda_trainer.train_iteration(0)
    assert all(torch.isfinite(v).all() for v in losses1.values()), losses1
    moved = [k for k, v in pipeline.model.field.named_parameters() if not torch.equal(v.detach(), field0[k])]
    assert moved, "phase 1 did not change the field"
    assert all(torch.equal(v.detach(), gen0[k]) for k, v in pipeline.generator.named_parameters())
    field1 = {k: v.detach().clone() for k, v in pipeline.model.field.named_parameters()}
    _, losses2, metrics2 = cuda_trainer.train_iteration(1)
    assert {"hardness", "adversarial", "discriminator"} <= set(losses2)
    assert all(torch.isfinite(v).all() for v in losses2.values()), losses2
    assert any(not torch.equal(v.detach(), gen0[k]) for k, v in pipeline.generator.named_parameters())
    assert all(torch.equal(v.detach(), field1[k]) for k, v in pipeline.model.field.named_parameters())  # frozen
    assert torch.isfinite(pipeline.reference_error)
    _record("pipeline_steps", backend=auto_backend(DEVICE), phase1={k: float(v.detach()) for k, v in losses1.items()},
            phase2={k: float(v.detach()) for k, v in losses2.items()},
            critic_mpjpe_hard_mm=float(metrics2["critic_mpjpe_hard_mm"].detach()))


@cuda_test
def test_exporter_on_cuda_writes_exact_labels_like_the_cpu(cuda_trainer, tmp_path):
    """ns-posegen-export's writer with the pipeline on the GPU: the dataset is complete, its labels are the body
    model's (recomputed on the CPU), and a CPU copy of the same pipeline exports the same samples with the same
    labels and nearly the same images and masks."""
    from posegen_ns.body import load_body_model
    from posegen_ns.export import export_samples
    from posegen_ns.geometry import project_points

    pipeline = cuda_trainer.pipeline
    pipeline.eval()
    out = export_samples(pipeline, tmp_path / "cuda", 4, batch_size=2, seed=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 4
    L = {k: torch.from_numpy(v) for k, v in np.load(out / "labels.npz").items()}
    body = load_body_model("tiny")
    posed = body(L["body_pose"], L["global_orient"], L["betas"][:, : body.num_betas], L["transl"])
    uv, cam = project_points(posed.joints, L["K"], L["R"], L["t"])
    torch.testing.assert_close(cam, L["joints_smpl_cam"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(uv, L["joints_smpl_2d"], atol=1e-2, rtol=1e-4)
    assert (L["mask_area"] > 0).all()

    cpu = pipeline.config.setup(device="cpu", test_mode="inference")
    cpu.load_state_dict({k: v.cpu() for k, v in pipeline.state_dict().items()})
    cpu.eval()
    ref = export_samples(cpu, tmp_path / "cpu", 4, batch_size=2, seed=3)
    R = {k: torch.from_numpy(v) for k, v in np.load(ref / "labels.npz").items()}
    exact = ("body_pose", "global_orient", "transl", "betas", "K", "R", "t", "joints_smpl_cam", "joints_h36m_cam",
             "joints_smpl_2d", "joints_h36m_2d", "boxes")
    for key in exact:
        torch.testing.assert_close(L[key].double(), R[key].double(), atol=2e-3 if key.endswith("_2d") or key == "boxes"
                                   else 2e-4, rtol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    import cv2

    image_diff, mask_agree = [], []
    for sample in manifest["samples"]:
        a, b = (cv2.imread(str(d / sample["image"])).astype(np.float64) for d in (out, ref))
        image_diff.append(float(np.abs(a - b).mean() / 255.0))
        ma, mb = (cv2.imread(str(d / sample["mask"]), cv2.IMREAD_GRAYSCALE) > 127 for d in (out, ref))
        mask_agree.append(float((ma == mb).mean()))
    _record("exporter_cuda_vs_cpu", backend=auto_backend(DEVICE), image_mean_abs=image_diff, mask_agreement=mask_agree,
            critic_error_mm_cuda=L["critic_error_mm"].tolist(), critic_error_mm_cpu=R["critic_error_mm"].tolist())
    assert max(image_diff) < 0.01 and min(mask_agree) > 0.98, (image_diff, mask_agree)
