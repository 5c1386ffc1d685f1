"""The spine end to end at toy size: capture -> ns-train posegen-human-tiny -> ns-posegen-export,
and the exported labels are exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import project_points

BIN = Path(sys.executable).parent


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    capture = root / "capture"
    _run([str(BIN / "ns-posegen-capture"), "--output-dir", str(capture), "--body", "tiny", "--num-cameras", "2",
          "--resolution", "40", "--frame-stride", "24"])
    proc = _run([str(BIN / "ns-train"), "posegen-human-tiny", "--data", str(capture), "--output-dir", str(root / "outputs")])
    configs = list((root / "outputs").rglob("config.yml"))
    assert len(configs) == 1
    run_dir = configs[0].parent
    report = json.loads((run_dir / "posegen_report.json").read_text())
    # the run prints and records the held-out PSNR and the hardness ratio
    assert "field PSNR on held-out frames" in proc.stdout and "hardness ratio" in proc.stdout
    assert np.isfinite(report["heldout_psnr"]) and report["heldout_psnr"] > 5.0
    assert report["hardness_ratio"] == pytest.approx(report["mpjpe_hard_mm"] / report["mpjpe_prior_mm"], rel=1e-6)
    # azimuth statistics are circular: a spread >= 0 and a mean angle on (-pi, pi]
    for kind in ("hard", "prior"):
        assert 0.0 <= report[f"{kind}_camera_azimuth_std"] < 10.0 and -np.pi <= report[f"{kind}_camera_azimuth_mean"] <= np.pi
    return configs[0]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "dataset"
    _run([str(BIN / "ns-posegen-export"), "--load-config", str(trained_run), "--output-dir", str(out),
          "--num-samples", "5", "--batch-size", "2"])
    return out


def test_export_layout_and_manifest(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    labels = np.load(exported / "labels.npz")
    assert manifest["num_samples"] == 5 and len(manifest["samples"]) == 5
    for sample in manifest["samples"]:
        assert (exported / sample["image"]).is_file() and (exported / sample["mask"]).is_file()
    for key in manifest["labels"]:
        assert labels[key].shape[0] == 5, key
    assert labels["joints_h36m_cam"].shape == (5, 17, 3) and labels["joints_smpl_2d"].shape == (5, 24, 2)
    np.testing.assert_allclose(
        [s["critic_error_mm"] for s in manifest["samples"]], labels["critic_error_mm"], rtol=1e-5
    )
    assert not any(p.name.startswith(".dataset") for p in exported.parent.iterdir())  # no temporary left


def test_exported_labels_are_exact(exported):
    """3D joints = body model joints for the exported parameters (camera frame); projecting them
    with the exported K gives the exported 2D joints."""
    L = {k: torch.from_numpy(v) for k, v in np.load(exported / "labels.npz").items()}
    body = load_body_model("tiny")
    out = body(L["body_pose"], L["global_orient"], L["betas"][:, : body.num_betas], L["transl"])
    for world, key in ((out.joints, "joints_smpl"), (out.joints_h36m, "joints_h36m")):
        uv, cam = project_points(world, L["K"], L["R"], L["t"])
        torch.testing.assert_close(cam, L[f"{key}_cam"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(uv, L[f"{key}_2d"], atol=1e-3, rtol=1e-5)
        # and directly from the exported camera-frame joints
        uv2 = torch.einsum("bij,bnj->bni", L["K"], L[f"{key}_cam"] / L[f"{key}_cam"][..., 2:3])[..., :2]
        torch.testing.assert_close(uv2, L[f"{key}_2d"], atol=1e-3, rtol=1e-5)


def test_export_refuses_to_overwrite_and_is_atomic(trained_run, exported, tmp_path):
    from nerfstudio.utils.eval_utils import eval_setup

    from posegen_ns.export import export_samples

    with pytest.raises(PoseGenInputError, match="exists; pass --overwrite"):
        export_samples(None, exported, 2)
    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")
    target = tmp_path / "broken"
    calls = {"n": 0}
    original = pipeline.render_and_score

    def fail_on_second(sample):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("interrupted")
        return original(sample)

    pipeline.render_and_score = fail_on_second
    with pytest.raises(RuntimeError, match="interrupted"):
        export_samples(pipeline, target, 4, batch_size=2)
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written left behind
    pipeline.render_and_score = original
    export_samples(pipeline, target, 2, batch_size=2)
    first = np.load(target / "labels.npz")["body_pose"].copy()
    export_samples(pipeline, target, 3, batch_size=2, seed=5, overwrite=True)
    assert np.load(target / "labels.npz")["body_pose"].shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    assert first.shape[0] == 2


def test_loop_gradients_reach_pose_and_camera(trained_run):
    """d(critic MPJPE)/d(body pose) and d/d(camera) are non-zero through the field's renderer."""
    from nerfstudio.utils.eval_utils import eval_setup

    from posegen_ns.sampler import PoseCameraSample

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")
    sample = pipeline.draw(2, hard=False, noise=torch.Generator().manual_seed(0))
    pose = sample.body_pose.clone().requires_grad_(True)
    camera = sample.camera.clone().requires_grad_(True)
    scored = pipeline.render_and_score(PoseCameraSample(pose, sample.global_orient, camera))
    scored.error.sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0
    assert torch.isfinite(camera.grad).all() and camera.grad.abs().sum() > 0


def test_black_box_critic_drives_the_generator_by_evolution_strategies(trained_run):
    """With a critic that gives no gradients, the loop's hardness loss still reaches the generator
    (ES surrogate), and a detection failure (NaN) does not poison the step."""
    from nerfstudio.utils.eval_utils import eval_setup

    from adapters.blackbox import BlackBoxCritic

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")

    def brightness_fn(images, boxes):  # a "pose estimator" whose output depends on the image content
        B = images.shape[0]
        level = images.reshape(B, -1).mean(-1) / 255.0
        joints = np.zeros((B, 17, 3), dtype=np.float32)
        joints[:, :, 1] = level[:, None] * np.linspace(-1, 1, 17)[None]
        joints[0] = np.nan  # the first image: no person found
        return joints

    pipeline.critic = BlackBoxCritic(brightness_fn, "h36m17")
    assert not pipeline.critic.differentiable
    pipeline.reference_error.fill_(0.2)
    pipeline.train()
    for p in pipeline.model.field.parameters():
        p.requires_grad_(False)
    _, losses, _ = pipeline.loop_step()
    assert torch.isfinite(losses["hardness"])
    pipeline.generator.zero_grad()
    losses["hardness"].backward()
    grads = [p.grad for p in pipeline.generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_hard_draws_start_from_the_regions_the_critic_finds_hard(trained_run):
    """The sampler's learned choice of prior frames: scored during the loop, and hard draws follow it."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")
    regions = pipeline.pose_regions
    assert regions.num_regions > 1 and float(regions.region_count.sum()) > 0  # the loop's prior samples were scored
    assert float(regions.probabilities().sum()) == pytest.approx(1.0, abs=1e-5)
    # make one region far harder than the rest: hard draws come from it at its probability, prior draws do not care
    regions.region_error.fill_(0.1)
    regions.region_error[0] = 1.0
    regions.region_count.fill_(1000.0)  # well scored everywhere: the shrinkage towards the mean is negligible
    p0 = float(regions.probabilities()[0])
    hard = pipeline.draw(2000, hard=True, noise=torch.Generator().manual_seed(0))
    prior = pipeline.draw(2000, hard=False, noise=torch.Generator().manual_seed(0))
    in0 = lambda s: float((regions.region_of[s.prior_index] == 0).float().mean())  # noqa: E731
    share0 = float((regions.region_of == 0).float().mean())
    assert in0(hard) == pytest.approx(p0, abs=0.04) and p0 > 0.5
    assert in0(prior) == pytest.approx(share0, abs=0.04)
    # the hard draw starts from the frame it names (the generator only adds a bounded residual)
    assert torch.allclose(hard.body_pose, pipeline.prior_body_pose[hard.prior_index], atol=pipeline.config.sampler.max_residual * 1.8)
