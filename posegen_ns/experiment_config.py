"""The options of ``ns-posegen-experiment`` (:mod:`posegen_ns.experiment`): the arms, the sizes of each preset
(:class:`ExperimentSizes`, :data:`PRESETS`), the sampler settings ours re-learns with (:class:`SamplerOverrides`) and
the whole command line (:class:`ExperimentConfig`). Imports nothing of the experiment's other modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from posegen_ns.critic.finetune import FinetuneConfig
from posegen_ns.engine import Engine
from posegen_ns.errors import PoseGenInputError

ARMS: tuple[str, ...] = ("pretrained", "random-prior", "posegen-released", "mining", "ours", "ours-mesh")
"""Row names of the comparison, in order (``ours-mesh`` is a diagnostic row: ours' samples rendered by the mesh
renderer instead of the field, so ``ours - ours-mesh`` is what the field's render error costs)."""


@dataclass
class ExperimentSizes:
    """Sizes of one experiment, declared once: a preset (:data:`PRESETS`) sets every field; on the command line
    (:class:`ExperimentConfig` inherits these fields, ``--field-steps`` ...) a field left unset (None) keeps the
    preset's value (:meth:`ExperimentConfig.sizes`)."""

    body: Optional[str] = None
    """Body of the subject and the critic: 'tiny' or 'open'."""
    capture_cameras: Optional[int] = None
    """Tiny preset: cameras of the capture built for the run (full: the default capture)."""
    capture_resolution: Optional[int] = None
    """Tiny preset: image side of the capture built for the run, pixels."""
    critic_pretrain_steps: Optional[int] = None
    """Pre-training steps of the default critic (cached per setting)."""
    critic_input_size: Optional[int] = None
    """Crop side of the default critic, pixels."""
    field_steps: Optional[int] = None
    """Phase 1 steps (fitting the field)."""
    loop_steps: Optional[int] = None
    """Phase 2 steps (our sampler against the frozen critic)."""
    num_gaussians: Optional[int] = None
    """Gaussians of the field."""
    sampler_batch: Optional[int] = None
    """(pose, camera) samples per sampler step (ours and the released GAN)."""
    gan_steps: Optional[int] = None
    """Training steps of the released-style GAN."""
    finetune_images: Optional[int] = None
    """Usable (post-filter) fine-tuning images per arm."""
    finetune_batch: Optional[int] = None
    """Images per fine-tuning step."""
    finetune_epochs: Optional[int] = None
    """Passes over each arm's fine-tuning images."""
    eval_stride: Optional[int] = None
    """Frame stride of the evaluation motions."""
    eval_max_frames: Optional[int] = None
    """At most this many frames per evaluation motion (after the stride)."""
    eval_cameras: Optional[int] = None
    """Cameras on the evaluation ring."""
    eval_elevations: Optional[tuple[float, ...]] = None
    """Elevations (degrees) of the evaluation ring."""
    eval_resolution: Optional[int] = None
    """Rendered evaluation image side, pixels."""
    eval_distance_scales: Optional[tuple[float, ...]] = None
    """Evaluation cameras at these multiples of the framing distance (3 m): nearer and farther (MPI-INF-3DHP-like)."""
    critic_source: Optional[str] = None
    """Source set the default critic is pre-trained on: 'narrow' (walking, frontal) or 'h36m' (Human3.6M-like)."""
    repeats: Optional[int] = None
    """Draw and fine-tune each arm this many times with different seeds (repeat k's seed is shared by every arm);
    rows report the mean and its 95 % interval, comparisons the paired 95 % interval of the difference."""
    ours_samplers: Optional[int] = None
    """Samplers each repeat of ours (and ours-mesh) learns from scratch, at most :data:`MAX_OURS_SAMPLERS`; its
    fine-tuning batches are drawn from them in turn (batch ``i`` from sampler ``i mod N``), so the learned hard
    distribution is a mixture of ``N`` independent trainings. One training settles on a few hard views and poses,
    which differ from training to training (stop 19); at 640 images four per repeat put ours 11 mm below random prior
    poses where one did not (stop 22 screening, docs/experiment_history.md). Needs ``--ours-sampler per-repeat`` and
    ``--ours-rounds 1`` when above 1."""


MAX_OURS_SAMPLERS = 9
"""Most samplers per repeat (``--ours-samplers``): their seeds (:func:`~posegen_ns.experiment_tasks.repeat_sampler_seed`)
stay inside the repeat's block of 10,000."""

PRESETS: dict[str, ExperimentSizes] = {
    "tiny": ExperimentSizes(
        body="tiny", capture_cameras=3, capture_resolution=40, critic_pretrain_steps=150, critic_input_size=32,
        field_steps=60, loop_steps=30, num_gaussians=300, sampler_batch=4, gan_steps=30, finetune_images=48,
        finetune_batch=8, finetune_epochs=3, eval_stride=24, eval_max_frames=4, eval_cameras=4,
        eval_elevations=(0.0, 30.0), eval_resolution=40, eval_distance_scales=(1.0,), critic_source="narrow",
        repeats=2, ours_samplers=1,
    ),
    "cpu": ExperimentSizes(
        body="open", capture_cameras=6, capture_resolution=128, critic_pretrain_steps=2400, critic_input_size=128,
        field_steps=800, loop_steps=150, num_gaussians=4000, sampler_batch=6, gan_steps=150, finetune_images=640,
        finetune_batch=16, finetune_epochs=6, eval_stride=8, eval_max_frames=6, eval_cameras=4,
        eval_elevations=(-10.0, 15.0, 45.0), eval_resolution=128, eval_distance_scales=(0.8, 1.4), critic_source="h36m",
        repeats=5, ours_samplers=4,
    ),
    "gpu": ExperimentSizes(
        body="open", capture_cameras=6, capture_resolution=128, critic_pretrain_steps=2400, critic_input_size=128,
        field_steps=1500, loop_steps=300, num_gaussians=6000, sampler_batch=6, gan_steps=300, finetune_images=1024,
        finetune_batch=32, finetune_epochs=3, eval_stride=8, eval_max_frames=24, eval_cameras=8,
        eval_elevations=(-10.0, 0.0, 20.0, 45.0), eval_resolution=128, eval_distance_scales=(0.8, 1.0, 1.4),
        critic_source="h36m", repeats=5, ours_samplers=4,
    ),
}
"""The ``cpu`` preset fine-tunes 6 epochs (4 in stop 26, 2 until stop 25): more passes over the same 640 images help
ours more than the other arms (docs/experiment_history.md "Stop 25" to "Stop 27"); its full run from cold took 79 min
on the 2-core CPU of stop 27 (60 min at 4 epochs, 52 at 2), README "What the cpu preset shows"."""
PRESETS["full"] = PRESETS["gpu"]  # the name before the cpu preset existed


CAMERA_RANGE_FIELDS: tuple[str, ...] = ("elevation_range", "distance_range", "roll_range")
""":class:`SamplerOverrides` fields that set the camera space of every arm (random-prior's uniform cameras, mining's,
ours' prior half and ours' learned cameras), not only ours' sampler."""


@dataclass
class SamplerOverrides:
    """Settings of our sampler to re-learn it with (``--relearn-steps``); unset fields keep the run's
    :class:`posegen_ns.pipeline.SamplerConfig` value. Every field is a ``SamplerConfig`` field."""

    target_ratio: Optional[float] = None
    """Wanted hardness ratio (hard / prior critic error) of the bounded hardness loss."""
    max_residual: Optional[float] = None
    """Bound (radians) on the generator's per-joint rotation residual from a real pose."""
    min_camera_std: Optional[float] = None
    """Floor on the spread of each camera logit (sigmoid space)."""
    max_camera_mean: Optional[float] = None
    """Bound on each camera logit's mean (sigmoid space)."""
    max_camera_std: Optional[float] = None
    """Cap on the spread of each camera logit (sigmoid space)."""
    min_azimuth_std: Optional[float] = None
    """Floor on the spread of the azimuth's wrapped normal (radians)."""
    max_azimuth_std: Optional[float] = None
    """Cap on the spread of the azimuth's wrapped normal (radians)."""
    hardness_weight: Optional[float] = None
    """Weight of the bounded hardness loss."""
    adversarial_weight: Optional[float] = None
    """Weight of the generator's adversarial (plausibility) loss."""
    residual_weight: Optional[float] = None
    """Weight of the squared pose residual (radians^2)."""
    diversity_weight: Optional[float] = None
    """Weight of the mode-seeking diversity term."""
    batch_size: Optional[int] = None
    """(pose, camera) samples per sampler step."""
    num_regions: Optional[int] = None
    """Regions of the pose prior whose hardness the sampler tracks (0 or 1: uniform choice of prior frames)."""
    region_temperature: Optional[float] = None
    """Sharpness of the choice of region."""
    region_uniform_mix: Optional[float] = None
    """Share of hard draws with a uniform region."""
    region_shrink_count: Optional[float] = None
    """Pseudo-samples at the mean error each region's error is shrunk with."""
    mirror_fraction: Optional[float] = None
    """Share of hard draws replaced by their left-right mirror image (both sides of the body)."""
    elevation_range: Optional[tuple[float, float]] = None
    """Camera elevation range (radians) of both the prior's uniform cameras and ours."""
    distance_range: Optional[tuple[float, float]] = None
    """Camera distance range (metres) of both the prior's uniform cameras and ours."""
    roll_range: Optional[tuple[float, float]] = None
    """Camera roll range (radians, about the optical axis) of both the prior's uniform cameras and ours."""

    def given(self) -> dict[str, Any]:
        """``{field: value}`` of the fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def camera_ranges(self) -> dict[str, Any]:
        """``{field: value}`` of the set camera ranges (:data:`CAMERA_RANGE_FIELDS`): the camera space every arm
        draws in, not only ours (:func:`posegen_ns.experiment_arms.use_camera_ranges`)."""
        return {k: v for k, v in self.given().items() if k in CAMERA_RANGE_FIELDS}

    def apply(self, sampler: Any) -> Any:
        """A copy of ``sampler`` (a ``SamplerConfig``) with the set fields replaced."""
        import dataclasses

        return dataclasses.replace(sampler, **self.given())


@dataclass
class ExperimentConfig(ExperimentSizes):
    """Compare critics fine-tuned on random prior poses, on PoseGen-as-released samples and on ours.

    The sizes (:class:`ExperimentSizes`: ``--field-steps``, ``--finetune-images``, ...) are the preset's unless set."""

    preset: Literal["tiny", "cpu", "gpu", "full"] = "tiny"
    """'tiny' (tests, minutes), 'cpu' (the evidence on a 2-core CPU), 'gpu' (one GPU, larger sizes; 'full' is its old name)."""
    output_dir: Path = Path("outputs/posegen-experiment")
    """Folder for the run (capture, ns-train outputs, plot, JSON)."""
    eval_poses: Optional[Path] = None
    """Folder (or file) of BVH / AMASS npz motions to evaluate on (frames per motion capped by --eval-max-frames and
    spread over each whole motion); default the evaluation split of the shipped pose bank (motions no arm sees)."""
    json: Optional[Path] = None
    """Write the results JSON here (default OUTPUT_DIR/experiment.json)."""
    load_config: Optional[Path] = None
    """Reuse a trained ``ns-train posegen-human`` run (RUN/config.yml: its field, sampler and critic) instead of
    training one; its pose prior is cut to the training clips (the preset's body and training sizes are ignored)."""
    critic_checkpoint: Optional[Path] = None
    """With ``--load-config``: the critic checkpoint (SPIN layout, e.g. one written by ``ns-posegen-pretrain-critic``)
    every arm starts from, instead of the run's; the run's critic settings (name, backbone, input size) apply."""
    seed: int = 0
    """Seed of sampling, fine-tuning and training."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(lr=5e-5, average_tail=0.5))
    """Fine-tuning recipe shared by every arm (learning rate, source mixing, outlier filter; the weights averaged over
    the last half of the steps: measured to cut random-prior's repeat-to-repeat spread from 19 to 7 mm, stop 20; rate
    5e-5, SPIN's, rather than 1e-4: one fine-tuning of a fixed set scattered by sd 4.4 instead of 11.5 mm over four
    seeds, and ours kept its lead over random-prior on stop 22's run, stop 24, docs/experiment_history.md)."""
    arms: tuple[str, ...] = ARMS
    """Arms to run, a subset of pretrained, random-prior, posegen-released, ours (each arm's result does not depend on the others)."""
    relearn_steps: Optional[int] = None
    """Re-learn ours on the trained (or loaded) field: re-initialise the generator and discriminator and run this many
    sampler steps against the frozen pre-trained critic, with the ``--sampler.*`` overrides (default: keep the run's sampler)."""
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)
    """Sampler settings ours re-learns with (per repeat, or once with ``--relearn-steps``; unset: the run's)."""
    ours_sampler: Literal["per-repeat", "shared"] = "per-repeat"
    """'per-repeat': every repeat of ours (and ours-mesh) learns its own sampler from scratch on the trained field
    (fresh generator and discriminator, ``--relearn-steps`` or the preset's ``loop_steps`` sampler steps against the
    pre-trained critic, seeded by the repeat), so ours' 95 % interval covers the sampler's training as well as the
    drawing and the fine-tuning; 'shared': every repeat draws from the one sampler ``ns-train`` learned (or
    ``--relearn-steps`` re-learned once), whose own training is then not repeated."""
    share_prior_pass: bool = True
    """The samplers of one repeat (``--ours-samplers``) share their prior passes: the critic's errors on the prior
    samples of each sampler step, which keep the hardness reference and region statistics, are rendered and scored
    once per repeat (from a generator seeded by the repeat) and replayed by each of its samplers
    (:class:`~posegen_ns.sampler.prior_pass.PriorPassLog`): a replayed step saves its prior pass, about a quarter of
    a step on the CPU, so with four samplers about a sixth of ours' sampler time (stop 24: 0.14 s per step)."""
    ours_rounds: int = 1
    """Split ours' fine-tuning images into this many rounds (PoseGen's alternation, as ``--pipeline.rounds`` does
    in ns-train): before each round after the first, the sampler learns ``--round-steps`` more steps against the
    critic as fine-tuned so far (:func:`finetune_ours_in_rounds`). 1 = one draw from the sampler as trained."""
    round_steps: int = 150
    """Sampler steps before each of ours' rounds after the first."""
    mining_factor: int = 4
    """The mining arm (PoseSyn's error extraction) renders this many times its hard share from the prior (uniform
    cameras), scores them with the pre-trained critic and keeps the hardest."""
    ours_prior_fraction: float = 0.5
    """Fraction of ours' fine-tuning draws taken from the prior (random-prior's distribution) instead of the hard
    sampler, as PoseAug trains on original and augmented poses together; 0 = hard samples only (measured worse)."""
    engine: Engine = "local"
    """'local' (this process) or 'ray': every arm x repeat a Ray task on the RAY_ADDRESS cluster, else a local Ray
    (:mod:`posegen_ns.experiment_tasks`); the same JSON for the same seeds except timing_s, on the CPU (the sampler's
    steps compute with torch's deterministic algorithms there, :func:`~posegen_ns.experiment_arms.deterministic_on_cpu`)."""
    num_workers: Optional[int] = None
    """--engine ray: workers; default one per GPU of the cluster (with a cuda --device), else one per
    torch.get_num_threads() CPUs."""
    def sizes(self) -> ExperimentSizes:
        """The preset's sizes with this config's overrides applied.

        Raises:
            PoseGenInputError: a size that cannot work (non-positive counts).
        """
        base = asdict(PRESETS[self.preset])
        for f in fields(ExperimentSizes):
            value = getattr(self, f.name)
            if value is not None:
                base[f.name] = value
        sizes = ExperimentSizes(**base)
        for name in ("field_steps", "loop_steps", "gan_steps", "finetune_images", "finetune_batch", "finetune_epochs",
                     "sampler_batch", "eval_stride", "eval_cameras", "eval_resolution", "repeats", "ours_samplers"):
            if getattr(sizes, name) < 1:
                raise PoseGenInputError(f"ns-posegen-experiment: --{name.replace('_', '-')} must be >= 1 (got {getattr(sizes, name)}).")
        self.validate()
        if self.ours_rounds > sizes.finetune_images:
            raise PoseGenInputError(
                f"ns-posegen-experiment: --ours-rounds {self.ours_rounds} is more than the {sizes.finetune_images} "
                "fine-tuning images: every round needs at least one."
            )
        if sizes.ours_samplers > MAX_OURS_SAMPLERS:
            raise PoseGenInputError(f"ns-posegen-experiment: --ours-samplers {sizes.ours_samplers} is more than "
                                    f"{MAX_OURS_SAMPLERS} (each sampler costs its own training; use at most {MAX_OURS_SAMPLERS}).")
        if sizes.ours_samplers > 1:
            if self.ours_sampler != "per-repeat" or self.ours_rounds > 1:
                raise PoseGenInputError(
                    f"ns-posegen-experiment: --ours-samplers {sizes.ours_samplers} learns that many samplers per repeat: "
                    "it needs --ours-sampler per-repeat and --ours-rounds 1 (got "
                    f"--ours-sampler {self.ours_sampler}, --ours-rounds {self.ours_rounds}); add --ours-samplers 1 to "
                    f"draw ours from one sampler (the '{self.preset}' preset learns {PRESETS[self.preset].ours_samplers})."
                )
            if sizes.finetune_images < sizes.ours_samplers * sizes.finetune_batch:
                raise PoseGenInputError(
                    f"ns-posegen-experiment: --ours-samplers {sizes.ours_samplers} draws whole batches of "
                    f"{sizes.finetune_batch} from each sampler: --finetune-images ({sizes.finetune_images}) must be at "
                    f"least {sizes.ours_samplers * sizes.finetune_batch}."
                )
        return sizes

    def validate(self) -> None:
        """Checks of the options that are not sizes.

        Raises:
            PoseGenInputError: an unknown arm, ``--relearn-steps < 1``, ``--sampler.*`` without ``--relearn-steps``,
                or ``--ours-prior-fraction`` outside [0, 1).
        """
        if self.critic_checkpoint is not None and self.load_config is None:
            raise PoseGenInputError("ns-posegen-experiment: --critic-checkpoint replaces a loaded run's critic: add "
                                    "--load-config RUN/config.yml (a new run pre-trains the preset's critic).")
        if self.critic_checkpoint is not None and not Path(self.critic_checkpoint).expanduser().is_file():
            raise PoseGenInputError(f"ns-posegen-experiment: --critic-checkpoint {self.critic_checkpoint} does not exist; "
                                    "pass a SPIN-layout checkpoint file.")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise PoseGenInputError(f"ns-posegen-experiment: --arms {' '.join(self.arms)}: each must be one of {', '.join(ARMS)}.")
        if self.ours_rounds < 1 or self.round_steps < 1:
            raise PoseGenInputError(
                f"ns-posegen-experiment: --ours-rounds and --round-steps must be >= 1 (got {self.ours_rounds}, {self.round_steps})."
            )
        if self.repeats is not None and self.repeats < 1:
            raise PoseGenInputError(f"ns-posegen-experiment: --repeats must be >= 1 (got {self.repeats}).")
        if self.mining_factor < 1:
            raise PoseGenInputError(f"ns-posegen-experiment: --mining-factor must be >= 1 (got {self.mining_factor}).")
        if self.relearn_steps is not None and self.relearn_steps < 1:
            raise PoseGenInputError(f"ns-posegen-experiment: --relearn-steps must be >= 1 (got {self.relearn_steps}).")
        if self.sampler.given() and self.relearn_steps is None and self.ours_sampler == "shared":
            raise PoseGenInputError(
                f"ns-posegen-experiment: --sampler.* ({', '.join(self.sampler.given())}) takes effect by re-learning ours: "
                "add --relearn-steps N, or use --ours-sampler per-repeat."
            )
        if not 0.0 <= self.ours_prior_fraction < 1.0:
            raise PoseGenInputError(f"ns-posegen-experiment: --ours-prior-fraction must be in [0, 1) (got {self.ours_prior_fraction}).")
