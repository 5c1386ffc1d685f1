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

import torch
from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from posegen_ns.datamanager import PoseGenDataManagerConfig
from posegen_ns.model import PoseGenHumanModelConfig
from posegen_ns.critic.loading import CriticConfig
from posegen_ns.pipeline import PoseGenPipelineConfig, SamplerConfig

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


def _trainer(method_name: str, pipeline: PoseGenPipelineConfig, loop_steps: int) -> TrainerConfig:
    return TrainerConfig(
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
