"""``--engine ray`` (posegen_ns.engine): on a local Ray with 2 workers, the export equals the local export byte for
byte, also when a worker process is killed mid-export (Ray restarts it and runs its batches again); a worker's
error names the worker and the task and keeps the partial export; evaluation gives the local figures.

Skipped only when the extra ``ray`` is not installed (``pip install -e ".[test,ray]"``, as CI does). Ray is
started once for the module, small (2 CPU slots, a 256 MB object store)."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
from tiny_runs import train_tiny_run
import torch

ray = pytest.importorskip("ray")

from posegen_ns import engine  # noqa: E402
from posegen_ns.errors import PoseGenInputError  # noqa: E402
from posegen_ns.export import ExportConfig, export_samples, main as export_main, ray_renderer  # noqa: E402

NUM, BATCH = 12, 2  # 6 batches of 40 x 40 renders
WORKERS = 2



@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small local Ray for the module (the commands use an initialised Ray as it is)."""
    ray.init(address="local", num_cpus=WORKERS, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    # test-module functions travel to the workers by value (the workers cannot import this file)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def pipeline(run_config):
    from nerfstudio.utils.eval_utils import eval_setup

    return eval_setup(run_config, test_mode="inference")[1]


@pytest.fixture(scope="module")
def reference(pipeline, run_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "dataset"
    export_samples(pipeline, out, NUM, batch_size=BATCH, run_config=run_config)
    return out


def _assert_same_dataset(a: Path, b: Path) -> None:
    """Every file byte for byte, the manifest included (same run, same settings)."""
    fa = {str(p.relative_to(a)): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    fb = {str(p.relative_to(b)): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}
    assert sorted(fa) == sorted(fb)
    assert len([k for k in fa if k.startswith("images/")]) == NUM
    for key in fa:
        assert fa[key] == fb[key], key


# ------------------------------------------------------------------------------------------ export
def test_ray_export_equals_local_export(pipeline, run_config, reference, tmp_path, capsys, monkeypatch):
    import posegen_ns.export

    monkeypatch.setattr(posegen_ns.export, "load_run", lambda path: pipeline)  # the driver's load (workers load theirs)
    out = tmp_path / "dataset"
    export_main(ExportConfig(load_config=run_config, output_dir=out, num_samples=NUM, batch_size=BATCH,
                             engine="ray", num_workers=WORKERS))
    _assert_same_dataset(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no partial folder left
    assert "rendering samples" in capsys.readouterr().out  # the driver's one progress bar


def test_killed_ray_worker_is_retried_and_the_dataset_is_identical(pipeline, run_config, reference, tmp_path,
                                                                   monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(engine.KILL_ONCE_ENV, f"batch 3@{marker}")  # SIGKILL the worker that starts batch 3, once
    out = tmp_path / "dataset"
    export_samples(pipeline, out, NUM, batch_size=BATCH, run_config=run_config,
                   renderer=ray_renderer(run_config, num_workers=WORKERS, quiet=True))
    assert marker.exists()  # the worker did die; Ray restarted it and ran its batches again
    _assert_same_dataset(out, reference)


def test_worker_error_keeps_the_partial_export_for_resume(pipeline, run_config, reference, tmp_path):
    def failing(pipeline, partial, plan, meta, fingerprint, hard, workers):
        ray_renderer(run_config, num_workers=WORKERS, quiet=True)(pipeline, partial, plan[:2], meta, fingerprint,
                                                                  hard, workers)
        raise engine.WorkerError("ray worker 1 failed on batch 2 (samples 4..5): OSError", 1, "batch 2")

    out = tmp_path / "dataset"
    with pytest.raises(engine.WorkerError):
        export_samples(pipeline, out, NUM, batch_size=BATCH, run_config=run_config, renderer=failing)
    partial = tmp_path / ".dataset.partial"
    assert len(list((partial / ".batches").glob("labels-*.npz"))) == 2 and not out.exists()
    assert json.loads((partial / "progress.json").read_text())["done"] == 2 * BATCH
    export_samples(pipeline, out, NUM, batch_size=BATCH, run_config=run_config,
                   renderer=ray_renderer(run_config, num_workers=WORKERS, quiet=True))  # resumes the other 4 batches
    _assert_same_dataset(out, reference)


def _fail_on(state: str, task: int) -> int:
    if task == 2:
        raise ValueError("no room for task 2")
    return task * 10


def test_worker_error_names_worker_and_task(tmp_path):
    with pytest.raises(engine.WorkerError, match=r"ray worker \d \(pid \d+ on [\d.]+\) failed on task 2: "
                                                 r"ValueError: no room for task 2") as info:
        engine.run_tasks(functools.partial(str, "state"), _fail_on, [0, 1, 2, 3], [f"task {i}" for i in range(4)],
                         num_workers=WORKERS, quiet=True, use_gpus=False)
    assert info.value.task == "task 2" and isinstance(info.value.__cause__, ValueError)
    assert engine.run_tasks(functools.partial(str, "state"), _fail_on, [0, 1, 3], ["a", "b", "c"],
                            num_workers=WORKERS, quiet=True) == [0, 10, 30]


def test_engine_flags_are_checked():
    with pytest.raises(PoseGenInputError, match="--num-workers 2 needs --engine ray"):
        engine.check_engine("local", 2)
    with pytest.raises(PoseGenInputError, match="--num-workers must be at least 1"):
        engine.check_engine("ray", 0)
    with pytest.raises(PoseGenInputError, match="must be 'local' or 'ray'"):
        engine.check_engine("dask", None)


# ------------------------------------------------------------------------------------------ evaluation
def test_ray_evaluation_gives_the_local_figures(tmp_path):
    import posegen_ns.evaluate as ev
    from posegen_ns.data.default_capture import build_default_capture
    from posegen_ns.mocap import shipped_clips_dir

    poses = tmp_path / "poses"
    poses.mkdir()
    for clip in ("09_06_run", "02_04_jump_balance_ccrig", "07_05_slow_walk"):
        shutil.copy(shipped_clips_dir() / f"{clip}.bvh", poses / f"{clip}.bvh")
    capture = build_default_capture(tmp_path / "capture", mocap_dir=poses, body="tiny", num_cameras=2, resolution=32,
                                    frame_stride=24, max_frames_per_clip=2, verbose=False)
    base = dict(capture=capture, poses=poses, critic="hmr", checkpoint="none", critic_body="tiny", backbone="resnet18",
                input_size=32, stride=40, max_frames=2, cameras=3, elevations=(0.0, 30.0), resolution=40, batch_size=4,
                device="cpu", quiet=True)
    results = {}
    for name, extra in (("local", {}), ("ray", {"engine": "ray", "num_workers": WORKERS})):
        torch.manual_seed(0)  # the same random critic weights on the driver (workers get the driver's weights)
        results[name] = ev.run(ev.EvalConfig(**base, **extra))
    local, on_ray = results["local"], results["ray"]
    assert local["overall"]["num_images"] == 3 * 2 * 6
    for key in ("overall", "clips", "views"):
        assert json.dumps(on_ray[key]) == json.dumps(local[key]), key  # every figure, every bit, same order
