"""ns-posegen-experiment at a size below the tiny preset: the arms, the JSON schema other tools read, the plot,
--eval-poses, the statistics against hand-computed intervals, and what each arm's fine-tuning set holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from posegen_ns.errors import PoseGenInputError
from posegen_ns.experiment import ARMS, ExperimentConfig, run_experiment
from posegen_ns.mocap import shipped_clips_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    poses = root / "eval_poses"
    poses.mkdir()
    (poses / "10_03_soccer_kick.bvh").write_bytes((shipped_clips_dir() / "10_03_soccer_kick.bvh").read_bytes())
    cfg = ExperimentConfig(
        preset="tiny", output_dir=root / "run", eval_poses=poses, json=root / "out" / "results.json", device="cpu",
        capture_cameras=2, capture_resolution=32, critic_pretrain_steps=10, field_steps=3, loop_steps=2, gan_steps=2,
        sampler_batch=2, finetune_images=4, finetune_batch=2, finetune_epochs=1, eval_max_frames=2, eval_cameras=2,
        eval_elevations=(0.0,), eval_resolution=32, repeats=1, mining_factor=2,
    )
    returned = run_experiment(cfg)
    return root, returned


def reuse_config(root: Path, name: str, config: Path, **sizes) -> ExperimentConfig:
    """An experiment that reuses the module's trained run (``--load-config``) at the smallest evaluation (one frame,
    two cameras, one elevation, 32 px) and fine-tuning (batches of 2, one epoch); ``sizes`` add or override fields."""
    base = dict(preset="tiny", output_dir=root / name, load_config=config, eval_poses=root / "eval_poses", device="cpu",
                sampler_batch=2, finetune_batch=2, finetune_epochs=1, eval_max_frames=1, eval_cameras=2,
                eval_elevations=(0.0,), eval_resolution=32)
    return ExperimentConfig(**(base | sizes))


def test_json_schema_and_rows(results):
    root, returned = results
    data = json.loads((root / "out" / "results.json").read_text())
    assert data == json.loads(json.dumps(returned, default=str))
    assert [r["name"] for r in data["rows"]] == list(ARMS)
    for r in data["rows"]:
        for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck150"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (r["name"], key)
        assert 0.0 <= r["pck150"] <= 1.0 and r["pa_mpjpe_mm"] <= r["mpjpe_mm"] + 1e-6
        assert isinstance(r["num_finetune_images"], int)
        assert r["num_eval_images"] == 2 * 2 * 2  # 2 frames x 2 cameras x 2 subjects
        assert set(r["subjects"]) == {"capture", "unseen"} and r["subjects"]["capture"]["num_images"] == 4
        assert list(r["elevations"]) == ["el+00"] and r["repeats"] == 1 and len(r["mpjpe_mm_per_repeat"]) == 1
        # the overall figure is over both subjects' images
        assert r["mpjpe_mm"] == pytest.approx(0.5 * (r["subjects"]["capture"]["mpjpe_mm"] + r["subjects"]["unseen"]["mpjpe_mm"]))
    counts = {r["name"]: r["num_finetune_images"] for r in data["rows"]}
    assert counts == {"pretrained": 0, "random-prior": 4, "posegen-released": 4, "mining": 4, "ours": 4, "ours-mesh": 4}
    assert set(data["critic"]) >= {"source_heldout_mpjpe_mm", "source_heldout_pa_mpjpe_mm", "pretrain_steps"}
    assert data["critic"]["pretrain_steps"] == 10 and math.isfinite(data["critic"]["source_heldout_mpjpe_mm"])
    # fine-tuning changed every fine-tuned critic: its error differs from the pre-trained one
    before = data["rows"][0]["mpjpe_mm"]
    assert all(r["mpjpe_mm"] != before for r in data["rows"][1:])
    assert all(r["finetune"]["steps"] == 2 and r["finetune"]["kept"] >= 4 for r in data["rows"][1:])


def test_eval_poses_and_plot(results):
    root, returned = results
    assert returned["categories"] == ["sports"]  # only the clip passed with --eval-poses
    assert returned["config"]["eval_poses"].endswith("eval_poses") and returned["config"]["eval_clips"] == ["10_03_soccer_kick"]
    png = (root / "run" / "experiment.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_load_config_reuses_a_trained_run(results, monkeypatch):
    """--load-config: no new ns-train run, the run's prior is the shipped bank's prior split, same row schema."""
    import posegen_ns.experiment as exp
    from posegen_ns.data.pose_bank import load_shipped_pose_bank

    root, first = results
    configs = list((root / "run" / "ns-train").rglob("config.yml"))
    assert len(configs) == 1
    loaded = {}
    original = exp.load_trained_pipeline
    monkeypatch.setattr(exp, "load_trained_pipeline",
                        lambda path, critic_checkpoint=None: loaded.setdefault("pipeline", original(path, critic_checkpoint)))
    cfg = reuse_config(root, "reuse", configs[0], gan_steps=1, finetune_images=2, repeats=1,
                       arms=("pretrained", "random-prior", "ours"))
    again = run_experiment(cfg)
    assert not (root / "reuse" / "ns-train").exists()
    assert [r["name"] for r in again["rows"]] == ["pretrained", "random-prior", "ours"]
    assert again["config"]["load_config"] == str(configs[0])
    assert [r["num_finetune_images"] for r in again["rows"]] == [0, 2, 2]
    assert "field_and_sampler" not in again["timing_s"] and "load_run" in again["timing_s"]
    pipeline = loaded["pipeline"]
    bank = load_shipped_pose_bank(split="prior")
    assert torch.equal(pipeline.prior_body_pose.cpu(), bank.body_pose)
    with pytest.raises(PoseGenInputError, match="--load-config"):
        run_experiment(ExperimentConfig(output_dir=root / "missing", load_config=root / "nope.yml"))


def test_a_per_repeat_run_stops_after_its_field_and_is_not_drawn_from_shared(results):
    """With per-repeat samplers (the default) the experiment's ns-train run learns no sampler of its own: its last
    checkpoint is the field's last step, and drawing ours from that run's sampler (--ours-sampler shared without
    --relearn-steps) is refused with the options to use."""
    root, first = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    ckpts = sorted(p.name for p in (config.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts == ["step-000000002.ckpt"]  # field_steps=3: steps 0..2, no sampler steps after them
    assert "field_and_sampler" in first["timing_s"]
    with pytest.raises(PoseGenInputError, match="learned no sampler.*--ours-sampler per-repeat"):
        run_experiment(reuse_config(root, "shared-refused", config, arms=("pretrained", "ours"), ours_sampler="shared",
                                    repeats=1, finetune_images=2))


def test_critic_checkpoint_replaces_the_critic_stored_in_the_run(results):
    """--critic-checkpoint: every arm starts from that checkpoint's weights, not from the critic weights saved in the
    loaded run's checkpoint (which nerfstudio's loading would otherwise put back)."""
    import copy

    import posegen_ns.experiment as exp
    from adapters.hmr import save_spin_checkpoint

    root, _ = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    run_critic = exp.load_trained_pipeline(config).critic
    other = copy.deepcopy(run_critic.hmr)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    ckpt = save_spin_checkpoint(other, root / "other_critic.pt", {"posegen": {"backbone": "resnet18"}})
    loaded = exp.load_trained_pipeline(config, ckpt).critic
    for (name, want), got, was in zip(other.state_dict().items(), loaded.hmr.state_dict().values(),
                                      run_critic.hmr.state_dict().values()):
        assert torch.equal(got.cpu(), want.cpu()), name
        if want.is_floating_point() and want.abs().sum() > 0 and name.endswith("weight"):
            assert not torch.equal(got.cpu(), was.cpu()), name


def test_relearn_ours_with_sampler_overrides(results):
    """--relearn-steps with --sampler.* re-learns ours on the loaded field (fresh networks with the overridden
    settings); --arms runs a subset; --ours-prior-fraction mixes prior samples into ours' fine-tuning draws."""
    import posegen_ns.experiment as exp
    from posegen_ns.experiment import SamplerOverrides, mixed_draw, relearn_sampler

    root, _ = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    pipeline = exp.load_trained_pipeline(config)
    before = {k: v.clone() for k, v in pipeline.generator.state_dict().items()}
    run_residual = pipeline.config.sampler.max_residual
    info = relearn_sampler(pipeline, 2, SamplerOverrides(target_ratio=1.3, max_residual=0.1, min_camera_std=1.5), seed=0)
    assert info["sampler"] == {"target_ratio": 1.3, "max_residual": 0.1, "min_camera_std": 1.5} and info["steps"] == 2
    s = pipeline.config.sampler
    assert (s.target_ratio, s.max_residual, s.min_camera_std) == (1.3, 0.1, 1.5) and run_residual != 0.1
    assert pipeline.generator.max_residual == 0.1 and pipeline.generator.min_camera_std == 1.5
    after = pipeline.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # re-initialised and trained
    assert all(not p.requires_grad for p in pipeline.parameters())  # left frozen
    assert 0.0 < info["report"]["hardness_ratio"] < 100.0
    sample = pipeline.draw(8, hard=True, noise=torch.Generator().manual_seed(1))
    assert float(sample.residual.abs().max()) <= 0.1 + 1e-6
    # mixing: the last round(n f) samples of each draw are prior poses (rows of the pose bank)
    mixed = mixed_draw(pipeline, 0.5)(4, torch.Generator().manual_seed(2))
    assert mixed.body_pose.shape == (4, 69)
    bank = pipeline.prior_body_pose
    is_prior = [bool(((bank - mixed.body_pose[i]).abs().amax(-1) < 1e-6).any()) for i in range(4)]
    assert is_prior == [False, False, True, True]

    cfg = reuse_config(root, "relearn", config, arms=("pretrained", "ours"), relearn_steps=2, ours_sampler="shared",
                       sampler=SamplerOverrides(max_residual=0.2), ours_prior_fraction=0.5, repeats=2, finetune_images=2)
    out = run_experiment(cfg)
    assert [r["name"] for r in out["rows"]] == ["pretrained", "ours"]
    assert out["config"]["relearn"]["sampler"] == {"max_residual": 0.2} and out["config"]["sampler"]["max_residual"] == 0.2
    assert "released_gan" not in out["timing_s"] and "relearn_sampler" in out["timing_s"]
    # --repeats 2: ours drawn and fine-tuned twice with different seeds, the row is their mean; pretrained once
    pre, ours = out["rows"]
    assert pre["repeats"] == 1 and pre["mpjpe_mm_std"] == 0.0
    assert [r["seed"] for r in ours["per_repeat"]] == [0, 10000] and ours["per_repeat"][0]["mpjpe_mm"] != ours["per_repeat"][1]["mpjpe_mm"]
    a, b = ours["mpjpe_mm_per_repeat"]
    assert ours["mpjpe_mm"] == pytest.approx((a + b) / 2) and ours["mpjpe_mm_std"] == pytest.approx(abs(a - b) / math.sqrt(2))
    assert out["comparison"][0]["vs"] == "pretrained" and out["comparison"][0]["n"] == 2


def test_camera_range_overrides_reach_every_arm(results):
    """--sampler.elevation-range / --sampler.roll-range set the camera space of every arm: after
    use_camera_ranges the prior's uniform cameras (random-prior, mining, ours' prior half) lie in the new ranges
    and fill them, a per-repeat sampler learns in them, and overrides without a range leave the pipeline alone."""
    import posegen_ns.experiment as exp
    from posegen_ns.experiment import SamplerOverrides, use_camera_ranges
    from posegen_ns.experiment_arms import mining_draw, sampler_restored
    from posegen_ns.experiment_tasks import ArmContext
    from posegen_ns.sampler import CameraRanges

    root, _ = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    pipeline = exp.load_trained_pipeline(config)
    before = pipeline.config.sampler
    assert use_camera_ranges(pipeline, SamplerOverrides(max_residual=0.2)) == {} and pipeline.config.sampler is before
    assert before.roll_range == (-0.3, 0.3)
    applied = use_camera_ranges(pipeline, SamplerOverrides(max_residual=0.2, roll_range=(-1.5, 1.5),
                                                           elevation_range=(0.1, 0.2)))
    assert applied == {"roll_range": (-1.5, 1.5), "elevation_range": (0.1, 0.2)}
    assert pipeline.config.sampler.max_residual == before.max_residual  # only the ranges
    g = torch.Generator().manual_seed(0)
    for cams in (pipeline.draw(64, hard=False, noise=g).camera, mining_draw(pipeline, 2, 0.5)(8, g).camera):
        c = CameraRanges.unpack(cams)
        assert float(c["roll"].abs().max()) <= 1.5 + 1e-6 and float(c["elevation"].min()) >= 0.1 - 1e-6
        assert float(c["elevation"].max()) <= 0.2 + 1e-6
    assert float(CameraRanges.unpack(pipeline.draw(64, hard=False, noise=g).camera)["roll"].abs().max()) > 0.3
    cfg = ExperimentConfig(preset="tiny", device="cpu", loop_steps=1, sampler_batch=2)
    with sampler_restored(pipeline):
        ArmContext(pipeline, cfg, cfg.sizes()).use_repeat_sampler(0)
        hard = CameraRanges.unpack(pipeline.draw(16, hard=True, noise=g).camera)
        assert float(hard["elevation"].min()) >= 0.1 - 1e-6 and float(hard["elevation"].max()) <= 0.2 + 1e-6
    assert pipeline.config.sampler.roll_range == (-1.5, 1.5)  # restored to the applied ranges, not the run's


def test_bad_options_are_refused():
    from posegen_ns.experiment import SamplerOverrides
    from posegen_ns.pipeline import SamplerConfig

    assert {f for f in SamplerOverrides.__dataclass_fields__} <= set(SamplerConfig.__dataclass_fields__)
    with pytest.raises(PoseGenInputError, match="--relearn-steps"):
        ExperimentConfig(ours_sampler="shared", sampler=SamplerOverrides(target_ratio=1.5)).sizes()
    ExperimentConfig(sampler=SamplerOverrides(target_ratio=1.5)).sizes()  # per-repeat (default) re-learns with them
    with pytest.raises(PoseGenInputError, match="--arms"):
        ExperimentConfig(arms=("ours", "theirs")).sizes()
    with pytest.raises(PoseGenInputError, match="--ours-prior-fraction"):
        ExperimentConfig(ours_prior_fraction=1.0).sizes()
    with pytest.raises(PoseGenInputError, match="--relearn-steps"):
        ExperimentConfig(relearn_steps=0).sizes()
    with pytest.raises(PoseGenInputError, match="--repeats"):
        ExperimentConfig(repeats=0).sizes()
    with pytest.raises(PoseGenInputError, match="--critic-checkpoint replaces a loaded run's critic: add --load-config"):
        ExperimentConfig(critic_checkpoint=Path(__file__)).sizes()
    with pytest.raises(PoseGenInputError, match="--critic-checkpoint .*missing.pt does not exist"):
        ExperimentConfig(critic_checkpoint=Path("missing.pt"), load_config=Path(__file__)).sizes()


def test_ours_in_rounds(results, monkeypatch):
    """--ours-rounds 2: ours' images come in two halves, the sampler learns against the critic fine-tuned on the
    first half before the second is drawn; the pipeline's sampler and critic are restored for the next repeat."""
    import posegen_ns.experiment as exp

    root, _ = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    loaded = {}
    original = exp.load_trained_pipeline

    def load(path, critic_checkpoint=None):
        p = original(path, critic_checkpoint)
        loaded["pipeline"], loaded["critic"] = p, p.critic
        loaded["generator"] = {k: v.clone() for k, v in p.generator.state_dict().items()}
        return p

    monkeypatch.setattr(exp, "load_trained_pipeline", load)
    cfg = reuse_config(root, "rounds", config, arms=("ours",), ours_rounds=2, round_steps=1, repeats=2, finetune_images=4)
    out = run_experiment(cfg)
    (ours,) = out["rows"]
    assert out["config"]["ours_rounds"] == 2 and out["config"]["round_steps"] == 1
    for rep in ours["per_repeat"]:
        ft = rep["finetune"]
        assert [r["images"] for r in ft["rounds"]] == [2, 2] and ft["steps"] == 2 and ft["kept"] >= 4
        assert "report" not in ft["rounds"][0] and 0.0 < ft["rounds"][1]["report"]["hardness_ratio"] < 100.0
    p = loaded["pipeline"]
    assert p.critic is loaded["critic"]  # the pre-trained critic is back
    for k, v in p.generator.state_dict().items():  # and so is the sampler as loaded
        torch.testing.assert_close(v, loaded["generator"][k], rtol=0, atol=0)
    with pytest.raises(PoseGenInputError, match="--ours-rounds"):
        ExperimentConfig(ours_rounds=5, finetune_images=4).sizes()
    with pytest.raises(PoseGenInputError, match="--round-steps"):
        ExperimentConfig(ours_rounds=2, round_steps=0).sizes()


def test_repeats_summary_and_comparison_by_hand():
    """summarise_repeats: mean, 95 % interval (Student's t) and per-repeat values; comparison: the paired 95 % interval
    of ours minus each row over repeats that share their seed, against hand-computed numbers."""
    from posegen_ns.experiment import comparison, comparison_lines, summarise_repeats

    def run(mpjpe, seed):
        m = {"mpjpe_mm": mpjpe, "pa_mpjpe_mm": mpjpe / 2, "pck150": 0.5, "auc": 0.25, "num_images": 8}
        return {"overall": m, "categories": {"sports": dict(m)}, "subjects": {"capture": dict(m)}, "elevations": {},
                "finetune": {"steps": 3}, "seed": seed}

    t975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom
    ours = summarise_repeats("ours", [run(190.0, 0), run(200.0, 1), run(210.0, 2)], 256)
    half = t975_2 * 10.0 / math.sqrt(3)  # sample std 10 over 3 repeats
    assert ours["mpjpe_mm"] == pytest.approx(200.0) and ours["mpjpe_mm_std"] == pytest.approx(10.0)
    assert ours["mpjpe_mm_ci95"] == pytest.approx([200.0 - half, 200.0 + half])
    assert ours["mpjpe_mm_per_repeat"] == [190.0, 200.0, 210.0] and ours["pa_mpjpe_mm_per_repeat"] == [95.0, 100.0, 105.0]
    assert ours["categories"]["sports"]["mpjpe_mm"] == pytest.approx(200.0) and ours["categories"]["sports"]["num_images"] == 8
    assert ours["subjects"]["capture"]["mpjpe_mm_ci95"] == pytest.approx([200.0 - half, 200.0 + half])
    assert [r["seed"] for r in ours["per_repeat"]] == [0, 1, 2] and ours["num_finetune_images"] == 256 and ours["repeats"] == 3
    pre = summarise_repeats("pretrained", [run(250.0, 0)], 0)
    assert all(math.isnan(x) for x in pre["mpjpe_mm_ci95"])  # one value: no interval
    prior = summarise_repeats("random-prior", [run(205.0, 0), run(195.0, 1), run(210.0, 2)], 256)
    by = {(e["vs"], e["metric"]): e for e in comparison([pre, prior, ours])}
    e = by[("pretrained", "mpjpe_mm")]  # differences -60, -50, -40: mean -50, std 10
    assert (e["mean"], e["n"], e["beats"]) == (pytest.approx(-50.0), 3, True)
    assert (e["lo"], e["hi"]) == (pytest.approx(-50.0 - half), pytest.approx(-50.0 + half))
    e = by[("random-prior", "mpjpe_mm")]  # differences -15, +5, 0: mean -10/3, std sqrt(325/3)... by hand:
    d = [-15.0, 5.0, 0.0]
    m = sum(d) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    assert e["mean"] == pytest.approx(m) and e["hi"] == pytest.approx(m + t975_2 * sd / math.sqrt(3)) and not e["beats"]
    lines = comparison_lines([pre, prior, ours])
    assert lines[0].startswith("ours vs pretrained: -50.0 mm MPJPE [95 % CI -74.8, -25.2] (-20.0 %), ours better")
    assert lines[2].endswith("not decided")
    one = summarise_repeats("ours", [run(190.0, 0)], 256)
    assert comparison_lines([pre, one])[0].endswith("(one repeat: no interval) (-24.0 %), not decided")
    assert comparison([pre, prior]) == []


def test_mining_keeps_the_hardest_prior_samples_and_mixes_the_prior():
    """The mining arm's hard share is the top-n critic errors of factor * n prior candidates; the rest is prior."""
    from posegen_ns.experiment import mining_draw
    from posegen_ns.sampler import PoseCameraSample

    class FakePipeline:
        drawn: list = []

        def draw(self, n, hard, noise=None):
            assert not hard  # mining only ever draws from the prior
            x = torch.rand(n, generator=noise)
            FakePipeline.drawn.append(x)
            return PoseCameraSample(x[:, None].expand(n, 69).clone(), torch.zeros(n, 3), torch.zeros(n, 5))

        def render_and_score(self, sample):
            err = sample.body_pose[:, 0].clone()
            err[0] = float("nan")  # a failed prediction ranks last
            return type("S", (), {"error": err})()

    draw = mining_draw(FakePipeline(), factor=4, prior_fraction=0.5, chunk=3)
    out = draw(6, torch.Generator().manual_seed(0))
    cand, prior = FakePipeline.drawn
    assert cand.shape == (12,) and prior.shape == (3,)
    ranked = cand.clone()
    ranked[::3] = -1.0  # the first of every scoring chunk of 3 failed (NaN): never picked
    torch.testing.assert_close(out.body_pose[:3, 0], torch.sort(ranked, descending=True).values[:3])
    torch.testing.assert_close(out.body_pose[3:, 0], prior)


def test_bad_sizes_are_refused():
    with pytest.raises(PoseGenInputError, match="--finetune-images"):
        ExperimentConfig(finetune_images=0).sizes()
    assert ExperimentConfig(preset="full", loop_steps=7).sizes().loop_steps == 7
    cpu = ExperimentConfig(preset="cpu").sizes()
    assert cpu.repeats == 5 and cpu.critic_source == "h36m" and min(cpu.eval_elevations) < 0 < 40 <= max(cpu.eval_elevations)
    with pytest.raises(PoseGenInputError, match="--mining-factor"):
        ExperimentConfig(mining_factor=0).sizes()


def test_too_strict_filter_names_the_fix():
    """draw_finetune_set stops with a message naming the options when the filter keeps nothing."""
    from posegen_ns.experiment import draw_finetune_set
    from posegen_ns.critic.finetune import FinetuneConfig

    class Scored:  # what render_and_score returns, for 2 samples whose critic error is 2 m
        def __init__(self, n):
            self.images = torch.rand(n, 16, 16, 3)
            self.boxes = torch.tensor([[2.0, 2.0, 14.0, 14.0]]).expand(n, 4)
            self.joints_h36m_cam = torch.rand(n, 17, 3) * 0.1 + torch.tensor([0.0, 0.0, 3.0])
            self.joints_h36m_2d = torch.full((n, 17, 2), 8.0)
            self.body_pose, self.global_orient = torch.zeros(n, 69), torch.zeros(n, 3)
            self.R, self.betas, self.error = torch.eye(3).expand(n, 3, 3), torch.zeros(n, 10), torch.full((n,), 2.0)

    class FakePipeline:
        class critic:
            class body:
                num_betas = 10

        def render_and_score(self, sample):
            return Scored(sample)

    with pytest.raises(PoseGenInputError, match="--finetune.max-error-mm"):
        draw_finetune_set(FakePipeline(), lambda n, g: n, 4, 2, FinetuneConfig(max_error_mm=600.0), max_tries=2)
    batches, info = draw_finetune_set(FakePipeline(), lambda n, g: n, 4, 2, FinetuneConfig(max_error_mm=3000.0))
    assert [b["images"].shape for b in batches] == [(2, 3, 16, 16)] * 2 and info["kept"] == 4 and info["drawn"] == 4


def test_ours_sampler_per_repeat(results):
    """--ours-sampler per-repeat: each repeat of ours learns its own sampler (seeded by the repeat), the pipeline's
    sampler is put back afterwards (also after an error), and the per-process cache gives the same sampler as
    learning it again."""
    import posegen_ns.experiment as exp
    from posegen_ns.experiment_arms import sampler_restored
    from posegen_ns.experiment_tasks import ArmContext, repeat_sampler_seed

    root, _ = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    pipeline = exp.load_trained_pipeline(config)
    cfg = ExperimentConfig(preset="tiny", device="cpu", loop_steps=3, sampler_batch=2)
    ctx = ArmContext(pipeline, cfg, cfg.sizes())
    before = {k: v.clone() for k, v in pipeline.generator.state_dict().items()}
    generator, regions, noise = pipeline.generator, pipeline.pose_regions, pipeline.noise

    def drawn() -> torch.Tensor:
        s = pipeline.draw(4, hard=True, noise=torch.Generator().manual_seed(5))
        return torch.cat([s.body_pose, s.camera], -1)

    def unchanged() -> None:
        assert pipeline.generator is generator and pipeline.pose_regions is regions and pipeline.noise is noise
        assert all(torch.equal(before[k], v) for k, v in pipeline.generator.state_dict().items())

    original = drawn()
    with sampler_restored(pipeline):
        info0 = ctx.use_repeat_sampler(0)
        draw0 = drawn()
    unchanged()
    with sampler_restored(pipeline):
        info1 = ctx.use_repeat_sampler(1)
        draw1 = drawn()
    unchanged()
    assert (info0["seed"], info1["seed"]) == (repeat_sampler_seed(0, 0), repeat_sampler_seed(0, 1)) == (500, 10500)
    assert info0["steps"] == 3 and info0["report"]["hardness_ratio"] > 0
    assert not torch.equal(draw0, draw1) and not torch.equal(draw0, original)
    assert torch.equal(drawn(), original)
    with sampler_restored(pipeline):  # from the cache
        assert ctx.use_repeat_sampler(0) == info0
        assert torch.equal(drawn(), draw0)
    fresh = ArmContext(pipeline, cfg, cfg.sizes())
    with sampler_restored(pipeline):  # learned again in another context (another Ray worker): the same sampler
        fresh.use_repeat_sampler(0)
        assert torch.equal(drawn(), draw0)
    with pytest.raises(RuntimeError, match="boom"):
        with sampler_restored(pipeline):
            ctx.use_repeat_sampler(1)
            raise RuntimeError("boom")
    unchanged()
    assert torch.equal(drawn(), original)


def test_samplers_of_a_repeat_share_its_prior_passes(results):
    """--share-prior-pass (default): the samplers of one repeat replay the repeat's prior passes (the same hardness
    reference), another repeat has its own; --no-share-prior-pass gives each sampler its own."""
    import posegen_ns.experiment as exp
    from posegen_ns.experiment_arms import sampler_restored
    from posegen_ns.experiment_tasks import ArmContext

    root, _ = results
    pipeline = exp.load_trained_pipeline(next((root / "run" / "ns-train").rglob("config.yml")))

    def references(share: bool) -> list[float]:
        cfg = ExperimentConfig(preset="tiny", device="cpu", loop_steps=3, sampler_batch=2, ours_samplers=2,
                               share_prior_pass=share)
        ctx = ArmContext(pipeline, cfg, cfg.sizes())
        out = []
        for rep, index in ((0, 0), (0, 1), (1, 0)):
            with sampler_restored(pipeline):
                ctx.use_repeat_sampler(rep, index)
                out.append(float(pipeline.reference_error))
        assert pipeline.prior_log is None
        assert sorted(ctx._prior_logs) == ([0, 1] if share else []) and all(len(g) == 3 for g in ctx._prior_logs.values())
        return out

    shared = references(True)
    assert shared[0] == shared[1] and shared[0] != shared[2]
    own = references(False)
    assert own[0] != own[1]


class _IndexingPipeline(torch.nn.Module):
    """What :func:`~posegen_ns.experiment_arms.sampler_steps` uses of a pipeline, with a loss that reaches the generator
    through the backward of indexing with an index tensor (``weight[idx]``: torch's CPU ``index_put_(accumulate=True)``,
    as the renderer's and the body model's indexing in the real sampler's loss): 100 000 rows into a ``(64, 64)``
    weight, enough for torch to add them on several threads."""

    def __init__(self):
        super().__init__()
        self.generator, self.discriminator = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
        g = torch.Generator().manual_seed(0)
        for p in (*self.generator.parameters(), *self.discriminator.parameters()):
            p.data = torch.randn(p.shape, generator=g) * 0.1
        self.register_buffer("prior_body_pose", torch.zeros(1, 69))
        self.register_buffer("reference_error", torch.tensor(float("nan")))
        self.register_buffer("idx", torch.randint(64, (100_000,), generator=g))
        self.register_buffer("x", torch.randn(100_000, 64, generator=g))
        self.num_samplers = 1

    def loop_step(self):
        rows = self.generator.weight[self.idx]  # (100000, 64)
        return None, {"hardness": torch.sin(1000 * rows * self.x).mean(), "discriminator": self.discriminator(rows[:8]).mean()}, {}


def test_sampler_steps_are_bit_reproducible_on_several_threads():
    """The sampler's steps give the same gradients bit for bit in every run on 2 CPU threads (torch's CPU
    ``index_put_(accumulate=True)``, the backward of ``x[idx]``, adds in a thread-dependent order unless torch's
    deterministic algorithms are on: the per-repeat samplers of ours differed by 1 to 8 mm between a Ray worker and
    the driver, stop 19), and torch's deterministic setting is put back afterwards (also after an error)."""
    from posegen_ns.experiment_arms import sampler_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(4):
            pipeline, grads = _IndexingPipeline(), []
            pipeline.generator.weight.register_hook(lambda g, grads=grads: grads.append(g.clone()))
            sampler_steps(pipeline, 3)
            runs.append((grads, pipeline.generator.weight.clone()))
    finally:
        torch.set_num_threads(threads)
    assert len(runs[0][0]) == 3
    for grads, weight in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0][0], grads)) and torch.equal(runs[0][1], weight)
    assert not torch.are_deterministic_algorithms_enabled()
    pipeline.loop_step = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        sampler_steps(pipeline, 1)
    assert not torch.are_deterministic_algorithms_enabled()


def test_sampler_shares_by_hand():
    """Batch i comes from sampler i mod N; the last batch may be short."""
    from posegen_ns.experiment_tasks import interleave_batches, sampler_shares

    assert sampler_shares(100, 16, 2) == [52, 48]  # batches 16,16,16,16,16,16,4: 0,2,4,6 -> 52; 1,3,5 -> 48
    # sampler 0's 52 images are batches a0 a1 a2 (16) and a3 (4), sampler 1's 48 are b0 b1 b2: the short one comes last
    assert interleave_batches([["a0", "a1", "a2", "a3"], ["b0", "b1", "b2"]]) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3"]
    assert interleave_batches([["a0"], ["b0"], []]) == ["a0", "b0"] and interleave_batches([]) == []
    assert sampler_shares(640, 16, 2) == [320, 320]
    assert sampler_shares(48, 8, 3) == [16, 16, 16]
    assert sampler_shares(10, 4, 1) == [10]
    with pytest.raises(PoseGenInputError, match="--ours-sampler per-repeat"):
        ExperimentConfig(ours_samplers=2, ours_sampler="shared").sizes()
    with pytest.raises(PoseGenInputError, match="--ours-rounds 1"):
        ExperimentConfig(ours_samplers=2, ours_rounds=2).sizes()
    with pytest.raises(PoseGenInputError, match="at least 24"):
        ExperimentConfig(ours_samplers=3, finetune_images=20, finetune_batch=8).sizes()
    with pytest.raises(PoseGenInputError, match="at most 9"):
        ExperimentConfig(ours_samplers=10).sizes()
    with pytest.raises(PoseGenInputError, match="--ours-samplers"):
        ExperimentConfig(ours_samplers=0).sizes()
    cpu = ExperimentConfig(preset="cpu").sizes()
    assert cpu.ours_samplers == 4 and cpu.finetune_images >= cpu.ours_samplers * cpu.finetune_batch


def test_ours_from_several_samplers(results, monkeypatch):
    """--ours-samplers 2: each repeat learns two samplers (seeds 500 and 1500 for repeat 0), draws its shares from
    each with its own drawing seed, and fine-tunes on batches that alternate between them; the total is the stated
    number of images."""
    import posegen_ns.critic.finetune as finetune
    import posegen_ns.experiment_tasks as tasks

    root, _ = results
    config = next((root / "run" / "ns-train").rglob("config.yml"))
    drawn, tuned = [], []
    real_draw, real_finetune = tasks.draw_finetune_set, finetune.finetune_critic

    def draw(pipeline, *args, **kwargs):
        batches, info = real_draw(pipeline, *args, **kwargs)
        weights = torch.cat([p.detach().flatten() for p in pipeline.generator.parameters()]).clone()
        drawn.append({"seed": kwargs["seed"], "images": args[1], "batches": batches, "generator": weights})
        return batches, info

    def tune(critic, batches, *args, **kwargs):
        tuned.append(list(batches))
        rng.append(torch.get_rng_state())
        return real_finetune(critic, batches, *args, **kwargs)

    rng = []

    monkeypatch.setattr(tasks, "draw_finetune_set", draw)
    monkeypatch.setattr(finetune, "finetune_critic", tune)
    cfg = reuse_config(root, "samplers", config, arms=("ours",), ours_samplers=2, repeats=1, loop_steps=2,
                       finetune_images=6)
    out = run_experiment(cfg)
    (ours,) = out["rows"]
    ft = ours["per_repeat"][0]["finetune"]
    assert [s["seed"] for s in ft["samplers"]] == [500, 1500] and ft["sampler"]["seed"] == 500
    assert out["config"]["relearn"]["samplers_per_repeat"] == 2 and ours["num_finetune_images"] == 6
    assert [(d["seed"], d["images"]) for d in drawn] == [(100, 4), (101, 2)]  # batches 0, 2 and 1
    assert not torch.equal(drawn[0]["generator"], drawn[1]["generator"])  # two different samplers
    (order,) = tuned
    a, b = drawn[0]["batches"], drawn[1]["batches"]
    assert len(order) == 3 and order[0] is a[0] and order[1] is b[0] and order[2] is a[1]
    assert sum(len(x["images"]) for x in order) == 6 and ft["steps"] == 3
    # fine-tuning starts from torch's global generator seeded s + 1000, as in every arm (the samplers' rebuilds while
    # drawing consumed from it)
    torch.manual_seed(1000)
    assert torch.equal(rng[0], torch.get_rng_state())
