"""Faults a user meets, one test each (issue 12, part 3): damaged caches are named and rebuilt, an export that hits
a full disk or a read-only folder keeps its partial folder and resumes, pre-training refuses to overwrite and
refuses settings that train nothing, broken critics are refused at load and blamed (not the poses) during a run,
and console scripts (ns-train included) report bad input in one line before writing anything."""

from __future__ import annotations

import copy
import errno
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_pipeline
import torch

from posegen_ns.errors import PoseGenInputError

# ------------------------------------------------------------------------------------------ damaged caches


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_default_critic_is_named_and_pretrained_again(tmp_path, monkeypatch, capsys, damage):
    """What a kill while the first ns-train saved the default critic left (a 0-byte file before the writes were
    atomic, or a truncated one): the next run names the file, pre-trains it again and goes on."""
    from posegen_ns.atomic_io import torch_save
    from posegen_ns.body.smpl_files import cache_dir as real_cache_dir
    from posegen_ns.critic import pretrain

    real_cache_dir()  # the tiny body stays in the real cache; only critics/ goes to tmp_path
    monkeypatch.setattr("posegen_ns.body.smpl_files.cache_dir", lambda: tmp_path)
    monkeypatch.setattr("posegen_ns.body.tiny_body.cache_dir", real_cache_dir)
    runs: list[Path] = []

    def fake_pretrain(cfg):  # stands in for minutes of pre-training
        assert cfg.overwrite  # the cache builder may replace what is there
        runs.append(cfg.output)
        torch_save({"model": {"w": torch.zeros(3)}, "posegen": {}}, cfg.output)

    monkeypatch.setattr(pretrain, "run_pretrain", fake_pretrain)
    path = pretrain.default_critic_checkpoint("tiny", steps=7, input_size=32, backbone="resnet18")
    assert runs == [path] and path.parent == tmp_path / "critics"
    good = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    capsys.readouterr()
    assert pretrain.default_critic_checkpoint("tiny", steps=7, input_size=32, backbone="resnet18") == path
    out = capsys.readouterr().out
    assert f"the cached default critic {path} is damaged" in out and "rebuilding it" in out
    assert runs == [path, path] and path.read_bytes() == good
    assert pretrain.default_critic_checkpoint("tiny", steps=7, input_size=32, backbone="resnet18") == path
    assert len(runs) == 2  # an intact cache is used as it is


def test_truncated_source_render_cache_is_named_and_rendered_again(tmp_path, monkeypatch, capsys):
    from posegen_ns.data import source_poses

    monkeypatch.setattr(source_poses, "_cache_root", lambda: tmp_path)
    renders = []

    def fake_render(body, image_size, split, num_images, seed=0):
        renders.append(split)
        n, s = num_images, image_size
        return {"images": np.zeros((n, s, s, 3), np.uint8), "boxes": np.tile([0.0, 0.0, s, s], (n, 1)).astype(np.float32),
                "joints_h36m_cam": np.zeros((n, 17, 3), np.float32), "body_pose": np.zeros((n, 69), np.float32),
                "global_orient_cam": np.zeros((n, 3), np.float32), "betas": np.zeros((n, 10), np.float32),
                "K": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))}

    monkeypatch.setattr(source_poses, "render_source_set", fake_render)
    source_poses.make_source_sampler("tiny", 16, "heldout", num_images=3)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])
    sample = source_poses.make_source_sampler("tiny", 16, "heldout", num_images=3)
    assert renders == ["heldout", "heldout"]
    assert f"{path} is damaged" in capsys.readouterr().out
    assert sample(2, torch.Generator().manual_seed(0))["images"].shape == (2, 3, 16, 16)


def test_truncated_mocap_fit_cache_is_named_and_refitted(tmp_path, monkeypatch, capsys):
    from posegen_ns.data import poses
    from posegen_ns.mocap import shipped_clips_dir

    monkeypatch.setattr(poses, "_cache_root", lambda: tmp_path)
    fits = []

    def fake_fit(path, body, stride):
        fits.append(path.stem)
        return {"name": np.array(path.stem), "global_orient": np.zeros((2, 3), np.float32),
                "body_pose": np.zeros((2, 69), np.float32), "transl": np.zeros((2, 3), np.float32),
                "frame_ids": np.arange(2)}

    monkeypatch.setattr(poses, "_fit_clip", fake_fit)
    clip = poses.motion_files(shipped_clips_dir())[0]
    poses.load_pose_bank("tiny", clips=[clip], stride=4)
    (cache,) = tmp_path.glob("*.npz")
    cache.write_bytes(b"")
    bank = poses.load_pose_bank("tiny", clips=[clip], stride=4)
    assert len(bank) == 2 and fits == [clip.stem, clip.stem]
    assert f"the cached mocap fit {cache} is damaged" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ critics


def _hmr_checkpoint(path: Path, poison: bool = False) -> Path:
    from adapters.hmr import build_hmr_critic, save_spin_checkpoint

    critic = build_hmr_critic("resnet18", 32, "tiny")
    if poison:
        with torch.no_grad():
            critic.hmr.fc1.weight[0, 0] = float("nan")
    return save_spin_checkpoint(critic.hmr, path, {"posegen": {"backbone": "resnet18", "input_size": 32, "body": "tiny"}})


def test_critic_with_nan_weights_is_refused_at_load(tmp_path):
    from posegen_ns.critic.loading import CriticConfig, load_configured_critic

    good = _hmr_checkpoint(tmp_path / "good.pt")
    critic = load_configured_critic(CriticConfig(name="hmr", checkpoint=good), "tiny")  # probed: passes
    assert critic.input_size == 32
    bad = _hmr_checkpoint(tmp_path / "bad.pt", poison=True)
    with pytest.raises(PoseGenInputError, match=rf"critic 'hmr' \(checkpoint {bad}\) has NaN or inf weights in 1 tensors \(hmr.fc1.weight\)"):
        load_configured_critic(CriticConfig(name="hmr", checkpoint=bad), "tiny")


def test_critic_probe_blames_a_non_finite_prediction():
    from adapters.protocol import Critic
    from posegen_ns.critic.loading import probe_critic

    class NaNCritic(Critic):
        input_size = 16

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, images, boxes):
            assert images.shape == (1, 3, 16, 16) and not self.training  # probed in eval mode
            return torch.full((images.shape[0], 17, 3), float("nan"))

    critic = NaNCritic().train()
    with pytest.raises(PoseGenInputError, match=r"critic 'x' \(checkpoint c.pt\) predicts NaN or inf joints for a blank 16 x 16"):
        probe_critic(critic, "x", "c.pt")
    assert critic.training  # modes restored
    NaNCritic.differentiable = False  # a black box may answer NaN ("no person"): weights are checked, not answers
    probe_critic(NaNCritic(), "x", None)


def test_truncated_critic_checkpoint_and_backbone_weights_name_the_file(tmp_path):
    from adapters.hmr import HMR, load_backbone_weights, read_spin_checkpoint

    ckpt = tmp_path / "critic.pt"
    torch.save({"model": {"w": torch.randn(200, 200)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(PoseGenInputError, match=rf"critic checkpoint {ckpt} cannot be read .*truncated file"):
        read_spin_checkpoint(ckpt)
    ckpt.write_bytes(b"")
    with pytest.raises(PoseGenInputError, match=rf"critic checkpoint {ckpt} is empty \(0 bytes"):
        read_spin_checkpoint(ckpt)
    weights = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, weights)
    weights.write_bytes(weights.read_bytes()[:3000])
    with pytest.raises(PoseGenInputError, match=rf"backbone weights {weights} cannot be read .*damaged or truncated"):
        load_backbone_weights(HMR("resnet18"), weights)


# ------------------------------------------------------------------------------------------ pre-training


def _pretrain_cli(args: list[str]) -> str:
    from posegen_ns.cli import run_console_script
    from posegen_ns.critic.pretrain import PretrainCriticConfig, run_pretrain

    with pytest.raises(SystemExit) as exc:
        run_console_script("ns-posegen-pretrain-critic", PretrainCriticConfig, run_pretrain, args=args)
    return str(exc.value.code)


def test_pretrain_refuses_existing_output_and_settings_that_train_nothing(tmp_path, monkeypatch):
    from posegen_ns.critic import pretrain

    existing = tmp_path / "critic.pt"
    existing.write_bytes(b"precious")
    msg = _pretrain_cli(["--output", str(existing), "--body", "tiny"])
    assert msg == f"ns-posegen-pretrain-critic: --output {existing} already exists; pass --overwrite to replace it, or another --output."
    monkeypatch.setattr(pretrain, "default_critic_path", lambda: existing)
    assert "(the shared default critic" in _pretrain_cli(["--output", str(existing)])
    assert existing.read_bytes() == b"precious"
    new = str(tmp_path / "new.pt")
    assert _pretrain_cli(["--output", new, "--steps", "0"]) == "ns-posegen-pretrain-critic: --steps must be at least 1, got 0."
    assert _pretrain_cli(["--output", new, "--batch-size", "-1"]) == "ns-posegen-pretrain-critic: --batch-size must be at least 1, got -1."
    assert _pretrain_cli(["--output", new, "--lr", "0"]) == "ns-posegen-pretrain-critic: --lr must be positive, got 0.0."
    assert "--output" in _pretrain_cli(["--output", str(tmp_path)])  # a folder
    # with --overwrite the checks pass and training starts (stopped here at its first step)
    monkeypatch.setattr("posegen_ns.body.load_body_model", lambda *a, **k: (_ for _ in ()).throw(PoseGenInputError("started")))
    assert _pretrain_cli(["--output", str(existing), "--overwrite"]).endswith("started")


# ------------------------------------------------------------------------------------------ a tiny run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny PoseGenPipeline (tiny body, 40 px capture, untrained field) built in-process."""
    return tiny_pipeline(tmp_path_factory.mktemp("faults"))


def _failing_writes(monkeypatch, code: int, fails) -> None:
    """File writes whose path ``fails(path)`` raise ``OSError(code)`` as the OS does (a full disk, a read-only folder)."""
    import os

    from posegen_ns import atomic_io

    real = atomic_io.write_bytes

    def write_bytes(path, data, fsync=True):
        if fails(Path(path)):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data, fsync=fsync)

    for module in ("posegen_ns.atomic_io", "posegen_ns.data.capture_data"):
        monkeypatch.setattr(f"{module}.write_bytes", write_bytes)


def test_full_disk_keeps_the_partial_export_and_resume_finishes_it(pipeline, tmp_path, monkeypatch, capsys):
    from posegen_ns.export import export_samples

    reference = export_samples(pipeline, tmp_path / "reference", 4, batch_size=2)
    out = tmp_path / "dataset"
    partial = tmp_path / ".dataset.partial"
    with monkeypatch.context() as m:
        # the disk fills up after the images of batch 0 (samples 0, 1): batch 1's images fail
        _failing_writes(m, errno.ENOSPC, lambda p: p.suffix == ".png" and int(p.stem.split("_")[-1]) >= 2)
        with pytest.raises(PoseGenInputError) as exc:
            export_samples(pipeline, out, 4, batch_size=2)
    msg = str(exc.value)
    assert "no space left on the disk" in msg and f"2 of 4 samples are written and kept in {partial}" in msg
    assert "Free about" in msg and "run the same command again to resume" in msg and "\n" not in msg
    assert partial.is_dir() and not out.exists() and not (partial / ".lock").exists()
    capsys.readouterr()
    export_samples(pipeline, out, 4, batch_size=2)  # resumes
    assert "2 of 4 samples already written" in capsys.readouterr().out
    assert not partial.exists()
    for name in ("labels.npz", "spin.npz"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (reference / "images").iterdir())
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_read_only_output_folder_says_what_to_fix(pipeline, tmp_path, monkeypatch):
    from posegen_ns.export import export_samples

    with monkeypatch.context() as m:
        _failing_writes(m, errno.EROFS, lambda p: True)
        with pytest.raises(PoseGenInputError, match=r"export: cannot write .*Read-only file system.*Make .* writable"):
            export_samples(pipeline, tmp_path / "dataset", 2, batch_size=2)
    export_samples(pipeline, tmp_path / "dataset", 2, batch_size=2)  # fixed: the same command works
    assert (tmp_path / "dataset" / "manifest.json").is_file()


def test_non_finite_prediction_during_a_run_is_blamed_on_the_critic(pipeline):
    """A critic whose weights went NaN after loading (e.g. fine-tuning diverged) is blamed, not the poses."""
    param = next(pipeline.critic.parameters())
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.fill_(float("nan"))
        with pytest.raises(PoseGenInputError, match=r"the critic \(HMRCritic\) predicted NaN or inf .* not the poses"):
            pipeline.render_and_score(pipeline.draw(2, hard=True))
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert torch.isfinite(pipeline.render_and_score(pipeline.draw(2, hard=True)).error).all()


# ------------------------------------------------------------------------------------------ one-line errors


def test_ns_train_input_errors_are_one_line_and_write_no_run_folder(tmp_path):
    from posegen_ns.configs import posegen_human_tiny

    afile = tmp_path / "afile.json"
    afile.write_text("{}")
    cases = [
        ("data", afile, f"ns-train: --data {afile} is a file, not a folder"),
        ("data", tmp_path / "missing", f"ns-train: --data {tmp_path / 'missing'} does not exist"),
        ("data", tmp_path, f"ns-train: --data {tmp_path} holds neither capture.json nor ZJU-MoCap's annots.npy"),
        ("checkpoint", tmp_path / "nope.pt", f"ns-train: --pipeline.critic.checkpoint {tmp_path / 'nope.pt'} does not exist"),
        ("critic", "nonsense", "ns-train: --pipeline.critic.name 'nonsense' is not a known critic"),
    ]
    for field, value, expected in cases:
        config = copy.deepcopy(posegen_human_tiny.config)
        config.output_dir = tmp_path / "outputs"
        if field == "data":
            config.pipeline.datamanager.data = value
        elif field == "checkpoint":
            config.pipeline.critic.checkpoint = value
        else:
            config.pipeline.critic.name = value
        config.set_timestamp()
        for step in (config.print_to_terminal, config.save_config):  # what ns-train calls before training
            with pytest.raises(SystemExit) as exc:
                step()
            assert str(exc.value.code).startswith(expected) and "\n" not in str(exc.value.code)
    assert not (tmp_path / "outputs").exists()


def test_data_that_is_a_file_says_so():
    from posegen_ns.data.capture import read_capture

    with pytest.raises(PoseGenInputError, match=r"Capture folder .*test_faults.py is a file, not a folder"):
        read_capture(Path(__file__))


def test_eval_json_that_cannot_be_written_fails_before_the_evaluation(tmp_path, monkeypatch):
    from posegen_ns import evaluate

    def never(cfg):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(evaluate, "evaluate_motions_cli", never)
    (tmp_path / "afile").write_text("x")
    for path, match in ((tmp_path, "is a folder"), (tmp_path / "afile" / "r.json", "cannot be written")):
        with pytest.raises(PoseGenInputError, match=f"--json .*{match}"):
            evaluate.run(evaluate.EvalConfig(poses=tmp_path, json=path))


@pytest.mark.parametrize("module, prog, args", [
    ("posegen_ns.data.capture_cli", "ns-posegen-capture", ["--output-dir", "{file}"]),
    ("posegen_ns.export", "ns-posegen-export", ["--load-config", "{missing}", "--output-dir", "{tmp}/out"]),
    ("posegen_ns.critic.pretrain", "ns-posegen-pretrain-critic", ["--output", "{file}"]),
    ("posegen_ns.evaluate", "ns-posegen-eval", ["--poses", "{tmp}", "--json", "{tmp}"]),
])
def test_console_scripts_report_input_errors_in_one_line(tmp_path, monkeypatch, module, prog, args):
    import importlib

    (tmp_path / "afile").write_text("x")
    fill = {"file": str(tmp_path / "afile"), "missing": str(tmp_path / "missing.yml"), "tmp": str(tmp_path)}
    monkeypatch.setattr(sys, "argv", [prog, *[a.format(**fill) for a in args]])
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).entrypoint()
    msg = str(exc.value.code)
    assert msg.startswith(f"{prog}: ") and "\n" not in msg and "Traceback" not in msg


def test_console_script_reports_a_full_disk_in_one_line():
    from dataclasses import dataclass

    from posegen_ns.cli import run_console_script

    @dataclass
    class Cfg:
        out: str = "x"

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.json")

    with pytest.raises(SystemExit) as exc:
        run_console_script("ns-posegen-x", Cfg, full, args=[])
    assert str(exc.value.code) == ("ns-posegen-x: cannot write /data/out.json (No space left on device); "
                                   "free space on that disk, then run again.")

    def bug(cfg):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):  # other OS errors are not the user's input: they keep their traceback
        run_console_script("ns-posegen-x", Cfg, bug, args=[])
