"""Several samplers in one run (``--pipeline.sampler.num-samplers``): the mixture's order by hand, turns in the loop,
mixed hard draws, checkpoints that hold another number of samplers, and the experiment's one-sampler re-learning."""

from __future__ import annotations

import pytest
import torch

from posegen_ns.errors import PoseGenInputError
from posegen_ns.sampler.mixture import mixture_order, mixture_shares
from tiny_runs import tiny_pipeline


def test_mixture_order_by_hand():
    """Sample i from sampler i mod N: shares and positions in the shares laid end to end."""
    assert mixture_shares(7, 3) == [3, 2, 2] and mixture_shares(2, 3) == [1, 1, 0] and mixture_shares(4, 1) == [4]
    assert mixture_order(5, 2).tolist() == [0, 3, 1, 4, 2]  # shares 3 (a0 a1 a2) and 2 (b0 b1): a0 b0 a1 b1 a2
    assert mixture_order(7, 3).tolist() == [0, 3, 5, 1, 4, 6, 2]
    assert mixture_order(3, 1).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    p = tiny_pipeline(tmp_path_factory.mktemp("mixture"), num_samplers=2)
    with torch.no_grad():  # sampler 1 unlike sampler 0 whatever the initial weights
        for q in p.other_samplers[0].generator.parameters():
            q.add_(0.5)
    return p


def test_two_samplers_are_kept_apart(pipeline):
    g0, g1 = pipeline.generator, pipeline.other_samplers[0].generator
    assert pipeline.num_samplers == 2 and g0 is not g1
    keys = pipeline.state_dict().keys()
    assert any(k.startswith("generator.") for k in keys) and any(k.startswith("other_samplers.0.generator.") for k in keys)
    assert any(k == "other_samplers.0.reference_error" for k in keys)
    groups = pipeline.get_param_groups()
    n_gen = len(list(g0.parameters()))
    assert len(groups["generator"]) == 2 * n_gen and len(groups["discriminator"]) == 2 * len(list(pipeline.discriminator.parameters()))
    with pipeline.using_sampler(1):
        assert pipeline.generator is g1 and pipeline.other_samplers[0].generator is g0
    assert pipeline.generator is g0 and pipeline.other_samplers[0].generator is g1
    with pytest.raises(RuntimeError, match="boom"), pipeline.using_sampler(1):
        raise RuntimeError("boom")
    assert pipeline.generator is g0  # put back when the block raises
    with pytest.raises(IndexError):
        with pipeline.using_sampler(2):
            pass


def test_hard_draws_alternate_between_the_samplers(pipeline):
    with torch.no_grad():
        with pipeline.using_sampler(0):
            a = pipeline.draw(3, hard=True, noise=torch.Generator().manual_seed(5))
        mixed = pipeline.draw(5, hard=True, noise=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)  # the mixture draws sampler 0's share, then sampler 1's, from one generator
        with pipeline.using_sampler(0):
            pipeline.draw(3, hard=True, noise=g)
        with pipeline.using_sampler(1):
            b = pipeline.draw(2, hard=True, noise=g)
    assert not torch.allclose(a.camera[:2], b.camera)  # two different samplers
    for i, (part, j) in enumerate([(a, 0), (b, 0), (a, 1), (b, 1), (a, 2)]):
        assert torch.equal(mixed.camera[i], part.camera[j]) and torch.equal(mixed.body_pose[i], part.body_pose[j]), i
        assert int(mixed.prior_index[i]) == int(part.prior_index[j])


def test_loop_steps_take_turns(pipeline):
    """Step s trains sampler s mod 2 only: its parameters get gradients, its hardness reference starts."""
    g0, g1 = pipeline.generator, pipeline.other_samplers[0].generator
    slot = pipeline.other_samplers[0]
    pipeline.reference_error.fill_(float("nan"))
    slot.reference_error.fill_(float("nan"))
    step = pipeline.config.field_steps + (pipeline.config.field_steps % 2)  # an even loop step: sampler 0
    pipeline.train()
    for s, trained, idle in ((step, g0, g1), (step + 1, g1, g0)):
        for p in (*g0.parameters(), *g1.parameters()):
            p.grad = None
        _, losses, _ = pipeline.get_train_loss_dict(s)
        sum(losses.values()).backward()
        assert all(p.grad is None for p in idle.parameters()), s
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters()), s
        assert pipeline.generator is g0  # sampler 0 back in place after the step
        if s == step:
            assert torch.isfinite(pipeline.reference_error) and torch.isnan(slot.reference_error)
    assert torch.isfinite(slot.reference_error)
    pipeline.eval()


def test_a_checkpoint_with_another_number_of_samplers_is_refused(pipeline):
    state = {k: v for k, v in pipeline.state_dict().items() if not k.startswith("other_samplers.")}
    with pytest.raises(PoseGenInputError, match="holds 1 sampler.*--pipeline.sampler.num-samplers 1"):
        pipeline.load_pipeline(state, 7)


def test_the_experiment_relearns_one_sampler_and_puts_the_mixture_back(pipeline):
    from posegen_ns.experiment_arms import relearn_sampler, sampler_restored, sampler_steps

    with pytest.raises(PoseGenInputError, match="num-samplers"):
        sampler_steps(pipeline, 1)
    slots = pipeline.other_samplers
    with sampler_restored(pipeline):
        relearn_sampler(pipeline, 1, seed=3)
        assert pipeline.num_samplers == 1
        one = pipeline.draw(4, hard=True, noise=torch.Generator().manual_seed(0))
        assert one.camera.shape == (4, 5)
    assert pipeline.other_samplers is slots and pipeline.num_samplers == 2
