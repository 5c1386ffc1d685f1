"""`ns-train posegen-human` with a critic chosen on the command line, from checkpoints in the official
layouts (SPIN's ``model_checkpoint.pt``, HybrIK's ResNet-34 and HRNet-W48 ``.pth``) with random weights:
the run loads the named critic, runs the loop against it and reports its error; a checkpoint with a
renamed key stops the run with the key named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters.hmr import build_hmr_critic, save_spin_checkpoint
from adapters.hybrik import build_hybrik_critic, save_hybrik_checkpoint

BIN = Path(sys.executable).parent


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_critics") / "capture"
    proc = _run([str(BIN / "ns-posegen-capture"), "--output-dir", str(out), "--body", "tiny", "--num-cameras", "2",
                 "--resolution", "40", "--frame-stride", "24"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _checkpoint(kind: str, path: Path) -> tuple[Path, list[str]]:
    """A random-weight checkpoint in the official layout of ``kind`` and the critic flags that load it."""
    torch.manual_seed(0)
    if kind == "spin":  # SPIN's layout {'model': state_dict} without this project's metadata, as released
        critic = build_hmr_critic("resnet18", 64, "tiny")
        save_spin_checkpoint(critic.hmr, path, {"epoch": 1})
        return path, ["--pipeline.critic.body", "tiny", "--pipeline.critic.backbone", "resnet18",
                      "--pipeline.critic.input-size", "64"]
    if kind == "hybrik-res34":  # raw state dict, SMPL buffers inside
        save_hybrik_checkpoint(build_hybrik_critic("res34", body="tiny", input_size=64).net, path)
    else:  # {'model': state_dict}, a narrow HRNet (the width is read from the file)
        save_hybrik_checkpoint(build_hybrik_critic("hrw48", body="tiny", input_size=64, width=4).net, path, wrap=True)
    return path, ["--pipeline.critic.input-size", "64"]


def _train(capture: Path, root: Path, name: str, checkpoint: Path, flags: list[str]) -> subprocess.CompletedProcess:
    return _run([str(BIN / "ns-train"), "posegen-human-tiny", "--data", str(capture), "--output-dir", str(root),
                 "--pipeline.critic.name", name, "--pipeline.critic.checkpoint", str(checkpoint), *flags])


@pytest.mark.parametrize("name", ["spin", "hybrik-res34", "hybrik-hrw48"])
def test_ns_train_with_an_official_layout_critic(capture, tmp_path, name):
    checkpoint, flags = _checkpoint(name, tmp_path / f"{name}.pt")
    proc = _train(capture, tmp_path / "outputs", name, checkpoint, flags)
    assert proc.returncode == 0, f"ns-train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = next((tmp_path / "outputs").rglob("config.yml")).parent
    assert f"name: {name}" in (run_dir / "config.yml").read_text()
    report = json.loads((run_dir / "posegen_report.json").read_text())
    assert np.isfinite(report["mpjpe_hard_mm"]) and np.isfinite(report["mpjpe_prior_mm"])
    assert report["mpjpe_hard_mm"] > 0 and report["hardness_ratio"] == pytest.approx(
        report["mpjpe_hard_mm"] / report["mpjpe_prior_mm"], rel=1e-6)


def test_ns_train_names_a_renamed_checkpoint_key(capture, tmp_path):
    checkpoint, flags = _checkpoint("spin", tmp_path / "spin.pt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"]["decpose.weight_renamed"] = ckpt["model"].pop("decpose.weight")
    torch.save(ckpt, checkpoint)
    proc = _train(capture, tmp_path / "outputs", "spin", checkpoint, flags)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "decpose.weight" in out and str(checkpoint) in out
    # found while the pipeline loads: one line, no traceback, and no run folder left for a run that never started
    assert "Traceback" not in out and "ns-train: " in proc.stderr
    assert not list((tmp_path / "outputs").rglob("config.yml"))
