"""nerfstudio method specifications: ``posegen-human`` and the small ``posegen-human-tiny``.

``posegen-human`` is sized so that ``ns-train posegen-human`` with no arguments finishes on a
2-core CPU in under 15 minutes (default capture at 128 x 128, 6,000 Gaussians); pass larger
``--pipeline.field-steps`` / ``--max-num-iterations`` / ``--pipeline.model.num-gaussians`` on a GPU.
``posegen-human-tiny`` is the test preset (tiny body, a few steps).

Both learn the hard distribution once against a frozen critic (``--pipeline.rounds 1``). To alternate
with critic fine-tuning, pass e.g. ``--pipeline.rounds 3 --pipeline.loop-steps-per-round 100
--pipeline.finetune-steps-per-round 50`` and ``--max-num-iterations`` = field steps + 3 x 150 (the
critic's learning rate is ``--optimizers.critic.optimizer.lr``, SPIN's 5e-5 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

import torch
from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from posegen_ns.datamanager import PoseGenDataManagerConfig
from posegen_ns.model import PoseGenHumanModelConfig
from posegen_ns.critic.loading import CriticConfig
from posegen_ns.pipeline import PoseGenPipelineConfig, SamplerConfig
from posegen_ns.trainer import PoseGenTrainer, check_load_paths

_NEVER = 1_000_000_000  # nerfstudio's periodic eval is replaced by the pipeline's own reports


def _optimizers(field_lr: float = 5e-3) -> dict:
    adam = lambda lr: {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}  # noqa: E731
    return {
        "field_geometry": adam(field_lr),
        "field_appearance": adam(4 * field_lr),
        "generator": adam(1e-3),
        "discriminator": adam(1e-3),
        "critic": adam(5e-5),  # used only when the run fine-tunes the critic (--pipeline.finetune-steps-per-round > 0)
    }


def check_run_inputs(pipeline: PoseGenPipelineConfig) -> None:
    """Cheap checks of a run's input paths, made before ``ns-train`` prints or writes anything (nothing is loaded):
    ``--data`` is a capture folder (not a missing path, not a file; it holds ``capture.json`` or ZJU-MoCap's
    ``annots.npy``), ``--pipeline.model.body`` and ZJU's ``--pipeline.datamanager.dataparser.body`` are existing
    files when they are paths, and the critic's name and files are valid
    (:func:`posegen_ns.critic.loading.check_critic_files`). Deeper problems (a malformed capture, a damaged
    checkpoint) are found when the pipeline loads them.

    Raises:
        PoseGenInputError: the first problem, naming the flag, the path and the fix.
    """
    from posegen_ns.critic.loading import check_critic_files
    from posegen_ns.errors import PoseGenInputError, require_folder

    dm = pipeline.datamanager
    data = dm.data if dm.data is not None else dm.dataparser.data
    if str(data) not in ("", "."):
        fix = "pass a capture folder (ns-posegen-capture writes one), or leave --data out for the default capture"
        root = require_folder(data, "--data", fix)
        if not (root / "capture.json").is_file() and not (root / "annots.npy").is_file():
            raise PoseGenInputError(f"--data {root} holds neither capture.json nor ZJU-MoCap's annots.npy; {fix}.")
    for flag, body in (("--pipeline.model.body", pipeline.model.body), ("--pipeline.datamanager.dataparser.body", dm.dataparser.body)):
        if body not in (None, "open", "tiny") and not Path(body).expanduser().is_file():
            raise PoseGenInputError(f"{flag} {body} is not a file; pass 'open', 'tiny' or an SMPL model file (.pkl / .npz).")
    check_critic_files(pipeline.critic)


@dataclass
class PoseGenTrainerConfig(TrainerConfig):
    """nerfstudio's ``TrainerConfig`` for PoseGen's methods, with the run's inputs checked before ``ns-train``
    prints or writes anything (nerfstudio calls :meth:`print_to_terminal`, then :meth:`save_config`, then trains):
    a bad path ends ``ns-train`` with one line (``ns-train: message``, exit status 1) and leaves no
    ``outputs/.../config.yml`` of a run that never started. ``setup`` builds a :class:`~posegen_ns.trainer.PoseGenTrainer`
    (atomic checkpoints; a resume falls back to the newest readable checkpoint and restores the random state)."""

    _target: Type = field(default_factory=lambda: PoseGenTrainer)

    def check_inputs(self) -> None:
        """:func:`check_run_inputs` of the pipeline and the resume paths (``--load-dir``, ``--load-step``,
        ``--load-checkpoint``: :func:`posegen_ns.trainer.check_load_paths`); a problem ends the program with one line."""
        from posegen_ns.errors import PoseGenInputError

        try:
            check_run_inputs(self.pipeline)
            check_load_paths(self.load_dir, self.load_step, self.load_checkpoint)
        except PoseGenInputError as exc:
            raise SystemExit(f"ns-train: {exc}") from None

    def print_to_terminal(self) -> None:
        """Check the inputs (:meth:`check_inputs`), then print the config as nerfstudio does."""
        self.check_inputs()
        super().print_to_terminal()

    def save_config(self) -> None:
        """Check the inputs (:meth:`check_inputs`), then write ``config.yml`` as nerfstudio does."""
        self.check_inputs()
        super().save_config()


def _trainer(method_name: str, pipeline: PoseGenPipelineConfig, loop_steps: int) -> TrainerConfig:
    return PoseGenTrainerConfig(
        method_name=method_name,
        max_num_iterations=pipeline.field_steps + loop_steps,
        steps_per_save=500,
        save_only_latest_checkpoint=True,
        steps_per_eval_batch=_NEVER,
        steps_per_eval_image=_NEVER,
        steps_per_eval_all_images=_NEVER,
        mixed_precision=False,
        pipeline=pipeline,
        optimizers=_optimizers(),
        vis="tensorboard",
        viewer=ViewerConfig(quit_on_train_completion=True, websocket_host="127.0.0.1"),
        logging=LoggingConfig(steps_per_log=25),
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
    )


posegen_human = MethodSpecification(
    config=_trainer(
        "posegen-human",
        PoseGenPipelineConfig(
            datamanager=PoseGenDataManagerConfig(images_per_batch=4),
            model=PoseGenHumanModelConfig(num_gaussians=6000),
            sampler=SamplerConfig(batch_size=6),
            critic=CriticConfig(pretrain_steps=1000),
            field_steps=1500,
        ),
        loop_steps=300,
    ),
    description="PoseGen: SMPL-driven Gaussian human field + learned hard (pose, camera) distribution against a 3D pose estimator",
)

posegen_human_tiny = MethodSpecification(
    config=_trainer(
        "posegen-human-tiny",
        PoseGenPipelineConfig(
            datamanager=PoseGenDataManagerConfig(images_per_batch=1),
            model=PoseGenHumanModelConfig(num_gaussians=300),
            sampler=SamplerConfig(batch_size=2, prior_stride=16),
            critic=CriticConfig(pretrain_steps=10, input_size=32),
            field_steps=6,
            report_samples=4,
        ),
        loop_steps=4,
    ),
    description="posegen-human at toy size, for tests and smoke runs (use with a tiny-body capture)",
)
