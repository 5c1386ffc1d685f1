"""Configuration of the hard-pose sampler (``--pipeline.sampler.*``): the generator, its losses and the
camera ranges, beside the components it configures (:mod:`posegen_ns.sampler`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from posegen_ns.sampler.generator import CameraRanges


@dataclass
class SamplerConfig:
    """The hard-pose sampler and its losses."""

    batch_size: int = 4
    """(pose, camera) samples per loop step."""
    noise_dim: int = 32
    """Size of the generator's noise input."""
    hidden: int = 256
    """Hidden width of the generator."""
    max_residual: float = 0.3
    """Bound (radians) on the generator's per-joint rotation residual from a real pose (0.6 gave twisted bodies that made
    the fine-tuned critic worse on held-out motions)."""
    target_ratio: float = 1.4
    """Wanted hardness ratio: critic error on hard samples / on prior samples (PoseAug-style bounded: learnable, not
    extreme; 2.0 gave samples that made the fine-tuned critic worse)."""
    hardness_weight: float = 1.0
    """Weight of the bounded hardness loss."""
    adversarial_weight: float = 0.3
    """Weight of the generator's adversarial (plausibility) loss."""
    limit_weight: float = 1.0
    """Weight of the knee/elbow joint-limit penalty."""
    residual_weight: float = 0.05
    """Weight of the squared pose residual (radians^2): stay near real poses unless it pays."""
    diversity_weight: float = 0.05
    """Weight of the mode-seeking term (Mao et al., CVPR 2019) that keeps different noise giving different
    samples of the same real pose; guards against the mode collapse PoseAug-style GANs are prone to."""
    min_camera_std: float = 1.0
    """Floor on the spread of each camera logit (sigmoid space; :class:`~posegen_ns.sampler.HardPoseGenerator`)."""
    max_camera_mean: float = 2.0
    """Bound on each camera logit's mean (sigmoid space; 2.0 keeps it within the middle 76 % of each range)."""
    max_camera_std: float = 2.0
    """Cap on the spread of each camera logit (sigmoid space): wider spreads pile samples onto the ranges' bounds."""
    min_azimuth_std: float = 0.5
    """Floor on the spread (radians) of the azimuth's wrapped normal (full-circle azimuth range)."""
    max_azimuth_std: float = 2.0
    """Cap on the spread (radians) of the azimuth's wrapped normal."""
    num_samplers: int = 1
    """Samplers learned side by side in the loop (step ``i`` trains sampler ``i mod N``), each with its own generator,
    discriminator, pose regions and hardness reference; hard draws (export, viewer, fine-tuning rounds) take sample
    ``i`` from sampler ``i mod N``. One training settles on a few hard regions; a mixture covers several
    (``ns-posegen-experiment --ours-samplers``, README). Each sampler gets ``1 / N`` of the loop steps: raise
    ``--pipeline.loop-steps-per-round`` or ``--max-num-iterations`` with it."""
    num_regions: int = 16
    """Regions the pose prior is cut into (:class:`~posegen_ns.sampler.regions.PoseRegions`, k-means on body pose and
    up axis); hard draws pick a region by the critic's running error there (harder regions more often), then a frame
    of it. 0 or 1: every hard draw starts from a uniformly drawn prior frame."""
    region_temperature: float = 0.5
    """Sharpness of the region choice: weight ``(region error / mean error)^(1 / temperature)``."""
    region_uniform_mix: float = 0.3
    """Share of hard draws whose region is uniform (every region stays in play)."""
    region_shrink_count: float = 8.0
    """Pseudo-samples at the mean error that each region's error is shrunk with before the choice (a region scored
    a few times cannot take a large share of draws on a noisy figure; 0: no shrinkage)."""
    mirror_fraction: float = 0.0
    """Share of hard draws replaced by their left-right mirror image (:mod:`posegen_ns.sampler.mirror`: pose mirrored,
    camera azimuth and roll negated), so a camera distribution that settled on one side of the body covers both
    (0: none; needs azimuth and roll ranges symmetric about 0)."""
    reference_momentum: float = 0.9
    """Momentum of the running critic error on prior samples (the hardness reference)."""
    prior_stride: int = 4
    """Frame stride when fitting the shipped mocap for the pose prior."""
    prior_split: Optional[str] = None
    """Draw the pose prior from this split of the shipped pose bank (``'prior'``: every CMU clip that is neither
    the critic's source nor held out for evaluation, :mod:`posegen_ns.data.splits`) instead of fitting
    ``prior_clips``; loads instantly. Default: ``prior_clips``."""
    prior_clips: Optional[Tuple[str, ...]] = None
    """Clips of the pose prior: motion files (.bvh / AMASS .npz) or names of shipped clips (default: every shipped clip)."""
    azimuth_range: tuple = (-math.pi, math.pi)
    """Camera azimuth range (radians) relative to the body's facing direction."""
    elevation_range: tuple = (-0.3, 0.85)
    """Camera elevation range (radians): -17 to 49 degrees, from a low camera to one looking steeply down (MPI-INF-3DHP's
    and surveillance views reach 45 degrees; the earlier (-0.25, 0.6) stopped at 34 and no sampler could reach them)."""
    distance_range: tuple = (2.4, 4.4)
    """Camera distance range (metres) from the pelvis (at 2.4 m the framing rule fills about 94 % of the image height;
    farther cameras show a smaller person, as real datasets do)."""
    roll_range: tuple = (-0.3, 0.3)
    """Camera roll range (radians) about the optical axis."""
    focal_scale_range: tuple = (0.85, 1.15)
    """Range of the factor on the framing focal length (:func:`posegen_ns.labels.framing_focal`)."""

    def ranges(self) -> CameraRanges:
        return CameraRanges(azimuth=tuple(self.azimuth_range), elevation=tuple(self.elevation_range),
                            distance=tuple(self.distance_range), roll=tuple(self.roll_range),
                            focal_scale=tuple(self.focal_scale_range))
