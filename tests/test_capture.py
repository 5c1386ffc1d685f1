"""Native capture format, ZJU-MoCap reader, and the default capture (tiny body, tiny images)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.data import capture as capture_mod
from posegen_ns.data.capture import Capture, read_capture, write_capture
from posegen_ns.data.default_capture import ring_cameras
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, project_points


def make_capture(T: int = 3, C: int = 2, H: int = 12, W: int = 16, seed: int = 0) -> Capture:
    g = torch.Generator().manual_seed(seed)
    K, R, t = ring_cameras(C, torch.tensor([0.0, 0.9, 0.0]), 1.0, W)
    K = K.clone()
    K[:, 1, 2] = H / 2
    return Capture(
        images=torch.randint(0, 256, (T, C, H, W, 3), generator=g, dtype=torch.uint8),
        masks=torch.rand(T, C, H, W, generator=g) > 0.5,
        K=K, R=R, t=t,
        global_orient=torch.randn(T, 3, generator=g) * 0.3,
        body_pose=torch.randn(T, 69, generator=g) * 0.2,
        transl=torch.randn(T, 3, generator=g),
        betas=torch.randn(2, generator=g),
        clip_names=["walk"] * (T - 1) + ["jump"],
        frame_ids=torch.arange(T) * 8,
        split=["train"] * (T - 1) + ["heldout"],
        body="tiny",
        camera_names=[f"cam{c:02d}" for c in range(C)],
    )


def assert_same(a: Capture, b: Capture) -> None:
    for name in ("images", "masks", "K", "R", "t", "global_orient", "body_pose", "transl", "betas", "frame_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    for name in ("clip_names", "split", "body", "camera_names"):
        assert getattr(a, name) == getattr(b, name), name


def test_round_trip_and_subset(tmp_path):
    cap = make_capture()
    out = write_capture(cap, tmp_path / "cap")
    back = read_capture(out)
    assert_same(cap, back)
    assert back.root == out and (back.num_frames, back.num_cameras, back.height, back.width) == (3, 2, 12, 16)
    assert sorted(p.name for p in (out / "images" / "cam01").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    meta = json.loads((out / "capture.json").read_text())
    assert meta["frames"][2] == {"clip": "jump", "frame": 16, "split": "heldout"}
    held = back.subset("heldout")
    assert held.num_frames == 1 and held.clip_names == ["jump"] and torch.equal(held.images[0], cap.images[2])
    assert back.subset("train").num_frames == 2
    with pytest.raises(PoseGenInputError, match="split 'test'"):
        back.subset("test")


def test_write_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = capture_mod.write_png

    def failing(path, array):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real(path, array)

    monkeypatch.setattr(capture_mod, "write_png", failing)
    with pytest.raises(OSError, match="disk full"):
        write_capture(make_capture(), tmp_path / "cap")
    assert calls["n"] >= 5
    assert list(tmp_path.iterdir()) == []  # neither the capture nor the temporary folder


def test_refuses_to_overwrite(tmp_path):
    out = write_capture(make_capture(seed=0), tmp_path / "cap")
    with pytest.raises(PoseGenInputError, match="already exists.*overwrite"):
        write_capture(make_capture(seed=1), out)
    assert torch.equal(read_capture(out).betas, make_capture(seed=0).betas)  # untouched
    write_capture(make_capture(seed=1), out, overwrite=True)
    assert torch.equal(read_capture(out).betas, make_capture(seed=1).betas)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]  # old copy removed


def _rewrite_params(root: Path, **changes) -> None:
    with np.load(root / "body_params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    np.savez(root / "body_params.npz", **arrays)


def test_error_frame_count_mismatch(tmp_path):
    out = write_capture(make_capture(T=3), tmp_path / "cap")
    with np.load(out / "body_params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    _rewrite_params(out, **{k: arrays[k][:2] for k in ("global_orient", "body_pose", "transl")})
    with pytest.raises(PoseGenInputError) as err:
        read_capture(out)
    msg = str(err.value)
    assert "body_params.npz has 2 frames" in msg and "capture.json lists 3 frames" in msg


def test_error_nan_in_body_params(tmp_path):
    out = write_capture(make_capture(T=3), tmp_path / "cap")
    with np.load(out / "body_params.npz") as npz:
        pose = npz["body_pose"].copy()
    pose[1, 5] = np.nan
    _rewrite_params(out, body_pose=pose)
    with pytest.raises(PoseGenInputError, match=r"body_params\.npz.*'body_pose'.*NaN.*frame\(s\) \[1\]"):
        read_capture(out)


def test_error_missing_files(tmp_path):
    out = write_capture(make_capture(), tmp_path / "cap")
    (out / "masks" / "cam00" / "000002.png").unlink()
    with pytest.raises(PoseGenInputError, match=r"masks/cam00/000002\.png does not exist"):
        read_capture(out)
    (out / "capture.json").unlink()
    with pytest.raises(PoseGenInputError, match=r"capture\.json does not exist"):
        read_capture(out)
    with pytest.raises(PoseGenInputError, match="does not exist"):
        read_capture(tmp_path / "nowhere")


def test_error_image_size_and_cameras(tmp_path):
    out = write_capture(make_capture(), tmp_path / "cap")
    cv2.imwrite(str(out / "images" / "cam01" / "000001.png"), np.zeros((10, 20, 3), np.uint8))
    with pytest.raises(PoseGenInputError, match=r"cam01/000001\.png is 20x10 \(W x H\).*width 16, height 12"):
        read_capture(out)

    out2 = write_capture(make_capture(), tmp_path / "cap2")
    meta = json.loads((out2 / "capture.json").read_text())
    meta["cameras"][1]["R"][0][0] *= 2.0
    (out2 / "capture.json").write_text(json.dumps(meta))
    with pytest.raises(PoseGenInputError, match="camera 'cam01' R is not a rotation"):
        read_capture(out2)
    meta["cameras"][1]["R"][0][0] /= 2.0
    meta["cameras"][0]["K"][2] = [0.0, 1.0, 1.0]
    (out2 / "capture.json").write_text(json.dumps(meta))
    with pytest.raises(PoseGenInputError, match="camera 'cam00' K must be"):
        read_capture(out2)


# ---- ZJU-MoCap -----------------------------------------------------------------------------------

def write_zju_fixture(root: Path, body, nonzero_distortion: bool = False) -> dict:
    """2 cameras, 3 frames, 16x16 images in ZJU-MoCap's layout; returns the ground truth."""
    g = torch.Generator().manual_seed(3)
    C, T, S = 2, 3, 16
    K, R, t = ring_cameras(C, torch.tensor([0.0, 1.0, 0.0]), 1.0, S)
    cams = {
        "K": [K[c].double().numpy() for c in range(C)],
        "R": [R[c].double().numpy() for c in range(C)],
        "T": [(t[c].double().numpy() * 1000.0).reshape(3, 1) for c in range(C)],  # millimetres
        "D": [np.full((5, 1), 0.01 if nonzero_distortion else 0.0) for _ in range(C)],
    }
    ims, colours = [], {}
    for i in range(T):
        paths = []
        for c in range(C):
            rel = f"Camera_B{c + 1}/{i:06d}.jpg"
            colour = (20 + 40 * i, 100 + 50 * c, 200)
            colours[(i, c)] = colour
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), np.full((S, S, 3), colour[::-1], np.uint8))
            mask = np.zeros((S, S), np.uint8)
            mask[4:12, 5 + i : 9 + i] = 1  # ZJU masks are 0/1 (or 0/255)
            (root / "mask" / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str((root / "mask" / rel).with_suffix(".png")), mask)
            paths.append(rel)
        ims.append({"ims": paths})
    np.save(root / "annots.npy", {"cams": cams, "ims": ims}, allow_pickle=True)
    poses = torch.randn(T, 72, generator=g) * 0.3
    poses[:, :3] = 0.0
    Rh = torch.randn(T, 3, generator=g)
    Th = torch.randn(T, 3, generator=g)
    shapes = torch.zeros(T, 10)
    shapes[:, :2] = torch.tensor([0.5, -0.7])
    (root / "params").mkdir()
    for i in range(T):
        np.save(root / "params" / f"{i}.npy", {
            "poses": poses[i : i + 1].numpy(), "Rh": Rh[i : i + 1].numpy(), "Th": Th[i : i + 1].numpy(),
            "shapes": shapes[i : i + 1].numpy(),
        }, allow_pickle=True)
    return {"poses": poses, "Rh": Rh, "Th": Th, "betas": shapes[0, :2], "K": K, "R": R, "t": t, "colours": colours}


def shifted_tiny_body(tmp_path: Path):
    """The tiny body with its rest pelvis moved off the origin (as SMPL's, J0 ~ (0, -0.2, 0))."""
    from posegen_ns.body import BodyModel
    from posegen_ns.body.smpl_files import write_smpl_npz
    from posegen_ns.body.tiny_body import build_tiny_body

    data = build_tiny_body()
    data["v_template"] = data["v_template"] + np.array([0.03, -0.2, 0.05])
    return BodyModel(write_smpl_npz(data, tmp_path / "shifted_tiny.npz"))


def test_zju_round_trip(tmp_path):
    body = shifted_tiny_body(tmp_path)
    assert body(torch.zeros(1, 69)).rest_joints[0, 0].abs().max() > 0.1
    truth = write_zju_fixture(tmp_path / "zju", body)
    with pytest.raises(PoseGenInputError, match="ZJU-MoCap.*pass body="):
        read_capture(tmp_path / "zju")
    cap = read_capture(tmp_path / "zju", body=body)
    assert (cap.num_frames, cap.num_cameras, cap.height, cap.width) == (3, 2, 16, 16)
    assert cap.camera_names == ["Camera_B1", "Camera_B2"] and cap.frame_ids.tolist() == [0, 1, 2]
    torch.testing.assert_close(cap.t, truth["t"], atol=1e-6, rtol=0)  # millimetres -> metres
    torch.testing.assert_close(cap.R, truth["R"])
    torch.testing.assert_close(cap.betas, truth["betas"])
    assert cap.split == ["train", "train", "heldout"]
    for (i, c), colour in truth["colours"].items():
        assert (cap.images[i, c].int() - torch.tensor(colour)).abs().max() <= 3
    assert int(cap.masks[1, 0].sum()) == 32 and bool(cap.masks[1, 0, 4, 6]) and not bool(cap.masks[1, 0, 4, 5])

    # the converted parameters give ZJU's world body: R(Rh) @ smpl(poses, zero root) + Th
    betas = truth["betas"].expand(3, -1)
    ours = body(cap.body_pose, cap.global_orient, betas, cap.transl).vertices
    zju_local = body(truth["poses"][:, 3:], torch.zeros(3, 3), betas).vertices
    zju_world = torch.einsum("nij,nvj->nvi", axis_angle_to_matrix(truth["Rh"]), zju_local) + truth["Th"][:, None]
    torch.testing.assert_close(ours, zju_world, atol=1e-5, rtol=0)

    with pytest.warns(UserWarning, match="distortion"):
        write_zju_fixture(tmp_path / "zju_d", body, nonzero_distortion=True)
        read_capture(tmp_path / "zju_d", body=body)


def test_zju_downscale_and_missing_mask(tmp_path):
    body = load_body_model("tiny")
    truth = write_zju_fixture(tmp_path / "zju", body)
    cap = read_capture(tmp_path / "zju", body=body, downscale=2, cameras=[1], max_frames=2)
    assert (cap.num_frames, cap.num_cameras, cap.height, cap.width) == (2, 1, 8, 8)
    torch.testing.assert_close(cap.K[0, :2], truth["K"][1, :2] / 2)
    shutil.rmtree(tmp_path / "zju" / "mask" / "Camera_B2")
    with pytest.raises(PoseGenInputError, match=r"No mask for .*Camera_B2/000000\.jpg.*mask_cihp"):
        read_capture(tmp_path / "zju", body=body)


# ---- the default capture -----------------------------------------------------------------------

def test_build_default_capture_tiny(tmp_path):
    from posegen_ns.data.default_capture import build_default_capture, is_walking_clip
    from posegen_ns.mocap import clip_category, shipped_clips_dir

    clips = sorted(shipped_clips_dir().glob("*.bvh"))
    walk = next(c for c in clips if is_walking_clip(c.stem, clip_category(c.stem)))
    other = next(c for c in clips if not is_walking_clip(c.stem, clip_category(c.stem)))
    mocap = tmp_path / "mocap"
    mocap.mkdir()
    for c in (walk, other):
        (mocap / c.name).symlink_to(c)
    out = build_default_capture(
        tmp_path / "cap", mocap_dir=mocap, body="tiny", num_cameras=2, resolution=32, frame_stride=16,
        max_frames_per_clip=3, verbose=False,
    )
    cap = read_capture(out)
    assert (cap.num_frames, cap.num_cameras, cap.height, cap.width) == (6, 2, 32, 32)
    assert cap.body == "tiny" and len(set(cap.clip_names)) == 2
    held = {c for c, s in zip(cap.clip_names, cap.split) if s == "heldout"}
    assert held == {other.stem}  # the non-walking clip

    coverage = cap.masks.float().mean((2, 3))  # (T, C)
    assert (coverage > 0.01).all() and (coverage < 0.6).all()
    assert int(cap.images[~cap.masks].max()) == 0  # black background
    assert cap.images[cap.masks].float().mean() > 30  # the person is drawn
    with pytest.raises(PoseGenInputError, match="already exists"):
        build_default_capture(out, mocap_dir=mocap, body="tiny", verbose=False)

    # treadmill: the pelvis stays on the vertical axis; it projects onto the mask in every view
    body = load_body_model("tiny")
    T = cap.num_frames
    pelvis = body(cap.body_pose, cap.global_orient, cap.betas.expand(T, -1), cap.transl).joints[:, 0]  # (T, 3)
    assert pelvis[:, [0, 2]].abs().max() < 1e-5
    for c in range(cap.num_cameras):
        uv, _ = project_points(pelvis[None], cap.K[c : c + 1], cap.R[c : c + 1], cap.t[c : c + 1])
        for i, (u, v) in enumerate(uv[0].tolist()):
            x, y = int(math.floor(u)), int(math.floor(v))
            assert 0 <= x < 32 and 0 <= y < 32
            assert bool(cap.masks[i, c, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any()), (i, c)


def test_capture_cli_parses(tmp_path):
    import tyro

    from posegen_ns.data.capture_cli import CaptureConfig

    cfg = tyro.cli(CaptureConfig, args=[
        "--mocap-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--body", "tiny",
        "--num-cameras", "3", "--resolution", "48", "--frame-stride", "5", "--overwrite",
    ])
    assert (cfg.mocap_dir, cfg.output_dir, cfg.body) == (tmp_path, tmp_path / "out", "tiny")
    assert (cfg.num_cameras, cfg.resolution, cfg.frame_stride, cfg.overwrite) == (3, 48, 5, True)
