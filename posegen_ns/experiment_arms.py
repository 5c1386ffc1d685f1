"""The arms of ``ns-posegen-experiment`` and what each arm x repeat needs (:mod:`posegen_ns.experiment_tasks` runs
them; :mod:`posegen_ns.experiment` builds the run around them and re-exports these names).

- Drawing each arm's fine-tuning set: :func:`mixed_draw` (ours, and the prior mixing of every hard arm),
  :func:`mining_draw` (PoseSyn's error extraction), :func:`mesh_scorer` (``ours-mesh``: the mesh renderer instead
  of the field), :func:`draw_finetune_set` (render, label and filter until the budget is met).
- Ours with PoseGen's alternation: :func:`sampler_steps` (bit-reproducible on the CPU, :func:`deterministic_on_cpu`),
  :func:`finetune_ours_in_rounds`.
- The evaluation: :func:`eval_motions`, :func:`eval_subject`, :class:`EvalSet`, :func:`build_eval_set`,
  :func:`evaluate_critic_on`.

Data flow: ``experiment`` -> ``experiment_tasks`` -> ``experiment_arms`` -> ``experiment_config`` (the options).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from posegen_ns.critic.finetune import FinetuneConfig, FinetuneStats, batch_from_samples, finetune_critic, outlier_mask, select
from posegen_ns.errors import PoseGenInputError
from posegen_ns.labels import concat_samples

from posegen_ns.experiment_config import ExperimentConfig, ExperimentSizes, SamplerOverrides

EVAL_SPLIT = "eval"
"""Split of the shipped pose bank evaluated on by default (motions no arm and no critic ever sees)."""
SUBJECTS: tuple[str, ...] = ("capture", "unseen")
"""Evaluation subjects: the capture's person, and a person the field never saw (:func:`eval_subject`)."""
UNSEEN_BETAS: tuple[float, ...] = (1.5, -1.0, 0.8, -0.6, 0.5)
"""Offset added to the capture's first betas for the unseen subject (another build); clothing seed 3."""


SAMPLER_MODULES: tuple[str, ...] = ("generator", "discriminator", "pose_regions")
"""The pipeline's learned sampler: the modules :func:`sampler_restored` puts back."""


@contextmanager
def sampler_restored(pipeline: Any) -> Iterator[None]:
    """Leave ``pipeline``'s sampler as it was, whatever the block does to it (re-learning it from scratch,
    :func:`relearn_sampler`; training it on, :func:`sampler_steps`): on exit the generator, discriminator and pose
    regions (the same objects, their weights and statistics as on entry), a mixture's further samplers
    (``other_samplers``, the same objects), the hardness reference, the sampler
    settings and ranges, the drawing generator ``noise`` and the critic are put back, also when the block raises."""
    objects = {k: getattr(pipeline, k) for k in (*SAMPLER_MODULES, "other_samplers", "critic")}
    states = {k: copy.deepcopy(objects[k].state_dict()) for k in SAMPLER_MODULES}
    config, ranges, noise = pipeline.config.sampler, pipeline.ranges, pipeline.noise
    reference = pipeline.reference_error.clone()
    try:
        yield
    finally:
        for k, obj in objects.items():
            setattr(pipeline, k, obj)
        for k, state in states.items():
            objects[k].load_state_dict(state)
        pipeline.config.sampler, pipeline.ranges, pipeline.noise = config, ranges, noise
        pipeline.reference_error.copy_(reference)


@contextmanager
def deterministic_on_cpu(device: Any) -> Iterator[None]:
    """Torch's deterministic algorithms inside the block when ``device`` is the CPU (``warn_only``: an op without one
    warns instead of failing); torch's setting before the block is put back on exit, also when the block raises.

    Why: on more than one intra-op thread, torch's CPU ``index_put_(..., accumulate=True)`` (the backward of indexing
    with an index tensor, ``x[idx]``, which the sampler's losses reach through the renderer and the body model) adds the
    rows in whatever order the threads run, so the same sampler steps give gradients that differ in the last bits from
    run to run, and tens of Adam steps grow that into another sampler (``--ours-sampler per-repeat``: 1 to 8 mm
    of the fine-tuned critic's MPJPE between a Ray worker and the driver at the tiny preset). The deterministic mode
    adds them in index order, at no measurable cost here (2.7 s per tiny-preset re-learning on 2 threads either way).
    On CUDA nothing changes (torch's indexing backward and gsplat's add atomically there, and cuBLAS would want
    ``CUBLAS_WORKSPACE_CONFIG``)."""
    if torch.device(device).type != "cpu":
        yield
        return
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def use_camera_ranges(pipeline: Any, overrides: Any) -> dict[str, Any]:
    """Make the camera ranges set in ``overrides`` (a :class:`~posegen_ns.experiment_config.SamplerOverrides`:
    ``--sampler.elevation-range``, ``--sampler.distance-range``, ``--sampler.roll-range``) the pipeline's own, so
    that every arm draws its cameras in the same space: random-prior's and mining's uniform cameras, the
    released-style GAN's fixed camera (clamped into it), ours' prior half and ours' learned cameras. Without this,
    a per-repeat sampler (:meth:`~posegen_ns.experiment_tasks.ArmContext.use_repeat_sampler`) would use them only
    inside ours' draws, and ``random-prior`` would be compared in another camera space.

    Returns:
        ``{field: value}`` of the ranges applied (empty: the pipeline is left as it is).
    """
    ranges = overrides.camera_ranges() if overrides is not None else {}
    if ranges:
        pipeline.config.sampler = SamplerOverrides(**ranges).apply(pipeline.config.sampler)
        pipeline.ranges = pipeline.config.sampler.ranges()
    return ranges


def relearn_sampler(pipeline: Any, steps: int, overrides: Any = None, seed: int = 0,
                    lr: float = 1e-3) -> dict[str, Any]:
    """Re-learn our sampler on the pipeline's trained field, without refitting the field: the run's
    ``SamplerConfig`` with ``overrides`` (a :class:`~posegen_ns.experiment.SamplerOverrides`; None: none) applied
    becomes the pipeline's, the generator and discriminator
    are re-initialised (:meth:`~posegen_ns.pipeline.PoseGenPipeline.make_sampler_networks`), the hardness
    reference is reset, and ``steps`` phase-2 steps (:meth:`~posegen_ns.pipeline.PoseGenPipeline.loop_step`,
    the same losses as ``ns-train``) run against the frozen critic with Adam at ``lr`` (``posegen-human``'s
    generator and discriminator rate) on both networks. Seeded by ``seed`` alone (torch's global generator for the
    initial weights, ``pipeline.noise`` for the draws), so the same seed gives the same sampler.

    Returns:
        ``{"steps", "sampler": {overridden field: value}, "report": hardness_report()}`` (critic MPJPE in mm on
        hard and prior samples, the hardness ratio, diversity and camera spreads after re-learning).
    """
    if overrides is not None:
        pipeline.config.sampler = overrides.apply(pipeline.config.sampler)
    pipeline.ranges = pipeline.config.sampler.ranges()
    torch.manual_seed(seed)
    pipeline.reset_sampler()  # one sampler (a run's mixture is not re-learned here)
    pipeline.noise = torch.Generator().manual_seed(seed)
    sampler_steps(pipeline, steps, lr)
    return {"steps": steps, "sampler": overrides.given() if overrides is not None else {}, "report": pipeline.hardness_report()}


def sampler_steps(pipeline: Any, steps: int, lr: float = 1e-3) -> None:
    """Run ``steps`` phase-2 steps of our sampler (:meth:`~posegen_ns.pipeline.PoseGenPipeline.loop_step`)
    against ``pipeline.critic`` (frozen, eval mode), continuing from the current generator and discriminator
    with a fresh Adam at ``lr``; the hardness reference (the critic's running error on prior samples) restarts
    from this critic. Every parameter is left frozen. On the CPU the steps compute with torch's deterministic
    algorithms (:func:`deterministic_on_cpu`), so the same seed gives the same sampler bit for bit in any process (a Ray
    worker, the driver) with the same torch thread count.

    Raises:
        PoseGenInputError: the pipeline holds several samplers (``--pipeline.sampler.num-samplers``): these steps
            train one.
    """
    if pipeline.num_samplers > 1:
        raise PoseGenInputError(
            f"the run holds {pipeline.num_samplers} samplers (--pipeline.sampler.num-samplers) and these sampler steps train "
            "one: use --ours-sampler per-repeat (re-learned samplers) or a run with one sampler."
        )
    pipeline.reference_error.fill_(float("nan"))
    for p in pipeline.parameters():
        p.requires_grad_(False)
    for net in (pipeline.generator, pipeline.discriminator):
        for p in net.parameters():
            p.requires_grad_(True)
    opt = torch.optim.Adam([*pipeline.generator.parameters(), *pipeline.discriminator.parameters()], lr=lr, eps=1e-15)
    pipeline.train()
    try:
        with deterministic_on_cpu(pipeline.prior_body_pose.device):
            for _ in range(steps):
                _, losses, _ = pipeline.loop_step()
                opt.zero_grad(set_to_none=True)
                sum(losses.values()).backward()  # the generator's terms do not reach the discriminator and vice versa
                opt.step()
    finally:
        pipeline.eval()
        for p in pipeline.parameters():
            p.requires_grad_(False)


def finetune_ours_in_rounds(pipeline: Any, critic: Any, draw: Any, sizes: ExperimentSizes, cfg: ExperimentConfig,
                            seed: int, arm_index: int, say: Any = None) -> dict[str, Any]:
    """Ours with PoseGen's alternation, inside the experiment's image budget: ``sizes.finetune_images`` are split
    into ``cfg.ours_rounds`` equal parts; part 1 is drawn from the sampler as it is, each later part after
    ``cfg.round_steps`` more sampler steps (:func:`sampler_steps`) against ``critic`` as fine-tuned so far, and
    ``critic`` is fine-tuned on each part in turn (``sizes.finetune_epochs`` passes). The pipeline's sampler (its
    networks, pose regions and hardness reference) and critic are restored afterwards, so repeats start from the
    same place.

    Returns:
        fine-tuning information: totals (``steps``, ``kept``, ``dropped``, ``source_images``, ``drawn``) and
        ``rounds``: per round its images, the hardness report of the sampler against that round's critic (from
        round 2), and its drawing and fine-tuning statistics.
    """
    pretrained = pipeline.critic
    parts = [sizes.finetune_images // cfg.ours_rounds] * cfg.ours_rounds
    parts[-1] += sizes.finetune_images - sum(parts)
    rounds: list[dict[str, Any]] = []
    with sampler_restored(pipeline):
        for r, n in enumerate(parts):
            row: dict[str, Any] = {"round": r + 1, "images": n}
            if r > 0:
                critic.eval_mode()
                pipeline.critic = critic
                pipeline.noise = torch.Generator().manual_seed(seed + 31 * r)
                sampler_steps(pipeline, cfg.round_steps)
                row["report"] = {k: v for k, v in pipeline.hardness_report().items() if k.startswith(("mpjpe", "hardness"))}
                if say is not None:
                    say(f"  round {r + 1}: sampler against the fine-tuned critic, hardness ratio {row['report']['hardness_ratio']:.2f}")
            with torch.no_grad():
                batches, info = draw_finetune_set(pipeline, draw, n, sizes.finetune_batch, cfg.finetune,
                                                  seed=seed + 100 + arm_index + 7 * r)
            pipeline.critic = pretrained
            stats = finetune_critic(critic, batches * sizes.finetune_epochs, cfg.finetune, source=pipeline.source_sampler(),
                                    seed=seed + r)
            rounds.append(row | {"draw": info, "finetune": stats.as_dict()})
    totals = {k: sum(r["finetune"][k] for r in rounds) for k in ("steps", "kept", "dropped", "source_images")}
    return {**totals, "drawn": sum(r["draw"]["drawn"] for r in rounds), "rounds": rounds}


def mixed_draw(pipeline: Any, prior_fraction: float, base: Any = None):
    """``draw(num, generator) -> PoseCameraSample`` for ours' fine-tuning set: ``round(num * prior_fraction)``
    prior samples (mocap poses, uniform cameras) after the rest, drawn by ``base(n, generator)`` (default: the
    hard sampler), in one batch."""
    base = base or (lambda n, g: pipeline.draw(n, hard=True, noise=g))

    def draw(num: int, g: torch.Generator) -> Any:
        k = round(num * prior_fraction)
        parts = ([base(num - k, g)] if num > k else []) + ([pipeline.draw(k, hard=False, noise=g)] if k else [])
        return concat_samples(parts)

    return draw


def mining_draw(pipeline: Any, factor: int, prior_fraction: float, chunk: int = 32):
    """``draw(num, generator) -> PoseCameraSample`` of the mining arm (PoseSyn's error extraction, Fig. 2): the
    hard share of each batch is the ``n`` hardest of ``factor * n`` prior samples (mocap poses, uniform cameras)
    scored by ``pipeline.critic`` (the pre-trained critic) on field renders; the rest are prior samples, mixed as in
    ours (:func:`mixed_draw` with the same ``prior_fraction``). A failed prediction (NaN error) ranks last."""
    from posegen_ns.sampler import PoseCameraSample

    def hardest(n: int, g: torch.Generator) -> Any:
        cand = pipeline.draw(n * factor, hard=False, noise=g)
        with torch.no_grad():
            err = torch.cat([
                pipeline.render_and_score(PoseCameraSample(cand.body_pose[i : i + chunk], cand.global_orient[i : i + chunk],
                                                           cand.camera[i : i + chunk])).error
                for i in range(0, n * factor, chunk)
            ])
        idx = torch.topk(torch.nan_to_num(err, nan=-1.0), n).indices.to(cand.body_pose.device)
        return PoseCameraSample(cand.body_pose[idx], cand.global_orient[idx], cand.camera[idx])

    return mixed_draw(pipeline, prior_fraction, base=hardest)


def mesh_scorer(pipeline: Any, appearance_seed: int = 0):
    """``score(sample) -> SampleBatch``: the pipeline's cameras and labels (:meth:`~posegen_ns.pipeline.PoseGenPipeline.cameras`,
    :func:`posegen_ns.labels.render_and_score`) with the capture subject's *mesh* in its clothes instead of the field
    (the ``ours-mesh`` diagnostic: same samples, exact renders)."""
    from posegen_ns.evaluate import labelled_mesh_renderer
    from posegen_ns.labels import render_and_score

    render = labelled_mesh_renderer(pipeline.model.body, appearance_seed)

    def score(sample: Any) -> Any:
        betas = pipeline.model.betas[None].expand(sample.body_pose.shape[0], -1)
        K, R, t = pipeline.cameras(sample, betas)
        H, W = pipeline.image_hw
        return render_and_score(render, pipeline.critic, sample.body_pose, sample.global_orient, betas, K, R, t, W, H)

    return score


def draw_finetune_set(pipeline: Any, draw: Any, num_images: int, batch_size: int, fcfg: FinetuneConfig,
                      seed: int = 0, max_tries: int = 8, score: Any = None) -> tuple[list[dict], dict[str, Any]]:
    """Render and label samples from ``draw(num, generator) -> PoseCameraSample`` until ``num_images``
    pass the outlier filter; return them as fine-tuning batches of ``batch_size`` and drawing statistics
    (``drawn``, ``kept``, ``dropped_by``, ``mean_error_mm`` of the pre-trained critic on the kept samples).
    ``score(sample) -> SampleBatch`` renders and labels (default the field: ``pipeline.render_and_score``;
    :func:`mesh_scorer` for the mesh renderer).

    Raises:
        PoseGenInputError: fewer than ``num_images`` usable samples after ``max_tries * num_images`` draws
            (the filter is too strict for this distribution).
    """
    g = torch.Generator().manual_seed(seed)
    kept: list[dict] = []
    have, drawn = 0, 0
    stats = FinetuneStats()
    nb = pipeline.critic.body.num_betas
    while have < num_images:
        if drawn >= max_tries * num_images:
            raise PoseGenInputError(
                f"only {have} of {num_images} samples passed the outlier filter in {drawn} draws (dropped: {stats.dropped_by}); "
                "loosen --finetune.max-error-mm / --finetune.min-error-mm / --finetune.max-box-outside, or ask for fewer "
                "--finetune-images."
            )
        with torch.no_grad():
            scored = (score or pipeline.render_and_score)(draw(batch_size, g))
        batch = {k: v.cpu() for k, v in batch_from_samples(scored, nb).items()}
        keep, reasons = outlier_mask(batch, fcfg)
        stats.add_filter(keep, reasons)
        drawn += batch_size
        part = select(batch, keep)
        take = min(num_images - have, int(keep.sum()))
        if take:
            kept.append({k: v[:take] for k, v in part.items()})
            have += take
    allb = {k: torch.cat([b[k] for b in kept]) for k in kept[0]}
    batches = [{k: v[i : i + batch_size] for k, v in allb.items()} for i in range(0, num_images, batch_size)]
    info = {"drawn": drawn, "kept": stats.kept, "dropped_by": stats.dropped_by,
            "mean_error_mm": float(allb["error"].nanmean()) * 1000}
    return batches, info


# ---- evaluation ----------------------------------------------------------------------------------
def eval_motions(pipeline: Any, cfg: ExperimentConfig, sizes: ExperimentSizes) -> tuple[list, dict[str, str]]:
    """The evaluation motions and ``{clip: category}``: ``--eval-poses`` files fitted to the subject's body (stride
    ``eval_stride``, at most ``eval_max_frames`` frames spread over each whole motion), else the shipped pose bank's
    :data:`EVAL_SPLIT` (at most ``eval_max_frames`` frames per clip, spread)."""
    from posegen_ns.data.pose_bank import bank_motions, load_shipped_pose_bank
    from posegen_ns.evaluate import motion_paths
    from posegen_ns.mocap import clip_category, load_motion, manifest_for

    if cfg.eval_poses is None:
        motions = bank_motions(load_shipped_pose_bank(split=EVAL_SPLIT), sizes.eval_max_frames)
        return motions, {m.name: m.meta["category"] for m in motions}
    files, manifest = motion_paths(cfg.eval_poses), manifest_for(cfg.eval_poses)
    fit_body = copy.deepcopy(pipeline.model.body).cpu()
    motions = [load_motion(p, fit_body, stride=sizes.eval_stride, max_frames=sizes.eval_max_frames, spread=True) for p in files]
    return motions, {m.name: clip_category(m.name, manifest) for m in motions}


def eval_subject(pipeline: Any, name: str) -> tuple[torch.Tensor, int]:
    """``(betas (num_betas,), clothing seed)`` of an evaluation subject: ``"capture"`` is the capture's person
    (seed 0, the capture's look); ``"unseen"`` another build (:data:`UNSEEN_BETAS` added to the first betas) in
    other clothes (seed 3), a person the field never rendered.

    Raises:
        PoseGenInputError: an unknown subject.
    """
    betas = pipeline.model.betas.detach().float().clone()
    if name == "capture":
        return betas, 0
    if name == "unseen":
        k = min(len(UNSEEN_BETAS), betas.shape[0])
        betas[:k] += torch.tensor(UNSEEN_BETAS[:k], device=betas.device)
        return betas, 3
    raise PoseGenInputError(f"evaluation subject {name!r} is not one of {SUBJECTS}.")


@dataclass
class EvalSet:
    """Pre-rendered evaluation images: ``batches`` (:class:`~posegen_ns.critic.evaluation.EvalBatch`, their
    ``clip`` is ``"<subject>/<clip>"``), ``categories`` (``{subject/clip: category}``), ``view_names`` (indexed
    by ``batch.view_index``) and ``elevations`` (the elevation label of each view, ``"el+20"``)."""

    batches: list
    categories: dict[str, str]
    view_names: list[str]
    elevations: list[str]


def build_eval_set(pipeline: Any, cfg: ExperimentConfig, sizes: ExperimentSizes) -> EvalSet:
    """Render the evaluation images once: every :data:`SUBJECTS` person's mesh in its clothes (mesh renderer,
    not the field) in every evaluation motion from the camera set (:func:`posegen_ns.evaluate.iter_eval_batches`)."""
    from posegen_ns.evaluate import ViewConfig, iter_eval_batches, mesh_renderer, view_set

    motions, clip_cats = eval_motions(pipeline, cfg, sizes)
    body = pipeline.model.body
    views = ViewConfig(sizes.eval_cameras, tuple(sizes.eval_elevations), resolution=sizes.eval_resolution,
                       distance_scales=tuple(sizes.eval_distance_scales or (1.0,)))
    _, el, _, view_names = view_set(views)
    batches, categories = [], {}
    for subject in SUBJECTS:
        betas, seed = eval_subject(pipeline, subject)
        render = mesh_renderer(body, betas, appearance_seed=seed)
        for b in iter_eval_batches(motions, body, betas, render, pipeline.critic.joint_set, views, batch_size=32):
            b = copy.copy(b)
            b.clip = f"{subject}/{b.clip}"
            batches.append(b)
        categories.update({f"{subject}/{c}": cat for c, cat in clip_cats.items()})
    return EvalSet(batches, categories, view_names, [f"el{round(float(e) * 180 / math.pi):+03d}" for e in el])


def evaluate_critic_on(critic: Any, eval_set: EvalSet) -> dict[str, Any]:
    """Score ``critic`` on the pre-rendered evaluation set (:func:`posegen_ns.critic.evaluation.evaluate_critic`):
    ``{"overall", "categories", "subjects", "elevations"}``, each a summary (or ``{name: summary}``) with the
    metric keys of :data:`posegen_ns.critic.evaluation.METRIC_KEYS` and ``num_images``; ``overall`` weights every
    image of both subjects equally."""
    from posegen_ns.critic.evaluation import evaluate_critic

    groups = {
        "subjects": lambda b: [b.clip.split("/", 1)[0]] * b.gt.shape[0],
        "elevations": lambda b: [eval_set.elevations[int(v)] for v in b.view_index],
    }
    acc = evaluate_critic(critic, eval_set.batches, categories=eval_set.categories, groups=groups)
    return {"overall": acc.overall(), "categories": acc.summary("categories"), "subjects": acc.summary("subjects"),
            "elevations": acc.summary("elevations")}
