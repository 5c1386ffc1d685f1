"""Fine-tuning the critic: the loss goes down, BatchNorm statistics stay frozen, the outlier filter
drops what it should, and the mixing / configuration rules."""

from __future__ import annotations

import pytest
import torch

from adapters.hmr import build_hmr_critic
from posegen_ns.data.source_poses import make_source_sampler
from posegen_ns.errors import PoseGenInputError
from posegen_ns.critic.finetune import (
    FinetuneConfig,
    colour_noise,
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
    with pytest.raises(PoseGenInputError, match="colour_noise"):
        FinetuneConfig(colour_noise=1.0)


def test_colour_noise_scales_each_image_channel_by_one_factor_in_range():
    images = torch.rand(6, 3, 5, 4) * 0.5 + 0.1  # < 0.6: factors up to 1.4 never clip
    out = colour_noise(images, 0.4, torch.Generator().manual_seed(3))
    ratio = out / images  # (6, 3, 5, 4): constant over the pixels of one image and channel
    per_channel = ratio[..., :1, :1]
    torch.testing.assert_close(ratio, per_channel.expand_as(ratio))
    assert per_channel.min() >= 0.6 - 1e-6 and per_channel.max() <= 1.4 + 1e-6
    assert per_channel.flatten().unique().numel() == 18  # every image and channel its own factor
    # the same generator seed gives the same factors; 0 leaves the images as they are; bright pixels clip at 1
    torch.testing.assert_close(colour_noise(images, 0.4, torch.Generator().manual_seed(3)), out)
    assert colour_noise(images, 0.0, torch.Generator()) is images
    assert colour_noise(torch.ones(4, 3, 2, 2), 0.4, torch.Generator().manual_seed(0)).max() <= 1.0


def test_finetuning_with_colour_noise_trains_on_noisy_copies_of_samples_and_source(critic, source):
    seen = []
    predict = critic.predict

    def spy(images, boxes):
        seen.append(images.detach().clone())
        return predict(images, boxes)

    critic.predict = spy
    batch = source(3, torch.Generator().manual_seed(5))
    batch["error"] = torch.full((3,), 0.2)
    finetune_critic(critic, [batch], FinetuneConfig(colour_noise=0.4, source_fraction=0.5), source=source, seed=1)
    assert len(seen) == 2  # the samples, then the source images
    # the source images are the ones the seeded generator picks first (then the factors are drawn from it)
    clean_source = source(3, torch.Generator().manual_seed(1))["images"]
    for noisy, clean in ((seen[0], batch["images"]), (seen[1], clean_source)):
        assert not torch.allclose(noisy, clean)
        ratio = noisy / clean.clamp_min(1e-6)
        usable = (clean > 0.05) & (noisy < 1.0)  # ratios of dark and of clipped pixels say nothing
        for i in range(3):
            for c in range(3):
                r = ratio[i, c][usable[i, c]]
                assert r.numel() > 0 and torch.allclose(r, r[0].expand_as(r), atol=1e-4)
                assert 0.6 - 1e-4 <= float(r[0]) <= 1.4 + 1e-4


# ---- rounds inside ns-train posegen-human ------------------------------------------------------
def test_round_schedule_alternates_learning_and_finetuning():
    from posegen_ns.pipeline import PoseGenPipelineConfig

    cfg = PoseGenPipelineConfig(field_steps=3, rounds=2, loop_steps_per_round=2, finetune_steps_per_round=1)
    assert cfg.schedule_length() == 3 + 2 * 3
    phases = [cfg.phase_at(s) for s in range(11)]
    assert phases == [("field", 0)] * 3 + [("loop", 0), ("loop", 0), ("finetune", 0), ("loop", 1), ("loop", 1),
                                           ("finetune", 1), ("loop", 1), ("loop", 1)]
    default = PoseGenPipelineConfig(field_steps=3)
    assert default.phase_at(2) == ("field", 0) and default.phase_at(1000) == ("loop", 0)
    with pytest.raises(PoseGenInputError, match="loop-steps-per-round"):
        PoseGenPipelineConfig(rounds=2).phase_at(10_000)


@pytest.fixture(scope="module")
def two_round_run(tmp_path_factory):
    """posegen-human-tiny with 2 rounds of (2 sampler steps, 2 fine-tuning steps), run in-process."""
    import copy

    from posegen_ns.configs import posegen_human_tiny
    from posegen_ns.data.default_capture import build_default_capture
    from posegen_ns.mocap import shipped_clips_dir

    root = tmp_path_factory.mktemp("rounds")
    clips = root / "clips"
    clips.mkdir()
    for c in ("09_06_run", "02_04_jump_balance_ccrig"):
        (clips / f"{c}.bvh").write_bytes((shipped_clips_dir() / f"{c}.bvh").read_bytes())
    capture = build_default_capture(root / "capture", mocap_dir=clips, body="tiny", num_cameras=2, resolution=32,
                                    frame_stride=24, max_frames_per_clip=2, verbose=False)
    cfg = copy.deepcopy(posegen_human_tiny.config)
    cfg.data = cfg.pipeline.datamanager.data = capture
    cfg.output_dir = root / "outputs"
    p = cfg.pipeline
    p.rounds, p.loop_steps_per_round, p.finetune_steps_per_round, p.finetune_batch_size = 2, 2, 2, 2
    p.field_steps = 2
    cfg.max_num_iterations = p.schedule_length()
    cfg.set_timestamp()
    cfg.save_config()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.pipeline.critic.state_dict().items()}
    trainer.train()
    return cfg, trainer, before


def test_two_rounds_change_the_critic_and_the_checkpoint_restores_it(two_round_run):
    import json

    from nerfstudio.utils.eval_utils import eval_setup

    cfg, trainer, before = two_round_run
    critic = trainer.pipeline.critic
    after = critic.state_dict()
    changed = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], before[k])]
    assert any(k.startswith("hmr.") and "weight" in k for k in changed)
    assert not any("running_" in k for k in changed)  # BatchNorm statistics stay frozen through the rounds
    stats = trainer.pipeline.finetune_stats
    assert stats.steps == 4 and stats.kept + stats.dropped == 8
    run_dir = cfg.get_base_dir()
    report = json.loads((run_dir / "posegen_report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2] and report["finetune"]["steps"] == 4
    # a fresh pipeline loaded from the checkpoint has the fine-tuned critic, not the pre-trained one
    _, pipeline, _, step = eval_setup(run_dir / "config.yml", test_mode="inference")
    assert step == cfg.max_num_iterations - 1
    restored = pipeline.critic.state_dict()
    for k in after:
        torch.testing.assert_close(restored[k], after[k], rtol=0, atol=0)
    assert pipeline.critic_weights_l1() == pytest.approx(report["critic_weights_l1"], rel=1e-12)
    assert "critic" in trainer.optimizers.optimizers  # its Adam state is checkpointed with the others
    # resuming (ns-train ... --load-dir RUN/nerfstudio_models) continues with the fine-tuned critic and its Adam state
    import copy

    resumed_cfg = copy.deepcopy(cfg)
    resumed_cfg.load_dir = run_dir / "nerfstudio_models"
    resumed_cfg.max_num_iterations += 2
    resumed = resumed_cfg.setup(local_rank=0, world_size=1)
    resumed.setup()
    assert resumed._start_step == cfg.max_num_iterations
    for k in after:
        torch.testing.assert_close(resumed.pipeline.critic.state_dict()[k], after[k], rtol=0, atol=0)
    assert resumed.optimizers.optimizers["critic"].state_dict()["state"]  # Adam moments restored
    # a checkpoint and a configuration that disagree on the pose-dependent residual stop with the option to pass
    from posegen_ns.errors import PoseGenInputError

    ckpt = torch.load(sorted((run_dir / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu", weights_only=False)
    state = ckpt["pipeline"]
    without = {k: v for k, v in state.items() if not k.startswith("_model.field.pose_residual.")}
    assert len(without) < len(state)
    with pytest.raises(PoseGenInputError, match="pose-residual False"):
        resumed.pipeline.load_pipeline(without, ckpt["step"])
    field = resumed.pipeline.model.field
    kept, field.pose_residual = field.pose_residual, None
    try:
        with pytest.raises(PoseGenInputError, match="pose-residual True"):
            resumed.pipeline.load_pipeline(state, ckpt["step"])
    finally:
        field.pose_residual = kept


class _RecordingSGD(torch.optim.SGD):
    """Plain SGD that records the rate of every step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.rates = []

    def step(self, closure=None):
        self.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


def test_cosine_schedule_and_gradient_clipping_by_hand(critic, source):
    import math

    batch = source(2, torch.Generator().manual_seed(5))
    batch["error"] = torch.full((2,), 0.2)
    params = list(critic.parameters())
    opt = _RecordingSGD(params, lr=1.0)
    cfg = FinetuneConfig(lr=1e-3, source_fraction=0.0, lr_schedule="cosine")
    finetune_critic(critic, [batch] * 5, cfg, optimizer=opt)
    # step i of 5: 1e-3 * (0.02 + 0.98 * (1 + cos(pi * i / 5)) / 2)
    expected = [1e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * i / 5))) for i in range(1, 6)]
    assert opt.rates == pytest.approx(expected, rel=1e-9) and opt.rates[-1] == pytest.approx(2e-5)
    # clipping: one SGD step at rate 1 moves the weights by exactly the clipped gradient (global norm 1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in params])
    opt = torch.optim.SGD(params, lr=1.0)
    finetune_critic(critic, [batch], FinetuneConfig(lr=1.0, source_fraction=0.0, max_grad_norm=1e-3), optimizer=opt)
    moved = torch.cat([p.detach().flatten() for p in params]) - before
    assert float(moved.norm()) == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(PoseGenInputError, match="list of batches"):
        finetune_critic(critic, iter([batch]), cfg)
    with pytest.raises(PoseGenInputError, match="lr_schedule"):
        FinetuneConfig(lr_schedule="step")
    with pytest.raises(PoseGenInputError, match="max_grad_norm"):
        FinetuneConfig(max_grad_norm=0.0)


class _SnapshotAdam(torch.optim.Adam):
    """Adam that keeps a copy of every parameter after each step."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.snapshots: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        out = super().step(closure)
        self.snapshots.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out


def test_tail_averaging_ends_with_the_mean_of_the_last_steps_weights(critic, source):
    batches = [source(2, torch.Generator().manual_seed(i)) for i in range(5)]
    for b in batches:
        b["error"] = torch.full((2,), 0.2)
    params = list(critic.parameters())
    bn_before = _bn_stats(critic)
    opt = _SnapshotAdam(params, lr=1e-3)
    # 5 steps, average_tail 0.5: ceil(2.5) = 3 -> the mean of the weights after steps 3, 4, 5
    finetune_critic(critic, batches, FinetuneConfig(lr=1e-3, source_fraction=0.0, average_tail=0.5), optimizer=opt)
    assert len(opt.snapshots) == 5
    for j, p in enumerate(params):
        expected = (opt.snapshots[2][j] + opt.snapshots[3][j] + opt.snapshots[4][j]) / 3
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    # the last step's weights differ from the mean (the averaging did something), BatchNorm statistics untouched
    assert not torch.allclose(params[0].detach(), opt.snapshots[4][0])
    for k, v in _bn_stats(critic).items():
        assert torch.equal(v, bn_before[k]), k
    # average_tail 1.0 averages every step; a stream has no length to take a share of
    critic2 = build_hmr_critic("resnet18", 32, "tiny")
    opt2 = _SnapshotAdam(list(critic2.parameters()), lr=1e-3)
    finetune_critic(critic2, batches[:2], FinetuneConfig(lr=1e-3, source_fraction=0.0, average_tail=1.0), optimizer=opt2)
    torch.testing.assert_close(next(critic2.parameters()).detach(), (opt2.snapshots[0][0] + opt2.snapshots[1][0]) / 2)
    with pytest.raises(PoseGenInputError, match="list of batches"):
        finetune_critic(critic, iter(batches), FinetuneConfig(average_tail=0.5))
    with pytest.raises(PoseGenInputError, match="average_tail"):
        FinetuneConfig(average_tail=1.5)
