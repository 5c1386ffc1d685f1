"""``--engine ray`` (posegen_ns.engine): on a local Ray with 2 workers, the export equals the local export byte for
byte, also when a worker process is killed mid-export (Ray restarts it and runs its batches again); a worker's
error names the worker and the task and keeps the partial export; evaluation gives the local figures; the
experiment's arms x repeats give the local JSON (but timing_s), also after a killed worker, and a task's error names
the worker, the arm and the repeat.

Skipped only when the extra ``ray`` is not installed (``pip install -e ".[test,ray]"``, as CI does). Ray is
started once for the module, small (2 CPU slots, a 256 MB object store)."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
from tiny_runs import export_reference, load_run_pipeline, train_tiny_run
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
    return load_run_pipeline(run_config)


@pytest.fixture(scope="module")
def reference(pipeline, run_config, tmp_path_factory) -> Path:
    return export_reference(pipeline, run_config, tmp_path_factory.mktemp("reference"), NUM, BATCH)


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


# ------------------------------------------------------------------------------------------ experiment
EXPERIMENT_ARMS = ("pretrained", "random-prior", "posegen-released", "ours")


def _experiment_config(run_config: Path, out: Path, **extra):
    """The tiny preset cut to seconds per task, on the module's trained run (no training): 4 arms (the released GAN's
    sampler travels to the workers; ours learns its own sampler in each repeat, ``--ours-sampler per-repeat``, then
    trains it on in 2 rounds and restores it), 2 repeats."""
    from posegen_ns.experiment import ExperimentConfig

    return ExperimentConfig(
        preset="tiny", output_dir=out, load_config=run_config, device="cpu", arms=EXPERIMENT_ARMS, repeats=2,
        ours_rounds=2, round_steps=1, gan_steps=2, sampler_batch=2, finetune_images=4, finetune_batch=2,
        finetune_epochs=1, eval_max_frames=1, eval_cameras=2, eval_elevations=(0.0,), eval_resolution=32, **extra,
    )


def _assert_close(a, b, where: str = "") -> None:
    """Same structure and strings; numbers equal to 1e-5 (relative or absolute); NaN where NaN."""
    import math

    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=1e-5, abs=1e-5), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def local_experiment(run_config, tmp_path_factory):
    from posegen_ns.experiment import run_experiment

    return run_experiment(_experiment_config(run_config, tmp_path_factory.mktemp("experiment-local")))


def test_ray_experiment_gives_the_local_json(run_config, local_experiment, tmp_path, monkeypatch, capsys):
    """--engine ray --num-workers 2: every arm x repeat a Ray task; the JSON equals the local one but timing_s, also
    when a worker process is killed mid-way (Ray restarts it, it fetches the context and renders the evaluation set
    again, and its tasks run again): each task seeds what it uses, whichever worker and order runs it."""
    from posegen_ns.experiment import run_experiment

    marker = tmp_path / "killed"
    monkeypatch.setenv(engine.KILL_ONCE_ENV, f"arm 'random-prior' repeat 2/2@{marker}")
    out = run_experiment(_experiment_config(run_config, tmp_path / "run", engine="ray", num_workers=WORKERS))
    assert marker.exists()  # the worker did die
    assert "fine-tuning and evaluating arms" in capsys.readouterr().out  # the driver's one progress bar
    local = json.loads(json.dumps(local_experiment, default=str))
    on_ray = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert [r["name"] for r in on_ray["rows"]] == list(EXPERIMENT_ARMS)
    ours = on_ray["rows"][-1]
    assert ours["repeats"] == 2 and [len(r["finetune"]["rounds"]) for r in ours["per_repeat"]] == [2, 2]
    assert [r["finetune"]["sampler"]["seed"] for r in ours["per_repeat"]] == [500, 10500]  # a sampler per repeat
    for r_local, r_ray in zip(local["rows"], on_ray["rows"]):
        _assert_close(r_local["mpjpe_mm_per_repeat"], r_ray["mpjpe_mm_per_repeat"], r_ray["name"])
    assert sorted(on_ray["timing_s"]) == sorted(local["timing_s"])
    _assert_close({k: v for k, v in local.items() if k != "timing_s"}, {k: v for k, v in on_ray.items() if k != "timing_s"})
    assert out["rows"][1]["mpjpe_mm_per_repeat"] == on_ray["rows"][1]["mpjpe_mm_per_repeat"]


def test_ray_experiment_error_names_worker_arm_and_repeat(run_config, tmp_path):
    from posegen_ns.critic.finetune import FinetuneConfig
    from posegen_ns.experiment import run_experiment

    impossible = FinetuneConfig(lr=1e-4, min_error_mm=1e6, max_error_mm=2e6)  # the filter keeps no sample
    cfg = _experiment_config(run_config, tmp_path / "run", engine="ray", num_workers=WORKERS, finetune=impossible)
    cfg.arms = ("random-prior",)
    with pytest.raises(PoseGenInputError, match=r"ray worker \d \(pid \d+ on [\d.]+\) failed on arm 'random-prior' "
                                                r"repeat [12]/2: only 0 of 4 samples passed the outlier filter"):
        run_experiment(cfg)


def test_arm_worker_renders_the_drivers_evaluation_set_or_refuses(pipeline, run_config, tmp_path):
    """A worker's context comes without the evaluation images; the worker renders them (the same bytes as the
    driver's) and refuses to work when its images differ from the driver's digest."""
    from posegen_ns.experiment import build_eval_set
    from posegen_ns.experiment_tasks import ArmContext, eval_set_digest, load_arm_worker

    cfg = _experiment_config(run_config, tmp_path)
    sizes = cfg.sizes()
    driver = ArmContext(pipeline, cfg, sizes, eval_set=build_eval_set(pipeline, cfg, sizes))
    shipped = driver.for_workers()
    assert shipped.eval_set is None and shipped.eval_digest == eval_set_digest(driver.eval_set)
    worker = load_arm_worker(shipped)
    assert eval_set_digest(worker.eval_set) == shipped.eval_digest
    for a, b in zip(worker.eval_set.batches, driver.eval_set.batches):
        assert torch.equal(a.images, b.images) and torch.equal(a.gt, b.gt) and a.clip == b.clip
    with pytest.raises(PoseGenInputError, match="renders other evaluation images than the driver"):
        load_arm_worker(ArmContext(pipeline, cfg, sizes, eval_digest="0" * 64))
