"""The hard-pose sampler: a generator over (body pose, global orientation, camera), a part-wise
discriminator against real mocap, and the bounded hardness feedback."""

from posegen_ns.sampler.discriminator import PartDiscriminator
from posegen_ns.sampler.generator import CameraRanges, HardPoseGenerator, PoseCameraSample
from posegen_ns.sampler.losses import bounded_hardness_loss, joint_limit_penalty
from posegen_ns.sampler.regions import PoseRegions

__all__ = [
    "CameraRanges", "HardPoseGenerator", "PoseCameraSample", "PartDiscriminator",
    "bounded_hardness_loss", "joint_limit_penalty", "PoseRegions",
]
