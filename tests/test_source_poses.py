"""The critic's source pose set: shapes, labels consistent with the images, splits, caching."""

from __future__ import annotations

import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.data import source_poses
from posegen_ns.data.source_poses import make_source_sampler, source_pose_bank
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


def test_splits_are_disjoint_and_narrow(body):
    train, held, other = (source_pose_bank(body, s) for s in ("train", "heldout", "other"))
    assert len(train) > len(held) > 0 and len(other) > 0
    assert set(train.clips) == set(held.clips)
    assert all(c == "walk_run" or "walk" in n.lower() for n, c in zip(train.clip_names, train.categories))
    assert not set(other.clips) & set(train.clips)
    train_keys = set(zip(train.clip_names, train.frame_ids.tolist()))
    assert not train_keys & set(zip(held.clip_names, held.frame_ids.tolist()))
    with pytest.raises(PoseGenInputError, match="not one of"):
        make_source_sampler(body, 32, "test")


@pytest.mark.parametrize("split", ["train", "other"])
def test_sampler_shapes_and_labels(body, split, tmp_path, monkeypatch):
    monkeypatch.setattr(source_poses, "_cache_root", lambda: tmp_path / "source_images")
    S, B = 32, 6
    sample = make_source_sampler(body, S, split, num_images=12, seed=1)
    batch = sample(B, torch.Generator().manual_seed(0))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {
        "images": (B, 3, S, S), "boxes": (B, 4), "joints_h36m_cam": (B, 17, 3), "body_pose": (B, 69),
        "global_orient_cam": (B, 3), "betas": (B, body.num_betas), "K": (B, 3, 3),
    }
    img = batch["images"]
    assert img.dtype == torch.float32 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    person = img.amax(1) > 0.02  # (B, S, S) pixels off the black background
    assert (person.float().mean((1, 2)) > 0.02).all()

    # joints project inside the square box, and the box lies mostly inside the image (person centred)
    J = batch["joints_h36m_cam"]
    uv = torch.einsum("bij,bnj->bni", batch["K"], J / J[..., 2:3])[..., :2]
    x0, y0, x1, y1 = batch["boxes"].unbind(-1)
    assert torch.allclose(x1 - x0, y1 - y0, atol=1e-4)
    assert ((uv[..., 0] > x0[:, None]) & (uv[..., 0] < x1[:, None]) & (uv[..., 1] > y0[:, None]) & (uv[..., 1] < y1[:, None])).all()
    centre = 0.5 * (batch["boxes"][:, :2] + batch["boxes"][:, 2:])
    assert (centre - S / 2).abs().max() < 0.2 * S
    # the image shows the person where the joints project: the pelvis pixel is on the body
    for b in range(B):
        x, y = (int(v) for v in uv[b, 0].floor().clamp(0, S - 1).tolist())  # pelvis = H36M joint 0
        assert bool(person[b, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any()), b

    # global_orient_cam and body_pose reproduce the camera-frame joints (root-relative)
    out = body(batch["body_pose"], batch["global_orient_cam"], batch["betas"]).joints_h36m
    torch.testing.assert_close(out - out[:, :1], J - J[:, :1], atol=2e-4, rtol=0)

    if split == "train":  # frontal: the body faces the camera (its +z axis points to the camera, -z_cam)
        front = axis_angle_to_matrix(batch["global_orient_cam"])[:, :, 2]  # (B, 3) body front in camera
        angle = torch.rad2deg(torch.atan2(front[:, 0], -front[:, 2]))
        assert angle.abs().max() < 31.0


def test_sampler_is_cached(body, tmp_path, monkeypatch):
    monkeypatch.setattr(source_poses, "_cache_root", lambda: tmp_path / "source_images")
    first = make_source_sampler(body, 24, "heldout", num_images=4)(4, torch.Generator().manual_seed(0))
    files = list((tmp_path / "source_images").glob("*.npz"))
    assert len(files) == 1 and "heldout-s24-n4" in files[0].name

    def boom(*args, **kwargs):
        raise AssertionError("re-rendered despite the cache")

    monkeypatch.setattr(source_poses, "render_source_set", boom)
    again = make_source_sampler(body, 24, "heldout", num_images=4)(4, torch.Generator().manual_seed(0))
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_pose_bank_is_cached(body, tmp_path, monkeypatch):
    from posegen_ns.data import poses
    from posegen_ns.mocap import shipped_clips_dir

    monkeypatch.setattr(poses, "_cache_root", lambda: tmp_path)
    clip = shipped_clips_dir() / "09_06_run.bvh"
    bank = poses.load_pose_bank(body, [clip], stride=8)
    assert len(bank) > 5 and bank.clips == ["09_06_run"] and set(bank.categories) == {"walk_run"}
    assert (bank.frame_ids[1:] - bank.frame_ids[:-1] == 8).all()
    files = [p.name for p in tmp_path.iterdir()]
    assert files == [f"{poses.body_id(body)}-09_06_run-s8.npz"]

    def boom(*args, **kwargs):
        raise AssertionError("refitted despite the cache")

    monkeypatch.setattr(poses, "_fit_clip", boom)
    again = poses.load_pose_bank("tiny", [clip], stride=8)  # same body file -> same cache entry
    assert torch.equal(again.body_pose, bank.body_pose) and torch.equal(again.transl, bank.transl)
    with pytest.raises(AssertionError, match="refitted"):
        poses.load_pose_bank(body, [clip], stride=4)  # another stride is another entry
