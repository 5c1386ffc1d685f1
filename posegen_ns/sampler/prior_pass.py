"""The prior pass of phase-2 steps, scored once and replayed by several samplers.

Every phase-2 step (:meth:`posegen_ns.pipeline.PoseGenPipeline.loop_step`) first renders a batch of prior samples
(real poses of the prior, uniform cameras) and scores them with the frozen critic: the errors keep the hardness
reference and the per-region statistics of the prior (:class:`~posegen_ns.sampler.regions.PoseRegions`) up to date.
That pass does not depend on the sampler (only on the prior, the camera ranges and the critic), and costs about a
quarter of a step on the CPU (0.15-0.17 s of 0.6 s at the ``cpu`` preset's sizes). When several samplers are learned
one after another against the same critic (``ns-posegen-experiment``'s four samplers per repeat) a
:class:`PriorPassLog` lets the first record its prior passes and the others replay them: each sampler still sees a
fresh prior batch at every step, the same batches as its siblings.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from posegen_ns.errors import PoseGenInputError


class PriorPassLog:
    """Prior passes in step order: entry ``i`` is step ``i``'s ``(prior_index (B,) long, errors (B,) metres)``.

    The prior draws of the recorded entries come from the log's own generator (seeded by ``seed``), so the log is the
    same whichever sampler records it. :meth:`rewind` before each sampler's steps; :meth:`next` returns the entry of
    the current step (``None`` when the log must still record it); :meth:`record` appends one.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.entries: list[tuple[Tensor, Tensor]] = []
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.entries)

    def rewind(self) -> "PriorPassLog":
        """Start again at step 0 (the next sampler's steps)."""
        self.cursor = 0
        return self

    def next(self, batch_size: int) -> Optional[tuple[Tensor, Tensor]]:
        """The recorded prior pass of the current step and advance, or ``None`` past the recorded ones.

        Raises:
            PoseGenInputError: the recorded pass has another batch size than ``batch_size`` (the sampler's
                ``batch_size`` changed between the samplers that share the log).
        """
        if self.cursor >= len(self.entries):
            return None
        index, errors = self.entries[self.cursor]
        if index.shape[0] != batch_size:
            raise PoseGenInputError(
                f"PriorPassLog(seed={self.seed}): step {self.cursor} was recorded with {index.shape[0]} prior samples, "
                f"this sampler draws {batch_size} (--pipeline.sampler.batch-size differs between samplers sharing a log)."
            )
        self.cursor += 1
        return index, errors

    def record(self, prior_index: Tensor, errors: Tensor) -> None:
        """Append the current step's pass ``(prior_index (B,), errors (B,))`` (detached) and advance.

        Raises:
            PoseGenInputError: the log is not at its end (a replayed step cannot be recorded again).
        """
        if self.cursor != len(self.entries):
            raise PoseGenInputError(
                f"PriorPassLog(seed={self.seed}): recording step {self.cursor} but {len(self.entries)} are recorded."
            )
        self.entries.append((prior_index.detach(), errors.detach()))
        self.cursor += 1
