"""ns-posegen-eval: ground truth per joint set, cameras, oracle / transformed / random critics through the
CLI, JSON output, benchmark loaders in SPIN's npz layout, crops and clear errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import posegen_ns.evaluate as ev
from posegen_ns.critic.evaluation import METRIC_KEYS
from adapters import registry
from adapters.protocol import Critic
from posegen_ns import benchmarks as bm
from posegen_ns.body import load_body_model

from posegen_ns.data.appearance import make_body_appearance, render_vertices
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, project_points
from posegen_ns.mocap import shipped_clips_dir

CLIPS = ("09_06_run", "02_04_jump_balance_ccrig")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def body():
    return load_body_model("tiny")


@pytest.fixture(scope="module")
def poses_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("poses")
    for c in CLIPS:
        shutil.copy(shipped_clips_dir() / f"{c}.bvh", d / f"{c}.bvh")
    return d


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory, poses_dir) -> Path:
    from posegen_ns.data.default_capture import build_default_capture

    out = tmp_path_factory.mktemp("cap") / "capture"
    return build_default_capture(out, mocap_dir=poses_dir, body="tiny", num_cameras=2, resolution=32, frame_stride=24,
                                 max_frames_per_clip=2, verbose=False)


def _cfg(capture_dir, poses_dir, **kw) -> ev.EvalConfig:
    base = dict(capture=capture_dir, poses=poses_dir, stride=40, max_frames=2, cameras=3, elevations=(0.0, 30.0),
                resolution=48, batch_size=5, device="cpu", quiet=True)
    return ev.EvalConfig(**(base | kw))


class OracleCritic(Critic):
    """Returns ``transform(gt)`` for the batch being scored (``pending`` is set by a spy on the batch
    iterator), or replays ``targets`` in order."""

    joint_set = "h36m17"
    input_size = 32

    def __init__(self, joint_set="h36m17", targets=None, transform=None):
        super().__init__()
        self.joint_set = joint_set
        self.targets, self.pos, self.pending = targets, 0, None
        self.transform = transform or (lambda x: x)
        self.calls = []
        self.register_buffer("anchor", torch.zeros(1))

    def forward(self, images, boxes):
        B = images.shape[0]
        assert boxes.shape == (B, 4) and images.shape[1] == 3
        self.calls.append(tuple(images.shape))
        if self.targets is not None:
            out, self.pos = self.targets[self.pos : self.pos + B], self.pos + B
        else:
            out = self.pending
        assert out.shape[0] == B
        return self.transform(out.float())


def _register(monkeypatch, critic: Critic, name: str = "oracle") -> None:
    """Register ``critic`` under ``name`` at runtime: a module in sys.modules + a registry entry."""
    mod = types.ModuleType(f"_posegen_test_{name}")
    mod.load = lambda checkpoint=None, **kw: critic
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(registry.BUILTIN_CRITICS, name, f"{mod.__name__}:load")


def _spy_batches(monkeypatch, oracle: OracleCritic, seen: list) -> None:
    original = ev.iter_eval_batches

    def spy(*args, **kwargs):
        for batch in original(*args, **kwargs):
            oracle.pending = batch.gt
            seen.append(batch)
            yield batch

    monkeypatch.setattr(ev, "iter_eval_batches", spy)


def _similarity(x: torch.Tensor) -> torch.Tensor:
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.2]))
    return 1.3 * torch.einsum("ij,bnj->bni", R, x) + torch.tensor([0.1, -0.2, 0.05])


def test_view_ring(body):
    az, el, names = ev.view_ring(4, (0.0, 30.0))
    assert names[:2] == ["az000_el+00", "az090_el+00"] and names[-1] == "az270_el+30" and len(names) == 8
    torch.testing.assert_close(az[:4], torch.tensor([0, 0.5, 1.0, 1.5], dtype=torch.float64) * math.pi)
    with pytest.raises(PoseGenInputError, match="--cameras"):
        ev.view_ring(0, (0.0,))


def test_batches_show_the_labelled_person(body, poses_dir):
    """Boxes from the GT joints hold the rendered person; the images are the subject, not empty."""
    from posegen_ns.mocap import load_motion

    motion = load_motion(poses_dir / f"{CLIPS[0]}.bvh", body, stride=40, max_frames=2)
    betas = torch.zeros(body.num_betas)
    views = ev.ViewConfig(num_cameras=4, elevations_deg=(10.0,), resolution=48)
    batches = list(ev.iter_eval_batches([motion], body, betas, ev.mesh_renderer(body, betas), "h36m17", views, batch_size=3))
    assert sum(b.gt.shape[0] for b in batches) == 2 * 4
    assert torch.cat([b.frame_index for b in batches]).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.cat([b.view_index for b in batches]).tolist() == [0, 1, 2, 3] * 2
    for b in batches:
        assert b.images.shape[1:] == (3, 48, 48) and b.gt.shape[1:] == (17, 3)
        torch.testing.assert_close(b.gt[:, 0], torch.zeros_like(b.gt[:, 0]))
        mask = b.images.sum(1) > 0  # (B, H, W) black background
        ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(48) + 0.5, indexing="ij")
        for i in range(mask.shape[0]):
            x0, y0, x1, y1 = b.boxes[i].tolist()
            inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            assert mask[i].sum() > 20
            assert (mask[i] & inside).sum() / mask[i].sum() > 0.97


# ---- the CLI on a tiny capture ------------------------------------------------------------------------
def test_oracle_critic_scores_zero(capture_dir, poses_dir, tmp_path, monkeypatch):
    oracle = OracleCritic()
    _register(monkeypatch, oracle)
    seen: list = []
    _spy_batches(monkeypatch, oracle, seen)
    out = tmp_path / "eval.json"
    result = ev.run(_cfg(capture_dir, poses_dir, critic="oracle", checkpoint="none", json=out))
    data = json.loads(out.read_text())
    assert set(data) == {"overall", "clips", "views", "config"}
    assert data["overall"]["mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert data["overall"]["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert data["overall"]["pck150"] == 1.0 and data["overall"]["auc"] == 1.0
    assert list(data["clips"]) == sorted(CLIPS)  # file order
    for name, row in data["clips"].items():
        assert row["frames"] == 2 and row["num_images"] == 2 * 6
    assert data["overall"]["num_images"] == 2 * 2 * 6 == sum(b.gt.shape[0] for b in seen)
    assert len(data["views"]) == 6 and all(v["num_images"] == 4 for v in data["views"].values())
    assert data["config"]["critic"] == "oracle" and data["config"]["resolution"] == 48
    assert result["overall"]["num_images"] == data["overall"]["num_images"]
    assert all(shape[1:] == (3, 48, 48) for shape in oracle.calls)


def test_similarity_copy_has_mpjpe_but_no_pa_mpjpe(capture_dir, poses_dir, monkeypatch, capsys):
    oracle = OracleCritic(transform=_similarity)
    _register(monkeypatch, oracle)
    _spy_batches(monkeypatch, oracle, [])
    result = ev.run(_cfg(capture_dir, poses_dir, critic="oracle", checkpoint="none", max_frames=1))
    assert result["overall"]["mpjpe_mm"] > 50.0
    assert result["overall"]["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert result["overall"]["pck150"] < 1.0
    printed = capsys.readouterr().out
    assert "overall" in printed and all(c in printed for c in CLIPS) and "PA-MPJPE" in printed


def test_exclusion_and_lsp_critic(capture_dir, poses_dir, monkeypatch):
    """--exclude / --exclude-capture-clips drop clips; an LSP-14 critic is scored on LSP-14 joints."""
    oracle = OracleCritic(joint_set="lsp14")
    _register(monkeypatch, oracle)
    seen: list = []
    _spy_batches(monkeypatch, oracle, seen)
    result = ev.run(_cfg(capture_dir, poses_dir, critic="oracle", checkpoint="none", exclude=("*jump*",)))
    assert list(result["clips"]) == ["09_06_run"] and result["overall"]["mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert seen[0].gt.shape[1:] == (14, 3) and seen[0].root == "midhip_lsp"
    with pytest.raises(PoseGenInputError, match="excluded"):
        ev.run(_cfg(capture_dir, poses_dir, critic="oracle", checkpoint="none", exclude_capture_clips=True))


def test_default_hmr_with_random_weights_via_console_script(capture_dir, poses_dir, tmp_path):
    out = tmp_path / "hmr.json"
    proc = subprocess.run(
        [str(BIN / "ns-posegen-eval"), "--capture", str(capture_dir), "--poses", str(poses_dir), "--critic-body", "tiny",
         "--checkpoint", "none", "--backbone", "resnet18", "--input-size", "32", "--stride", "40", "--max-frames", "2",
         "--cameras", "2", "--elevations", "10", "--resolution", "40", "--device", "cpu", "--quiet", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for row in [data["overall"], *data["clips"].values()]:
        assert all(np.isfinite(row[k]) for k in METRIC_KEYS)
        assert row["mpjpe_mm"] > 1.0 and 0.0 <= row["pck150"] <= 1.0
    assert data["overall"]["num_images"] == 2 * 2 * 2
    assert data["config"]["joint_set"] == "h36m17"
    assert "overall" in proc.stdout and CLIPS[0] in proc.stdout


def test_load_config_renders_the_trained_field_and_uses_the_run_critic(body, poses_dir, tmp_path, monkeypatch):
    """--load-config: the subject, renderer and (with --critic run) critic come from the run."""
    calls = []

    class Model:
        config = types.SimpleNamespace(body="tiny")
        betas = torch.zeros(body.num_betas)

        def __init__(self):
            self.body = body

        def render(self, body_pose, global_orient, transl, K, R, t, W, H):
            calls.append((body_pose.shape[0], W, H))
            return types.SimpleNamespace(rgb=torch.full((body_pose.shape[0], H, W, 3), 0.5))

    oracle = OracleCritic()
    pipeline = types.SimpleNamespace(model=Model(), datamanager=types.SimpleNamespace(train_capture=None),
                                     image_hw=(36, 36), critic=oracle)
    cfg_file = tmp_path / "config.yml"
    cfg_file.write_text("fake")
    fake = types.ModuleType("nerfstudio.utils.eval_utils")  # stands in for nerfstudio's eval_setup (and its import time)
    fake.eval_setup = lambda path, test_mode, update_config_callback=None: (None, pipeline, None, None)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    _spy_batches(monkeypatch, oracle, [])
    result = ev.run(ev.EvalConfig(load_config=cfg_file, poses=poses_dir / f"{CLIPS[0]}.bvh", critic="run", stride=40,
                                  max_frames=2, cameras=2, elevations=(0.0,), batch_size=3, device="cpu", quiet=True))
    assert result["overall"]["mpjpe_mm"] == pytest.approx(0.0, abs=1e-6) and result["overall"]["num_images"] == 4
    assert sum(c[0] for c in calls) == 4 and all(c[1:] == (36, 36) for c in calls)
    with pytest.raises(PoseGenInputError, match="--load-config"):
        ev.run(ev.EvalConfig(capture=tmp_path, poses=poses_dir, critic="run", quiet=True))


def test_clear_errors(capture_dir, poses_dir, tmp_path):
    with pytest.raises(PoseGenInputError, match="does not exist"):
        ev.run(_cfg(capture_dir, tmp_path / "nowhere", critic="hmr", checkpoint="none"))
    with pytest.raises(PoseGenInputError, match="--capture DIR"):
        ev.run(ev.EvalConfig(poses=poses_dir, quiet=True))
    with pytest.raises(PoseGenInputError, match="--poses"):
        ev.run(ev.EvalConfig(capture=capture_dir, quiet=True))
    with pytest.raises(PoseGenInputError, match="unknown critic 'nope'"):
        ev.run(_cfg(capture_dir, poses_dir, critic="nope", checkpoint="none"))
    with pytest.raises(PoseGenInputError, match="--checkpoint"):
        ev.run(_cfg(capture_dir, poses_dir, critic_body="tiny", checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(PoseGenInputError, match="not both"):
        ev.run(ev.EvalConfig(benchmark="3dpw", poses=poses_dir, quiet=True))
    with pytest.raises(PoseGenInputError, match="--dataset-npz"):
        ev.run(ev.EvalConfig(benchmark="3dpw", quiet=True))


# ---- benchmarks ---------------------------------------------------------------------------------------
def _write_benchmark(root: Path, body, kind: str, n: int = 5, size: tuple[int, int] = (72, 60)) -> tuple[Path, torch.Tensor, dict]:
    """A tiny benchmark in SPIN's layout: renders of the tiny body (camera = world, R = I), their
    root-centred H36M-17 joints; returns (npz path, joints (n, 17, 3), arrays)."""
    g = torch.Generator().manual_seed(1)
    W, H = size
    pose = torch.zeros(n, 72)
    pose[:, 3:] = 0.25 * torch.randn(n, 69, generator=g)
    # upright in the OpenCV camera frame (rotate by pi about x), random yaw
    yaw = (torch.rand(n, generator=g) - 0.5) * 2.0
    R_go = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0])) @ axis_angle_to_matrix(
        torch.stack([torch.zeros(n), yaw, torch.zeros(n)], -1))
    from posegen_ns.geometry import matrix_to_axis_angle

    pose[:, :3] = matrix_to_axis_angle(R_go)
    shape = torch.zeros(n, 10)
    shape[:, : body.num_betas] = 0.5 * torch.randn(n, body.num_betas, generator=g)
    out = body(pose[:, 3:], pose[:, :3], shape[:, : body.num_betas], torch.tensor([[0.1, 0.05, 3.5]]).expand(n, 3))
    K = torch.tensor([[70.0, 0, W / 2], [0, 70.0, H / 2], [0, 0, 1]]).expand(n, 3, 3)
    R, t = torch.eye(3).expand(n, 3, 3), torch.zeros(n, 3)
    img = render_vertices(out.vertices, body.faces, make_body_appearance(body), K, R, t, W, H).rgb
    uv, _ = project_points(out.joints_h36m, K, R, t)
    lo, hi = uv.amin(1), uv.amax(1)
    center = (0.5 * (lo + hi)).numpy()
    scale = (1.2 * (hi - lo).amax(-1) / 200.0).numpy()
    joints = (out.joints_h36m - out.joints_h36m[:, :1]).double()
    seq = ["seqA" if i < n // 2 else "seqB" for i in range(n)]
    if kind == "h36m":
        names = [f"images/S9_{'Walking_1' if i % 2 else 'Directions'}.54138969_{i:06d}.png" for i in range(n)]
    elif kind == "3dhp":
        names = [f"mpi_inf_3dhp_test_set/TS{1 + i % 2}/imageSequence/img_{i:06d}.png" for i in range(n)]
    else:
        names = [f"imageFiles/{s}/image_{i:05d}.png" for i, s in enumerate(seq)]
    for name, im in zip(names, img):
        p = root / "images_root" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor((im.numpy() * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    arrays = {"imgname": np.array(names), "center": center, "scale": scale}
    if kind == "3dpw":
        arrays |= {"pose": pose.numpy(), "shape": shape.numpy(), "gender": np.array(["m", "f"] * (n // 2) + ["m"] * (n % 2))}
    else:
        S = np.zeros((n, 24, 4))
        S[:, list(bm.J24_FROM_H36M17), :3] = joints.numpy()
        S[:, list(bm.J24_FROM_H36M17), 3] = 1.0
        arrays["S"] = S
    path = root / f"{kind}.npz"
    np.savez(path, **arrays)
    return path, joints, arrays


@pytest.mark.parametrize("kind,protocol", [("h36m", "h36m-p2"), ("3dhp", "mpi-inf-3dhp"), ("3dpw", "3dpw")])
def test_benchmark_loader_oracle_and_similarity(body, tmp_path, kind, protocol):
    npz, joints, _ = _write_benchmark(tmp_path, body, kind)
    data = bm.load_benchmark(protocol, npz, bodies={"neutral": body})
    torch.testing.assert_close(data.joints_h36m.double(), joints, atol=1e-5, rtol=1e-5)
    expected_groups = {"h36m": ["Directions", "Walking"], "3dhp": ["TS1", "TS2"], "3dpw": ["seqA", "seqB"]}[kind]
    assert sorted(set(data.groups)) == expected_groups
    res = bm.evaluate_benchmark(OracleCritic(targets=joints.float()), data, tmp_path / "images_root", batch_size=2)
    o = res["overall"]
    assert o["mpjpe_mm"] == pytest.approx(0.0, abs=1e-3) and o["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert o["pck150"] == 1.0 and o["num_images"] == 5 and o["headline"] == bm.PROTOCOLS[protocol].metrics[0]
    assert sorted(res["clips"]) == expected_groups
    res = bm.evaluate_benchmark(OracleCritic(targets=_similarity(joints.float())), data, tmp_path / "images_root")
    assert res["overall"]["mpjpe_mm"] > 50.0 and res["overall"]["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    if kind == "3dhp":
        assert res["overall"]["pa_pck150"] == 1.0 and res["overall"]["pck150"] < 1.0


def test_protocol_metrics_follow_spin_joint_selection():
    """Moving only the predicted pelvis by 10 mm: SPIN's 14-joint protocols subtract it from all 14
    joints (10 mm), the 17-joint protocol errs on the 16 other joints (16/17 * 10 mm)."""
    torch.manual_seed(0)
    gt = torch.randn(4, 17, 3) * 0.3
    gt = gt - gt[:, :1]
    pred = gt.clone()
    pred[:, 0, 0] += 0.010
    m14 = bm.protocol_metrics(pred, gt, bm.PROTOCOLS["h36m-p1"], "h36m17")
    m17 = bm.protocol_metrics(pred, gt, bm.PROTOCOLS["mpi-inf-3dhp"], "h36m17")
    torch.testing.assert_close(m14["mpjpe_mm"], torch.full((4,), 10.0, dtype=torch.float64))
    torch.testing.assert_close(m17["mpjpe_mm"], torch.full((4,), 160.0 / 17, dtype=torch.float64))
    with pytest.raises(PoseGenInputError, match="lsp14"):
        bm.protocol_metrics(pred[:, :14], gt, bm.PROTOCOLS["mpi-inf-3dhp"], "lsp14")
    with pytest.raises(PoseGenInputError, match="smpl24"):
        bm.protocol_metrics(torch.zeros(4, 24, 3), gt, bm.PROTOCOLS["3dpw"], "smpl24")


def test_3dpw_gendered_bodies(body, tmp_path):
    npz, joints, arrays = _write_benchmark(tmp_path, body, "3dpw")
    female = load_body_model("tiny")
    female.smpl.v_template.mul_(0.8)  # a different body for 'f' rows
    data = bm.load_benchmark("3dpw", npz, bodies={"neutral": body, "m": body, "f": female})
    is_f = torch.as_tensor(arrays["gender"] == "f")
    torch.testing.assert_close(data.joints_h36m[~is_f].double(), joints[~is_f], atol=1e-5, rtol=1e-5)
    pose, shape = torch.as_tensor(arrays["pose"][is_f.numpy()]), torch.as_tensor(arrays["shape"][is_f.numpy()])
    jf = female(pose[:, 3:], pose[:, :3], shape[:, : female.num_betas]).joints_h36m
    torch.testing.assert_close(data.joints_h36m[is_f], jf - jf[:, :1], atol=1e-5, rtol=1e-5)
    assert (data.joints_h36m[is_f].double() - joints[is_f]).norm(dim=-1).amax() > 0.02


def test_crop_square_numbers():
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    # the whole image: centre (4, 4), side 8 = 200 * 0.04
    np.testing.assert_array_equal(bm.crop_square(img, np.array([4.0, 4.0]), 0.04, 8), img)
    # the top-left 4x4 block, and a box half outside the image reads zeros there
    np.testing.assert_array_equal(bm.crop_square(img, np.array([2.0, 2.0]), 0.02, 4), img[:4, :4])
    out = bm.crop_square(img, np.array([0.0, 0.0]), 0.02, 4)
    np.testing.assert_array_equal(out[2:, 2:], img[:2, :2])
    assert (out[:2] == 0).all() and (out[:, :2] == 0).all()
    # shrinking by 2 averages 2x2 blocks
    small = bm.crop_square(img.astype(np.float32), np.array([4.0, 4.0]), 0.04, 4)
    np.testing.assert_allclose(small[0, 0], img[:2, :2].astype(np.float32).mean((0, 1)))


def test_benchmark_crops_centre_the_person(body, tmp_path):
    npz, _, _ = _write_benchmark(tmp_path, body, "h36m")
    data = bm.load_benchmark("h36m-p1", npz)
    crops = bm.load_crops(data, np.arange(len(data)), tmp_path / "images_root", 40)
    assert crops.shape == (5, 3, 40, 40)
    mask = crops.sum(1) > 0.05
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    for m in mask:
        cy, cx = float((ys * m).sum() / m.sum()), float((xs * m).sum() / m.sum())
        assert abs(cx - 19.5) < 6 and abs(cy - 19.5) < 6
        assert not m[:, 0].any() and not m[:, -1].any()  # the 1.2 margin leaves the borders empty


def test_benchmark_cli_with_random_hmr(body, tmp_path):
    npz, _, _ = _write_benchmark(tmp_path, body, "3dhp")
    out = tmp_path / "bench.json"
    cfg = ev.EvalConfig(benchmark="mpi-inf-3dhp", dataset_npz=npz, image_root=tmp_path / "images_root", critic_body="tiny",
                        checkpoint="none", backbone="resnet18", input_size=32, batch_size=4, device="cpu", quiet=True, json=out)
    ev.run(cfg)
    data = json.loads(out.read_text())
    assert data["overall"]["headline"] == "pck150" and data["overall"]["num_images"] == 5
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc", "pa_pck150", "pa_auc"):
        assert np.isfinite(data["overall"][key])
    assert sorted(data["clips"]) == ["TS1", "TS2"]


def test_benchmark_errors(body, tmp_path):
    npz, _, arrays = _write_benchmark(tmp_path, body, "h36m")
    with pytest.raises(PoseGenInputError, match="does not exist.*h36m_valid_protocol1.npz"):
        bm.load_benchmark("h36m-p1", tmp_path / "absent.npz")
    broken = tmp_path / "noscale.npz"
    np.savez(broken, **{k: v for k, v in arrays.items() if k != "scale"})
    with pytest.raises(PoseGenInputError, match=r"no field 'scale'.*200 \* scale"):
        bm.load_benchmark("h36m-p1", broken)
    noS = tmp_path / "noS.npz"
    np.savez(noS, **{k: v for k, v in arrays.items() if k != "S"})
    with pytest.raises(PoseGenInputError, match=r"no field 'S'.*\(N, 24, 4\)"):
        bm.load_benchmark("mpi-inf-3dhp", noS)
    bad = dict(arrays)
    bad["S"] = arrays["S"].copy()
    bad["S"][2, 14, 3] = 0.0  # pelvis unlabelled
    np.savez(tmp_path / "conf.npz", **bad)
    with pytest.raises(PoseGenInputError, match="row 2 has confidence 0"):
        bm.load_benchmark("h36m-p1", tmp_path / "conf.npz")
    with pytest.raises(PoseGenInputError, match="unknown benchmark"):
        bm.load_benchmark("lsp", npz)
    data = bm.load_benchmark("h36m-p1", npz)
    with pytest.raises(PoseGenInputError, match="--image-root"):
        bm.evaluate_benchmark(OracleCritic(targets=data.joints_h36m), data, tmp_path / "no_images")
    (tmp_path / "images_root" / data.imgname[3]).unlink()
    with pytest.raises(PoseGenInputError, match="npz row 3"):
        bm.evaluate_benchmark(OracleCritic(targets=data.joints_h36m), data, tmp_path / "images_root", batch_size=2)
    with pytest.raises(PoseGenInputError, match="--image-root"):
        ev.run(ev.EvalConfig(benchmark="h36m-p1", dataset_npz=npz, image_root=tmp_path / "none", quiet=True))
