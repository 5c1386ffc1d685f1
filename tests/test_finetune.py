"""Fine-tuning the critic: the loss goes down, BatchNorm statistics stay frozen, the outlier filter
drops what it should, and the mixing / configuration rules."""

from __future__ import annotations

import pytest
import torch

from adapters.hmr import build_hmr_critic
from posegen_ns.data.source_poses import make_source_sampler
from posegen_ns.errors import PoseGenInputError
from posegen_ns.finetune import (
    FinetuneConfig,
    finetune_critic,
    finetune_losses,
    outlier_mask,
    source_count,
)

SIZE = 48


@pytest.fixture(scope="module")
def source():
    return make_source_sampler("tiny", SIZE, "train", num_images=16)


@pytest.fixture()
def critic():
    torch.manual_seed(0)
    return build_hmr_critic("resnet18", 32, "tiny")


def _bn_stats(critic):
    return {k: v.clone() for k, v in critic.state_dict().items() if "running_" in k or "num_batches" in k}


def test_loss_decreases_on_a_fixed_batch_and_batchnorm_stays_frozen(critic, source):
    batch = source(4, torch.Generator().manual_seed(0))
    batch["error"] = torch.full((4,), 0.2)
    bn_before = _bn_stats(critic)
    weights_before = critic.hmr.fc1.weight.detach().clone()
    cfg = FinetuneConfig(lr=1e-3, source_fraction=0.0)
    stats = finetune_critic(critic, [batch] * 12, cfg)
    assert stats.steps == 12 and stats.kept == 48 and stats.dropped == 0
    assert stats.losses[-1] < 0.7 * stats.losses[0], stats.losses
    # the weights moved, the BatchNorm running statistics did not
    assert not torch.equal(critic.hmr.fc1.weight, weights_before)
    for k, v in _bn_stats(critic).items():
        assert torch.equal(v, bn_before[k]), k
    assert not critic.training  # left in eval mode


def test_outlier_filter_drops_hand_made_outliers(source):
    batch = source(5, torch.Generator().manual_seed(1))
    batch["joints_2d"] = batch["joints_h36m_cam"][..., :2] / batch["joints_h36m_cam"][..., 2:] * batch["K"][:, None, 0, 0:1] + batch["K"][:, None, :2, 2]
    batch["error"] = torch.tensor([0.10, 0.10, 2.0, 0.10, float("nan")])
    batch["joints_2d"][1, 3, 0] = SIZE + 10.0  # a foot leaves the image
    batch["boxes"][3] = torch.tensor([SIZE * 0.8, SIZE * 0.8, SIZE * 1.8, SIZE * 1.8])  # box mostly outside
    keep, reasons = outlier_mask(batch, FinetuneConfig(max_error_mm=600.0))
    assert keep.tolist() == [True, False, False, False, True]  # NaN error (a miss) is kept
    assert reasons["joints_outside"] == 1 and reasons["error_above"] == 1 and reasons["box_outside"] == 1
    assert sum(reasons.values()) == 3
    # the release's "keep only hard samples" rule
    keep, reasons = outlier_mask(batch, FinetuneConfig(min_error_mm=150.0))
    assert keep.tolist() == [False, False, False, False, True] and reasons["error_below"] == 1  # 1 and 3 went under earlier reasons


def test_dropped_samples_are_not_trained_on_and_source_is_mixed(critic, source):
    batch = source(2, torch.Generator().manual_seed(2))
    batch["error"] = torch.tensor([5.0, 5.0])  # both far beyond the bound
    calls = []

    def counting_source(n, gen):
        calls.append(n)
        return source(n, gen)

    stats = finetune_critic(critic, [batch], FinetuneConfig(source_fraction=0.5), source=counting_source)
    assert stats.dropped == 2 and stats.kept == 0 and stats.dropped_by["error_above"] == 2
    assert calls == [1] and stats.steps == 1 and stats.source_images == 1  # trained on the source image alone
    assert source_count(6, 0.25) == 2 and source_count(0, 0.5) == 1 and source_count(6, 0.0) == 0


def test_mixed_loss_is_the_count_weighted_mean(critic, source):
    a = source(3, torch.Generator().manual_seed(3))
    b = source(1, torch.Generator().manual_seed(4))
    critic.eval_mode()
    with torch.no_grad():
        la = finetune_losses(critic, a, None, FinetuneConfig().weights)["loss"]
        lb = finetune_losses(critic, b, None, FinetuneConfig().weights)["loss"]
        mixed = finetune_losses(critic, a, b, FinetuneConfig().weights)["loss"]
    torch.testing.assert_close(mixed, (3 * la + lb) / 4)


def test_bad_configuration_is_refused():
    with pytest.raises(PoseGenInputError, match="source_fraction"):
        FinetuneConfig(source_fraction=1.0)
    with pytest.raises(PoseGenInputError, match="max_error_mm"):
        FinetuneConfig(max_error_mm=10.0, min_error_mm=20.0)
