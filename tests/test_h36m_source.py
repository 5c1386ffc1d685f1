"""The H36M-like source set (``kind="h36m"``): clips, camera azimuths, boxes, and pre-training on it."""

from __future__ import annotations

import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.data import source_poses
from posegen_ns.data.h36m_source import H36M_AZIMUTHS_DEG, NUM_SHAPE_BETAS, h36m_pose_bank, render_h36m_set
from posegen_ns.data.source_poses import make_source_sampler, source_cache_path
from posegen_ns.data.splits import EVAL_CLIPS, PRIOR_CLIPS, SOURCE_CLIPS
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


@pytest.fixture(scope="module")
def train_set(body):
    return render_h36m_set(body, 32, "train", 16, seed=2)


def test_splits_use_source_clips_only(body):
    train, held, views = h36m_pose_bank("train"), h36m_pose_bank("heldout"), h36m_pose_bank("other_views")
    assert set(train.clips) == set(held.clips) == set(SOURCE_CLIPS) == set(views.clips)
    assert not set(zip(train.clip_names, train.frame_ids.tolist())) & set(zip(held.clip_names, held.frame_ids.tolist()))
    other = h36m_pose_bank("other")
    assert set(other.clips) == set(PRIOR_CLIPS) | set(EVAL_CLIPS) and not set(other.clips) & set(SOURCE_CLIPS)
    with pytest.raises(PoseGenInputError, match="not one of"):
        make_source_sampler(body, 32, "test", kind="h36m")
    with pytest.raises(PoseGenInputError, match="kind"):
        make_source_sampler(body, 32, "train", kind="mpii")


def test_renders_only_source_poses_with_several_shapes(train_set):
    names = [str(n) for n in train_set["clip_names"]]
    assert set(names) <= set(SOURCE_CLIPS)
    # each rendered pose is a frame of the source bank
    bank = h36m_pose_bank("train")
    dist = torch.cdist(torch.from_numpy(train_set["body_pose"]), bank.body_pose,
                       compute_mode="donot_use_mm_for_euclid_dist")  # (N, M)
    assert float(dist.min(1).values.max()) < 1e-5
    betas = torch.from_numpy(train_set["betas"])
    nb = min(NUM_SHAPE_BETAS, betas.shape[1])
    assert betas[:, :nb].std(0).min() > 0.2 and (betas[:, nb:] == 0).all()
    assert len(set(train_set["subject"].tolist())) > 1


def test_camera_azimuths_are_h36m_like(train_set):
    # body front (+z of the body) in the camera frame; the camera sits at azimuth a from the body's front, so the
    # body's front, seen from the camera, points at angle a away from the direction towards the camera (-z_cam)
    front = axis_angle_to_matrix(torch.from_numpy(train_set["global_orient_cam"]).double())[:, :, 2]  # (N, 3)
    angle = torch.rad2deg(torch.atan2(-front[:, 0], -front[:, 2])) % 360  # (N,) camera azimuth from the body's front
    targets = torch.tensor(H36M_AZIMUTHS_DEG, dtype=torch.float64)
    gap = ((angle[:, None] - targets[None] + 180) % 360 - 180).abs().min(1).values
    assert gap.max() < 10.0, angle  # jitter 5 deg + the apparent turn of a tilted body seen from above
    # all four cameras are used, and the recorded azimuths agree
    nearest = ((angle[:, None] - targets[None] + 180) % 360 - 180).abs().argmin(1)
    assert set(nearest.tolist()) == {0, 1, 2, 3}
    rec = torch.from_numpy(train_set["azimuth_deg"]).double() % 360
    assert (((rec - angle + 180) % 360 - 180).abs() < 5.0).all()
    # slight downward look: the camera is above the pelvis
    assert ((train_set["elevation_deg"] >= 5.0) & (train_set["elevation_deg"] <= 15.0)).all()


def test_boxes_contain_projected_joints(train_set):
    J = torch.from_numpy(train_set["joints_h36m_cam"])
    K = torch.from_numpy(train_set["K"])
    uv = torch.einsum("bij,bnj->bni", K, J / J[..., 2:3])[..., :2]
    x0, y0, x1, y1 = torch.from_numpy(train_set["boxes"]).unbind(-1)
    assert torch.allclose(x1 - x0, y1 - y0, atol=1e-4)
    inside = (uv[..., 0] > x0[:, None]) & (uv[..., 0] < x1[:, None]) & (uv[..., 1] > y0[:, None]) & (uv[..., 1] < y1[:, None])
    assert inside.all()
    assert (train_set["masks"].reshape(len(J), -1).mean(1) > 0.02).all()


def test_sampler_caches_under_its_own_key(body, tmp_path, monkeypatch):
    monkeypatch.setattr(source_poses, "_cache_root", lambda: tmp_path / "source_images")
    sample = make_source_sampler(body, 24, "heldout", num_images=4, kind="h36m")
    batch = sample(3, torch.Generator().manual_seed(0))
    assert set(batch) == {"images", "boxes", "joints_h36m_cam", "body_pose", "global_orient_cam", "betas", "K"}
    assert batch["images"].shape == (3, 3, 24, 24)
    narrow = source_cache_path(body, 24, "heldout", 4, 0)
    path = source_cache_path(body, 24, "heldout", 4, 0, kind="h36m")
    assert path != narrow and "h36m" in path.name
    assert [p.name for p in (tmp_path / "source_images").glob("*.npz")] == [path.name]


def test_pretraining_loss_falls_on_h36m_source(body, tmp_path, monkeypatch):
    from adapters.hmr import build_hmr_critic
    from posegen_ns.critic.pretrain import pretrain_critic

    monkeypatch.setattr(source_poses, "_cache_root", lambda: tmp_path / "source_images")
    torch.manual_seed(0)
    sample = make_source_sampler(body, 32, "train", num_images=8, kind="h36m")
    critic = build_hmr_critic("resnet18", 32, body)
    for name, param in critic.hmr.named_parameters():  # speed: train the regressor head only (CPU test)
        param.requires_grad_(name.startswith(("fc", "dec")))
    history: list[dict] = []
    checks: list[int] = []
    pretrain_critic(critic, sample, steps=16, lr=1e-4, batch_size=8, log_every=4, progress=False, history=history,
                    on_window=lambda step, m: checks.append(step) or False)
    assert checks == [4, 8, 12, 16]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [h["loss"] for h in history]
