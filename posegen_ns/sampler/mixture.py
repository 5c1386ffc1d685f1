"""Several hard-pose samplers in one run (``--pipeline.sampler.num-samplers N``).

One sampler training settles on a few hard regions of pose and camera space, and which ones depends on its seed;
fine-tuning on a mixture of N trainings covers several (``ns-posegen-experiment --ours-samplers``: four samplers per
repeat beat random prior poses where one did not; README). The pipeline keeps sampler 0 as its ``generator``,
``discriminator``, ``pose_regions`` and ``reference_error`` (so a one-sampler run's checkpoint keys are unchanged)
and samplers 1 .. N-1 as :class:`SamplerSlot` modules in ``other_samplers``; ``PoseGenPipeline.using_sampler(k)``
swaps slot ``k`` in for a block (a loop step, its share of a draw) and back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SamplerSlot(nn.Module):
    """One further sampler of a mixture: its generator, discriminator and pose regions (modules) and its hardness
    reference (``reference_error``: scalar buffer, the critic's running MPJPE on prior samples in metres; NaN before
    the sampler's first loop step)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, pose_regions: nn.Module, device: torch.device | str):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.pose_regions = pose_regions
        self.register_buffer("reference_error", torch.tensor(float("nan"), device=device))


def mixture_shares(num: int, num_samplers: int) -> list[int]:
    """Samples of a draw of ``num`` taken from each of ``num_samplers`` samplers when sample ``i`` comes from sampler
    ``i mod num_samplers``: ``[len(range(k, num, num_samplers)) for k ...]`` (e.g. 7 from 3: ``[3, 2, 2]``)."""
    return [len(range(k, num, num_samplers)) for k in range(num_samplers)]


def mixture_order(num: int, num_samplers: int) -> Tensor:
    """``(num,)`` long: where sample ``i`` of the mixture sits in the samplers' shares laid end to end (sampler 0's
    share, then sampler 1's, ...): sampler ``i mod N``'s sample ``i // N``. E.g. 5 from 2 (shares 3 and 2):
    ``[0, 3, 1, 4, 2]``."""
    shares = mixture_shares(num, num_samplers)
    start = [sum(shares[:k]) for k in range(num_samplers)]
    return torch.tensor([start[i % num_samplers] + i // num_samplers for i in range(num)], dtype=torch.long)
