"""``ns-posegen-fit``: SMPL parameters from 2D keypoints (posegen_ns.fit), on the tiny body and small images."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.data.capture import read_capture
from posegen_ns.errors import PoseGenInputError
from posegen_ns.fit.keypoints import COCO17_FROM_BLAZEPOSE, COCO17_NAMES, Keypoints, check_keypoints, read_keypoints
from posegen_ns.fit.landmarks import BodyLandmarks, check_body_landmarks
from posegen_ns.fit.objective import jitter_mm, project, sequence_triplets
from posegen_ns.fit.solver import FitConfig, fit_keypoints
from posegen_ns.geometry import intrinsics_from_fov, orbit_extrinsics
from posegen_ns.sampler.losses import joint_limit_penalty

SIZE = 64  # image side, pixels


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


def cameras(num: int, distance: float = 3.0):
    """``num`` cameras on a ring around the origin, 15 degrees above it, 40 degree field of view."""
    az = torch.arange(num, dtype=torch.float32) * (2 * math.pi / num) + 0.3
    R, t = orbit_extrinsics(az, torch.full((num,), 0.26), torch.full((num,), distance), torch.zeros(num, 3))
    K = intrinsics_from_fov(math.radians(40.0), SIZE, SIZE).expand(num, 3, 3).contiguous()
    return K, R, t


def plausible_poses(num: int, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    """``(num, 69)`` random poses with knees and elbows bending the right way (zero joint-limit penalty)."""
    g = torch.Generator().manual_seed(seed)
    pose = scale * torch.randn(num, 23, 3, generator=g)
    pose[:, 3, 0] = pose[:, 3, 0].abs()  # knees bend about +x
    pose[:, 4, 0] = pose[:, 4, 0].abs()
    pose[:, 17, 1] = -pose[:, 17, 1].abs()  # left elbow about -y, right elbow about +y
    pose[:, 18, 1] = pose[:, 18, 1].abs()
    pose = pose.reshape(num, 69)
    assert float(joint_limit_penalty(pose).max()) == 0.0
    return pose


def truth(num: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    orient = torch.tensor([0.0, 0.8, 0.0]) + 0.15 * torch.randn(num, 3, generator=g)
    transl = torch.tensor([0.1, 0.05, -0.1]) + 0.05 * torch.randn(num, 3, generator=g)
    return plausible_poses(num, seed), orient, transl


def exact_keypoints(body, pose, orient, transl, K, R, t, joint_set: str, betas=None) -> Keypoints:
    """The true body's keypoints projected with the cameras (confidence 1)."""
    betas = torch.zeros(body.num_betas) if betas is None else betas
    X = BodyLandmarks(body, joint_set, torch.float64).from_axis_angle(orient.double(), pose.double(), betas.double(), transl.double())
    uv, _ = project(X, K.double(), R.double(), t.double())
    return Keypoints(torch.cat([uv, torch.ones_like(uv[..., :1])], -1).float(), joint_set)


def world_error_mm(body, result, pose, orient, transl) -> torch.Tensor:
    """``(F,)`` mean SMPL-24 joint distance (mm, world frame, no alignment) of the fitted frames."""
    f = result.frames
    with torch.no_grad():
        fit = body(result.body_pose, result.global_orient, result.betas.expand(len(f), -1), result.transl).joints
        gt = body(pose[f], orient[f], torch.zeros(len(f), body.num_betas), transl[f]).joints
    return (fit - gt).norm(dim=-1).mean(-1) * 1000.0


# ---- the body's keypoints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("joint_set", ["smpl24", "h36m17", "coco17"])
def test_landmarks_equal_the_skinned_body(body, joint_set):
    assert check_body_landmarks(body, joint_set) < 1e-5  # metres: the tiny body has no pose correctives


def test_worker_and_package_agree_on_the_blazepose_map():
    from posegen_ns.fit import blazepose2d_worker as worker

    assert worker.COCO17_FROM_BLAZEPOSE == COCO17_FROM_BLAZEPOSE and worker.COCO17_NAMES == COCO17_NAMES


# ---- recovery -----------------------------------------------------------------------------------------------------
def test_recovers_a_known_pose_from_exact_keypoints(body):
    """Exact SMPL-24 keypoints in 3 views, rest-pose start: every joint within 10 mm (world frame, no alignment)."""
    pose, orient, transl = truth(3)
    K, R, t = cameras(3)
    kp = exact_keypoints(body, pose, orient, transl, K, R, t, "smpl24")
    cfg = FitConfig(pose_prior=0.01, iterations=100)
    result = fit_keypoints(body, kp, K, R, t, cfg, clip_names=["a", "b", "c"])
    assert result.num_fitted == 3 and not result.skipped
    err = world_error_mm(body, result, pose, orient, transl)
    assert float(err.max()) < 10.0, err
    assert float(result.residual_px.max()) < 0.5  # pixels of a 64 px image
    assert result.initialisation == "rest pose"


def test_missing_and_low_confidence_keypoints(body):
    """Missing (confidence 0, NaN) and wrong-but-unconfident keypoints are ignored; a frame with too few confident
    keypoints is skipped and listed, the others are still recovered."""
    pose, orient, transl = truth(4, seed=3)
    K, R, t = cameras(3)
    pts = exact_keypoints(body, pose, orient, transl, K, R, t, "smpl24").points.clone()
    g = torch.Generator().manual_seed(0)
    pts[:, 0, 20, :2] += 25.0  # a wrong left wrist in camera 0 ...
    pts[:, 0, 20, 2] = 0.1  # ... with a confidence below min_confidence
    pts[:, 1, 7] = float("nan")  # left ankle missing in camera 1
    pts[:, 2, torch.randperm(24, generator=g)[:6]] = 0.0  # six joints missing in camera 2
    pts[2, :, 3:, 2] = 0.0  # frame 2: only pelvis and hips left
    kp = check_keypoints(pts.numpy(), "smpl24", "test")
    assert float(kp.confidence[:, 1, 7].max()) == 0.0  # NaN became missing
    result = fit_keypoints(body, kp, K, R, t, FitConfig(pose_prior=0.01, iterations=100), clip_names=list("abcd"))
    assert result.frames.tolist() == [0, 1, 3]
    assert list(result.skipped) == [2] and "3 joints seen" in result.skipped[2]
    err = world_error_mm(body, result, pose, orient, transl)
    assert float(err.max()) < 15.0, err

    pts[:, :, :, 2] = 0.0  # nothing usable at all
    with pytest.raises(PoseGenInputError, match="no frame has enough confident keypoints.*frame 0"):
        fit_keypoints(body, Keypoints(pts, "smpl24"), K, R, t)


def test_monocular_sequence_is_smoothed(body):
    """One camera, a slow motion with 1.5 px noise: the smoothness term lowers the fitted joints' jitter
    (mean 3D acceleration) and does not make them worse."""
    T = 8
    a, b = plausible_poses(2, seed=5, scale=0.25)
    s = torch.linspace(0, 1, T)[:, None]
    pose = (1 - s) * a + s * b
    orient = torch.tensor([0.0, 0.6, 0.0]) + s * torch.tensor([0.0, 0.3, 0.0])
    transl = torch.zeros(T, 3) + s * torch.tensor([0.2, 0.0, 0.0])
    K, R, t = cameras(1)
    kp = exact_keypoints(body, pose, orient, transl, K, R, t, "smpl24")
    g = torch.Generator().manual_seed(1)
    kp.points[..., :2] += 1.5 * torch.randn(kp.points[..., :2].shape, generator=g)
    marks = BodyLandmarks(body, "smpl24", torch.float64)
    triplets = sequence_triplets(["clip"] * T, torch.arange(T), 4)
    assert triplets.shape == (T - 2, 5)
    out = {}
    for name, smooth in (("off", 0.0), ("on", 1.0)):
        r = fit_keypoints(body, kp, K, R, t, FitConfig(smooth=smooth, iterations=40), clip_names=["clip"] * T)
        X = marks.from_axis_angle(r.global_orient.double(), r.body_pose.double(), r.betas.double(), r.transl.double())
        out[name] = (jitter_mm(X, triplets), float(world_error_mm(body, r, pose, orient, transl).mean()))
    # measured: jitter 512 -> 39 mm / frame^2 (the true motion's is 4), mean joint error 300 -> 213 mm (one 64 px view)
    assert out["on"][0] < 0.2 * out["off"][0], out
    assert out["on"][1] <= out["off"][1] * 1.05, out


def test_sequence_triplets_respect_clips_and_gaps():
    tri = sequence_triplets(["a", "a", "a", "a", "b", "b", "b"], [0, 1, 3, 10, 0, 1, 2], max_gap=2)
    assert tri.tolist() == [[0, 1, 2, 1, 2], [4, 5, 6, 1, 1]]
    assert sequence_triplets(["a"] * 3, [0, 1, 2], max_gap=0).numel() == 0


# ---- keypoint files -----------------------------------------------------------------------------------------------
def test_keypoint_file_errors(tmp_path):
    path = tmp_path / "kp.npz"
    np.savez(path, keypoints=np.zeros((3, 2, 17, 3), np.float32), joint_set="coco17")
    assert read_keypoints(path, 3, ["c0", "c1"]).points.shape == (3, 2, 17, 3)
    with pytest.raises(PoseGenInputError, match=r"keypoints for 3 frames but the capture has 4 frames"):
        read_keypoints(path, 4, ["c0", "c1"])
    with pytest.raises(PoseGenInputError, match=r"keypoints for 2 cameras but the capture has 1 cameras"):
        read_keypoints(path, 3, ["c0"])
    np.savez(path, keypoints=np.zeros((3, 2, 16, 3), np.float32), joint_set="coco17")
    with pytest.raises(PoseGenInputError, match=r"'keypoints' has shape \(3, 2, 16, 3\); expected \(T, C, 17, 3\)"):
        read_keypoints(path, 3, ["c0", "c1"])
    np.savez(path, keypoints=np.zeros((3, 2, 17, 3), np.float32), joint_set="openpose25")
    with pytest.raises(PoseGenInputError, match=r"'joint_set' is 'openpose25'; use one of \['coco17', 'h36m17', 'smpl24'\]"):
        read_keypoints(path, 3, ["c0", "c1"])
    np.savez(path, keypoints=np.zeros((3, 2, 17, 3), np.float32))
    with pytest.raises(PoseGenInputError, match="lacks the field 'joint_set'"):
        read_keypoints(path, 3, ["c0", "c1"])
    with pytest.raises(PoseGenInputError, match="does not exist"):
        read_keypoints(tmp_path / "none.npz", 3, ["c0"])


def test_coco_json_keypoints(tmp_path):
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0], kp[:, 1], kp[:, 2] = np.arange(17), 2 * np.arange(17), 2
    kp[4, 2] = 0  # unlabelled
    data = {
        "images": [{"id": 7, "file_name": "x/images/cam01/000002.png"}, {"id": 8, "file_name": "cam00/000000.png"}],
        "annotations": [
            {"image_id": 7, "keypoints": kp.reshape(-1).tolist()},
            {"image_id": 8, "keypoints": (kp * 0).reshape(-1).tolist()},
        ],
    }
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(data))
    out = read_keypoints(path, 3, ["cam00", "cam01"])
    assert out.joint_set == "coco17" and out.points.shape == (3, 2, 17, 3)
    assert out.points[2, 1, 5].tolist() == [5.0, 10.0, 1.0] and float(out.points[2, 1, 4, 2]) == 0.0
    assert float(out.confidence[0].sum()) == 0.0
    data["images"][0]["file_name"] = "cam01/000009.png"
    path.write_text(json.dumps(data))
    with pytest.raises(PoseGenInputError, match="is frame 9 but the capture has 3 frames"):
        read_keypoints(path, 3, ["cam00", "cam01"])
    data["images"][0]["file_name"] = "cam07/000001.png"
    path.write_text(json.dumps(data))
    with pytest.raises(PoseGenInputError, match=r"images/<camera>/<frame:06d>\.png"):
        read_keypoints(path, 3, ["cam00", "cam01"])


# ---- the command --------------------------------------------------------------------------------------------------
def write_input_folder(root, body, num_frames=3, num_cameras=2, with_masks=False, native=False):
    """A capture folder without body parameters (a short, steady motion: grey images of the tiny body's silhouette,
    capture.json) and its exact COCO-17 keypoints (``keypoints.npz`` beside it)."""
    from posegen_ns.data.capture_data import write_png
    from posegen_ns.render.mesh import render_mesh

    s = torch.linspace(0, 0.1, num_frames)[:, None]  # a video: little motion from frame to frame
    a, b = plausible_poses(2, seed=7, scale=0.25)
    pose = (1 - s) * a + s * b
    orient = torch.tensor([0.0, 0.8, 0.0]) + s * torch.tensor([0.0, 0.2, 0.0])
    transl = s * torch.tensor([0.1, 0.0, 0.0])
    K, R, t = cameras(num_cameras)
    with torch.no_grad():
        verts = body(pose, orient, torch.zeros(num_frames, body.num_betas), transl).vertices
    names = [f"cam{c:02d}" for c in range(num_cameras)]
    for c, name in enumerate(names):
        out = render_mesh(verts, body.faces, K[c].expand(num_frames, 3, 3), R[c].expand(num_frames, 3, 3),
                          t[c].expand(num_frames, 3), SIZE, SIZE)
        for i in range(num_frames):
            mask = (out.mask[i] > 0.5).numpy()
            write_png(root / "images" / name / f"{i:06d}.png", np.repeat((mask * 200).astype(np.uint8)[..., None], 3, -1))
            if with_masks:
                write_png(root / "masks" / name / f"{i:06d}.png", (mask * 255).astype(np.uint8))
    meta = {"cameras": [{"name": n, "K": K[c].tolist(), "R": R[c].tolist(), "t": t[c].tolist()} for c, n in enumerate(names)]}
    if native:
        meta.update(version=1, body="tiny", width=SIZE, height=SIZE,
                    frames=[{"clip": "walk", "frame": i, "split": "train"} for i in range(num_frames)])
    (root / "capture.json").write_text(json.dumps(meta))
    kp = exact_keypoints(body, pose, orient, transl, K, R, t, "coco17")
    np.savez(root.parent / "keypoints.npz", keypoints=kp.points.numpy(), joint_set="coco17")
    return pose, orient, transl


def quick_fit() -> FitConfig:
    return FitConfig(root_iterations=10, iterations=30, yaw_hypotheses=4)


def test_cli_writes_a_capture_that_round_trips(tmp_path, body):
    from posegen_ns.fit.cli import FitCaptureConfig, main

    src = tmp_path / "in"
    write_input_folder(src, body)
    out = main(FitCaptureConfig(input=src, output_dir=tmp_path / "cap", keypoints=tmp_path / "keypoints.npz",
                                body="tiny", init="rest", fit=quick_fit(), quiet=True))
    cap = read_capture(out)
    assert cap.num_frames == 3 and cap.num_cameras == 2 and cap.body == "tiny" and cap.width == SIZE
    assert cap.clip_names == ["in"] * 3 and cap.split == ["train"] * 3
    assert cap.masks.any() and cap.masks.float().mean() < 0.5  # the fitted body's silhouettes
    meta = json.loads((out / "fit.json").read_text())
    assert meta["initialisation"] == "rest pose" and meta["joint_set"] == "coco17" and meta["skipped"] == []
    assert [f["input_frame"] for f in meta["frames"]] == [0, 1, 2]
    assert all(f["residual_px"] < 2.0 and set(f["residual_px_per_camera"]) == {"cam00", "cam01"} for f in meta["frames"])
    assert meta["masks"].startswith("fitted body silhouette")
    with np.load(out / "keypoints.npz") as npz:
        assert npz["keypoints"].shape == (3, 2, 17, 3) and str(npz["joint_set"]) == "coco17"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap", "in", "keypoints.npz"]  # no temporary left
    with pytest.raises(PoseGenInputError, match="already exists; pass --overwrite"):
        main(FitCaptureConfig(input=src, output_dir=out, keypoints=tmp_path / "keypoints.npz", body="tiny", quiet=True))


def test_a_minimal_folder_without_body_parameters_names_the_fit_command(tmp_path, body):
    """A folder with images and a minimal capture.json (cameras only) fails in read_capture's json check: the error
    still says which command fits the body parameters."""
    src = tmp_path / "in"
    write_input_folder(src, body, num_frames=1, num_cameras=1)
    with pytest.raises(PoseGenInputError, match=r"no body_params.npz.*ns-posegen-fit --input .*in --output-dir CAPTURE"):
        read_capture(src)


def test_cli_with_masks_and_critic_start(tmp_path, body):
    """A native folder (frames, masks) and the critic's start (a randomly initialised HMR critic on the tiny body:
    the mechanics, not its accuracy)."""
    from posegen_ns.critic.loading import CriticConfig
    from posegen_ns.fit.cli import FitCaptureConfig, main

    src = tmp_path / "in"
    write_input_folder(src, body, num_frames=2, num_cameras=1, with_masks=True, native=True)
    with pytest.raises(PoseGenInputError, match=r"ns-posegen-fit --input .*in --output-dir CAPTURE"):
        read_capture(src)  # images and cameras but no body parameters: the error names the command
    critic = CriticConfig(name="hmr", body="tiny", backbone="resnet18", input_size=32)
    out = main(FitCaptureConfig(input=src, output_dir=tmp_path / "cap", keypoints=tmp_path / "keypoints.npz",
                                critic=critic, fit=quick_fit(), quiet=True))
    cap = read_capture(out)
    assert cap.num_frames == 2 and cap.clip_names == ["walk", "walk"]
    meta = json.loads((out / "fit.json").read_text())
    assert meta["initialisation"] == "critic 'hmr' prediction" and meta["masks"] == "input"
    assert torch.equal(cap.masks, read_masks(src, 2))


def read_masks(root, num_frames):
    from posegen_ns.data.capture_data import read_image

    return torch.stack([torch.from_numpy(read_image(root / "masks" / "cam00" / f"{i:06d}.png", grayscale=True) > 127)
                        for i in range(num_frames)])[:, None]


def test_input_folder_errors(tmp_path, body):
    from posegen_ns.fit.capture_io import read_unfitted_capture

    with pytest.raises(PoseGenInputError, match="does not exist"):
        read_unfitted_capture(tmp_path / "nowhere")
    src = tmp_path / "in"
    write_input_folder(src, body, num_frames=2, num_cameras=1)
    meta = json.loads((src / "capture.json").read_text())
    cam = meta["cameras"][0]
    del cam["K"]
    (src / "capture.json").write_text(json.dumps(meta))
    with pytest.raises(PoseGenInputError, match=r"cameras\[0\] needs 'K' .* or 'fov_deg'"):
        read_unfitted_capture(src)
    cam["fov_deg"] = 40.0
    del cam["R"], cam["t"]
    (src / "capture.json").write_text(json.dumps(meta))
    data = read_unfitted_capture(src)  # K from the field of view, the default upright camera
    assert torch.allclose(data.K[0], intrinsics_from_fov(math.radians(40.0), SIZE, SIZE))
    assert data.R[0].tolist() == [[1, 0, 0], [0, -1, 0], [0, 0, -1]] and data.num_frames == 2
    (src / "capture.json").unlink()
    with pytest.raises(PoseGenInputError, match="pass --fov-deg"):
        read_unfitted_capture(src)
    assert read_unfitted_capture(src, fov_deg=40.0).camera_names == ["cam00"]


def test_blazepose_keypoints_need_their_environment(tmp_path, body, monkeypatch):
    from adapters.blackbox import BLAZEPOSE_PYTHON_ENV
    from posegen_ns.fit.cli import FitCaptureConfig, main
    from posegen_ns.fit.detect import detect_blazepose

    images = torch.zeros(2, 1, 16, 16, 3, dtype=torch.uint8)
    kp = detect_blazepose(images, python=sys.executable, worker_args=("--backend", "echo"))  # the transport
    assert kp.joint_set == "coco17" and kp.points.shape == (2, 1, 17, 3) and float(kp.confidence.min()) == 1.0
    monkeypatch.delenv(BLAZEPOSE_PYTHON_ENV, raising=False)
    src = tmp_path / "in"
    write_input_folder(src, body, num_frames=1, num_cameras=1)
    with pytest.raises(PoseGenInputError, match=r"python3 -m venv \.venv-blazepose"):
        main(FitCaptureConfig(input=src, output_dir=tmp_path / "cap", body="tiny", init="rest", quiet=True))
    assert not (tmp_path / "cap").exists()


@pytest.mark.skipif(not os.environ.get("POSEGEN_BLAZEPOSE_PYTHON"), reason="needs POSEGEN_BLAZEPOSE_PYTHON (a Python with mediapipe)")
def test_real_blazepose_finds_the_tiny_body_or_nobody():
    """The real worker starts and answers the protocol (on a blank image it finds nobody: all zeros)."""
    from posegen_ns.fit.detect import detect_blazepose

    kp = detect_blazepose(torch.zeros(1, 1, 64, 64, 3, dtype=torch.uint8))
    assert kp.points.shape == (1, 1, 17, 3) and float(kp.confidence.max()) == 0.0


def test_a_critic_without_smpl_parameters_falls_back_to_the_rest_pose():
    from posegen_ns.critic.loading import CriticConfig
    from posegen_ns.fit.initialise import can_initialise, load_initialising_critic

    said = []
    critic = load_initialising_critic(CriticConfig(name="blazepose", python=sys.executable), "tiny", say=said.append)
    assert critic is None and "starts from the rest pose" in said[0]
    hmr = load_initialising_critic(CriticConfig(name="hmr", body="tiny", backbone="resnet18", input_size=32), "tiny")
    assert can_initialise(hmr)


def test_high_residual_frames_are_flagged():
    from posegen_ns.fit.cli import high_residual_frames

    assert high_residual_frames(torch.tensor([1.0, 1.2, 0.9, 8.0, 2.5])) == [3]
    assert high_residual_frames(torch.tensor([0.1, 0.1, 1.0])) == []  # below the 2 px floor


def test_root_hypotheses_are_chosen_consistently_along_a_sequence():
    from posegen_ns.fit.objective import consistent_choice, sequence_pairs
    from posegen_ns.geometry import axis_angle_to_matrix

    # two hypotheses: facing (0) or turned away (pi); frame 2 alone prefers the turn by a hair
    rot = torch.stack([axis_angle_to_matrix(torch.zeros(4, 3)), axis_angle_to_matrix(torch.tensor([[0.0, math.pi, 0.0]] * 4))])
    cost = torch.tensor([[1.0, 1.0, 5.0, 1.0, 1.0], [9.0, 9.0, 4.0, 9.0, 0.5]])[:, :4]
    pairs = sequence_pairs(["a"] * 4, [0, 1, 2, 3], max_gap=2)
    assert pairs == [(0, 1), (1, 2), (2, 3)]
    assert consistent_choice(cost, rot, pairs, switch=100.0).tolist() == [0, 0, 0, 0]
    assert consistent_choice(cost, rot, [], switch=100.0).tolist() == [0, 0, 1, 0]
    assert consistent_choice(cost, rot, pairs, switch=0.0).tolist() == [0, 0, 1, 0]
