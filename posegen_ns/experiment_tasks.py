"""The arms x repeats of ``ns-posegen-experiment`` as independent tasks: in this process (``--engine local``) or as
Ray tasks (``--engine ray [--num-workers N]``, :mod:`posegen_ns.engine`).

One task is one arm x repeat (:func:`run_arm_repeat`): copy the pre-trained critic, draw the arm's fine-tuning set,
fine-tune the copy, evaluate it on the pre-rendered evaluation set. Every task reads an :class:`ArmContext` (the
trained pipeline, the released-style GAN's sampler, the evaluation set, the config and sizes) and leaves it as it
found it. :func:`run_arms` runs the tasks in the experiment's order (arms in :data:`~posegen_ns.experiment_config.ARMS`
order, repeats inside) and hands back each arm's runs in repeat order, whichever engine ran them.

**Order independence** (why a task's result does not depend on which tasks ran before it, or where):

- Seeds: repeat ``k``'s seed ``s = seed + 10000 k`` is shared by every arm. A task seeds everything it uses
  itself: ``torch.manual_seed(s + 1000)`` (dropout and any other use of torch's global generator) right before its
  first random operation, the drawing generator ``s + 100`` (:func:`~posegen_ns.experiment_arms.draw_finetune_set`;
  ``s + 100 + j`` for the share of ours' per-repeat sampler ``j``, whose own training is seeded ``s + 500 + 1000 j``:
  :func:`draw_arm_set`), the fine-tuning order and source images ``s`` (:func:`~posegen_ns.critic.finetune.finetune_critic`),
  the rounds of ours ``s + 31 r`` and ``s + 100 + 7 r`` (:func:`~posegen_ns.experiment_arms.finetune_ours_in_rounds`). What a task
  builds before that seed (the critic copy, the draws, the cached source set) is deterministic and uses no global
  random state.
- State: the draws (prior, released GAN, mining, ours, the mesh scorer) are stateless closures over the pipeline
  and always get the task's generator (never ``pipeline.noise``); the critic is a fresh copy; the source set is
  rendered once (seeded) and read-only. Ours with rounds trains the pipeline's sampler in place and restores the
  generator, discriminator, pose regions, hardness reference and critic afterwards (also when it fails).
- Threads: the sampler's steps (a repeat's own sampler, ``--ours-sampler per-repeat``; ours' rounds; the released
  GAN's training) compute with torch's deterministic algorithms on the CPU
  (:func:`~posegen_ns.experiment_arms.deterministic_on_cpu`): on two or more threads torch's CPU ``index_put_(accumulate=True)``, the backward of ``x[idx]`` in the renderer and the body
  model, otherwise adds in a thread-dependent order, and the per-repeat samplers, hence ours' rows, differed between
  a Ray worker and the driver by 1 to 8 mm (stop 19), as between two local runs. The thread count itself must match
  (:mod:`posegen_ns.engine` gives the workers the driver's).
- So the local figures of a given seed are those of the loop this module replaced (same operations in the same
  order inside each task), and a Ray worker that runs tasks in another order, or after a restart, gives the same.

**On Ray** (:func:`run_arms` with ``cfg.engine == "ray"``): the context travels once per worker through Ray's
object store (:func:`posegen_ns.engine.run_tasks` puts a large ``load`` there; a restarted worker fetches it again)
*without* the evaluation images (thousands of float images: 0.4 GB at the ``cpu`` preset, 6 GB at ``gpu``): each
worker renders them again (:func:`load_arm_worker`, the same deterministic mesh renders,
:func:`~posegen_ns.experiment_arms.build_eval_set`) and checks them against the driver's digest
(:func:`eval_set_digest`); a node that renders different images is refused. ``--eval-poses`` must therefore be
readable at the same path on every node (as the export's run folder). Each worker computes with the driver's
torch thread count (:mod:`posegen_ns.engine`), holds one pipeline and one evaluation set, and runs one task at a
time; the driver shows one progress bar over all tasks. A task's error stops the job with a
:class:`~posegen_ns.engine.WorkerError` (or :class:`~posegen_ns.errors.PoseGenInputError`) naming the worker, the
arm and the repeat; a worker process that dies is restarted and its tasks run again (a task has no side effect
outside its worker).

**Same JSON.** On the same kind of machine the results JSON of ``--engine ray`` equals ``--engine local``'s for the
same seeds, every figure bit for bit (the tests check the rows to 1e-5), except ``timing_s``: its wall times differ
from run to run anyway, and ``arm_<name>`` is the sum of the arm's task times on whichever worker ran them (with
the local engine: the arm's time in this process), so with several workers the arms' times add up to more than
``total``. Across kinds of machine (a CPU driver with GPU workers) renders differ in the last bits and the workers
refuse the evaluation set (above). On CUDA the sampler's steps keep their atomic adds (torch's indexing backward,
gsplat's), so there ours' rows need not be bit-identical run to run (not checked on a GPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from posegen_ns.errors import PoseGenInputError
from posegen_ns.experiment_arms import (
    SAMPLER_MODULES, EvalSet, build_eval_set, draw_finetune_set, evaluate_critic_on, finetune_ours_in_rounds,
    mesh_scorer, mining_draw, mixed_draw, relearn_sampler, sampler_restored,
)

from posegen_ns.experiment_config import ARMS, ExperimentConfig, ExperimentSizes
from posegen_ns.sampler.prior_pass import PriorPassLog

Say = Callable[[str], None]
Task = tuple[str, int]
"""One task: ``(arm name, repeat index)``."""


@dataclass
class ArmContext:
    """What every arm x repeat reads (and leaves as it found it): the trained ``pipeline`` (field, our sampler as
    trained or re-learned, the pre-trained critic as ``pipeline.critic``), the released-style GAN's sampler
    (``released``, :func:`~posegen_ns.experiment.train_released_gan`; None without that arm), the pre-rendered
    evaluation set (None on its way to a Ray worker, which renders it again) with its digest, and the config and
    sizes of the experiment."""

    pipeline: Any
    cfg: ExperimentConfig
    sizes: ExperimentSizes
    released: Optional[Callable[..., Any]] = None
    eval_set: Optional["EvalSet"] = None
    eval_digest: Optional[str] = None
    """:func:`eval_set_digest` of the driver's evaluation set (set for the workers)."""
    _draws: Optional[tuple[dict[str, Any], dict[str, Any]]] = dataclasses.field(default=None, repr=False)
    _repeat_samplers: dict[tuple[int, int], tuple[dict[str, Any], dict[str, Any]]] = dataclasses.field(
        default_factory=dict, repr=False)
    """Per-repeat samplers learned in this process (``--ours-sampler per-repeat``): ``{(rep, index): (states, info)}``."""
    _prior_logs: dict[int, PriorPassLog] = dataclasses.field(default_factory=dict, repr=False)
    """``{rep: PriorPassLog}``: the prior passes the samplers of repeat ``rep`` share (``--share-prior-pass``)."""

    def draws(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(draws, scorers)``: ``draws[arm](num, generator) -> PoseCameraSample`` and ``scorers[arm](sample) ->
        SampleBatch`` (arms that render with something else than the field: ``ours-mesh``). Built on first use."""
        if self._draws is None:
            self._draws = arm_draws(self.pipeline, self.released, self.cfg)
        return self._draws

    def for_workers(self) -> "ArmContext":
        """A copy for Ray workers: no evaluation images (the workers render them, :func:`load_arm_worker`) but their
        digest, and no built draws (closures; each worker builds its own)."""
        assert self.eval_set is not None, "for_workers: the driver's evaluation set is needed for its digest"
        return dataclasses.replace(self, eval_set=None, eval_digest=eval_set_digest(self.eval_set), _draws=None,
                                   _repeat_samplers={}, _prior_logs={})

    def use_repeat_sampler(self, rep: int, index: int = 0) -> dict[str, Any]:
        """Make ``pipeline``'s sampler repeat ``rep``'s own number ``index`` (``--ours-sampler per-repeat``; ``index <
        --ours-samplers``): learned from scratch on the trained field
        (:func:`~posegen_ns.experiment_arms.relearn_sampler`: ``--relearn-steps`` or the preset's ``loop_steps`` steps,
        the ``--sampler.*`` overrides, seed :func:`repeat_sampler_seed`), or loaded from this process's cache when
        ``ours`` or ``ours-mesh`` of the same repeat learned it already (the same seed gives the same sampler, so
        caching changes no figure). Call it inside :func:`~posegen_ns.experiment_arms.sampler_restored`.

        Returns:
            ``{"seed", "steps", "report"}``: the sampler's seed and steps, and its hardness report right after learning
            (:meth:`~posegen_ns.pipeline.PoseGenPipeline.hardness_report`: critic MPJPE on hard and prior samples in
            mm, the hardness ratio, pose diversity and camera spreads).
        """
        pipeline, cfg = self.pipeline, self.cfg
        key = (rep, index)
        if key not in self._repeat_samplers:
            seed = repeat_sampler_seed(cfg.seed, rep, index)
            steps = cfg.relearn_steps or self.sizes.loop_steps
            if cfg.share_prior_pass:  # every sampler of the repeat replays the repeat's prior passes
                log = self._prior_logs.setdefault(rep, PriorPassLog(prior_pass_seed(cfg.seed, rep)))
                pipeline.prior_log = log.rewind()
            try:
                learned = relearn_sampler(pipeline, steps, cfg.sampler, seed=seed)
            finally:
                pipeline.prior_log = None
            info = {"seed": seed, "steps": steps,
                    "report": learned["report"]}
            states = {k: copy.deepcopy(getattr(pipeline, k).state_dict()) for k in SAMPLER_MODULES}
            self._repeat_samplers[key] = (states | {"reference_error": pipeline.reference_error.clone()}, info)
            return info
        states, info = self._repeat_samplers[key]
        if cfg.sampler.given():
            pipeline.config.sampler = cfg.sampler.apply(pipeline.config.sampler)
            pipeline.ranges = pipeline.config.sampler.ranges()
        pipeline.reset_sampler()  # one sampler, as relearn_sampler leaves it
        for k in SAMPLER_MODULES:
            getattr(pipeline, k).load_state_dict(states[k])
        pipeline.reference_error.copy_(states["reference_error"])
        pipeline.noise = torch.Generator().manual_seed(info["seed"])
        return info


def prior_pass_seed(seed: int, rep: int) -> int:
    """Seed of the prior passes shared by the samplers of repeat ``rep`` (``--share-prior-pass``):
    ``seed + 10000 rep + 400``, inside the repeat's block of 10,000 and apart from its other seeds
    (:func:`repeat_sampler_seed`)."""
    return seed + 10000 * rep + 400


def repeat_sampler_seed(seed: int, rep: int, index: int = 0) -> int:
    """Seed of repeat ``rep``'s own sampler number ``index`` (``--ours-sampler per-repeat``, ``index <
    --ours-samplers <= 9``): ``seed + 10000 rep + 500 + 1000 index``, apart from the repeat's drawing (``+ 100 +
    index``), fine-tuning (``+ 0``) and global (``+ 1000``) seeds and inside the repeat's block of 10,000."""
    return seed + 10000 * rep + 500 + 1000 * index


def arm_draws(pipeline: Any, released: Optional[Callable[..., Any]], cfg: ExperimentConfig
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each arm's draw and renderer (module docstring of :mod:`posegen_ns.experiment`): ``random-prior`` prior
    poses with uniform cameras, ``posegen-released`` the released-style GAN, ``mining`` PoseSyn's error extraction
    (:func:`~posegen_ns.experiment_arms.mining_draw`), ``ours`` and ``ours-mesh`` our sampler mixed with the prior
    (:func:`~posegen_ns.experiment_arms.mixed_draw`); ``ours-mesh`` renders with the mesh
    (:func:`~posegen_ns.experiment_arms.mesh_scorer`). Returns ``(draws, scorers)``."""

    draws = {
        "random-prior": lambda n, g: pipeline.draw(n, hard=False, noise=g),
        "posegen-released": released,
        "mining": mining_draw(pipeline, cfg.mining_factor, cfg.ours_prior_fraction),
        "ours": mixed_draw(pipeline, cfg.ours_prior_fraction),
        "ours-mesh": mixed_draw(pipeline, cfg.ours_prior_fraction),
    }
    return draws, {"ours-mesh": mesh_scorer(pipeline)}


def arm_tasks(arms: tuple[str, ...], repeats: int) -> list[Task]:
    """The experiment's tasks in order: the arms of ``arms`` in :data:`~posegen_ns.experiment_config.ARMS` order, each
    ``repeats`` times (``pretrained`` once: the pre-trained critic is deterministic)."""

    return [(name, rep) for name in ARMS if name in arms for rep in range(1 if name == "pretrained" else repeats)]


def task_label(task: Task, repeats: int) -> str:
    """``arm 'ours' repeat 2/5``: a task in messages (progress, a worker's error)."""
    name, rep = task
    return f"arm '{name}' repeat {rep + 1}/{1 if name == 'pretrained' else repeats}"


def run_arm_repeat(ctx: ArmContext, name: str, rep: int, say: Optional[Say] = None) -> dict[str, Any]:
    """One arm x repeat: fine-tune a copy of the pre-trained critic on ``sizes.finetune_images`` usable samples of
    arm ``name`` drawn with repeat ``rep``'s seed (:func:`draw_arm_set`; none for ``pretrained``; ours in
    ``cfg.ours_rounds`` rounds when more than one) and evaluate it on ``ctx.eval_set``. Seeds and state: module
    docstring.

    Returns:
        :func:`~posegen_ns.experiment_arms.evaluate_critic_on`'s result with ``finetune`` (the drawing and fine-tuning
        statistics) and ``seed`` (the repeat's seed), as :func:`~posegen_ns.experiment.summarise_repeats` reads it.

    Raises:
        PoseGenInputError: too few samples pass the outlier filter
            (:func:`~posegen_ns.experiment_arms.draw_finetune_set`).
    """
    from posegen_ns.critic.finetune import finetune_critic

    cfg, sizes, pipeline = ctx.cfg, ctx.sizes, ctx.pipeline
    assert ctx.eval_set is not None, "run_arm_repeat: the context has no evaluation set"
    say = say or (lambda msg: None)
    # built before the task's seed, as before any task: deterministic, and they use no global random state
    draws, _ = ctx.draws()
    source = pipeline.source_sampler()
    s = repeat_seed(cfg.seed, rep)
    critic = copy.deepcopy(pipeline.critic)
    if name == "pretrained":
        torch.manual_seed(s + 1000)
        ft_info: dict[str, Any] = {}
    elif name == "ours" and cfg.ours_rounds > 1:
        per_repeat = cfg.ours_sampler == "per-repeat"
        with sampler_restored(pipeline) if per_repeat else contextlib.nullcontext():
            sampler = ctx.use_repeat_sampler(rep) if per_repeat else None
            torch.manual_seed(s + 1000)
            say(f"arm 'ours' (repeat {rep + 1}/{sizes.repeats}): {cfg.ours_rounds} rounds of sampling and fine-tuning, "
                f"{sizes.finetune_images} images in all")
            ft_info = finetune_ours_in_rounds(pipeline, critic, draws[name], sizes, cfg, s, 0, say)
            if sampler is not None:
                ft_info["sampler"], ft_info["samplers"] = sampler, [sampler]
    else:
        say(f"arm '{name}' (repeat {rep + 1}/{sizes.repeats}): drawing {sizes.finetune_images} fine-tuning images, fine-tuning")
        batches, ft_info = draw_arm_set(ctx, name, rep, sizes.finetune_images)
        stats = finetune_critic(critic, batches * sizes.finetune_epochs, cfg.finetune, source=source, seed=s)
        ft_info.update(stats.as_dict())
    return {**evaluate_critic_on(critic, ctx.eval_set), "finetune": ft_info, "seed": s}


def repeat_seed(seed: int, rep: int) -> int:
    """Repeat ``rep``'s seed ``s = seed + 10000 rep``, shared by every arm (module docstring: ``s`` fine-tuning,
    ``s + 100`` drawing, ``s + 500 + 1000 j`` sampler ``j``, ``s + 1000`` torch's global generator)."""
    return seed + 10000 * rep


def draw_arm_set(ctx: ArmContext, name: str, rep: int, num_images: int) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Arm ``name``'s fine-tuning set of repeat ``rep`` (not ``pretrained``, not ours in rounds), exactly as
    :func:`run_arm_repeat` draws it: for ``ours`` / ``ours-mesh`` with ``--ours-sampler per-repeat`` the repeat's
    ``--ours-samplers`` samplers are learned (or taken from the context's cache) first, inside
    :func:`~posegen_ns.experiment_arms.sampler_restored`; then torch's global generator is seeded ``s + 1000`` and
    ``num_images`` usable images are drawn (:func:`~posegen_ns.experiment_arms.draw_finetune_set`, drawing seed ``s +
    100``; from several samplers :func:`draw_from_samplers`), and the global generator is seeded ``s + 1000`` again,
    so that fine-tuning starts from the same state in every arm. Whoever screens recipes on the experiment's sets
    (``scripts/screen_finetune_recipes.py``) calls this, so its sets are the experiment's.

    Returns:
        ``(batches, info)``: fine-tuning batches of ``finetune_batch`` images and the drawing statistics (``drawn``,
        ``kept``, ``dropped_by``, ``mean_error_mm``; ``sampler`` and ``samplers``: the per-repeat samplers' seeds, steps
        and hardness reports).

    Raises:
        PoseGenInputError: too few samples pass the outlier filter.
    """
    cfg, sizes, pipeline = ctx.cfg, ctx.sizes, ctx.pipeline
    draws, scorers = ctx.draws()
    s = repeat_seed(cfg.seed, rep)
    per_repeat = name in ("ours", "ours-mesh") and cfg.ours_sampler == "per-repeat"
    with sampler_restored(pipeline) if per_repeat else contextlib.nullcontext():
        # every sampler is learned before the task's seed (each seeds itself); the last one learned is in use
        samplers = [ctx.use_repeat_sampler(rep, j) for j in range(sizes.ours_samplers)] if per_repeat else []
        torch.manual_seed(s + 1000)
        if len(samplers) > 1:
            batches, info = draw_from_samplers(ctx, name, rep, num_images)
        else:
            with torch.no_grad():
                batches, info = draw_finetune_set(pipeline, draws[name], num_images, sizes.finetune_batch,
                                                  cfg.finetune, seed=s + 100, score=scorers.get(name))
    # fine-tuning (its dropout) starts from the same global state in every arm, whatever the draw consumed (several
    # samplers rebuild their networks from torch's global generator while they draw)
    torch.manual_seed(s + 1000)
    if samplers:
        info["sampler"], info["samplers"] = samplers[0], samplers
    return batches, info


def sampler_shares(num_images: int, batch: int, num_samplers: int) -> list[int]:
    """Images drawn from each of ``num_samplers`` samplers when ``num_images`` fine-tuning images are cut into
    batches of ``batch`` (the last one may be short) and batch ``i`` comes from sampler ``i mod num_samplers``.

    Example: 100 images, batches of 16 (six of 16 and one of 4), 2 samplers: batches 0, 2, 4, 6 and 1, 3, 5, so
    ``[52, 48]``.
    """
    sizes = [min(batch, num_images - i) for i in range(0, num_images, batch)]
    return [sum(sizes[j::num_samplers]) for j in range(num_samplers)]


def interleave_batches(parts: list[list[Any]]) -> list[Any]:
    """Several samplers' fine-tuning batches in turn: ``parts[0][0], parts[1][0], ..., parts[0][1], parts[1][1], ...``
    (a part that runs out is skipped). With parts that shrink by at most one batch from first to last (as
    :func:`sampler_shares` gives) batch ``i`` comes from part ``i mod N``."""
    return [p[i] for i in range(max((len(p) for p in parts), default=0)) for p in parts if i < len(p)]


def draw_from_samplers(ctx: ArmContext, name: str, rep: int, num_images: int
                       ) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """:func:`draw_arm_set`'s draw for ``--ours-samplers N > 1`` (call it where that does: inside
    :func:`~posegen_ns.experiment_arms.sampler_restored`, the samplers learned): sampler ``j`` of repeat ``rep``
    (:meth:`ArmContext.use_repeat_sampler`) draws its share (:func:`sampler_shares`) with the drawing seed ``s + 100
    + j``, and the batches alternate between the samplers (batch ``i`` from sampler ``i mod N``). The drawing
    statistics add up over the samplers (``mean_error_mm`` weighted by images)."""
    cfg, sizes, pipeline = ctx.cfg, ctx.sizes, ctx.pipeline
    draws, scorers = ctx.draws()
    n, s = sizes.ours_samplers, repeat_seed(cfg.seed, rep)
    shares = sampler_shares(num_images, sizes.finetune_batch, n)
    parts, infos = [], []
    for j, share in enumerate(shares):
        ctx.use_repeat_sampler(rep, j)
        with torch.no_grad():
            batches, info = draw_finetune_set(pipeline, draws[name], share, sizes.finetune_batch, cfg.finetune,
                                              seed=s + 100 + j, score=scorers.get(name))
        parts.append(batches)
        infos.append(info)
    batches = interleave_batches(parts)
    info = {
        "drawn": sum(i["drawn"] for i in infos), "kept": sum(i["kept"] for i in infos),
        "dropped_by": {k: sum(i["dropped_by"][k] for i in infos) for k in infos[0]["dropped_by"]},
        "mean_error_mm": sum(i["mean_error_mm"] * sh for i, sh in zip(infos, shares)) / num_images,
    }
    return batches, info


def timed_arm_repeat(ctx: ArmContext, task: Task, say: Optional[Say] = None) -> tuple[dict[str, Any], float]:
    """:func:`run_arm_repeat` of ``task = (name, rep)`` and its wall time in seconds (a Ray task's ``work``)."""
    t = time.time()
    run = run_arm_repeat(ctx, task[0], task[1], say)
    return run, time.time() - t


def eval_set_digest(eval_set: "EvalSet") -> str:
    """SHA-256 (hex) of an evaluation set: every batch's clip, images, boxes, ground truth and frame / view indices
    (exact bytes), the categories, view names and elevation labels. Equal digests: the same evaluation."""
    h = hashlib.sha256()
    h.update(repr((sorted(eval_set.categories.items()), list(eval_set.view_names), list(eval_set.elevations))).encode())
    for b in eval_set.batches:
        h.update(repr((b.clip, b.root)).encode())
        for x in (b.images, b.boxes, b.gt, b.frame_index, b.view_index):
            if x is None:
                h.update(b"-")
                continue
            x = x.detach().cpu().contiguous()
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.numpy().tobytes())
    return h.hexdigest()


def load_arm_worker(ctx: ArmContext) -> ArmContext:
    """What a Ray worker builds once (:func:`posegen_ns.engine.run_tasks`'s ``load``): ``ctx`` (from the driver,
    :meth:`ArmContext.for_workers`) with the evaluation set rendered here
    (:func:`~posegen_ns.experiment_arms.build_eval_set`), checked against the driver's digest.

    Raises:
        PoseGenInputError: this worker's evaluation images differ from the driver's.
    """

    eval_set = build_eval_set(ctx.pipeline, ctx.cfg, ctx.sizes)
    if ctx.eval_digest is not None and eval_set_digest(eval_set) != ctx.eval_digest:
        raise PoseGenInputError(
            "this worker renders other evaluation images than the driver (another kind of machine or device, another "
            "torch, or other --eval-poses files at the same path?); run the workers on machines like the driver's, "
            "or use --engine local."
        )
    return dataclasses.replace(ctx, eval_set=eval_set)


def run_arms(ctx: ArmContext, say: Optional[Say] = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Every arm x repeat of the experiment (:func:`arm_tasks`) on ``ctx.cfg.engine``: ``"local"`` runs them here one
    after the other (the order of :func:`arm_tasks`, printing each arm's line with ``say``); ``"ray"`` as Ray tasks
    on ``ctx.cfg.num_workers`` workers (default :func:`posegen_ns.engine.default_num_workers`) with one progress bar
    (module docstring).

    Returns:
        ``(runs, seconds)``: ``runs[arm]`` the :func:`run_arm_repeat` results of the arm in repeat order (arms in
        :data:`~posegen_ns.experiment_config.ARMS` order), ``seconds[arm]`` the sum of its tasks' wall times.

    Raises:
        posegen_ns.engine.WorkerError: a Ray task failed (the message names the worker, the arm and the repeat).
        PoseGenInputError: bad input found by a task (on Ray: with the worker, the arm and the repeat named).
    """
    cfg, sizes = ctx.cfg, ctx.sizes
    tasks = arm_tasks(tuple(cfg.arms), sizes.repeats)
    if cfg.engine == "ray":
        from posegen_ns.engine import ray_session, run_tasks

        with ray_session(cfg.num_workers):
            done = run_tasks(functools.partial(load_arm_worker, ctx.for_workers()), timed_arm_repeat, tasks,
                             [task_label(t, sizes.repeats) for t in tasks], num_workers=cfg.num_workers,
                             description="fine-tuning and evaluating arms", suffix="tasks/s",
                             use_gpus=str(cfg.device).startswith("cuda"))
    else:
        done = [timed_arm_repeat(ctx, t, say) for t in tasks]
    runs: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for (name, _), (run, sec) in zip(tasks, done):
        runs.setdefault(name, []).append(run)
        seconds[name] = seconds.get(name, 0.0) + sec
    return runs, seconds
