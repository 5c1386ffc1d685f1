"""Prior passes shared by samplers learned one after another (:mod:`posegen_ns.sampler.prior_pass`): the first
sampler renders and records them, the next replays them instead of rendering, both keep the same hardness reference
and region statistics, and a log recorded with another batch size is refused."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch

from posegen_ns.errors import PoseGenInputError
from posegen_ns.sampler.prior_pass import PriorPassLog
from tiny_runs import tiny_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("prior-pass"), batch_size=2, num_regions=2)


@contextlib.contextmanager
def counting_renders(pipeline) -> Iterator[list]:
    """Inside: every ``pipeline.render_and_score`` call appends its batch size to the yielded list."""
    scored: list = []
    render_and_score = pipeline.render_and_score

    def counting(sample):
        scored.append(sample.body_pose.shape[0])
        return render_and_score(sample)

    pipeline.render_and_score = counting
    try:
        yield scored
    finally:
        del pipeline.render_and_score


def _learn(pipeline, seed: int, log, steps: int = 3) -> dict:
    """A fresh sampler learned ``steps`` steps with ``log`` (or none); what it kept and how many renders it scored."""
    from posegen_ns.experiment_arms import sampler_steps

    torch.manual_seed(seed)
    pipeline.reset_sampler()
    pipeline.noise = torch.Generator().manual_seed(seed)
    pipeline.prior_log = log.rewind() if log is not None else None
    try:
        with counting_renders(pipeline) as scored:
            sampler_steps(pipeline, steps)
    finally:
        pipeline.prior_log = None
    regions = {k: v.clone() for k, v in pipeline.pose_regions.state_dict().items()}
    return {"reference": pipeline.reference_error.clone(), "regions": regions, "renders": len(scored),
            "generator": [p.clone() for p in pipeline.generator.parameters()]}


def test_second_sampler_replays_the_first_ones_prior_passes(pipeline):
    log = PriorPassLog(seed=7)
    first = _learn(pipeline, 1, log)
    assert len(log) == 3 and first["renders"] == 6  # each step: the prior pass and the hard batch
    second = _learn(pipeline, 2, log)
    assert len(log) == 3 and second["renders"] == 3  # the prior passes replayed: only the hard batches rendered
    assert torch.equal(first["reference"], second["reference"])
    assert all(torch.equal(first["regions"][k], v) for k, v in second["regions"].items())
    assert not all(torch.equal(a, b) for a, b in zip(first["generator"], second["generator"]))  # another sampler
    # without a log each sampler draws its own prior passes from its own generator: other references
    apart = _learn(pipeline, 2, None)
    assert apart["renders"] == 6 and not torch.equal(apart["reference"], first["reference"])
    # a log recorded by either sampler is the same: its draws come from its own generator
    other_order = PriorPassLog(seed=7)
    _learn(pipeline, 2, other_order)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(log.entries, other_order.entries))
    # a longer learning records the steps past the log's end
    _learn(pipeline, 3, log, steps=4)
    assert len(log) == 4


def test_log_refuses_another_batch_size_and_a_misplaced_record():
    log = PriorPassLog(seed=0)
    log.record(torch.tensor([1, 2]), torch.tensor([0.1, 0.2]))
    log.rewind()
    with pytest.raises(PoseGenInputError, match="batch-size"):
        log.next(3)
    log.rewind()
    with pytest.raises(PoseGenInputError, match="recording step 0"):
        log.record(torch.tensor([1, 2]), torch.tensor([0.1, 0.2]))
    index, errors = log.next(2)
    assert index.tolist() == [1, 2] and log.next(2) is None


def test_hardness_report_scores_its_prior_half_once_per_field_and_critic(pipeline):
    """The report's prior half does not depend on the sampler: a second sampler's report renders only its hard half
    and gives the prior figures computed anew; other critic weights are scored again."""
    def report() -> tuple[dict, int]:
        before = len(scored)
        out = pipeline.hardness_report(num=4)
        return out, len(scored) - before

    weight = next(pipeline.critic.parameters())
    kept = weight.detach().clone()
    with counting_renders(pipeline) as scored:
        try:
            pipeline._prior_report = None
            torch.manual_seed(11)
            pipeline.reset_sampler()
            first, renders = report()
            assert renders == 2  # the hard half and the prior half, 4 samples each
            torch.manual_seed(12)
            pipeline.reset_sampler()  # another sampler on the same field and critic
            second, renders = report()
            assert renders == 1
            prior = [k for k in first if k.startswith("prior_") or k == "mpjpe_prior_mm"]
            assert len(prior) >= 3 and all(second[k] == first[k] for k in prior)
            assert second["mpjpe_hard_mm"] != first["mpjpe_hard_mm"]  # the hard half was drawn anew
            assert second["hardness_ratio"] == pytest.approx(second["mpjpe_hard_mm"] / second["mpjpe_prior_mm"])
            pipeline._prior_report = None
            anew, renders = report()
            assert renders == 2 and all(anew[k] == first[k] for k in prior)
            with torch.no_grad():
                weight.mul_(1.5)
            changed, renders = report()
            assert renders == 2 and changed["mpjpe_prior_mm"] != first["mpjpe_prior_mm"]
        finally:
            with torch.no_grad():
                weight.copy_(kept)
