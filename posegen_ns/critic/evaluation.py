"""Scoring a critic on labelled images: one loop (:func:`evaluate_critic`) for every caller.

``ns-posegen-eval`` (rendered motions), ``ns-posegen-experiment`` (each arm's critic on the evaluation set)
and pre-training (held-out source renders) all score a critic here, with the same per-image metrics
(:func:`per_sample_metrics`, :mod:`posegen_ns.metrics`) accumulated under group names
(:class:`MetricAccumulator`): ``"overall"``, ``"clips"``, ``"views"`` and ``"categories"``.

A batch is an :class:`EvalBatch` (B images; camera frame, OpenCV axes, metres): ``images (B, 3, H, W)``,
``boxes (B, 4)``, ``gt (B, J, 3)`` root-relative in the critic's joint set, its ``root``, and the clip it
comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from posegen_ns.metrics import Root, auc, mpjpe, pa_mpjpe, pck, root_align

METRIC_KEYS: tuple[str, ...] = ("mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc")
"""Per-image metrics computed by :func:`per_sample_metrics` (mm, mm, fraction, fraction)."""


@dataclass
class EvalBatch:
    """B labelled images of one clip (camera frame, OpenCV axes, metres)."""

    clip: str
    images: Tensor  # (B, 3, H, W) RGB in [0, 1]
    boxes: Tensor  # (B, 4) xyxy pixels
    gt: Tensor  # (B, J, 3) root-relative joints in the critic's joint set
    root: Root  # root of the joint set (for the metrics)
    frame_index: Optional[Tensor] = None  # (B,) frame within the clip (after striding)
    view_index: Optional[Tensor] = None  # (B,) index into the camera set


def per_sample_metrics(pred: Tensor, gt: Tensor, root: Root = 0) -> dict[str, Tensor]:
    """Per-image metrics of :data:`METRIC_KEYS`, each ``(B,)``, for ``pred``, ``gt`` ``(B, J, 3)``
    metres (same frame and joint order): MPJPE and PA-MPJPE in mm, PCK@150 mm and AUC (0..150 mm)
    as fractions, errors after aligning both sets at ``root`` (PA-MPJPE: similarity Procrustes)."""
    pred, gt = pred.detach().double(), gt.detach().double()
    return {
        "mpjpe_mm": 1000.0 * mpjpe(pred, gt, root),
        "pa_mpjpe_mm": 1000.0 * pa_mpjpe(pred, gt),
        "pck150": pck(pred, gt, 0.150, root),
        "auc": auc(pred, gt, root=root),
    }


def summarize(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of per-image metric arrays ``(N,)`` plus ``num_images``."""
    n = len(next(iter(values.values()))) if values else 0
    out = {k: float(np.mean(v)) if n else float("nan") for k, v in values.items()}
    out["num_images"] = n
    return out


class MetricAccumulator:
    """Collects per-image metrics under group names (clips, views, categories) and summarises them."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {}

    def add(self, kind: str, names: Sequence[str], metrics: dict[str, Tensor]) -> None:
        """Add a batch: ``names[b]`` is the group of image ``b`` within ``kind`` (e.g. ``"clips"``)."""
        arrays = {k: v.cpu().numpy() for k, v in metrics.items()}
        names = list(names)
        store = self.groups.setdefault(kind, {})
        for name in dict.fromkeys(names):
            sel = np.array([n == name for n in names])
            group = store.setdefault(name, {})
            for k, v in arrays.items():
                group.setdefault(k, []).append(v[sel])

    def extend(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Append ``other``'s images after this one's, group by group (returns self): accumulating parts in order
        (e.g. one per motion, from several workers) gives the same summaries as one accumulator over all of them."""
        for kind, groups in other.groups.items():
            store = self.groups.setdefault(kind, {})
            for name, metrics in groups.items():
                group = store.setdefault(name, {})
                for k, parts in metrics.items():
                    group.setdefault(k, []).extend(parts)
        return self

    def summary(self, kind: str) -> dict[str, dict[str, float]]:
        """``{group: summarize(...)}`` for one kind, in insertion order."""
        return {
            name: summarize({k: np.concatenate(v) for k, v in group.items()})
            for name, group in self.groups.get(kind, {}).items()
        }

    def overall(self) -> dict[str, float]:
        """The summary of the ``"overall"`` group (only ``num_images = 0`` when nothing was added)."""
        return self.summary("overall").get("overall", summarize({}))


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter (else first buffer; CPU for a module with neither)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate_critic(
    critic: Any,
    batches: Iterable[EvalBatch],
    view_names: Sequence[str] | None = None,
    categories: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    groups: Mapping[str, Callable[[EvalBatch], Sequence[str]]] | None = None,
    acc: MetricAccumulator | None = None,
) -> MetricAccumulator:
    """Score ``critic`` (an :class:`adapters.protocol.Critic`, put in ``eval_mode()``) on every batch.

    Per-image metrics (:func:`per_sample_metrics` in the batch's joint set, aligned at its root) are
    accumulated under ``"overall"`` and ``"clips"`` (``batch.clip``); with ``view_names`` also under
    ``"views"`` (``view_names[batch.view_index[b]]``); with ``categories`` (``{clip: category}``) also
    under ``"categories"`` (``"unknown"`` for a clip not in it).

    Args:
        critic: the critic; images and boxes go to its device, predictions come back to ``batch.gt``'s.
        batches: :class:`EvalBatch` objects (a list or a stream).
        view_names: names of the camera set, indexed by ``batch.view_index``.
        categories: category of each clip.
        progress: called with the number of images after each batch.
        groups: more groupings, ``{kind: names(batch)}`` with one group name per image of the batch (e.g.
            the subject, or the camera elevation).
        acc: an accumulator to add to (several calls into one summary); default a new one.

    Returns:
        The :class:`MetricAccumulator` (``.overall()``, ``.summary("clips")``, ...).
    """
    critic.eval_mode()
    acc = MetricAccumulator() if acc is None else acc
    device = module_device(critic)
    for batch in batches:
        pred = critic(batch.images.to(device), batch.boxes.to(device))
        m = per_sample_metrics(pred.to(batch.gt.device), batch.gt, batch.root)
        B = batch.gt.shape[0]
        acc.add("clips", [batch.clip] * B, m)
        acc.add("overall", ["overall"] * B, m)
        if view_names is not None:
            acc.add("views", [view_names[int(v)] for v in batch.view_index], m)
        if categories is not None:
            acc.add("categories", [categories.get(batch.clip, "unknown")] * B, m)
        for kind, names in (groups or {}).items():
            acc.add(kind, names(batch), m)
        if progress is not None:
            progress(B)
    return acc


def sampler_batches(
    sample_batch: Callable[[int, torch.Generator], dict], num_samples: int, batch_size: int = 32, seed: int = 1,
    clip: str = "source",
) -> Iterator[EvalBatch]:
    """``num_samples`` images of a batch sampler (``sample_batch(n, generator) -> dict`` with ``images``,
    ``boxes`` and ``joints_h36m_cam (n, 17, 3)``, :mod:`posegen_ns.critic.pretrain`'s layout) as H36M-17
    :class:`EvalBatch` objects of at most ``batch_size``, drawn with a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        b = sample_batch(n, gen)
        yield EvalBatch(clip=clip, images=b["images"], boxes=b["boxes"], gt=root_align(b["joints_h36m_cam"], 0), root=0)
        done += n
