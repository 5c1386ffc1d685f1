"""Resuming a run (``ns-train ... --load-dir RUN/nerfstudio_models``, :mod:`posegen_ns.trainer`).

- A run interrupted twice (inside phase 1, then inside phase 2) and resumed each time ends where an uninterrupted
  run ends: the field, the sampler's generator and discriminator, the critic, the buffers and every optimizer's
  state agree to ``atol=1e-6, rtol=1e-5`` (float32 round-off; on a CPU they are in fact identical), because the
  checkpoint carries the run's random state too. Without it the resumed run draws other samples.
- A truncated newest checkpoint (what a kill during a save leaves) is skipped with one line naming it, and the
  newest readable one is loaded; a missing ``--load-dir``, an empty one, an unknown ``--load-step`` or no readable
  checkpoint stop with a clear message naming the flag and the path.

Tiny body, 24 px capture, posegen-human-tiny with 3 field steps and 3 sampler steps, trained in-process with
nerfstudio's trainer.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from posegen_ns.errors import PoseGenInputError
from posegen_ns.trainer import RNG_KEY, check_load_paths, checkpoint_steps, newest_readable_checkpoint, read_checkpoint

FIELD_STEPS, TOTAL_STEPS = 3, 6
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    from posegen_ns.data.default_capture import build_default_capture

    return build_default_capture(tmp_path_factory.mktemp("resume") / "capture", body="tiny", num_cameras=2,
                                 resolution=24, frame_stride=48, max_frames_per_clip=2, verbose=False)


def _config(capture: Path, output_dir: Path, steps: int, load_dir: Path | None = None):
    from posegen_ns.configs import posegen_human_tiny

    cfg = copy.deepcopy(posegen_human_tiny.config)
    cfg.data = cfg.pipeline.datamanager.data = capture
    cfg.output_dir = output_dir
    cfg.pipeline.field_steps = FIELD_STEPS
    cfg.pipeline.report_samples = 2
    cfg.pipeline.model.num_gaussians = 150
    cfg.max_num_iterations = steps
    cfg.steps_per_save = 10_000  # saved at the end of each segment only
    cfg.load_dir = load_dir
    cfg.set_timestamp()
    return cfg


def _train(capture: Path, output_dir: Path, steps: int, load_dir: Path | None = None):
    """One ``ns-train`` segment in-process; returns the trainer after training."""
    cfg = _config(capture, output_dir, steps, load_dir)
    cfg.save_config()
    torch.manual_seed(0)  # ns-train seeds the global generator before building the pipeline
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer


def _models_dir(trainer) -> Path:
    return Path(trainer.checkpoint_dir)


def _flat_optimizer_state(trainer) -> dict[str, torch.Tensor]:
    out = {}
    for group, opt in trainer.optimizers.optimizers.items():
        for i, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"{group}.{i}.{k}"] = torch.as_tensor(v)
    return out


def _assert_same_state(a, b) -> None:
    sa, sb = a.pipeline.state_dict(), b.pipeline.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=ATOL, rtol=RTOL, equal_nan=True, msg=lambda m, k=k: f"{k}: {m}")
    oa, ob = _flat_optimizer_state(a), _flat_optimizer_state(b)
    assert sorted(oa) == sorted(ob) and oa
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"optimizer {k}: {m}")


@pytest.fixture(scope="module")
def runs(capture, tmp_path_factory):
    """An uninterrupted run of 6 steps, and the same run cut after steps 1 (phase 1) and 3 (phase 2) and resumed."""
    root = tmp_path_factory.mktemp("runs")
    whole = _train(capture, root / "whole", TOTAL_STEPS)
    first = _train(capture, root / "a", 2)  # steps 0, 1 (field)
    second = _train(capture, root / "b", 2, load_dir=_models_dir(first))  # steps 2 (field), 3 (loop)
    third = _train(capture, root / "c", 2, load_dir=_models_dir(second))  # steps 4, 5 (loop)
    return whole, first, second, third


def test_interrupted_and_resumed_run_ends_where_the_uninterrupted_run_ends(runs):
    whole, first, second, third = runs
    assert [t._start_step for t in (whole, first, second, third)] == [0, 0, 2, 4]
    assert [s for s, _ in checkpoint_steps(_models_dir(whole))] == [TOTAL_STEPS - 1]
    assert [s for s, _ in checkpoint_steps(_models_dir(third))] == [TOTAL_STEPS - 1]
    p = third.pipeline
    assert p.loop_started and {"field_geometry", "generator", "discriminator"} <= set(third.optimizers.optimizers)
    _assert_same_state(whole, third)
    # the parts the issue names, explicitly: the field, the sampler's networks and their Adam moments moved from
    # where the first segment left them, and agree with the uninterrupted run
    for name in ("_model.field.offsets", "generator.", "discriminator."):
        keys = [k for k in whole.pipeline.state_dict() if k.startswith(name)]
        assert keys, name
    assert not torch.equal(first.pipeline.generator.state_dict()["camera_head.weight"],
                           third.pipeline.generator.state_dict()["camera_head.weight"])
    assert float(whole.pipeline.reference_error) == pytest.approx(float(p.reference_error), rel=RTOL)


def test_the_random_state_travels_with_the_checkpoint(runs, capture, tmp_path):
    """Without the saved random state a resumed run draws other samples in phase 2 (so the test above would fail):
    the checkpoint's random state is what makes the resume exact."""
    whole, _, second, _ = runs
    ckpt = checkpoint_steps(_models_dir(second))[0][1]
    state = read_checkpoint(ckpt)
    assert RNG_KEY in state and {"pipeline.noise", "datamanager.generator"} <= set(state[RNG_KEY]["generators"])
    del state[RNG_KEY]
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    torch.save(state, stripped / ckpt.name)
    naive = _train(capture, tmp_path / "naive", 2, load_dir=stripped)
    a, b = whole.pipeline.generator.state_dict(), naive.pipeline.generator.state_dict()
    assert any(not torch.allclose(a[k], b[k], atol=ATOL, rtol=RTOL) for k in a)


def test_a_truncated_newest_checkpoint_is_skipped_with_one_line(runs, capture, tmp_path, capsys):
    """What a kill during a save leaves: the newest file truncated beside an intact older one."""
    _, first, _, third = runs
    models = tmp_path / "nerfstudio_models"
    models.mkdir()
    older = checkpoint_steps(_models_dir(first))[0][1]  # step 1
    shutil.copy(older, models / older.name)
    newest = checkpoint_steps(_models_dir(third))[0][1]  # step 5
    data = newest.read_bytes()
    (models / newest.name).write_bytes(data[: len(data) // 2])
    (models / "step-000000007.ckpt").write_bytes(b"")  # a kill right after the file was created
    (models / "notes.txt").write_text("not a checkpoint")  # other files are ignored
    capsys.readouterr()
    trainer = _config(capture, tmp_path / "out", 1, load_dir=models).setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer._start_step == 2  # continues after the intact step-1 checkpoint
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "skipped" in line]
    assert len(lines) == 1, out
    assert "resuming from step-000000001.ckpt" in lines[0]
    assert "step-000000007.ckpt (empty file (0 bytes))" in lines[0] and "step-000000005.ckpt (cannot be read" in lines[0]
    for k, v in first.pipeline.state_dict().items():
        torch.testing.assert_close(trainer.pipeline.state_dict()[k], v, atol=0, rtol=0, equal_nan=True)


def test_resume_errors_name_the_flag_and_the_path(runs, tmp_path):
    _, first, _, _ = runs
    missing = tmp_path / "nope" / "nerfstudio_models"
    with pytest.raises(PoseGenInputError, match=rf"--load-dir {missing} does not exist; pass RUN/nerfstudio_models"):
        check_load_paths(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PoseGenInputError, match="holds no step-\\*.ckpt checkpoint"):
        check_load_paths(empty)
    with pytest.raises(PoseGenInputError, match="is a file, not a folder"):
        check_load_paths(checkpoint_steps(_models_dir(first))[0][1])
    with pytest.raises(PoseGenInputError, match=r"--load-step 9: .* has no step-000000009.ckpt \(it has steps \[1\]\)"):
        check_load_paths(_models_dir(first), load_step=9)
    with pytest.raises(PoseGenInputError, match="--load-checkpoint .* is not a file"):
        check_load_paths(None, load_checkpoint=tmp_path / "x.ckpt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "step-000000003.ckpt").write_bytes(b"PK\x03\x04 not really")
    torch.save({"weights": torch.zeros(2)}, broken / "step-000000002.ckpt")
    with pytest.raises(PoseGenInputError, match=r"no checkpoint can be read: step-000000003.ckpt \(cannot be read .*"
                                                r"step-000000002.ckpt \(is not a nerfstudio checkpoint \(no step, pipeline"):
        newest_readable_checkpoint(broken)


def test_ns_train_stops_on_a_missing_load_dir_with_one_line(capture, tmp_path):
    """``ns-train posegen-human-tiny --load-dir MISSING``: nerfstudio prints the config first; the check comes before
    that and before any output folder is written."""
    cfg = _config(capture, tmp_path / "outputs", 2, load_dir=tmp_path / "missing")
    with pytest.raises(SystemExit, match=r"^ns-train: --load-dir .*missing does not exist"):
        cfg.print_to_terminal()
    assert not (tmp_path / "outputs").exists()


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(runs, tmp_path, monkeypatch):
    """Checkpoints are written beside the folder and renamed into it: an interrupted save leaves the older checkpoint
    readable and nothing else among the checkpoints (nerfstudio's eval_setup lists that folder)."""
    _, first, _, _ = runs
    models = tmp_path / "run" / "nerfstudio_models"
    models.mkdir(parents=True)
    older = checkpoint_steps(_models_dir(first))[0][1]
    shutil.copy(older, models / older.name)
    monkeypatch.setattr(first, "checkpoint_dir", models)
    real_save = torch.save

    def killed(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        first.save_checkpoint(9)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in models.iterdir()) == [older.name]
    assert read_checkpoint(models / older.name)["step"] == 1
    first.save_checkpoint(9)  # a later save completes and replaces it
    assert sorted(p.name for p in models.iterdir()) == ["step-000000009.ckpt"]
    assert not list((tmp_path / "run").glob(".*"))
    assert read_checkpoint(models / "step-000000009.ckpt")[RNG_KEY]["generators"]
