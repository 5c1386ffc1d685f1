"""Tests of posegen_ns.mocap: BVH reading and FK, rigs, fitting, AMASS npz, errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError
from posegen_ns.mocap import (
    FitConfig, Motion, bvh_targets, clip_category, clip_info, fit_joints, forward_kinematics, load_motion,
    load_motion_dir, read_amass_npz, read_bvh, shipped_clips_dir, write_amass_npz,
)
from posegen_ns.mocap.fit import JointsOnlyBody, initial_rotations
from posegen_ns.mocap.rigs import CMU_UNIT_M, chain_length, detect_rig, detect_unit_scale

CLIPS = shipped_clips_dir()
RIG_FILES = {  # one shipped file per rig
    "cmu31": "12_01_walk.bvh",
    "cmu31_max": "131_03_start_hop_stop.bvh",
    "daz": "10_03_soccer_kick.bvh",
    "cc": "02_04_jump_balance_ccrig.bvh",
}
# Fit error bounds with the tiny body, 30 frames at stride 4 (measured mean / max in mm -> bound):
# cmu31 12_01: 36.2 / 66.1 -> 45 / 90; cmu31_max 131_03: 31.3 / 97.3 -> 40 / 130; daz 10_03: 25.5 / 55.6
# -> 35 / 80; cc 02_04: 27.3 / 79.2 -> 35 / 105. The position error is mostly rig-vs-body proportions (the
# tiny body is a stick figure; cgspeed's trunk is ~12 cm short); segment directions agree within a few
# degrees (measured means 2.2-4.0).
FIT_BOUNDS_MM = {"cmu31": (45.0, 90.0), "cmu31_max": (40.0, 130.0), "daz": (35.0, 80.0), "cc": (35.0, 105.0)}
SEGMENT_BOUND_DEG = 6.0


@pytest.fixture(scope="module")
def tiny():
    return load_body_model("tiny")


@pytest.fixture(scope="module")
def fitted(tiny):
    """Each rig's shipped clip fitted once (30 frames, stride 4), with its targets."""
    out = {}
    for rig, name in RIG_FILES.items():
        m = load_motion(CLIPS / name, tiny, stride=4, max_frames=30, cache=False)
        clip = read_bvh(CLIPS / name)
        keep = np.asarray(m.meta["frame_indices"])
        clip = dataclasses.replace(clip, motion=clip.motion[keep])
        X, r, _, _ = bvh_targets(clip)
        out[rig] = (m, X * m.meta["scale"], r)
    return out


# ---- BVH reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rig,name,joints,channels,unit", [
    ("cmu31", "12_01_walk.bvh", 38, 96, "cmu"),
    ("cmu31_max", "131_03_start_hop_stop.bvh", 38, 96, "cmu"),
    ("daz", "10_03_soccer_kick.bvh", 57, 132, "cm"),
    ("cc", "02_04_jump_balance_ccrig.bvh", 141, 303, "cm"),
])
def test_read_shipped_bvh_each_rig(rig, name, joints, channels, unit):
    clip = read_bvh(CLIPS / name, stride=3, max_frames=4, skip_frames=1)
    assert clip.motion.shape == (4, channels)
    assert len(clip.skeleton.names) == joints  # joints + End Sites
    assert clip.frame_indices.tolist() == [1, 4, 7, 10]
    full = read_bvh(CLIPS / name)
    np.testing.assert_array_equal(clip.motion, full.motion[[1, 4, 7, 10]])
    assert clip.frame_time == pytest.approx(3 * full.frame_time)
    r = detect_rig(clip.skeleton, name)
    assert r.name == rig
    scale, u = detect_unit_scale(clip.skeleton, r)
    assert u == unit
    leg = chain_length(clip.skeleton, r.joint_map["left_hip"][0], r.joint_map["left_ankle"][0]) * scale
    assert 0.7 < leg < 1.05  # adult hip-to-ankle length in metres
    X = forward_kinematics(clip.skeleton, clip.motion)
    assert X.shape == (4, joints, 3) and np.isfinite(X).all()
    # bone lengths are preserved by FK in every frame
    j = clip.skeleton.index(r.joint_map["left_knee"][0])
    p = clip.skeleton.parents[j]
    np.testing.assert_allclose(np.linalg.norm(X[:, j] - X[:, p], axis=-1), np.linalg.norm(clip.skeleton.offsets[j]), rtol=1e-9)


def test_cmu_unit_constant():
    assert CMU_UNIT_M == pytest.approx(0.056444, abs=1e-6)


_THREE_JOINT_BVH = """HIERARCHY
ROOT A
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT B
  {
    OFFSET 0 2 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 0 1
    }
  }
}
MOTION
Frames: 3
Frame Time: 0.1
1 2 3 90 0 0 0 0 0
0 0 0 0 0 0 90 90 0
0 0 0 0 0 90 0 0 0
"""


def test_fk_hand_written_three_joints(tmp_path):
    path = tmp_path / "three.bvh"
    path.write_text(_THREE_JOINT_BVH)
    clip = read_bvh(path)
    assert clip.skeleton.names == ["A", "B", "B_End"]
    assert clip.skeleton.parents.tolist() == [-1, 0, 1]
    assert clip.fps == pytest.approx(10.0)
    X = forward_kinematics(clip.skeleton, clip.motion)
    # frame 0: root at (1, 2, 3) turned 90 deg about z (x -> y, y -> -x); B = root + Rz (0, 2, 0)
    np.testing.assert_allclose(X[0], [[1, 2, 3], [-1, 2, 3], [-1, 2, 4]], atol=1e-9)
    # frame 1: B turns by Rz(90) @ Rx(90) (listed order, intrinsic): (0, 0, 1) -> Rx -> (0, -1, 0) -> Rz -> (1, 0, 0)
    # (the other order would give (0, -1, 0))
    np.testing.assert_allclose(X[1], [[0, 0, 0], [0, 2, 0], [1, 2, 0]], atol=1e-9)
    # frame 2: root Ry(90): (0, 0, 1) -> (1, 0, 0); B's offset (0, 2, 0) is unchanged
    np.testing.assert_allclose(X[2], [[0, 0, 0], [0, 2, 0], [1, 2, 0]], atol=1e-9)


def test_position_channels_add_to_offset(tmp_path):
    text = _THREE_JOINT_BVH.replace("ROOT A\n{\n  OFFSET 0 0 0", "ROOT A\n{\n  OFFSET 0 5 0")
    path = tmp_path / "offset.bvh"
    path.write_text(text)
    X = forward_kinematics(*(lambda c: (c.skeleton, c.motion))(read_bvh(path)))
    np.testing.assert_allclose(X[0, 0], [1, 7, 3])


# ---- fitting -------------------------------------------------------------------------------------


def test_joints_only_forward_matches_body_model(tiny):
    torch.manual_seed(0)
    B = 5
    pose, go = 0.4 * torch.randn(B, 69), torch.randn(B, 3)
    betas, transl = torch.randn(B, tiny.num_betas), torch.randn(B, 3)
    out = tiny(pose, go, betas, transl)
    jb = JointsOnlyBody(tiny)
    from posegen_ns.geometry import axis_angle_to_matrix

    rots = axis_angle_to_matrix(torch.cat([go, pose], 1).view(B, 24, 3))
    for b in range(B):
        J = jb(rots[b: b + 1], jb.rest_joints(betas[b]), transl[b: b + 1])
        torch.testing.assert_close(J[0], out.joints[b], atol=1e-5, rtol=1e-5)


def test_fit_recovers_known_pose(tiny):
    """Targets made by the body itself (all 24 joints, scaled by 1/1.2): without the priors the fit
    reproduces them exactly; the default priors move them by a few mm only."""
    torch.manual_seed(1)
    T = 12
    pose = 0.25 * torch.randn(T, 69)
    p = pose.view(T, 23, 3)
    p[:, [3, 4], 0] = p[:, [3, 4], 0].abs()  # knees bend forwards, without twist (the hinge terms hold)
    p[:, [3, 4], 1:] = 0.0
    p[:, 17, 1] = -p[:, 17, 1].abs()  # elbows bend forwards (left -y, right +y)
    p[:, 18, 1] = p[:, 18, 1].abs()
    go = torch.tensor([[0.2, 2.5, -0.1]]).repeat(T, 1)  # facing backwards
    transl = torch.randn(T, 3) * 0.1
    with torch.no_grad():
        J = tiny(pose, go, None, transl).joints
    res = fit_joints(tiny, J.numpy() / 1.2, list(range(24)), config=FitConfig(pose_prior=0.0, smooth=0.0))
    assert res.scale == pytest.approx(1.2, rel=1e-5)
    assert res.max_error_mm < 0.01
    with torch.no_grad():
        J2 = tiny(res.body_pose, res.global_orient, None, res.transl).joints
    assert (J2 - J).norm(dim=-1).max() < 1e-4
    res = fit_joints(tiny, J.numpy() / 1.2, list(range(24)), config=FitConfig(smooth=0.0))  # measured 3.2 / 17 mm
    assert res.mean_error_mm < 5.0 and res.max_error_mm < 25.0


def test_initial_rotations_orient_the_trunk(tiny):
    """Analytic init: a body turned 90 deg about y is recognised from hips and shoulders alone."""
    go = torch.tensor([[0.0, math.pi / 2, 0.0]])
    J = tiny(torch.zeros(1, 69), go).joints
    idx = [SMPL_JOINT_NAMES.index(n) for n in ("left_hip", "right_hip", "left_shoulder", "right_shoulder")]
    R = initial_rotations(JointsOnlyBody(tiny).rest_joints(), J[:, idx], idx)[0, 0]
    torch.testing.assert_close(R, torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rig", list(RIG_FILES))
def test_fit_error_bound_each_rig(fitted, rig):
    m, _, _ = fitted[rig]
    mean_b, max_b = FIT_BOUNDS_MM[rig]
    assert len(m) == 30 and m.body_pose.shape == (30, 69) and m.global_orient.shape == (30, 3)
    assert m.transl.shape == (30, 3) and m.fit_error_mm.shape == (30,) and m.betas is None
    assert m.meta["rig"] == rig
    assert m.meta["mean_error_mm"] < mean_b, m.meta["mean_error_mm"]
    assert m.meta["max_error_mm"] < max_b, m.meta["max_error_mm"]
    assert float(np.mean(m.meta["segment_error_deg"])) < SEGMENT_BOUND_DEG
    assert 0.8 < m.meta["scale"] < 1.25
    th = m.body_pose.view(-1, 23, 3)
    knees = th[:, [SMPL_JOINT_NAMES.index("left_knee") - 1, SMPL_JOINT_NAMES.index("right_knee") - 1], 0]
    assert knees.min() > -0.1  # no knee bends backwards (flexion is +x in SMPL's frames)


@pytest.mark.parametrize("rig", list(RIG_FILES))
def test_left_right_match_the_bvh(fitted, tiny, rig):
    """The full body forward puts its left hip/wrist on the BVH's left, not its right."""
    m, X, r = fitted[rig]
    names = list(r.joint_map)
    with torch.no_grad():
        J = tiny(m.body_pose, m.global_orient, None, m.transl).joints.numpy()
    for side_joint in ("hip", "wrist", "knee"):
        for s, o in (("left", "right"), ("right", "left")):
            body = J[:, SMPL_JOINT_NAMES.index(f"{s}_{side_joint}")]
            same = np.linalg.norm(body - X[:, names.index(f"{s}_{side_joint}")], axis=-1)
            other = np.linalg.norm(body - X[:, names.index(f"{o}_{side_joint}")], axis=-1)
            assert (same < other).all(), (rig, s, side_joint)
    # and the bvh's left is the subject's left: on +x of the body's facing frame
    assert r.joint_map["left_hip"][0] in ("LeftUpLeg", "LeftHip", "lThigh", "CC_Base_L_Thigh")


def test_fit_betas_mode(tiny):
    m = load_motion(CLIPS / "07_05_slow_walk.bvh", tiny, stride=8, max_frames=20, fit=FitConfig(size="betas"), cache=False)
    assert m.betas is not None and m.betas.shape == (tiny.num_betas,)
    assert m.meta["scale"] == 1.0 and m.meta["mean_error_mm"] < 40.0


def test_load_motion_skips_tpose_and_caches(tiny, tmp_path, monkeypatch):
    import posegen_ns.body.smpl_files as sf

    monkeypatch.setattr(sf, "cache_dir", lambda: tmp_path)
    m = load_motion(CLIPS / "12_01_walk.bvh", tiny, stride=5, max_frames=6)
    assert m.meta["skipped_tpose_frame"] is True and m.meta["frame_indices"] == [1, 6, 11, 16, 21, 26]
    assert m.fps == pytest.approx(120.0 / 5, rel=1e-3)
    assert list(tmp_path.glob("mocap_fits/12_01_walk_*.npz"))
    m2 = load_motion(CLIPS / "12_01_walk.bvh", tiny, stride=5, max_frames=6)
    torch.testing.assert_close(m2.body_pose, m.body_pose)
    assert m2.meta["rig"] == "cmu31"
    m3 = load_motion(CLIPS / "07_05_slow_walk.bvh", tiny, stride=5, max_frames=3)
    assert m3.meta["skipped_tpose_frame"] is False and m3.meta["frame_indices"] == [0, 5, 10]


def test_shipped_clips_and_categories():
    files = sorted(p.name for p in CLIPS.glob("*.bvh"))
    assert len(files) == 6
    assert sum(p.stat().st_size for p in CLIPS.iterdir()) < 3.2e6
    assert (CLIPS / "LICENSE-CMU.txt").is_file()
    assert clip_category("07_05_slow_walk") == "walk_run"
    assert clip_category("12_01_walk.bvh") == "walk_run"
    assert clip_category(CLIPS / "10_03_soccer_kick.bvh") == "sports"
    assert clip_category("02_04") == "jump"
    assert clip_category("no_such_clip") == "unknown"
    rigs = {clip_info(f)["rig"] for f in files}
    assert {"cmu31", "daz", "cc"} <= rigs


def test_load_motion_dir(tiny, tmp_path):
    for name in ("09_06_run.bvh", "10_03_soccer_kick.bvh"):
        (tmp_path / name).write_bytes((CLIPS / name).read_bytes())
    ms = load_motion_dir(tmp_path, tiny, stride=10, max_frames=4, cache=False)
    assert [m.name for m in ms] == ["09_06_run", "10_03_soccer_kick"]
    assert all(isinstance(m, Motion) and len(m) == 4 for m in ms)
    with pytest.raises(PoseGenInputError, match="does not exist"):
        load_motion_dir(tmp_path / "missing", tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoseGenInputError, match="holds no .bvh"):
        load_motion_dir(tmp_path / "empty", tiny)


# ---- AMASS ---------------------------------------------------------------------------------------


def test_amass_round_trip(tiny, tmp_path):
    torch.manual_seed(2)
    T = 7
    go, pose, transl = torch.randn(T, 3), 0.3 * torch.randn(T, 69), torch.randn(T, 3)
    betas = torch.tensor([0.5, -0.3])
    with torch.no_grad():
        J_y = tiny(pose, go, betas[None].repeat(T, 1), transl).joints
    path = write_amass_npz(tmp_path / "clip.npz", tiny, go, pose, transl, betas, fps=60.0)
    # the file is z-up: posing with its raw parameters gives the y-up joints turned back by +90 deg about x
    with np.load(path) as d:
        poses, trans = torch.as_tensor(d["poses"]), torch.as_tensor(d["trans"])
        assert poses.shape == (T, 72) and float(d["mocap_framerate"]) == 60.0
    with torch.no_grad():
        J_z = tiny(poses[:, 3:], poses[:, :3], betas[None].repeat(T, 1), trans).joints
    y_to_z = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    torch.testing.assert_close(J_z, J_y @ y_to_z.T, atol=1e-5, rtol=1e-5)
    assert (J_z[..., 2] - J_z[:, :1, 2]).abs().max() > 0.3  # height is along z there
    m = load_motion(path, tiny, stride=2)
    assert len(m) == 4 and m.fps == 30.0 and m.fit_error_mm is None
    torch.testing.assert_close(m.betas, betas)
    with torch.no_grad():
        J_back = tiny(m.body_pose, m.global_orient, m.betas[None].repeat(4, 1), m.transl).joints
    torch.testing.assert_close(J_back, J_y[::2], atol=1e-5, rtol=1e-5)


def test_amass_smplh_layout_and_defaults(tiny, tmp_path):
    T = 3
    poses = np.zeros((T, 156))
    poses[:, 66:72] = 0.7  # SMPL-H finger values where SMPL has its hand joints
    poses[:, 3:6] = 0.2
    np.savez(tmp_path / "h.npz", poses=poses, trans=np.zeros((T, 3)))
    d = read_amass_npz(tmp_path / "h.npz", tiny)
    assert d["body_pose"].shape == (T, 69) and d["body_pose"][:, 63:].abs().max() == 0
    assert torch.allclose(d["body_pose"][:, :3], torch.full((T, 3), 0.2))
    assert d["betas"] is None and d["fps"] == 120.0 and d["fps_in_file"] is False


@pytest.mark.parametrize("arrays,match", [
    ({"trans": np.zeros((2, 3))}, "lacks field"),
    ({"poses": np.zeros((2, 60)), "trans": np.zeros((2, 3))}, r"'poses' has shape \(2, 60\)"),
    ({"poses": np.zeros((2, 72)), "trans": np.zeros((3, 3))}, "'trans' has shape"),
    ({"poses": np.full((2, 72), np.nan), "trans": np.zeros((2, 3))}, "NaN"),
])
def test_amass_errors(tiny, tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(PoseGenInputError, match=match) as exc:
        load_motion(path, tiny)
    assert "bad.npz" in str(exc.value)


# ---- errors --------------------------------------------------------------------------------------


def test_unknown_rig_error(tiny, tmp_path):
    text = _THREE_JOINT_BVH.replace("ROOT A", "ROOT Pelvis_X").replace("JOINT B", "JOINT Thigh_Y")
    path = tmp_path / "odd_rig.bvh"
    path.write_text(text)
    with pytest.raises(PoseGenInputError) as exc:
        load_motion(path, tiny, cache=False)
    msg = str(exc.value)
    assert "odd_rig.bvh" in msg and "unknown rig" in msg and "Pelvis_X" in msg and "Thigh_Y" in msg
    for rig in ("cmu31", "cmu31_max", "daz", "cc"):
        assert rig + ":" in msg


def _lines(name: str) -> list[str]:
    return (CLIPS / name).read_text().splitlines()


def test_broken_bvh_errors(tmp_path):
    lines = _lines("09_06_run.bvh")
    motion_at = lines.index("MOTION")
    # truncated MOTION section: drop the last 10 frames
    p = tmp_path / "trunc.bvh"
    p.write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(PoseGenInputError, match=r"trunc\.bvh, line \d+: the MOTION section is truncated"):
        read_bvh(p)
    # a frame with a missing value (wrong channel count) -> its line number
    bad = list(lines)
    bad[motion_at + 5] = " ".join(bad[motion_at + 5].split()[:-1])
    p = tmp_path / "count.bvh"
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(PoseGenInputError, match=rf"count\.bvh, line {motion_at + 6}: frame 2 has 95 values .* 96 channels"):
        read_bvh(p, stride=50)
    # a non-numeric value -> its line number, even when the frame is strided out
    bad = list(lines)
    vals = bad[motion_at + 4].split()
    vals[7] = "1.2.3"
    bad[motion_at + 4] = " ".join(vals)
    p = tmp_path / "nan.bvh"
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(PoseGenInputError, match=rf"nan\.bvh, line {motion_at + 5}: frame 1 holds the non-numeric value '1.2.3'"):
        read_bvh(p, stride=2)
    # CHANNELS count disagreeing with the listed channels
    bad = [ln.replace("CHANNELS 3 Zrotation Yrotation Xrotation", "CHANNELS 4 Zrotation Yrotation Xrotation", 1) for ln in lines]
    p = tmp_path / "chan.bvh"
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(PoseGenInputError, match=r"chan\.bvh, line \d+: CHANNELS declares 4 channels but lists 3"):
        read_bvh(p)
    with pytest.raises(PoseGenInputError, match="does not start with HIERARCHY"):
        (tmp_path / "empty.bvh").write_text("hello\n")
        read_bvh(tmp_path / "empty.bvh")


def test_mirrored_bvh_is_rejected(tmp_path):
    """Swapping the Left/Right labels of a file makes its feet point backwards: a clear error."""
    text = (CLIPS / "09_06_run.bvh").read_text()
    swapped = text.replace("Left", "@@").replace("Right", "Left").replace("@@", "Right")
    p = tmp_path / "mirror.bvh"
    p.write_text(swapped)
    clip = read_bvh(p, stride=10)
    with pytest.raises(PoseGenInputError, match=r"mirror\.bvh.*left/right joints look swapped"):
        bvh_targets(clip)


def test_unsupported_extension(tiny, tmp_path):
    p = tmp_path / "motion.fbx"
    p.write_bytes(b"x")
    with pytest.raises(PoseGenInputError, match=r"unsupported extension '\.fbx'"):
        load_motion(p, tiny)


def test_frame_indices_spread_over_the_whole_motion():
    """max_frames takes the first frames by default; with spread, frames evenly spaced over the whole motion
    (first and last kept), so a long clip costs no more than a short one and every part of it is evaluated."""
    from posegen_ns.mocap.bvh import frame_indices

    assert frame_indices(100, 1, 2, 5).tolist() == [1, 3, 5, 7, 9]
    assert frame_indices(100, 1, 2, 5, spread=True).tolist() == [1, 25, 49, 75, 99]
    assert frame_indices(10, 0, 1, 50, spread=True).tolist() == list(range(10))  # fewer frames than the cap
    assert frame_indices(4600, 0, 1, 12, spread=True).size == 12
