"""``PoseGenTrainer``: nerfstudio's ``Trainer`` with checkpoints a kill cannot spoil and a resume that continues
the run exactly.

nerfstudio's trainer writes ``RUN/nerfstudio_models/step-XXXXXXXXX.ckpt`` with ``torch.save`` straight to the
final name, and ``--load-dir`` loads the file with the highest step whatever its state: a process killed during a
save leaves a truncated newest file, and the next ``ns-train ... --load-dir`` stops with a bare torch
``RuntimeError`` naming no file (a missing folder, with a bare ``FileNotFoundError``). Here:

- **Saving** is atomic (:func:`posegen_ns.atomic_io.torch_save` into ``RUN/.step-N.ckpt.partial``, then renamed
  into ``RUN/nerfstudio_models/``), so a kill leaves the previous checkpoint and no partial or temporary file among
  the checkpoints; the older ones are deleted only after the new one is complete, as nerfstudio does with
  ``save_only_latest_checkpoint``.
- **Resuming** (``--load-dir``) loads the newest *readable* checkpoint (:func:`newest_readable_checkpoint`) and
  says in one line which newer files it skipped; ``--load-step N`` and ``--load-checkpoint FILE`` load exactly
  that file or stop. Every problem is a :class:`~posegen_ns.errors.PoseGenInputError` naming the flag, the path
  and the fix (:func:`check_load_paths` checks the paths before anything is built).
- **The random state** of the run travels with the checkpoint (key ``"posegen_rng"``: the torch CPU and CUDA
  generators and every ``torch.Generator`` of the pipeline and its datamanager, e.g. the sampler's noise and the
  datamanager's batch draws), so a run interrupted and resumed draws the same samples and batches as an
  uninterrupted one and ends in the same state (field, sampler, discriminator, critic and their optimizers;
  tests/test_resume.py). nerfstudio's own loaders (``eval_setup``) ignore the extra key.

Not saved (recomputed or restarted on resume): the densification window's gradient statistics (a resume inside a
densification window averages over the steps after it), the fine-tuning filter's counters and the run's report
(``posegen_report.json`` is rewritten at the next report).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import torch
from nerfstudio.engine.trainer import Trainer
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from posegen_ns.errors import PoseGenInputError

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")
"""nerfstudio's checkpoint names, ``step-000001800.ckpt``."""
RNG_KEY = "posegen_rng"
"""Checkpoint key of the run's random state (:func:`rng_state`)."""
_FIX_LOAD_DIR = "pass RUN/nerfstudio_models of an earlier ns-train posegen-human run (the folder with step-*.ckpt files)"


def checkpoint_steps(load_dir: Path) -> List[Tuple[int, Path]]:
    """``(step, path)`` of the ``step-N.ckpt`` files in ``load_dir``, newest (highest step) first; other files are
    ignored."""
    found = []
    for p in Path(load_dir).iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def check_load_paths(load_dir: Optional[Path], load_step: Optional[int] = None, load_checkpoint: Optional[Path] = None) -> None:
    """The paths of a resume, checked before anything is built: ``--load-dir`` is a folder holding ``step-*.ckpt``
    files (and ``step-<load_step>.ckpt`` when ``--load-step`` is given), ``--load-checkpoint`` an existing file.

    Raises:
        PoseGenInputError: naming the flag, the path and the fix.
    """
    if load_dir is not None:
        folder = Path(load_dir).expanduser()
        if not folder.exists():
            raise PoseGenInputError(f"--load-dir {load_dir} does not exist; {_FIX_LOAD_DIR}.")
        if not folder.is_dir():
            raise PoseGenInputError(f"--load-dir {load_dir} is a file, not a folder; {_FIX_LOAD_DIR}.")
        steps = checkpoint_steps(folder)
        if not steps:
            raise PoseGenInputError(f"--load-dir {load_dir} holds no step-*.ckpt checkpoint; {_FIX_LOAD_DIR}.")
        if load_step is not None and load_step not in {s for s, _ in steps}:
            raise PoseGenInputError(
                f"--load-step {load_step}: {folder} has no step-{load_step:09d}.ckpt (it has steps "
                f"{sorted(s for s, _ in steps)}); pass one of them, or leave --load-step out for the newest readable one."
            )
    elif load_checkpoint is not None and not Path(load_checkpoint).expanduser().is_file():
        raise PoseGenInputError(f"--load-checkpoint {load_checkpoint} is not a file; pass a step-*.ckpt file of an "
                                "earlier ns-train posegen-human run (RUN/nerfstudio_models/).")


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """A nerfstudio checkpoint's contents (on the CPU).

    Raises:
        ValueError: the file cannot be read (empty, truncated, not a torch file) or lacks nerfstudio's keys
            (``step``, ``pipeline``, ``optimizers``, ``scalers``); the message says which.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling errors, EOF...
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"cannot be read ({type(exc).__name__}: {text})") from exc
    missing = [k for k in ("step", "pipeline", "optimizers", "scalers") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"is not a nerfstudio checkpoint (no {', '.join(missing)})")
    return state


def _say(message: str) -> None:
    """One unwrapped line on nerfstudio's console."""
    CONSOLE.print(message, soft_wrap=True, markup=False, highlight=False)


def newest_readable_checkpoint(load_dir: Path, say: Callable[[str], None] = _say) -> Tuple[Path, Dict[str, Any]]:
    """The newest checkpoint of ``load_dir`` that can be read, and its contents.

    Newer files that cannot be read (what a kill during a save leaves: a 0-byte or truncated file) are skipped, and
    ``say`` gets one line naming them and the checkpoint used.

    Raises:
        PoseGenInputError: ``load_dir`` is missing or holds no checkpoint (:func:`check_load_paths`), or none of its
            checkpoints can be read (the message names each and why).
    """
    check_load_paths(load_dir)
    skipped = []
    for _, path in checkpoint_steps(Path(load_dir).expanduser()):
        try:
            state = read_checkpoint(path)
        except ValueError as exc:
            skipped.append(f"{path.name} ({exc})")
            continue
        if skipped:
            say(f"ns-train: resuming from {path.name}; skipped the newer {'; '.join(skipped)} "
                "(a save interrupted?)")
        return path, state
    raise PoseGenInputError(f"--load-dir {load_dir}: no checkpoint can be read: {'; '.join(skipped)}; pass the folder "
                            "of a run with an intact checkpoint, or start the run again without --load-dir.")


def _generators(pipeline: Any) -> Dict[str, torch.Generator]:
    """Every ``torch.Generator`` attribute of the pipeline and of its datamanager, by ``owner.attribute`` name."""
    out: Dict[str, torch.Generator] = {}
    for owner, obj in (("pipeline", pipeline), ("datamanager", getattr(pipeline, "datamanager", None))):
        for name, value in vars(obj).items() if obj is not None else ():
            if isinstance(value, torch.Generator):
                out[f"{owner}.{name}"] = value
    return out


def rng_state(pipeline: Any) -> Dict[str, Any]:
    """The run's random state: ``{"torch": CPU state, "cuda": [per-device states] (when CUDA is up), "generators":
    {name: state}}`` (uint8 tensors), for the pipeline's generators (:func:`_generators`)."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state(),
                             "generators": {k: g.get_state() for k, g in _generators(pipeline).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(pipeline: Any, state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`; generators the pipeline no longer has, or has anew, are left as they are."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    generators = _generators(pipeline)
    for name, value in state.get("generators", {}).items():
        if name in generators:
            generators[name].set_state(value)


class PoseGenTrainer(Trainer):
    """See the module docstring."""

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        """nerfstudio's setup (data, field, critic, optimizers, resume); a :class:`~posegen_ns.errors.PoseGenInputError`
        found on the way (a malformed capture, a critic checkpoint that does not fit or fails its probe, a damaged
        checkpoint) ends the program with one line (``ns-train: message``, exit status 1), and the run folder
        nerfstudio made for it is removed when nothing but its ``config.yml`` is in it (a run that never started)."""
        try:
            super().setup(test_mode=test_mode)
        except PoseGenInputError as exc:
            run_dir = Path(self.base_dir)
            if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"config.yml"}:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise SystemExit(f"ns-train: {exc}") from None

    def _load_checkpoint(self) -> None:
        """Load the checkpoint of ``--load-dir`` (the newest readable one, or ``--load-step``'s) or
        ``--load-checkpoint``: the pipeline, optimizers, schedulers, grad scaler and random state.

        Raises:
            PoseGenInputError: a missing or empty folder, a missing step or file, or no readable checkpoint.
        """
        cfg = self.config
        check_load_paths(cfg.load_dir, cfg.load_step, cfg.load_checkpoint)
        if cfg.load_dir is not None and cfg.load_step is None:
            path, state = newest_readable_checkpoint(cfg.load_dir)
        elif cfg.load_dir is not None or cfg.load_checkpoint is not None:
            path = (Path(cfg.load_dir).expanduser() / f"step-{cfg.load_step:09d}.ckpt" if cfg.load_dir is not None
                    else Path(cfg.load_checkpoint).expanduser())
            flag = "--load-step" if cfg.load_dir is not None else "--load-checkpoint"
            try:
                state = read_checkpoint(path)
            except ValueError as exc:
                raise PoseGenInputError(f"{flag}: the checkpoint {path} {exc}; pass another checkpoint (leave "
                                        "--load-step out to take the newest readable one).") from None
        else:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        self._start_step = state["step"] + 1
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and cfg.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        if RNG_KEY in state:
            set_rng_state(self.pipeline, state[RNG_KEY])
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path}")

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint (pipeline, optimizers, schedulers, grad scaler) plus the run's random state
        (:func:`rng_state`), written atomically; with ``save_only_latest_checkpoint`` the other checkpoints are
        deleted once it is complete."""
        from posegen_ns.atomic_io import fsync_dir, torch_save

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        # written (atomically) beside the checkpoint folder, then renamed into it: a kill never leaves a partial or
        # temporary file among the step-*.ckpt files, which nerfstudio's eval_setup (ns-viewer, exports) lists
        staging = self.checkpoint_dir.parent / f".{path.name}.partial"
        for stale in self.checkpoint_dir.parent.glob(".step-*.ckpt.partial"):
            stale.unlink(missing_ok=True)
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        torch_save(
            {
                "step": step,
                "pipeline": pipeline.state_dict(),
                "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
                "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
                "scalers": self.grad_scaler.state_dict(),
                RNG_KEY: rng_state(pipeline),
            },
            staging,
        )
        staging.replace(path)
        fsync_dir(self.checkpoint_dir)
        if self.config.save_only_latest_checkpoint:
            for other in self.checkpoint_dir.glob("*.ckpt"):
                if other != path:
                    other.unlink()

