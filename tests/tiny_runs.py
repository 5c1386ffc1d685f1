"""Tiny runs shared by several test modules (tiny body, 40 px, 2 cameras): a trained ``ns-train posegen-human-tiny``
run through the console scripts, and an untrained pipeline built in-process."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
"""The venv's console scripts."""
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
"""Environment of the console scripts the tests start."""


def run_cli(args: list[str]) -> None:
    """Run a console script; fail the test with the tail of its output when it exits non-zero."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def train_tiny_run(root: Path) -> Path:
    """``ns-posegen-capture`` (tiny body, 2 cameras, 40 px) then ``ns-train posegen-human-tiny`` under ``root``;
    returns the run's ``config.yml``."""
    run_cli([str(BIN / "ns-posegen-capture"), "--output-dir", str(root / "capture"), "--body", "tiny", "--num-cameras", "2",
             "--resolution", "40", "--frame-stride", "24"])
    run_cli([str(BIN / "ns-train"), "posegen-human-tiny", "--data", str(root / "capture"), "--output-dir", str(root / "out")])
    (config,) = list((root / "out").rglob("config.yml"))
    return config


def tiny_pipeline(root: Path, **sampler: Any) -> Any:
    """A tiny PoseGenPipeline (tiny body, 40 px capture under ``root``, untrained field) built in-process on the CPU;
    ``sampler`` overrides fields of its :class:`~posegen_ns.sampler.config.SamplerConfig` (e.g. ``num_samplers=2``)."""
    from posegen_ns.configs import posegen_human_tiny
    from posegen_ns.data.default_capture import build_default_capture

    capture = build_default_capture(root / "capture", body="tiny", num_cameras=2, resolution=40, frame_stride=24)
    config = copy.deepcopy(posegen_human_tiny.config)
    config.pipeline.datamanager.data = Path(capture)
    for name, value in sampler.items():
        setattr(config.pipeline.sampler, name, value)
    return config.pipeline.setup(device="cpu", test_mode="val")


def load_run_pipeline(config: Path) -> Any:
    """The pipeline of a trained run (nerfstudio's ``eval_setup`` in inference mode, the latest checkpoint)."""
    from nerfstudio.utils.eval_utils import eval_setup

    return eval_setup(config, test_mode="inference")[1]


def export_reference(pipeline: Any, run_config: Path, root: Path, num: int, batch_size: int) -> Path:
    """``num`` samples of ``pipeline`` exported in batches of ``batch_size`` to ``root/dataset`` in this process
    (:func:`posegen_ns.export.export_samples`): the dataset other ways of exporting are compared with."""
    from posegen_ns.export import export_samples

    out = root / "dataset"
    export_samples(pipeline, out, num, batch_size=batch_size, run_config=run_config)
    return out
