"""Exported dataset formats (SPIN npz, HybrIK COCO-3D JSON in HybrIK's layout) against the manifest and the
body model: 29 joints on the mask, twist angles that rebuild the pose through HybrIK's IK, has_smpl by body,
image names and layout; resume after a killed export and sharded export + merge give the same bytes as one
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_runs import BIN, ENV, export_reference, load_run_pipeline, train_tiny_run
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import H36M_JOINT_NAMES
from adapters.hybrik_ik import hybrik_ik, leaf_vertex_ids, rest_joints_29
from posegen_ns.dataset_formats import (
    H36M_TO_SPIN24, HYBRIK29_JOINT_NAMES, SPIN24_JOINT_NAMES, hybrik_annotation_path, silhouette_boxes,
)
from posegen_ns.labels import camera_frame_smpl
from posegen_ns.errors import PoseGenInputError
from posegen_ns.export import HYBRIK_EVAL_ACTION, export_samples, image_name, merge_shards, sample_seed, shard_batches
from posegen_ns.geometry import axis_angle_to_matrix

# passive OpenMP waiting: on a busy CI machine spinning worker threads slow torch down many times
NUM, BATCH = 12, 2  # 6 batches of 40 x 40 renders



@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="module")
def pipeline(run_config):
    return load_run_pipeline(run_config)


@pytest.fixture(scope="module")
def reference(pipeline, run_config, tmp_path_factory) -> Path:
    return export_reference(pipeline, run_config, tmp_path_factory.mktemp("reference"), NUM, BATCH)


def _dataset_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a dataset except the manifest, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _assert_same_dataset(a: Path, b: Path) -> None:
    fa, fb = _dataset_bytes(a), _dataset_bytes(b)
    assert sorted(fa) == sorted(fb)
    assert len([k for k in fa if k.startswith("images/")]) == NUM
    for key in fa:
        assert fa[key] == fb[key], key
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    assert ma["samples"] == mb["samples"] and ma["num_samples"] == mb["num_samples"] == NUM


# ------------------------------------------------------------------------------------ pure helpers
def test_spin_joint_map_by_name():
    names = {H36M_JOINT_NAMES[i]: SPIN24_JOINT_NAMES[j] for i, j in enumerate(H36M_TO_SPIN24)}
    assert names["right_ankle"] == "Right Ankle" and names["left_wrist"] == "Left Wrist"
    assert names["pelvis"] == "Pelvis (MPII)" and names["head_top"] == "Head (H36M)" and names["thorax"] == "Neck (LSP)"
    # exactly SPIN's global_idx (datasets/preprocess/h36m_train.py): H36M joints 1-3 are the left leg
    assert H36M_TO_SPIN24 == (14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6)


def test_camera_frame_smpl_round_trip():
    body = load_body_model("tiny")
    g = torch.Generator().manual_seed(3)
    B = 3
    pose, orient = 0.3 * torch.randn(B, 69, generator=g), torch.randn(B, 3, generator=g)
    betas, transl = torch.randn(B, body.num_betas, generator=g), torch.randn(B, 3, generator=g)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g))
    t = torch.randn(B, 3, generator=g)
    world = body(pose, orient, betas, transl)
    orient_cam, transl_cam = camera_frame_smpl(orient, transl, world.rest_joints[:, 0], R, t)
    cam = body(pose, orient_cam, betas, transl_cam)
    torch.testing.assert_close(cam.vertices, torch.einsum("bij,bvj->bvi", R, world.vertices) + t[:, None], atol=1e-5, rtol=1e-5)


def test_silhouette_boxes():
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[0, 1:4, 2:6] = True
    mask[0, 4, 0] = True
    boxes, area = silhouette_boxes(mask)
    assert boxes[0].tolist() == [0.0, 1.0, 6.0, 5.0] and area.tolist() == [13.0, 0.0]
    assert torch.isnan(boxes[1]).all()


def test_sample_seed_and_shard_plan():
    assert sample_seed(0, 5) == sample_seed(0, 5) and len({sample_seed(s, i) for s in range(3) for i in range(50)}) == 150
    assert shard_batches(7, 2) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert shard_batches(7, 2, 1, 3) == [(2, 4)] and shard_batches(7, 2, 0, 3) == [(0, 2), (6, 7)]


# ------------------------------------------------------------------------------------ formats
def test_spin_npz_matches_manifest_and_body(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    L = dict(np.load(reference / "labels.npz"))
    spin = dict(np.load(reference / "spin.npz"))
    N = manifest["num_samples"]
    assert N == NUM and spin["imgname"].shape == (N,) and spin["part"].shape == (N, 24, 3) and spin["S"].shape == (N, 24, 4)
    assert spin["pose"].shape == (N, 72) and spin["shape"].shape == (N, 10) and spin["center"].shape == (N, 2)
    assert list(spin["imgname"]) == [s["image"] for s in manifest["samples"]]
    assert all((reference / name).is_file() for name in list(spin["imgname"]) + list(spin["maskname"]))
    have = np.array(H36M_TO_SPIN24)
    absent = np.setdiff1d(np.arange(24), have)
    assert (spin["part"][:, absent] == 0).all() and (spin["S"][:, absent] == 0).all()
    assert (spin["part"][:, have, 2] == 1).all() and (spin["S"][:, have, 3] == 1).all()
    # 2D parts = K-projected 3D joints (S is root-centred at the H36M pelvis, root_cam puts it back)
    X = spin["S"][:, have, :3] + spin["root_cam"][:, None]
    uv = np.einsum("bij,bnj->bni", spin["K"], X / X[..., 2:3])[..., :2]
    np.testing.assert_allclose(uv, spin["part"][:, have, :2], atol=2e-3)
    np.testing.assert_allclose(spin["part"][:, have, :2], L["joints_h36m_2d"], atol=0)
    np.testing.assert_allclose(spin["S"][:, 14, :3], 0, atol=0)  # 'Pelvis (MPII)' is the root
    # left/right by name: SPIN's 'Right Hip' is the body's right hip (SMPL joint 2), not the left (1)
    cam = L["joints_smpl_cam"]
    for spin_j, same, other in ((2, 2, 1), (3, 1, 2), (8, 17, 16), (9, 16, 17)):
        p = spin["S"][:, spin_j, :3] + spin["root_cam"]
        assert (np.linalg.norm(p - cam[:, same], axis=-1) < np.linalg.norm(p - cam[:, other], axis=-1)).all()
    # box: centre and scale = side / 200 of the exported square box
    np.testing.assert_allclose(spin["center"], 0.5 * (L["boxes"][:, :2] + L["boxes"][:, 2:]), atol=1e-5)
    np.testing.assert_allclose(spin["scale"] * 200, L["boxes"][:, 2] - L["boxes"][:, 0], rtol=1e-5)
    # parameter round trip: camera-frame pose + shape reproduce the root-relative camera-frame joints
    body = load_body_model("tiny")
    pose = torch.from_numpy(spin["pose"])
    out = body(pose[:, 3:], pose[:, :3], torch.from_numpy(spin["shape"][:, : body.num_betas]), torch.zeros(N, 3))
    rel = (out.joints - out.joints[:, :1]).numpy()
    np.testing.assert_allclose(rel, cam - cam[:, :1], atol=2e-5)
    np.testing.assert_allclose(spin["shape"][:, body.num_betas:], 0)


def test_coco3d_json_matches_manifest_and_body(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    L = dict(np.load(reference / "labels.npz"))
    coco = json.loads(hybrik_annotation_path(reference).read_text())
    N = manifest["num_samples"]
    assert len(coco["images"]) == len(coco["annotations"]) == N and "H36mSMPL" in coco["info"]["loader"]
    body = load_body_model("tiny")
    for i, (img, ann) in enumerate(zip(coco["images"], coco["annotations"])):
        sample = manifest["samples"][i]
        assert img["id"] == ann["image_id"] == sample["index"] == i
        assert f"images/{img['file_name']}" == sample["image"] and (img["width"], img["height"]) == (40, 40)
        f, c = np.array(img["cam_param"]["f"]), np.array(img["cam_param"]["c"])
        j17 = np.array(ann["h36m_joints"]).reshape(17, 3)  # millimetres, camera frame
        j29 = np.array(ann["smpl_joints"]).reshape(29, 3)  # HybrIK's 29 joints, not 24 + padding
        j24 = j29[:24]
        np.testing.assert_allclose(j17 / 1000, L["joints_h36m_cam"][i], atol=1e-6)
        np.testing.assert_allclose(j24 / 1000, L["joints_smpl_cam"][i], atol=1e-6)
        np.testing.assert_allclose(j29 / 1000, L["joints_hybrik29_cam"][i], atol=1e-6)
        np.testing.assert_allclose(ann["root_coord"], j17[0], atol=0)
        # HybrIK's cam2pixel on the 3D joints gives the exported 2D joints
        np.testing.assert_allclose(j17[:, :2] / j17[:, 2:] * f + c, L["joints_h36m_2d"][i], atol=2e-3)
        # parameter round trip: thetas / betas / trans pose the body in the camera frame
        theta = torch.tensor(ann["thetas"], dtype=torch.float32)[None]
        betas = torch.tensor(ann["betas"], dtype=torch.float32)[None, : body.num_betas]
        trans = torch.tensor(ann["smpl_param"]["trans"], dtype=torch.float32)[None]
        assert ann["smpl_param"]["pose"] == ann["thetas"] and ann["smpl_param"]["shape"] == ann["betas"]
        out = body(theta[:, 3:], theta[:, :3], betas, trans)
        np.testing.assert_allclose(out.joints[0].numpy() * 1000, j24, atol=0.05)
        # bbox = tight box of the written mask, xywh
        mask = cv2.imread(str(reference / sample["mask"]), cv2.IMREAD_GRAYSCALE) > 127
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["area"] == mask.sum()


def _hybrik_action(path: str) -> int:
    """The Human3.6M action HybrIK's H36M evaluation reads from an image path (``H36mSMPL.evaluate_*``:
    the two characters after the first 'act' + 1), as an index into its 15 actions (2..16 -> 0..14)."""
    k = path.find("act")
    return int(path[k + 4:k + 6]) - 2


def test_hybrik_layout_and_image_names(reference):
    """HybrIK's H36mSMPL reads ROOT/annotations/<name>_protocol_<P>.json and ROOT/images/<file_name>; its
    evaluation parses the action from the image path; names depend only on (index, N)."""
    manifest = json.loads((reference / "manifest.json").read_text())
    p2, p1 = hybrik_annotation_path(reference, 2), hybrik_annotation_path(reference, 1)
    assert p2 == reference / "annotations" / "posegen_protocol_2.json" and p1.read_bytes() == p2.read_bytes()
    assert not (reference / "coco3d.json").exists() and sorted(p.name for p in (reference / "annotations").iterdir()) == [
        "posegen_protocol_1.json", "posegen_protocol_2.json"]
    coco = json.loads(p2.read_text())
    spin = np.load(reference / "spin.npz")
    assert coco["info"]["smpl_joint_names"] == list(HYBRIK29_JOINT_NAMES) == manifest["joint_sets"]["hybrik29"]
    for i, img in enumerate(coco["images"]):
        assert img["file_name"] == image_name(i, NUM) and (reference / "images" / img["file_name"]).is_file()
        assert (reference / "masks" / img["file_name"]).is_file() and spin["imgname"][i] == f"images/{img['file_name']}"
        abs_path = os.path.join(str(reference), "images", img["file_name"])  # as H36mSMPL builds it
        if "act" not in str(reference):
            assert _hybrik_action(abs_path) == HYBRIK_EVAL_ACTION - 2 == 0
        assert _hybrik_action(img["file_name"]) == 0
        assert not any(b in img["file_name"] for b in ("s_09_act_05_subact_02_ca", "s_09_act_10_subact_02_ca",
                                                      "s_09_act_13_subact_01_ca"))  # HybrIK's block_list
    assert sorted(p.name for p in (reference / "images").iterdir()) == [image_name(i, NUM) for i in range(NUM)]
    assert image_name(7, 10**7) == "act_02_0000007.png" and image_name(7, 12) == image_name(7, 999_999)


def test_hybrik_29_joints_project_onto_mask(reference):
    """The 5 leaves are real body points (the tiny body's leaf vertices, posed), visible targets on the
    silhouette, not zero padding; 2D labels = K-projected 3D labels."""
    coco = json.loads(hybrik_annotation_path(reference).read_text())
    L = dict(np.load(reference / "labels.npz"))
    assert L["joints_hybrik29_cam"].shape == (NUM, 29, 3) and L["joints_hybrik29_2d"].shape == (NUM, 29, 2)
    np.testing.assert_array_equal(L["joints_hybrik29_2d"][:, :24], L["joints_smpl_2d"])
    body = load_body_model("tiny")
    ids = leaf_vertex_ids(body)
    kernel = np.ones((3, 3), np.uint8)
    for i, (img, ann) in enumerate(zip(coco["images"], coco["annotations"])):
        j29 = np.array(ann["smpl_joints"]).reshape(29, 3)
        f, c = np.array(img["cam_param"]["f"]), np.array(img["cam_param"]["c"])
        uv = j29[:, :2] / j29[:, 2:] * f + c  # HybrIK's cam2pixel
        np.testing.assert_allclose(uv, L["joints_hybrik29_2d"][i], atol=2e-3)
        # leaves: the posed leaf vertices, away from their parents (a finite bone, not padding)
        theta = torch.tensor(ann["thetas"])[None]
        out = body(theta[:, 3:], theta[:, :3], torch.tensor(ann["betas"])[None, : body.num_betas],
                   torch.tensor(ann["smpl_param"]["trans"])[None])
        np.testing.assert_allclose(out.vertices[0, ids].numpy() * 1000, j29[24:], atol=0.05)
        assert (np.linalg.norm(j29[24:] - j29[[15, 22, 23, 10, 11]], axis=-1) > 10).all()  # mm
        mask = cv2.imread(str(reference / "masks" / img["file_name"]), cv2.IMREAD_GRAYSCALE) > 127
        near = cv2.dilate(mask.astype(np.uint8), kernel) > 0  # leaves lie on the surface: 1 px of slack
        px = np.floor(uv).astype(int)
        inside = (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < mask.shape[1]) & (px[:, 1] < mask.shape[0])
        assert inside.all(), i
        assert near[px[:, 1], px[:, 0]].all(), (i, np.nonzero(~near[px[:, 1], px[:, 0]])[0].tolist())


def test_hybrik_twist_rebuilds_pose_and_has_smpl(reference):
    """angle_twist (HybrIK's twist targets) + the 29 joints rebuild the exported camera-frame SMPL pose through
    HybrIK's swing-twist composition (its adaptive IK); the tiny body is not SMPL: has_smpl = 0 everywhere."""
    coco = json.loads(hybrik_annotation_path(reference).read_text())
    L = dict(np.load(reference / "labels.npz"))
    spin = dict(np.load(reference / "spin.npz"))
    assert (L["has_smpl"] == 0).all() and (spin["has_smpl"] == 0).all() and spin["has_smpl"].shape == (NUM,)
    body = load_body_model("tiny")
    for i, ann in enumerate(coco["annotations"]):
        assert ann["has_smpl"] == 0
        tw = ann["angle_twist"]
        angle, cos, sin = (np.array(tw[k]) for k in ("angle", "cos", "sin"))
        assert angle.shape == cos.shape == sin.shape == (23,) and (angle > -10).all()  # all valid (HybrIK: > -10)
        np.testing.assert_allclose(cos, np.cos(angle), atol=1e-6)
        np.testing.assert_allclose(sin, np.sin(angle), atol=1e-6)
        np.testing.assert_allclose(angle, L["twist_angle"][i], atol=1e-6)
        j29 = torch.tensor(ann["smpl_joints"], dtype=torch.float64).reshape(1, 29, 3) / 1000
        betas = torch.tensor(ann["betas"], dtype=torch.float64)[None, : body.num_betas]
        rest = rest_joints_29(body.double(), betas)
        phis = torch.tensor(np.stack([cos, sin], -1))[None]
        rot = hybrik_ik(j29, phis, rest, adaptive=True).rotmat[0]
        theta = torch.tensor(ann["thetas"], dtype=torch.float64).reshape(24, 3)
        torch.testing.assert_close(rot, axis_angle_to_matrix(theta), atol=2e-4, rtol=0)


# ------------------------------------------------------------------------------------ resume, shards
def test_killed_export_resumes_to_identical_dataset(run_config, pipeline, reference, tmp_path, capsys):
    out = tmp_path / "dataset"
    partial = tmp_path / ".dataset.partial"
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(
        [str(BIN / "ns-posegen-export"), "--load-config", str(run_config), "--output-dir", str(out),
         "--num-samples", str(NUM), "--batch-size", str(BATCH)], stdout=log, stderr=subprocess.STDOUT, env=ENV,
    )
    deadline = time.time() + 120
    while not list((partial / ".batches").glob("labels-*.npz")):
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((partial / ".batches").glob("labels-*.npz")))
    assert not out.exists() and 1 <= done < NUM // BATCH
    export_samples(pipeline, out, NUM, batch_size=BATCH, run_config=run_config)  # resumes
    assert f"{done * BATCH} of {NUM} samples already written" in capsys.readouterr().out
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "log.txt"]
    _assert_same_dataset(out, reference)


def test_interrupted_export_keeps_partial_and_checks_settings(run_config, pipeline, reference, tmp_path):
    out = tmp_path / "small"
    original = pipeline.render_and_score
    calls = {"n": 0}

    def interrupt_on_second(sample):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(sample)

    pipeline.render_and_score = interrupt_on_second
    try:
        with pytest.raises(KeyboardInterrupt):
            export_samples(pipeline, out, 4, batch_size=BATCH, run_config=run_config)
    finally:
        pipeline.render_and_score = original
    assert (tmp_path / ".small.partial" / "progress.json").is_file() and not out.exists()
    with pytest.raises(PoseGenInputError, match="partial export with other settings.*seed: 0 vs 1"):
        export_samples(pipeline, out, 4, batch_size=BATCH, seed=1, run_config=run_config)
    export_samples(pipeline, out, 4, batch_size=BATCH, run_config=run_config)
    # sample i depends only on (seed, i): the first 4 samples of the 12-sample reference
    small, ref = np.load(out / "labels.npz"), np.load(reference / "labels.npz")
    for key in small.files:
        np.testing.assert_array_equal(small[key], ref[key][:4], err_msg=key)
    name = image_name(3, 4)
    assert name == image_name(3, NUM) == "act_02_000003.png"
    assert (out / "images" / name).read_bytes() == (reference / "images" / name).read_bytes()


def test_sharded_export_merges_to_identical_dataset(run_config, pipeline, reference, tmp_path):
    shards = tmp_path / "shards"
    export_samples(pipeline, shards, NUM, batch_size=BATCH, run_config=run_config, shard_index=0, num_shards=3)
    with pytest.raises(PoseGenInputError, match=r"shards \[1, 2\] of 3 are missing"):
        merge_shards(shards, tmp_path / "merged")
    for k in (1, 2):
        export_samples(pipeline, shards, NUM, batch_size=BATCH, run_config=run_config, shard_index=k, num_shards=3)
    part = np.load(shards / "shard-1" / "labels.npz")
    assert part["sample_index"].tolist() == [2, 3, 8, 9]
    merged = merge_shards(shards, tmp_path / "merged")
    _assert_same_dataset(merged, reference)
    assert json.loads((merged / "manifest.json").read_text())["shard"] is None
    with pytest.raises(PoseGenInputError, match="exists; pass --overwrite"):
        merge_shards(shards, merged)
