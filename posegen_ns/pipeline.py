"""``PoseGenPipeline``: PoseGen's phases inside one nerfstudio training run.

Phase 1 (steps ``[0, field_steps)``): fit the human field to the capture.
Phase 2 (steps ``[field_steps, field_steps + loop_steps)``): with the field frozen, learn the hard
(pose, camera) distribution against the frozen critic. A generator proposes (body pose, global
orientation, camera) from real mocap poses and noise; the field renders them; the critic predicts
3D joints; the generator maximises the critic's error through a *bounded* hardness loss (the error
ratio to prior poses is pulled to ``target_ratio``), with gradients through the renderer into
pose and camera, while a part-wise discriminator against real mocap keeps poses plausible.
Phase 3 (optional, ``finetune_steps_per_round > 0``): rounds. After phase 1 the steps alternate, for
``rounds`` rounds, between ``loop_steps_per_round`` steps of phase 2 (the sampler learns against the
frozen critic) and ``finetune_steps_per_round`` steps that fine-tune the critic on fresh hard samples
mixed with its source data (:mod:`posegen_ns.critic.finetune`: SPIN's losses, BatchNorm frozen, per-sample
outlier filter); steps after the last round continue phase 2 against the fine-tuned critic. The
critic is then a pipeline parameter group (``critic``, with its own optimizer in the trainer config)
and its weights are part of the pipeline's state dict, so nerfstudio checkpoints save and restore
the fine-tuned critic and a resumed run continues with it. ``schedule_length`` gives the number of
steps a schedule needs (set ``--max-num-iterations`` to it).

At the end of each phase the pipeline prints what it measured (held-out PSNR; the critic's MPJPE on
hard samples vs. prior samples, the hardness ratio) and writes ``posegen_report.json`` in the run
folder.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table
from torch.nn import Parameter

from posegen_ns.datamanager import PoseGenDataManagerConfig
from posegen_ns.atomic_io import write_json
from posegen_ns.critic.loading import CriticConfig, load_configured_critic
from posegen_ns.errors import PoseGenInputError
from posegen_ns.critic.finetune import FinetuneConfig, FinetuneStats, batch_from_samples, finetune_losses, outlier_mask, select, source_count
from posegen_ns.labels import SampleBatch, concat_samples, framing_focal, orbit_cameras, render_and_score, subject_height
from posegen_ns.metrics import circular_spread
from posegen_ns.model import PoseGenHumanModelConfig
from posegen_ns.sampler.config import SamplerConfig
from posegen_ns.sampler.mirror import mirror_samples
from posegen_ns.sampler.mixture import SamplerSlot, mixture_order, mixture_shares
from posegen_ns.sampler.prior_pass import PriorPassLog
from posegen_ns.sampler import (
    CameraRanges,
    HardPoseGenerator,
    PartDiscriminator,
    PoseCameraSample,
    PoseRegions,
    bounded_hardness_loss,
    joint_limit_penalty,
)


def prior_clip_paths(clips: Optional[Tuple[str, ...]]) -> Optional[List[Path]]:
    """Motion files of ``--pipeline.sampler.prior-clips``: each entry a file path or the name (stem) of a
    shipped clip; ``None`` stays ``None`` (every shipped clip).

    Raises:
        PoseGenInputError: an entry that is neither a file nor a shipped clip.
    """
    if clips is None:
        return None
    from posegen_ns.mocap import shipped_clips_dir

    shipped = {p.stem: p for p in shipped_clips_dir().iterdir() if p.suffix.lower() in (".bvh", ".npz")}
    out = []
    for c in clips:
        path = Path(c).expanduser()
        if path.is_file():
            out.append(path)
        elif c in shipped:
            out.append(shipped[c])
        else:
            raise PoseGenInputError(
                f"--pipeline.sampler.prior-clips: {c!r} is neither a motion file nor a shipped clip ({sorted(shipped)})."
            )
    if not out:
        raise PoseGenInputError("--pipeline.sampler.prior-clips is empty; name at least one clip or leave it unset.")
    return out


@dataclass
class PoseGenPipelineConfig(VanillaPipelineConfig):
    """PoseGen: fit the human field, then learn hard (pose, camera) samples against a critic."""

    _target: Type = field(default_factory=lambda: PoseGenPipeline)
    datamanager: PoseGenDataManagerConfig = field(default_factory=PoseGenDataManagerConfig)
    model: PoseGenHumanModelConfig = field(default_factory=PoseGenHumanModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    field_steps: int = 400
    """Steps of phase 1 (fitting the field); the loop runs for the rest of ``--max-num-iterations``."""
    report_samples: int = 32
    """Samples of each kind (hard, prior) used to report the hardness ratio."""
    seed: int = 0
    """Seed of the sampler's noise."""
    rounds: int = 1
    """Rounds of (learn the hard distribution against the frozen critic, fine-tune the critic on fresh samples) after phase 1."""
    loop_steps_per_round: Optional[int] = None
    """Sampler-learning steps per round (None: with one round, the rest of the run)."""
    finetune_steps_per_round: int = 0
    """Critic fine-tuning steps per round; 0 = never fine-tune (the critic stays frozen)."""
    finetune_batch_size: int = 8
    """Fresh hard samples rendered per fine-tuning step (before the outlier filter)."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Mixing and outlier filter of the fine-tuning steps (its ``lr`` is unused here: the trainer's ``critic``
    optimizer sets the rate)."""
    source_images: int = 1500
    """Source renders mixed into fine-tuning (the default critic's pre-training set: same size, cached)."""

    def schedule_length(self) -> int:
        """Steps the schedule needs: ``field_steps + rounds * (loop_steps_per_round + finetune_steps_per_round)``.

        Raises:
            PoseGenInputError: ``rounds < 1``, or several rounds / fine-tuning without ``loop_steps_per_round``.
        """
        if self.rounds < 1 or self.finetune_steps_per_round < 0:
            raise PoseGenInputError(f"--pipeline.rounds must be >= 1 and --pipeline.finetune-steps-per-round >= 0 "
                                    f"(got {self.rounds}, {self.finetune_steps_per_round}).")
        if self.loop_steps_per_round is None:
            if self.rounds > 1 or self.finetune_steps_per_round > 0:
                raise PoseGenInputError("--pipeline.rounds > 1 or --pipeline.finetune-steps-per-round > 0 needs "
                                        "--pipeline.loop-steps-per-round N (sampler steps per round).")
            return self.field_steps
        return self.field_steps + self.rounds * (self.loop_steps_per_round + self.finetune_steps_per_round)

    def phase_at(self, step: int) -> Tuple[str, int]:
        """``("field" | "loop" | "finetune", round)`` of a training step (module docstring); steps past the
        schedule are ``"loop"`` steps of the last round."""
        if step < self.field_steps:
            return "field", 0
        self.schedule_length()  # validates
        L, F = self.loop_steps_per_round, self.finetune_steps_per_round
        if L is None:
            return "loop", 0
        r, within = divmod(step - self.field_steps, L + F)
        if r >= self.rounds:
            return "loop", self.rounds - 1
        return ("loop" if within < L else "finetune"), r


class PoseGenPipeline(VanillaPipeline):
    """See the module docstring. Attributes: ``datamanager``, ``model`` (the field), ``generator``
    and ``discriminator`` (the sampler; with ``--pipeline.sampler.num-samplers N > 1`` sampler 0, the others in
    ``other_samplers``: :mod:`posegen_ns.sampler.mixture`), ``critic`` (frozen), ``pose_bank`` (real mocap poses)."""

    config: PoseGenPipelineConfig

    def __init__(
        self,
        config: PoseGenPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler=None,
    ):
        Pipeline.__init__(self)
        self.config = config
        self.test_mode = test_mode
        self.world_size = world_size
        self.datamanager = config.datamanager.setup(device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank)
        self.datamanager.to(device)
        capture = self.datamanager.train_capture
        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata={},
            device=device,
            grad_scaler=grad_scaler,
            capture=capture,
        )
        self.model.to(device)
        self.ranges = config.sampler.ranges()
        self.generator, self.discriminator = self.make_sampler_networks(device)
        from posegen_ns.data.poses import load_pose_bank

        body_source = config.model.body or capture.body
        if config.sampler.prior_split is not None:
            from posegen_ns.data.pose_bank import load_shipped_pose_bank

            bank = load_shipped_pose_bank(split=config.sampler.prior_split)
        else:
            bank = load_pose_bank(body_source, clips=prior_clip_paths(config.sampler.prior_clips), stride=config.sampler.prior_stride)
        self.register_buffer("prior_body_pose", bank.body_pose.float().to(device))
        self.register_buffer("prior_global_orient", bank.global_orient.float().to(device))
        self.register_buffer("reference_error", torch.tensor(float("nan"), device=device))
        self.pose_regions = self.make_pose_regions()
        if config.sampler.num_samplers < 1:
            raise PoseGenInputError(f"--pipeline.sampler.num-samplers must be at least 1 (got {config.sampler.num_samplers}).")
        self.other_samplers = torch.nn.ModuleList(
            SamplerSlot(*self.make_sampler_networks(device), self.make_pose_regions(), device)
            for _ in range(config.sampler.num_samplers - 1)
        )
        self._active_sampler: Optional[int] = None  # inside using_sampler: the one in use (draws are not mixed)
        self.critic = load_configured_critic(config.critic, body_source).to(device)  # posegen_ns.critic.loading
        for p in self.critic.parameters():
            p.requires_grad_(False)
        self.critic.eval_mode()
        self.finetune_stats = FinetuneStats()
        self._source_sampler = None
        if config.finetune_steps_per_round > 0:
            config.schedule_length()  # validates the rounds
            if not hasattr(self.critic, "predict") or not any(True for _ in self.critic.parameters()):
                raise PoseGenInputError(
                    f"--pipeline.finetune-steps-per-round {config.finetune_steps_per_round}: critic '{config.critic.name}' "
                    "cannot be fine-tuned (it needs trainable weights and SMPL outputs, as hmr/spin); pass 0."
                )
        self.image_hw = (capture.height, capture.width)
        # the framing rule (posegen_ns.labels): the subject's rest height spans 75 % of the image height at 3 m
        self.base_focal = framing_focal(subject_height(self.model.body, self.model.betas), capture.height)
        self.noise = torch.Generator(device="cpu").manual_seed(config.seed)
        # prior passes shared by samplers learned one after another (posegen_ns.sampler.prior_pass); None: each step scores its own
        self.prior_log: Optional[PriorPassLog] = None
        self._prior_report: Optional[Tuple[Tuple[Any, ...], Dict[str, float]]] = None  # hardness_report's prior half
        self.report: Dict[str, Any] = {}
        from posegen_ns.viewer import HardSampleBrowser

        self.hard_samples = HardSampleBrowser(self)  # the viewer's hard-sample panel (posegen_ns.viewer)

    # ------------------------------------------------------------------ setup helpers
    def make_sampler_networks(self, device: Any) -> Tuple[HardPoseGenerator, PartDiscriminator]:
        """A freshly initialised generator and discriminator as ``config.sampler`` describes them, on ``device``
        (``ns-posegen-experiment --relearn-steps`` re-learns the sampler with them)."""
        s = self.config.sampler
        if not 0.0 <= s.mirror_fraction <= 1.0:
            raise PoseGenInputError(f"--pipeline.sampler.mirror-fraction must be in [0, 1] (got {s.mirror_fraction}).")
        if s.mirror_fraction > 0 and any(abs(lo + hi) > 1e-6 for lo, hi in (s.azimuth_range, s.roll_range)):
            raise PoseGenInputError(
                f"--pipeline.sampler.mirror-fraction {s.mirror_fraction} negates the camera azimuth and roll: their ranges "
                f"must be symmetric about 0 (got azimuth {tuple(s.azimuth_range)}, roll {tuple(s.roll_range)}); "
                "widen them or pass --pipeline.sampler.mirror-fraction 0."
            )
        gen = HardPoseGenerator(s.noise_dim, s.hidden, s.max_residual, self.ranges, min_camera_std=s.min_camera_std,
                                max_camera_mean=s.max_camera_mean, max_camera_std=s.max_camera_std,
                                min_azimuth_std=s.min_azimuth_std, max_azimuth_std=s.max_azimuth_std)
        return gen.to(device), PartDiscriminator().to(device)

    def make_pose_regions(self) -> PoseRegions:
        """The learned choice of prior frames for hard draws (:class:`~posegen_ns.sampler.regions.PoseRegions`) as
        ``config.sampler`` describes it, with no error statistics yet (``--relearn-steps`` rebuilds it)."""
        s = self.config.sampler
        return PoseRegions(self.prior_body_pose, self.prior_global_orient, s.num_regions, s.region_temperature,
                           s.region_uniform_mix, seed=self.config.seed, shrink_count=s.region_shrink_count)

    def reset_sampler(self) -> None:
        """Make the pipeline's sampler one freshly initialised sampler (:meth:`make_sampler_networks`,
        :meth:`make_pose_regions` from ``config.sampler``; a mixture's further samplers dropped), drawing its initial
        weights from torch's global generator. The hardness reference is left as it is."""
        self.other_samplers = torch.nn.ModuleList()
        self.generator, self.discriminator = self.make_sampler_networks(self.prior_body_pose.device)
        self.pose_regions = self.make_pose_regions()

    @property
    def num_samplers(self) -> int:
        """Samplers of this pipeline: 1 + ``len(other_samplers)``."""
        return 1 + len(self.other_samplers)

    @contextmanager
    def using_sampler(self, index: int):
        """Within the block sampler ``index`` (0 .. :attr:`num_samplers` - 1) is the pipeline's ``generator``,
        ``discriminator``, ``pose_regions`` and ``reference_error`` (a loop step trains it, a hard draw draws from it
        alone); on exit sampler 0 is back in place, also when the block raises. Gradients of losses computed inside
        reach that sampler's parameters whenever backward runs.

        Raises:
            IndexError: ``index`` is not a sampler of this pipeline.
        """
        if not 0 <= index < self.num_samplers:
            raise IndexError(f"sampler {index} of a pipeline with {self.num_samplers}")
        previous, self._active_sampler = self._active_sampler, index
        slot = self.other_samplers[index - 1] if index > 0 else None
        if slot is not None:
            self._swap(slot)
        try:
            yield
        finally:
            if slot is not None:
                self._swap(slot)
            self._active_sampler = previous

    def _swap(self, slot: SamplerSlot) -> None:
        """Exchange sampler 0 (the pipeline's own modules and reference) with ``slot``'s."""
        for name in ("generator", "discriminator", "pose_regions"):
            mine, theirs = getattr(self, name), getattr(slot, name)
            setattr(self, name, theirs)
            setattr(slot, name, mine)
        ref = self.reference_error.clone()
        self.reference_error.copy_(slot.reference_error)
        slot.reference_error.copy_(ref)

    @property
    def loop_started(self) -> bool:
        return bool(torch.isfinite(self.reference_error))

    @property
    def finetunes_critic(self) -> bool:
        """Whether the schedule fine-tunes the critic (then it is the ``critic`` parameter group)."""
        return self.config.finetune_steps_per_round > 0

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = self.model.get_param_groups()
        groups["generator"] = [*self.generator.parameters(), *(p for s in self.other_samplers for p in s.generator.parameters())]
        groups["discriminator"] = [*self.discriminator.parameters(),
                                   *(p for s in self.other_samplers for p in s.discriminator.parameters())]
        if self.finetunes_critic:
            groups["critic"] = list(self.critic.parameters())
        return groups

    def train(self, mode: bool = True):
        """``nn.Module.train``, except that the critic stays in ``eval_mode`` (frozen BatchNorm statistics
        and no dropout) whenever it is scored; fine-tuning steps switch it to ``train_mode`` themselves."""
        super().train(mode)
        self.critic.eval_mode()
        return self

    # ------------------------------------------------------------------ sampling
    def cameras(self, sample: PoseCameraSample, betas: torch.Tensor):
        """``K, R, t`` (each ``(B, ...)``) of the sampled camera parameters by the one camera rule
        (:func:`posegen_ns.labels.orbit_cameras`): orbit the pelvis of the body with ``betas (B, S)``, azimuth
        from the body's front, focal ``base_focal * focal_scale``. Differentiable in the camera parameters."""
        cam = CameraRanges.unpack(sample.camera)
        pelvis = self.model.body.rest_joints(betas)[:, 0]  # transl = 0: the pelvis stays here in every pose
        H, W = self.image_hw
        return orbit_cameras(sample.global_orient, pelvis, cam["azimuth"], cam["elevation"], cam["distance"],
                             self.base_focal * cam["focal_scale"], W, H, roll=cam["roll"])

    def draw(self, num: int, hard: bool, noise: Optional[torch.Generator] = None, paired: bool = False) -> PoseCameraSample:
        """Draw (pose, camera) samples: from the generator (``hard``; a ``sampler.mirror_fraction`` share of them
        mirrored left-right, :func:`~posegen_ns.sampler.mirror.mirror_samples`) or from the prior (real mocap
        poses, cameras uniform in the ranges). Differentiable in the generator's parameters.
        ``paired``: the second half of the batch reuses the first half's real poses (with other noise).
        With several samplers (``--pipeline.sampler.num-samplers``) and outside :meth:`using_sampler`, hard sample
        ``i`` comes from sampler ``i mod N`` (each draws its share in turn with ``noise``)."""
        noise = noise or self.noise
        if hard and self.num_samplers > 1 and self._active_sampler is None:
            parts = []
            for k, share in enumerate(mixture_shares(num, self.num_samplers)):
                if share:
                    with self.using_sampler(k):
                        parts.append(self.draw(share, hard=True, noise=noise, paired=paired))
            return concat_samples(parts).take(mixture_order(num, self.num_samplers))
        dev = self.prior_body_pose.device
        if hard and self.pose_regions.num_regions > 1:
            idx = self.pose_regions.sample_indices(num, noise).cpu()
        else:
            idx = torch.randint(self.prior_body_pose.shape[0], (num,), generator=noise)
        if paired:
            idx[num // 2 : 2 * (num // 2)] = idx[: num // 2]
        idx = idx.to(dev)
        pose, orient = self.prior_body_pose[idx], self.prior_global_orient[idx]
        if hard:
            z = torch.randn(num, self.config.sampler.noise_dim, generator=noise).to(dev)
            sample = self.generator(pose, orient, z)
            sample.noise, sample.prior_index = z, idx
            if self.config.sampler.mirror_fraction > 0:  # posegen_ns.sampler.mirror: both sides of the body
                sample = mirror_samples(sample, torch.rand(num, generator=noise) < self.config.sampler.mirror_fraction)
            return sample
        return PoseCameraSample(body_pose=pose, global_orient=orient, camera=self.ranges.sample_uniform(num, noise).to(dev),
                                prior_index=idx)

    def render_and_score(self, sample: PoseCameraSample) -> SampleBatch:
        """Render samples with the field and score them with the critic (:func:`posegen_ns.labels.render_and_score`;
        differentiable through the render into pose and camera)."""
        B = sample.body_pose.shape[0]
        betas = self.model.betas[None].expand(B, -1)
        K, R, t = self.cameras(sample, betas)
        H, W = self.image_hw
        return render_and_score(self.model.render, self.critic, sample.body_pose, sample.global_orient, betas, K, R, t, W, H)

    # ------------------------------------------------------------------ training
    def _set_phase(self, phase: str) -> None:
        """Trainable parts per phase: the field in ``"field"``, the critic in ``"finetune"`` (never in
        ``"loop"``, where the hardness loss would otherwise train it to be wrong)."""
        for p in self.model.field.parameters():
            p.requires_grad_(phase == "field")
        if self.finetunes_critic:
            for p in self.critic.parameters():
                p.requires_grad_(phase == "finetune")

    def get_train_loss_dict(self, step: int):
        phase, _ = self.config.phase_at(step)
        self._set_phase(phase)
        if phase == "field":
            cameras, batch = self.datamanager.next_train(step)
            outputs = self.model.render_batch(batch)
            metrics = self.model.get_metrics_dict(outputs, batch)
            return outputs, self.model.get_loss_dict(outputs, batch, metrics), metrics
        if phase == "finetune":
            return self._finetune_step()
        with self.using_sampler(step % self.num_samplers):  # the samplers take turns
            return self.loop_step()

    def load_pipeline(self, loaded_state: Dict[str, Any], step: int) -> None:
        """nerfstudio's checkpoint loading (``--load-dir``, ``--load-config``), after checking that the
        checkpoint and this configuration agree on the field's optional parts. nerfstudio loads a model
        non-strictly, so a part present on one side only would load silently and then stop the run in
        torch's optimizer loading with a bare "parameter group" size error.

        Raises:
            PoseGenInputError: the checkpoint has no pose-dependent residual (written before it existed,
                or with ``--pipeline.model.pose-residual False``) while this run has one, or the reverse; or it holds
                another number of samplers than ``--pipeline.sampler.num-samplers``; the message names the option
                that makes them agree.
        """
        slots = {int(k.replace("module.", "").split(".")[1]) for k in loaded_state
                 if k.replace("module.", "").startswith("other_samplers.")}
        held = 1 + (max(slots) + 1 if slots else 0)
        if held != self.num_samplers:
            raise PoseGenInputError(
                f"checkpoint at step {step} holds {held} sampler(s) but this run is configured with {self.num_samplers}: add "
                f"--pipeline.sampler.num-samplers {held} to load it."
            )
        has = any(k.replace("module.", "").startswith("_model.field.pose_residual.") for k in loaded_state)
        wants = self.model.field.pose_residual is not None
        if has != wants:
            flag = "False" if wants else "True"
            raise PoseGenInputError(
                f"checkpoint at step {step} was written {'without' if wants else 'with'} the field's pose-dependent residual "
                f"(pose_residual) but this run is configured {'with' if wants else 'without'} it: add "
                f"--pipeline.model.pose-residual {flag} to load it."
            )
        super().load_pipeline(loaded_state, step)

    def source_sampler(self, split: str = "train", num_images: Optional[int] = None):
        """The critic's source set (:func:`posegen_ns.data.source_poses.make_source_sampler` of the critic's source
        kind, ``--pipeline.critic.source``) at ``1.5 x`` the critic's input size: ``split`` ``"train"`` with
        ``source_images`` renders is the default critic's pre-training set (fine-tuning mixes it in; built on first
        use and kept), ``"heldout"`` its held-out frames, ``"other"`` unusual motions and views."""
        from posegen_ns.data.source_poses import make_source_sampler

        kind = getattr(self.config.critic, "source", "narrow")
        size = int(1.5 * self.critic.input_size)
        if split != "train" or num_images is not None:
            return make_source_sampler(self.critic.body, size, split, num_images=num_images or self.config.source_images, kind=kind)
        if self._source_sampler is None:
            self._source_sampler = make_source_sampler(self.critic.body, size, "train", num_images=self.config.source_images,
                                                       kind=kind)
        return self._source_sampler

    def _finetune_step(self):
        """One critic fine-tuning step (:mod:`posegen_ns.critic.finetune`): fresh hard samples rendered and
        labelled without gradients, filtered, mixed with source images, SPIN's losses with BatchNorm frozen.
        The trainer's ``critic`` optimizer takes the step."""
        cfg = self.config
        with torch.no_grad():
            self.critic.eval_mode()
            scored = self.render_and_score(self.draw(cfg.finetune_batch_size, hard=True))
        batch = batch_from_samples(scored, self.critic.body.num_betas)
        keep, reasons = outlier_mask(batch, cfg.finetune)
        self.finetune_stats.add_filter(keep, reasons)
        kept = select(batch, keep)
        n_src = source_count(int(keep.sum()), cfg.finetune.source_fraction)
        src = self.source_sampler()(n_src, self.noise) if n_src else None
        metrics = {"critic_mpjpe_samples_mm": scored.error.nanmean() * 1000, "finetune_kept": keep.float().mean()}
        if int(keep.sum()) == 0 and src is None:  # nothing usable: a zero loss that still reaches the critic
            return {"rgb": scored.images}, {"critic": next(self.critic.parameters()).sum() * 0.0}, metrics
        self.critic.train_mode()
        losses = finetune_losses(self.critic, kept, src, cfg.finetune.weights)
        self.critic.eval_mode()  # the forward pass is done; backward does not depend on the mode
        self.finetune_stats.steps += 1
        self.finetune_stats.source_images += n_src
        self.finetune_stats.losses.append(float(losses["loss"].detach()))
        metrics.update({f"critic_{k}": v.detach() for k, v in losses.items() if k != "loss"})
        return {"rgb": scored.images}, {"critic": losses["loss"]}, metrics

    def loop_step(self):
        """One phase-2 step: the sampler's losses on a fresh batch against the frozen critic (bounded hardness through
        the render, adversarial, joint limits, residual, diversity; the discriminator's loss), the hardness reference
        updated from prior samples. Returns nerfstudio's ``(outputs, loss_dict, metrics_dict)``."""
        cfg = self.config.sampler
        with torch.no_grad():  # running reference: the critic's error on prior samples (and per region of the prior)
            prior_index, prior_errors = self.prior_pass(cfg.batch_size)
            self.pose_regions.update(prior_index, prior_errors)
            prior_err = prior_errors.nanmean()
            if not torch.isfinite(prior_err):  # a black-box critic found nobody: keep the reference
                pass
            elif not self.loop_started:
                self.reference_error.copy_(prior_err)
            else:
                self.reference_error.mul_(cfg.reference_momentum).add_((1 - cfg.reference_momentum) * prior_err)
        sample = self.draw(cfg.batch_size, hard=True, paired=True)
        scored = self.render_and_score(sample)
        # generator's adversarial term through a detached copy of the discriminator's weights
        d_params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        fake_logits = torch.func.functional_call(self.discriminator, d_params, (sample.body_pose,))
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        real_idx = torch.randint(self.prior_body_pose.shape[0], (cfg.batch_size * 4,), generator=self.noise)
        real_logits = self.discriminator(self.prior_body_pose[real_idx.to(self.prior_body_pose.device)])
        fake_d = self.discriminator(sample.body_pose.detach())
        if getattr(self.critic, "differentiable", True):
            # each sample against its own region of the prior (the region choice supplies the hard poses)
            reference = self.pose_regions.reference(sample.prior_index, self.reference_error)
            hardness = bounded_hardness_loss(scored.error, reference, cfg.target_ratio)
        else:
            hardness = self._black_box_hardness(sample)
        losses = {
            "hardness": cfg.hardness_weight * hardness,
            "adversarial": cfg.adversarial_weight * bce(fake_logits, torch.ones_like(fake_logits)),
            "joint_limits": cfg.limit_weight * joint_limit_penalty(sample.body_pose).mean(),
            "pose_residual": cfg.residual_weight * sample.residual.pow(2).sum(-1).mean(),
            "discriminator": bce(real_logits, torch.ones_like(real_logits)) + bce(fake_d, torch.zeros_like(fake_d)),
            "diversity": cfg.diversity_weight * self._mode_seeking(sample),
        }
        metrics = {
            "critic_mpjpe_hard_mm": scored.error.nanmean().detach() * 1000,
            "critic_mpjpe_prior_mm": self.reference_error * 1000,
            "hardness_ratio": scored.error.nanmean().detach() / self.reference_error,
        }
        return {"rgb": scored.images}, losses, metrics

    def prior_pass(self, num: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The critic on ``num`` prior samples (real poses, uniform cameras) rendered by the field, without gradients:
        ``(prior_index (num,) long, errors (num,) metres)``. With a :class:`~posegen_ns.sampler.prior_pass.PriorPassLog`
        in ``prior_log`` the step's recorded pass is replayed, or drawn with the log's generator and recorded."""
        log = self.prior_log
        if log is not None:
            entry = log.next(num)
            if entry is not None:
                return entry
        with torch.no_grad():
            prior = self.draw(num, hard=False, noise=log.generator if log is not None else None)
            errors = self.render_and_score(prior).error
        if log is not None:
            log.record(prior.prior_index, errors)
        return prior.prior_index, errors

    def _black_box_hardness(self, sample: PoseCameraSample) -> torch.Tensor:
        """Hardness feedback from a critic without gradients (e.g. BlazePose): an antithetic
        evolution-strategy estimate (Salimans et al. 2017) of the gradient of the bounded hardness
        reward w.r.t. the sampler's noise-free output x = (body_pose, global_orient, camera), turned
        into a surrogate loss (``adapters.blackbox.es_surrogate``) that back-propagates into the
        generator. ES needs no log-probability, so the generator stays deterministic. A failed
        detection (NaN joints) counts as an error at the target ratio: a miss is a hard case."""
        from adapters.blackbox import es_perturb, es_surrogate

        cfg, ccfg = self.config.sampler, self.config.critic
        x = sample.flat()  # (B, 77)
        points, eps = es_perturb(x, ccfg.es_samples, ccfg.es_sigma, generator=self.noise)
        B, K, D = points.shape
        flat = points.reshape(B * K, D)
        lo, hi = self.generator.bounds[:, 0], self.generator.bounds[:, 1]
        with torch.no_grad():
            perturbed = PoseCameraSample.from_flat(flat)
            perturbed.camera = torch.maximum(torch.minimum(perturbed.camera, hi), lo)
            err = self.render_and_score(perturbed).error
            err = torch.nan_to_num(err, nan=float(self.reference_error) * cfg.target_ratio)
            rewards = -bounded_hardness_loss(err, self.reference_error, cfg.target_ratio, reduce=False).reshape(B, K)
        return es_surrogate(x, rewards, eps, ccfg.es_sigma) + rewards.mean().neg().detach()

    def _mode_seeking(self, sample: PoseCameraSample) -> torch.Tensor:
        """Mode-seeking regulariser (Mao et al., CVPR 2019): ``1 / (d(G(z1), G(z2)) / d(z1, z2) + eps)``
        over pairs that share a real pose; output distance on the pose residual (in units of
        ``max_residual``) and the camera (in units of each range)."""
        h = sample.camera.shape[0] // 2
        if h == 0:
            return sample.camera.new_zeros(())
        lo, hi = self.generator.bounds[:, 0], self.generator.bounds[:, 1]
        feats = torch.cat([sample.residual.flatten(1) / self.config.sampler.max_residual, (sample.camera - lo) / (hi - lo)], -1)
        d_out = (feats[:h] - feats[h : 2 * h]).abs().mean(-1)
        d_z = (sample.noise[:h] - sample.noise[h : 2 * h]).abs().mean(-1)
        return (1.0 / (d_out / d_z + 1e-5)).mean() * 1e-2

    @torch.no_grad()
    def diversity(self, sample: PoseCameraSample) -> Dict[str, float]:
        """Diversity of samples: mean pairwise per-joint distance (mm) of root-relative SMPL-24 joints
        in the body frame (global orientation removed), and the spread (std) of each camera parameter;
        the azimuth's spread is its circular standard deviation and ``camera_azimuth_mean`` its circular mean
        (:func:`posegen_ns.metrics.circular_spread`; radians, 0 = in front of the body, +-pi = behind it)."""
        body = self.model.body
        B = sample.body_pose.shape[0]
        joints = body(sample.body_pose, torch.zeros(B, 3, device=sample.body_pose.device)).joints
        joints = joints - joints[:, :1]
        d = (joints[:, None] - joints[None]).norm(dim=-1).mean(-1)  # (B, B)
        out = {"pose_pairwise_mm": float(d.sum() / max(B * (B - 1), 1)) * 1000}
        for name, std in zip(self.ranges.names(), sample.camera.std(0).tolist()):
            out[f"camera_{name}_std"] = std
        out["camera_azimuth_std"], out["camera_azimuth_mean"] = circular_spread(sample.camera[:, 0])
        return out

    # ------------------------------------------------------------------ evaluation and reports
    @torch.no_grad()
    def heldout_psnr(self) -> Dict[str, float]:
        """The field on every held-out (frame, camera) image: mean PSNR (dB) over whole images, mean
        PSNR over the person's pixels only (capture mask or rendered alpha > 0.5; the black background
        inflates whole-image PSNR), and mean SSIM (:meth:`PoseGenHumanModel.image_quality` on the
        datamanager's ``novel_pose`` split)."""
        return self.model.image_quality(self.datamanager.split_batches("novel_pose"))

    def get_average_eval_image_metrics(self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False):
        self.eval()
        metrics = self.heldout_psnr()
        self.train()
        return metrics

    @torch.no_grad()
    def hardness_report(self, num: Optional[int] = None, seed: int = 1234) -> Dict[str, float]:
        """Critic MPJPE (mm) on ``num`` hard samples and ``num`` prior samples (default ``report_samples``), their
        ratio, and each half's diversity (:meth:`diversity`) and failed-detection share, drawn with a generator
        seeded by ``seed``.

        The prior half does not depend on the sampler: it is kept with a key made of what it does depend on (the
        drawing generator's state, ``num``, the camera ranges, the pose prior, the field's and the critic's weights)
        and reused while the key holds, so the samplers learned one after another on one field (the experiment's
        per-repeat samplers) render and score it once. The figures are the same as computed anew."""
        num = num or self.config.report_samples
        gen = torch.Generator().manual_seed(seed)
        out: Dict[str, float] = {}
        for kind, hard in (("hard", True), ("prior", False)):
            key = None if hard else self._prior_report_key(num, gen)
            if key is not None and self._prior_report is not None and self._prior_report[0] == key:
                out.update(self._prior_report[1])
                continue
            samples = [self.draw(min(8, num - i), hard=hard, noise=gen) for i in range(0, num, 8)]
            errors = torch.cat([self.render_and_score(s).error for s in samples])
            half = {f"mpjpe_{kind}_mm": float(errors.nanmean()) * 1000,
                    f"{kind}_failed_detections": float(errors.isnan().float().mean())}
            half.update({f"{kind}_{k}": v for k, v in self.diversity(concat_samples(samples)).items()})
            out.update(half)
            if key is not None:
                self._prior_report = (key, half)
        out["hardness_ratio"] = out["mpjpe_hard_mm"] / out["mpjpe_prior_mm"]
        return out

    def _prior_report_key(self, num: int, gen: torch.Generator) -> Tuple[Any, ...]:
        """What :meth:`hardness_report`'s prior half depends on: the generator's state, ``num``, the camera ranges,
        a fingerprint of the pose prior and of the field's and the critic's weights (sums of absolute values in
        float64, the critic's by :meth:`critic_weights_l1`), and the critic's train/eval mode."""
        def l1(tensors: Any) -> float:
            return float(sum(t.detach().double().abs().sum() for t in tensors))

        return (hashlib.sha1(gen.get_state().numpy().tobytes()).hexdigest(), num, repr(self.ranges),
                tuple(self.prior_body_pose.shape), l1([self.prior_body_pose, self.prior_global_orient]),
                l1(self.model.parameters()), self.critic_weights_l1(), self.critic.training)

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        base_dir = Path(trainer.base_dir) if trainer is not None else None
        last = (trainer.config.max_num_iterations - 1) if trainer is not None else None

        if trainer is not None and self.finetunes_critic and last + 1 < self.config.schedule_length():
            CONSOLE.log(f"[yellow]--max-num-iterations {last + 1} ends before the last fine-tuning round "
                        f"(the schedule needs {self.config.schedule_length()} steps)")

        def report(step: int) -> None:
            # nerfstudio runs ``max_num_iterations`` steps from the checkpoint's step when resumed
            # (``--load-dir``), so the last step is known only once training has started
            end = (trainer._start_step + trainer.config.max_num_iterations - 1) if trainer is not None else None
            if self.config.phase_at(step)[0] == "finetune" and self.config.phase_at(step + 1)[0] != "finetune":
                self._round_report(step, base_dir)
            if step == self.config.field_steps - 1 or step == end:
                self._report(step, base_dir, final=step == end)

        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], report, update_every_num_iters=1)] + self.model.get_training_callbacks(training_callback_attributes)

    def critic_weights_l1(self) -> float:
        """Sum of the absolute values of the critic's parameters: a fingerprint of its weights (reported,
        so that a restored checkpoint can be checked against the run that wrote it)."""
        return float(sum(p.detach().double().abs().sum() for p in self.critic.parameters()))

    def _round_report(self, step: int, base_dir: Optional[Path]) -> None:
        """End of a fine-tuning round: the critic on hard / prior samples now, and the filter's counts."""
        _, r = self.config.phase_at(step)
        self.eval()
        row = {"round": r + 1, "step": step, **{k: v for k, v in self.hardness_report().items() if k.startswith(("mpjpe", "hardness"))},
               **self.finetune_stats.as_dict()}
        self.train()
        self.report.setdefault("rounds", []).append(row)
        CONSOLE.log(
            f"round {r + 1}/{self.config.rounds}: critic fine-tuned for {row['steps']} steps in all "
            f"(samples kept {row['kept']}, dropped {row['dropped']}); now MPJPE hard {row['mpjpe_hard_mm']:.1f} mm, "
            f"prior {row['mpjpe_prior_mm']:.1f} mm"
        )
        if base_dir is not None:
            base_dir.mkdir(parents=True, exist_ok=True)
            write_json(base_dir / "posegen_report.json", self.report, indent=2)  # atomic (posegen_ns.atomic_io)

    def _report(self, step: int, base_dir: Optional[Path], final: bool) -> None:
        self.eval()
        started = time.time()
        if "heldout_psnr" not in self.report or step == self.config.field_steps - 1:
            self.report.update({f"heldout_{k}": v for k, v in self.heldout_psnr().items()})
        if final and step >= self.config.field_steps:
            self.report.update(self.hardness_report())
        if self.finetunes_critic:
            self.report["finetune"] = self.finetune_stats.as_dict()
        self.report["critic_weights_l1"] = self.critic_weights_l1()
        self.report["step"] = step
        self.train()
        table = Table(title=f"posegen-human, step {step + 1}")
        table.add_column("measure")
        table.add_column("value", justify="right")
        names = {
            "heldout_psnr": "field PSNR on held-out frames (dB)",
            "heldout_psnr_person": "field PSNR on held-out frames, person pixels only (dB)",
            "heldout_ssim": "field SSIM on held-out frames",
            "mpjpe_hard_mm": "critic MPJPE on hard samples (mm)", "mpjpe_prior_mm": "critic MPJPE on prior samples (mm)",
            "hardness_ratio": "hardness ratio (hard / prior)",
            "hard_pose_pairwise_mm": "pose diversity of hard samples (mean pairwise mm)",
            "prior_pose_pairwise_mm": "pose diversity of prior samples (mean pairwise mm)",
            "hard_camera_azimuth_std": "azimuth spread of hard samples (circular std, rad)",
            "prior_camera_azimuth_std": "azimuth spread of prior samples (circular std, rad)",
            "hard_camera_azimuth_mean": "azimuth of hard samples (circular mean, rad; 0 front, +-3.14 back)",
        }
        for key, label in names.items():
            if key in self.report:
                table.add_row(label, f"{self.report[key]:.1f}" if key.endswith(("_mm", "psnr", "person")) else f"{self.report[key]:.3f}")
        CONSOLE.print(table)
        CONSOLE.log(f"report computed in {time.time() - started:.1f} s")
        if base_dir is not None:
            base_dir.mkdir(parents=True, exist_ok=True)
            write_json(base_dir / "posegen_report.json", self.report, indent=2)  # atomic (posegen_ns.atomic_io)
