"""``ns-posegen-experiment``: the paper's comparison, side by side in one run.

PoseGen (Gholami et al., AAAI 2024, Tables 1-2) fine-tunes a pre-trained 3D pose estimator on
renders of different pose distributions and compares the estimator's error on unseen motions. This
script reproduces that comparison in small, on real CMU motion split three ways by clip name
(:mod:`posegen_ns.data.splits`): the critic's *source* (Human3.6M-like actions), the *prior* every arm
draws poses from (the shipped pose bank's ``prior`` split, AMASS's role) and *evaluation* motions no arm
or critic ever sees. Every arm starts from the same pre-trained critic and is fine-tuned on the **same
number of usable images** rendered by the **same trained human field**, with the same recipe
(:func:`posegen_ns.critic.finetune.finetune_critic`: SPIN's losses, BatchNorm frozen, the same
source-data mixing and outlier filter):

- ``pretrained``: the critic as pre-trained (no fine-tuning; the "before").
- ``random-prior``: poses drawn at random from the prior, cameras uniform in the sampler's ranges.
- ``posegen-released``: PoseGen as released (github ``mgholamikn/PoseGen``): a GAN over poses with a
  fixed frontal camera and label-only feedback (the loss ``1 - MPJPE`` on a *detached* render, so the
  gradient reaches the generator only through the labels) plus a discriminator against the prior. The
  pose generator is ours (:class:`~posegen_ns.sampler.HardPoseGenerator`) with the fixed camera.
- ``mining``: PoseSyn's error extraction (:func:`mining_draw`): the hardest of ``--mining-factor`` times
  as many prior samples, by the pre-trained critic's error, mixed with prior samples as ours is.
- ``ours``: the learned (pose, camera) distribution of ``ns-train posegen-human`` (gradients through
  the renderer, bounded hardness, learned cameras; :mod:`posegen_ns.pipeline`), mixed with prior samples.
- ``ours-mesh``: a diagnostic row, ours' samples rendered by the mesh renderer (:func:`mesh_scorer`).

Steps: (1) build the capture and the pre-trained critic (cached), (2) train the field and our sampler
in-process with ``posegen-human`` (``posegen-human-tiny`` for ``--preset tiny``), prior = the bank's
prior split, (3) train the released-style GAN, (4) per arm and repeat draw ``finetune_images`` usable
samples and fine-tune a copy of the critic, (5) evaluate every critic (:func:`evaluate_critic_on`) on two
subjects (the capture's and an unseen one, :func:`eval_subject`) rendered by the mesh renderer in the
evaluation motions from a camera set unlike the source's (:func:`build_eval_set`).

Statistics (:mod:`posegen_ns.stats`): ``--repeats N`` repeats every arm with the seed of repeat k shared
across arms; rows give the mean and its 95 % interval, :func:`comparison` ours' paired 95 % interval
against every other row. Output: a rich table, ``DIR/experiment.png`` (MPJPE per category and per
elevation with intervals) and JSON (``DIR/experiment.json`` or ``--json``; schema in the README).

Presets: ``tiny`` (tiny body; the tests' size), ``cpu`` (the evidence on a 2-core CPU), ``gpu`` (one GPU;
``full`` is its old name). Every size can be overridden on the command line. ``--load-config
RUN/config.yml`` reuses a trained run; ours learns its sampler anew in every repeat (``--ours-sampler
per-repeat``, the default, so its interval covers the sampler's training; ``shared``: the run's one sampler),
``--relearn-steps N`` steps (default the preset's ``loop_steps``) with ``--sampler.*`` overrides
(:class:`SamplerOverrides`); ``--ours-rounds`` gives ours PoseGen's alternation
(:func:`finetune_ours_in_rounds`); ``--arms`` runs a subset. ``--engine ray [--num-workers N]`` runs every arm x
repeat as a Ray task (:mod:`posegen_ns.experiment_tasks`: the same JSON as ``--engine local`` but ``timing_s``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from posegen_ns.atomic_io import atomic_open, check_writable, write_bytes, write_json
from posegen_ns.cli import jsonable, load_run, run_console_script, say_for
from posegen_ns.engine import check_engine
from posegen_ns.errors import PoseGenInputError
from posegen_ns.labels import gt_from_camera_joints, critic_error
from posegen_ns.experiment_config import (  # noqa: F401  (re-exported: the options live in experiment_config)
    ARMS, PRESETS, ExperimentConfig, ExperimentSizes, SamplerOverrides,
)
from posegen_ns.experiment_arms import (  # noqa: F401  (re-exported: the arms' pieces live in experiment_arms)
    EVAL_SPLIT, SUBJECTS, UNSEEN_BETAS, EvalSet, build_eval_set, deterministic_on_cpu, draw_finetune_set, eval_motions,
    eval_subject, evaluate_critic_on, finetune_ours_in_rounds, mesh_scorer, mining_draw, mixed_draw, relearn_sampler,
    sampler_restored, sampler_steps, use_camera_ranges,
)
from posegen_ns.experiment_tasks import ArmContext, run_arms

TRAIN_CLIPS: tuple[str, ...] = ("07_05_slow_walk", "09_06_run", "12_01_walk", "131_03_start_hop_stop")
"""Shipped clips of the tiny preset's capture (the subject's look; no arm draws poses from the capture)."""
PRIOR_SPLIT = "prior"
"""Split of the shipped pose bank (:mod:`posegen_ns.data.splits`) every arm draws poses from."""


# ---- building what the comparison needs ---------------------------------------------------------
def _train_clip_dir(root: Path) -> Path:
    """A folder holding copies of :data:`TRAIN_CLIPS` (the tiny capture's motions)."""
    from posegen_ns.mocap import shipped_clips_dir

    d = root / "train_clips"
    d.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_CLIPS:
        if not (d / f"{name}.bvh").is_file():
            write_bytes(d / f"{name}.bvh", (shipped_clips_dir() / f"{name}.bvh").read_bytes())
    return d


def build_capture(cfg: ExperimentConfig, sizes: ExperimentSizes) -> Path:
    """The subject's capture: for the open body the default capture (cached), else a small capture of
    the training clips written in ``OUTPUT_DIR/capture`` (reused when present)."""
    from posegen_ns.data.default_capture import build_default_capture, default_capture_dir

    if sizes.body == "open":
        return default_capture_dir()
    out = Path(cfg.output_dir) / "capture"
    if (out / "capture.json").is_file():
        return out
    return build_default_capture(out, mocap_dir=_train_clip_dir(Path(cfg.output_dir)), body=sizes.body,
                                 num_cameras=sizes.capture_cameras, resolution=sizes.capture_resolution,
                                 frame_stride=24, max_frames_per_clip=8, verbose=False)


def run_sampler_steps(cfg: ExperimentConfig, sizes: ExperimentSizes) -> int:
    """Sampler steps the experiment's own ``ns-train`` run learns after the field: none with ``--ours-sampler
    per-repeat`` (no arm draws from the run's sampler), else the preset's ``loop_steps``."""
    return 0 if cfg.ours_sampler == "per-repeat" else sizes.loop_steps


def train_pipeline(cfg: ExperimentConfig, sizes: ExperimentSizes, capture: Path):
    """Fit the field and learn our sampler: the ``posegen-human`` method (``-tiny`` for the tiny body)
    run in-process by nerfstudio's trainer, pose prior restricted to :data:`TRAIN_CLIPS`, no fine-tuning
    rounds (the experiment fine-tunes every arm itself). With ``--ours-sampler per-repeat`` (the default) every
    repeat learns its own samplers and no arm draws from the run's, so the run stops after the field
    (``field_steps``) instead of learning one more sampler for ``loop_steps`` steps (the ``cpu`` preset's 150
    steps: 48 s on stop 25's CPU); such a run reloaded with ``--ours-sampler shared`` is refused
    (:func:`check_run_sampler`). Returns the trained pipeline (eval mode)."""
    from posegen_ns.configs import posegen_human, posegen_human_tiny

    method = posegen_human_tiny if sizes.body == "tiny" else posegen_human
    tc = copy.deepcopy(method.config)
    tc.data = tc.pipeline.datamanager.data = capture
    tc.output_dir = Path(cfg.output_dir) / "ns-train"
    tc.machine.device_type = "cuda" if str(cfg.device).startswith("cuda") else "cpu"
    tc.machine.seed = cfg.seed
    p = tc.pipeline
    p.field_steps = sizes.field_steps
    p.model.num_gaussians = sizes.num_gaussians
    p.sampler.batch_size = sizes.sampler_batch
    p.sampler.prior_split = PRIOR_SPLIT
    p.critic.pretrain_steps = sizes.critic_pretrain_steps
    p.critic.input_size = sizes.critic_input_size
    p.critic.source = sizes.critic_source or "narrow"
    p.rounds, p.loop_steps_per_round, p.finetune_steps_per_round = 1, None, 0
    p.seed = cfg.seed
    tc.max_num_iterations = sizes.field_steps + run_sampler_steps(cfg, sizes)
    tc.steps_per_save = tc.max_num_iterations
    tc.set_timestamp()
    tc.save_config()
    trainer = tc.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    pipeline = trainer.pipeline
    pipeline.eval()
    return pipeline


def load_trained_pipeline(config_path: Path, critic_checkpoint: Optional[Path] = None):
    """A trained run's pipeline (:func:`posegen_ns.cli.load_run`) with its pose prior replaced by the shipped bank's
    :data:`PRIOR_SPLIT`, so that no arm draws poses of the evaluation clips. The run's generator was
    trained on its own prior; here it only receives training-clip poses as inputs. If the run fine-tuned
    its critic (rounds), the pre-trained critic is loaded again so that every arm starts from it.
    ``critic_checkpoint`` replaces the run's critic checkpoint (same critic name and architecture settings).

    Raises:
        PoseGenInputError: ``config_path`` is not a file.
    """
    from posegen_ns.critic.loading import load_configured_critic
    from posegen_ns.data.pose_bank import load_shipped_pose_bank

    def use_checkpoint(config: Any) -> Any:
        if critic_checkpoint is not None:
            config.pipeline.critic.checkpoint = Path(critic_checkpoint).expanduser()
        return config

    pipeline = load_run(config_path, update_config=use_checkpoint)
    dev = pipeline.prior_body_pose.device
    bank = load_shipped_pose_bank(split=PRIOR_SPLIT)
    pipeline.prior_body_pose = bank.body_pose.float().to(dev)
    pipeline.prior_global_orient = bank.global_orient.float().to(dev)
    for holder in (pipeline, *pipeline.other_samplers):  # every sampler of a mixture (--pipeline.sampler.num-samplers)
        if holder.pose_regions.region_of.shape[0] != bank.body_pose.shape[0]:  # regions of another prior: cut this one
            holder.pose_regions = pipeline.make_pose_regions()
    # the run's checkpoint holds the critic's weights as the run had them: a fine-tuned critic (rounds), or another one than
    # --critic-checkpoint names; start every arm from the pre-trained one (the configured checkpoint)
    if pipeline.config.finetune_steps_per_round > 0 or critic_checkpoint is not None:
        body_source = pipeline.config.model.body or pipeline.datamanager.train_capture.body
        pipeline.critic = load_configured_critic(pipeline.config.critic, body_source).to(dev)
    pipeline.eval()
    return pipeline


def check_run_sampler(config_path: Path, pipeline: Any, cfg: ExperimentConfig) -> None:
    """Refuse to draw ours from a reloaded run's own sampler (``--ours-sampler shared`` without ``--relearn-steps``)
    when the run learned none: its latest checkpoint (``RUN/nerfstudio_models/step-*.ckpt``) is not past the
    field's ``field_steps`` (as the runs :func:`train_pipeline` writes with ``--ours-sampler per-repeat``).

    Raises:
        PoseGenInputError: the run's sampler was never trained; the message names the run and the options to use.
    """
    if cfg.ours_sampler != "shared" or cfg.relearn_steps is not None or "ours" not in cfg.arms:
        return
    steps = [int(p.stem.split("-")[-1]) for p in (Path(config_path).expanduser().parent / "nerfstudio_models").glob("step-*.ckpt")]
    if steps and max(steps) + 1 <= pipeline.config.field_steps:
        raise PoseGenInputError(
            f"--load-config {config_path}: the run stopped after its field (checkpoint at step {max(steps)}, "
            f"field_steps {pipeline.config.field_steps}) and learned no sampler for --ours-sampler shared to draw "
            "from; pass --ours-sampler per-repeat (the default) or --relearn-steps N.")


def fixed_frontal_camera(pipeline: Any, num: int) -> torch.Tensor:
    """``(num, 5)`` sampler camera parameters of the released code's fixed camera: in front of the body
    (azimuth 0), level (elevation 0, clamped into the range), mid-range distance, no roll, unit focal scale."""
    from posegen_ns.sampler import CameraRanges

    r = pipeline.ranges
    clamp = lambda v, lo_hi: torch.tensor(min(max(v, lo_hi[0]), lo_hi[1])).expand(num)  # noqa: E731
    cam = CameraRanges.pack(azimuth=clamp(0.0, r.azimuth), elevation=clamp(0.0, r.elevation),
                            distance=clamp(0.5 * (r.distance[0] + r.distance[1]), r.distance), roll=clamp(0.0, r.roll),
                            focal_scale=clamp(1.0, r.focal_scale))
    return cam.to(pipeline.prior_body_pose.device)


def train_released_gan(pipeline: Any, steps: int, batch_size: int, seed: int = 0, lr: float = 1e-3,
                       adversarial_weight: float = 0.3):
    """Train PoseGen-as-released's pose GAN against the pipeline's (frozen) critic (module docstring).

    Generator loss: ``mean(1 - MPJPE(critic(detached render), joints(pose)))`` (metres; the gradient
    flows through the ground-truth joints of the generated pose, not through the image) plus
    ``adversarial_weight`` times the non-saturating GAN loss against the pipeline's
    :class:`~posegen_ns.sampler.PartDiscriminator`-style discriminator on prior poses.

    Returns:
        ``sample(num, generator) -> PoseCameraSample``: draws from the trained GAN with the fixed camera.
    """
    from posegen_ns.geometry import project_points
    from posegen_ns.sampler import HardPoseGenerator, PartDiscriminator, PoseCameraSample

    scfg = pipeline.config.sampler
    dev = pipeline.prior_body_pose.device
    torch.manual_seed(seed)
    gen = HardPoseGenerator(scfg.noise_dim, scfg.hidden, scfg.max_residual, pipeline.ranges).to(dev)
    disc = PartDiscriminator().to(dev)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr)
    noise = torch.Generator().manual_seed(seed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    body = pipeline.model.body
    N = pipeline.prior_body_pose.shape[0]

    def draw(num: int, g: torch.Generator) -> PoseCameraSample:
        idx = torch.randint(N, (num,), generator=g).to(dev)
        z = torch.randn(num, scfg.noise_dim, generator=g).to(dev)
        s = gen(pipeline.prior_body_pose[idx], pipeline.prior_global_orient[idx], z)
        return PoseCameraSample(s.body_pose, s.global_orient, fixed_frontal_camera(pipeline, num))

    for p in pipeline.parameters():
        p.requires_grad_(False)
    with deterministic_on_cpu(dev):  # the same GAN in every run on several threads (deterministic_on_cpu)
        for _ in range(steps):
            s = draw(batch_size, noise)
            with torch.no_grad():  # label-only feedback: render and predict without a graph
                scored = pipeline.render_and_score(PoseCameraSample(s.body_pose.detach(), s.global_orient.detach(), s.camera))
            betas = scored.betas
            out = body(s.body_pose, s.global_orient, betas, scored.transl)
            _, j_h36m_cam = project_points(out.joints_h36m, scored.K, scored.R, scored.t)
            _, j_smpl_cam = project_points(out.joints, scored.K, scored.R, scored.t)
            gt = gt_from_camera_joints(pipeline.critic.joint_set, j_h36m_cam, j_smpl_cam)
            err = critic_error(scored.pred_joints.detach(), gt, pipeline.critic.joint_set)
            feedback = (1.0 - err).nanmean()
            fake_logits = disc(s.body_pose)
            adv = bce(fake_logits, torch.ones_like(fake_logits))
            opt_g.zero_grad(set_to_none=True)
            (feedback + adversarial_weight * adv).backward()
            opt_g.step()
            idx = torch.randint(N, (batch_size * 4,), generator=noise).to(dev)
            real, fake = disc(pipeline.prior_body_pose[idx]), disc(s.body_pose.detach())
            d_loss = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
    gen.eval()

    def sample(num: int, g: torch.Generator) -> PoseCameraSample:
        with torch.no_grad():
            return draw(num, g)

    return sample


# ---- the experiment ------------------------------------------------------------------------------
def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run the comparison (module docstring); print the table, write the plot and the JSON; return the results."""
    timing: dict[str, float] = {}
    started = time.time()
    sizes = cfg.sizes()
    check_engine(cfg.engine, cfg.num_workers)
    out_dir = Path(cfg.output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.json is not None:  # before hours of work, not at their end
        check_writable(cfg.json, "--json")
    cfg.output_dir = out_dir
    say = say_for("ns-posegen-experiment")

    if cfg.load_config is not None:
        t = time.time()
        say(f"loading the trained run {cfg.load_config}")
        pipeline = load_trained_pipeline(cfg.load_config, cfg.critic_checkpoint)
        check_run_sampler(cfg.load_config, pipeline, cfg)
        timing["load_run"] = time.time() - t
    else:
        t = time.time()
        say("building the capture and the pre-trained critic (cached after the first run)")
        capture = build_capture(cfg, sizes)
        timing["capture"] = time.time() - t

        t = time.time()
        steps = run_sampler_steps(cfg, sizes)
        say(f"ns-train: field ({sizes.field_steps} steps)" + (f" and our sampler ({steps} steps)" if steps else ""))
        pipeline = train_pipeline(cfg, sizes, capture)
        timing["field_and_sampler"] = time.time() - t

    use_camera_ranges(pipeline, cfg.sampler)  # --sampler.*-range: the camera space of every arm, not only ours
    released = None
    if "posegen-released" in cfg.arms:  # before any re-learning: the released GAN keeps the run's sampler settings
        t = time.time()
        say(f"training the released-style pose GAN ({sizes.gan_steps} steps, fixed camera, label-only feedback)")
        released = train_released_gan(pipeline, sizes.gan_steps, sizes.sampler_batch, seed=cfg.seed)
        timing["released_gan"] = time.time() - t

    relearned = None
    if cfg.ours_sampler == "per-repeat":  # every repeat of ours learns its own (posegen_ns.experiment_tasks)
        relearned = {"per_repeat": True, "samplers_per_repeat": sizes.ours_samplers,
                     "steps": cfg.relearn_steps or sizes.loop_steps, "sampler": cfg.sampler.given()}
    elif cfg.relearn_steps is not None and "ours" in cfg.arms:
        t = time.time()
        say(f"re-learning our sampler ({cfg.relearn_steps} steps; overrides {cfg.sampler.given() or 'none'})")
        relearned = relearn_sampler(pipeline, cfg.relearn_steps, cfg.sampler, seed=cfg.seed)
        r = relearned["report"]
        say(f"re-learned: critic MPJPE hard {r['mpjpe_hard_mm']:.1f} mm, prior {r['mpjpe_prior_mm']:.1f} mm, "
            f"ratio {r['hardness_ratio']:.2f}, azimuth spread {r['hard_camera_azimuth_std']:.2f} rad")
        timing["relearn_sampler"] = time.time() - t

    t = time.time()
    say("rendering the evaluation set")
    eval_set = build_eval_set(pipeline, cfg, sizes)
    timing["eval_set"] = time.time() - t

    # every arm x repeat is an independent task, here or on Ray (posegen_ns.experiment_tasks: seeds, order independence)
    arm_runs, arm_seconds = run_arms(ArmContext(pipeline, cfg, sizes, released=released, eval_set=eval_set), say)
    rows: list[dict[str, Any]] = []
    for name, runs in arm_runs.items():
        rows.append(summarise_repeats(name, runs, 0 if name == "pretrained" else sizes.finetune_images))
        timing[f"arm_{name}"] = arm_seconds[name]
    timing["total"] = time.time() - started
    results = {
        "rows": rows,
        "categories": sorted({c for r in rows for c in r["categories"]}),
        "elevations": list(dict.fromkeys(eval_set.elevations)),
        "critic": critic_report(pipeline),
        "sampler_regions": pipeline.pose_regions.report(),
        "config": {"preset": cfg.preset, "sizes": asdict(sizes), "finetune": jsonable(cfg.finetune),
                   "capture_clips": list(TRAIN_CLIPS), "prior_split": PRIOR_SPLIT,
                   "eval_poses": str(cfg.eval_poses) if cfg.eval_poses is not None else f"shipped pose bank, split {EVAL_SPLIT!r}",
                   "eval_clips": sorted({c.split("/", 1)[1] for c in eval_set.categories}), "subjects": list(SUBJECTS),
                   "mining_factor": cfg.mining_factor,
                   "device": str(cfg.device), "seed": cfg.seed, "repeats": sizes.repeats, "ours_rounds": cfg.ours_rounds,
                   "round_steps": cfg.round_steps if cfg.ours_rounds > 1 else None, "arms": list(cfg.arms),
                   "relearn": relearned, "ours_prior_fraction": cfg.ours_prior_fraction,
                   "ours_sampler": cfg.ours_sampler,
                   "sampler": jsonable(cfg.sampler.apply(pipeline.config.sampler) if cfg.ours_sampler == "per-repeat"
                                       else pipeline.config.sampler),
                   "load_config": str(cfg.load_config) if cfg.load_config is not None else None},
        "timing_s": timing,
        "comparison": comparison(rows),
    }
    print_table(results)
    plot_path = out_dir / "experiment.png"
    plot_results(results, plot_path)
    json_path = Path(cfg.json).expanduser() if cfg.json is not None else out_dir / "experiment.json"
    write_json(json_path, results, indent=1, default=str)
    say(f"wrote {plot_path} and {json_path}; total {timing['total']:.0f} s")
    return results


ROW_METRICS: tuple[str, ...] = ("mpjpe_mm", "pa_mpjpe_mm", "pck150", "auc")
"""Metrics of a row (and of each of its repeats)."""


def critic_report(pipeline: Any, num_images: int = 128) -> dict[str, Any]:
    """The pre-trained critic on held-out frames of its own source set (in-distribution: how good it is where it
    was trained): ``source_heldout_mpjpe_mm``, ``source_heldout_pa_mpjpe_mm`` (H36M-17, root-relative), ``pretrain_steps``,
    ``source`` (the source kind), ``num_images``."""
    from posegen_ns.critic.evaluation import evaluate_critic, sampler_batches

    critic = pipeline.critic
    sampler = pipeline.source_sampler(split="heldout", num_images=num_images)
    overall = evaluate_critic(critic, sampler_batches(sampler, num_images, seed=1)).overall()
    cfg = pipeline.config.critic
    return {"source_heldout_mpjpe_mm": overall["mpjpe_mm"], "source_heldout_pa_mpjpe_mm": overall["pa_mpjpe_mm"],
            "pretrain_steps": cfg.pretrain_steps if cfg.name == "default" and cfg.checkpoint is None else None,
            "source": getattr(cfg, "source", "narrow"), "num_images": overall["num_images"]}


def summarise_repeats(name: str, runs: list[dict[str, Any]], num_finetune_images: int) -> dict[str, Any]:
    """One row of the comparison from the evaluations of its repeats (``evaluate_critic_on`` results with
    ``finetune`` and ``seed``): every metric is the mean over repeats with ``<metric>_ci95`` (``[lo, hi]``, Student's
    t, :func:`posegen_ns.stats.mean_ci95`; NaN with one repeat) and ``<metric>_std``; ``mpjpe_mm_per_repeat`` and
    ``pa_mpjpe_mm_per_repeat`` keep each repeat's value; ``categories``, ``subjects`` and ``elevations`` are averaged
    the same way (with ``mpjpe_mm_ci95``); ``repeats`` is their number and ``per_repeat`` keeps each repeat's overall metrics, seed and fine-tuning
    statistics."""
    from posegen_ns.stats import mean_ci95

    n = len(runs)

    def summary(values: list[float]) -> dict[str, Any]:
        iv = mean_ci95(values)
        m = float(iv.mean)
        std = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return {"mean": m, "ci95": [iv.lo, iv.hi], "std": std}

    row: dict[str, Any] = {"name": name}
    for k in ROW_METRICS:
        values = [r["overall"][k] for r in runs]
        sm = summary(values)
        row[k], row[f"{k}_ci95"], row[f"{k}_std"] = sm["mean"], sm["ci95"], sm["std"]
    row["mpjpe_mm_per_repeat"] = [r["overall"]["mpjpe_mm"] for r in runs]
    row["pa_mpjpe_mm_per_repeat"] = [r["overall"]["pa_mpjpe_mm"] for r in runs]
    row["num_finetune_images"] = num_finetune_images
    row["num_eval_images"] = runs[0]["overall"]["num_images"]
    for kind in ("categories", "subjects", "elevations"):
        out: dict[str, dict[str, Any]] = {}
        for c in runs[0].get(kind, {}):
            out[c] = {k: summary([r[kind][c][k] for r in runs])["mean"] for k in runs[0][kind][c] if k != "num_images"}
            out[c]["mpjpe_mm_ci95"] = summary([r[kind][c]["mpjpe_mm"] for r in runs])["ci95"]
            out[c]["mpjpe_mm_per_repeat"] = [r[kind][c]["mpjpe_mm"] for r in runs]
            out[c]["num_images"] = runs[0][kind][c]["num_images"]
        row[kind] = out
    row["finetune"] = runs[0]["finetune"]
    row["repeats"] = len(runs)
    row["per_repeat"] = [{**{k: r["overall"][k] for k in ROW_METRICS}, "seed": r["seed"], "finetune": r["finetune"]} for r in runs]
    return row


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against every other row: for MPJPE and PA-MPJPE the mean difference ``ours - other`` (mm) over repeats
    with its paired 95 % interval (:func:`posegen_ns.stats.paired_difference_ci95`: repeat k of both rows shares its
    seed; the pre-trained row, one deterministic value, is subtracted from every repeat) and ``beats``: the whole
    interval below zero. ``[{"vs", "metric", "mean", "lo", "hi", "n", "relative", "beats"}]``."""
    from posegen_ns.stats import beats, paired_difference_ci95

    by = {r["name"]: r for r in rows}
    if "ours" not in by:
        return []
    o = by["ours"]
    out = []
    for name in ARMS:
        if name == "ours" or name not in by:
            continue
        r = by[name]
        for key in ("mpjpe_mm", "pa_mpjpe_mm"):
            a = o[f"{key}_per_repeat"]
            b = r[f"{key}_per_repeat"]
            if len(b) == 1 and len(a) > 1:
                b = b * len(a)
            n = min(len(a), len(b))
            iv = paired_difference_ci95(a[:n], b[:n])
            out.append({"vs": name, "metric": key, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": n,
                        "relative": iv.mean / r[key], "beats": beats(iv)})
    return out


def comparison_lines(results_or_rows: Any) -> list[str]:
    """Plain-text verdicts of :func:`comparison` (a list of its entries, or the rows): ``ours vs X: -12.3 mm MPJPE
    [95 % CI -18.0, -6.6] (-4.9 %), ours better`` per arm and metric."""
    entries = results_or_rows
    if entries and "vs" not in entries[0]:
        entries = comparison(entries)
    lines = []
    for e in entries:
        label = "MPJPE" if e["metric"] == "mpjpe_mm" else "PA-MPJPE"
        ci = f" [95 % CI {e['lo']:+.1f}, {e['hi']:+.1f}]" if e["n"] > 1 and math.isfinite(e["lo"]) else " (one repeat: no interval)"
        verdict = "ours better" if e["beats"] else ("ours worse" if e["n"] > 1 and e["lo"] > 0 else "not decided")
        lines.append(f"ours vs {e['vs']}: {e['mean']:+.1f} mm {label}{ci} ({100 * e['relative']:+.1f} %), {verdict}")
    return lines


def print_table(results: dict[str, Any]) -> None:
    """The comparison as a rich table: one row per arm, overall metrics as mean ± 95 % interval half-width over
    repeats, each subject's MPJPE and the MPJPE per category; then the comparison lines."""
    from rich.console import Console
    from rich.table import Table

    cats = results["categories"]
    subjects = [s for s in SUBJECTS if any(s in r.get("subjects", {}) for r in results["rows"])]
    table = Table(title="PoseGen comparison: critic on held-out motions (before / after fine-tuning; mean ± 95 % CI)")
    cols = ("fine-tuned on", "images", "MPJPE mm", "PA-MPJPE mm", "PCK@150 %") + tuple(f"{s} MPJPE" for s in subjects)
    for col in cols + tuple(f"{c} MPJPE" for c in cats):
        table.add_column(col, justify="left" if col == "fine-tuned on" else "right")
    for r in results["rows"]:
        def pm(k: str, f: float = 1.0, d: int = 1) -> str:
            lo, hi = r.get(f"{k}_ci95", [math.nan, math.nan])
            half = 0.5 * (hi - lo)
            return f"{f * r[k]:.{d}f}" + (f" ± {f * half:.{d}f}" if math.isfinite(half) else "")
        cells = [r["name"], str(r["num_finetune_images"]), pm("mpjpe_mm"), pm("pa_mpjpe_mm"), pm("pck150", 100.0)]
        cells += [f"{r['subjects'][s]['mpjpe_mm']:.1f}" if s in r.get("subjects", {}) else "-" for s in subjects]
        cells += [f"{r['categories'][c]['mpjpe_mm']:.1f}" if c in r["categories"] else "-" for c in cats]
        table.add_row(*cells, style="bold" if r["name"] == "ours" else None)
    console = Console(width=max(Console().width, 160))
    console.print(table)
    if results.get("critic"):
        c = results["critic"]
        console.print(f"pre-trained critic on held-out frames of its source ({c.get('source')}): MPJPE "
                      f"{c['source_heldout_mpjpe_mm']:.1f} mm, PA-MPJPE {c['source_heldout_pa_mpjpe_mm']:.1f} mm")
    for line in comparison_lines(results["comparison"]):
        console.print(line)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Two panels of grouped bars, one bar per arm with its 95 % interval over repeats: MPJPE (mm) per motion
    category and overall, and MPJPE per evaluation elevation; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    panels = [("categories", list(results["categories"]) + ["overall"], "motion category"),
              ("elevations", list(results.get("elevations", [])), "camera elevation")]
    panels = [p for p in panels if p[1]]
    width = 0.8 / max(len(rows), 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 + sum(1.3 * len(p[1]) for p in panels), 3.8), dpi=120,
                             gridspec_kw={"width_ratios": [len(p[1]) for p in panels]}, squeeze=False)
    for ax, (kind, groups, xlabel) in zip(axes[0], panels):
        for i, r in enumerate(rows):
            values, errs = [], [[], []]
            for g in groups:
                entry = {"mpjpe_mm": r["mpjpe_mm"], "mpjpe_mm_ci95": r.get("mpjpe_mm_ci95")} if g == "overall" else r.get(kind, {}).get(g, {})
                v = entry.get("mpjpe_mm", math.nan)
                lo, hi = entry.get("mpjpe_mm_ci95") or [math.nan, math.nan]
                values.append(v)
                errs[0].append(v - lo if math.isfinite(lo) else 0.0)
                errs[1].append(hi - v if math.isfinite(hi) else 0.0)
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(groups))]
            label = f"{r['name']} (before)" if r["name"] == "pretrained" else f"{r['name']} ({r['num_finetune_images']} images)"
            ax.bar(xs, values, width, yerr=errs, capsize=2, label=label)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("MPJPE (mm), lower is better")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("critic error before / after fine-tuning (bars: mean over repeats, whiskers: 95 % CI)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def entrypoint() -> None:
    """Console script ``ns-posegen-experiment``."""
    run_console_script("ns-posegen-experiment", ExperimentConfig, run_experiment)


if __name__ == "__main__":
    entrypoint()
