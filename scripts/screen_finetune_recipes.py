"""Screen fine-tuning recipes on ``ns-posegen-experiment``'s own draws, over repeats, at a fraction of its cost.

Loads a trained ``ns-train posegen-human`` run (:func:`posegen_ns.experiment.load_trained_pipeline`), draws each
arm's fine-tuning set for each repeat with the experiment's own draw (:func:`posegen_ns.experiment_tasks.draw_arm_set`:
same seeds, the same per-repeat samplers for ``ours``, ``--ours-samplers`` of them), caches them under ``--cache-dir``
(``--draw-images`` usable images each; the first ``N`` of them are the experiment's set of ``N`` images when ``N`` is
a multiple of the batch times the samplers per repeat), then for each ``--variants``
entry fine-tunes a copy of the pre-trained critic on every cached set and scores it on the preset's evaluation set.
With the experiment's recipe the figures are the experiment's, repeat for repeat (checked 2026-12-06 on the stop-20
``cpu`` run: random-prior 311.1, 307.3, 296.9, 300.2, 326.3 and ours 288.0 ... 302.7 mm, as its JSON), so a variant
costs only its fine-tuning and evaluation (about 68 s per arm x repeat at 320 images, 80 s at 640 images and 2 epochs,
on the 2-core CPU), not the drawing and the samplers' learning again. Size options of the experiment
(``--ours-samplers``, ``--loop-steps``: the per-repeat samplers' steps) change the draws, and the cache's file names
with them.

A variant is a JSON object: ``tag``; optional ``images`` (first N cached images, default the preset's
``finetune_images``), ``epochs`` (default the preset's), ``repeats`` (list of repeat indices, default all), ``sampler_offsets`` (list [k1, k2, ...]: ours' images in equal
shares from repeat r's sampler and from repeats r + k1, r + k2 ...'s, cached with ``--repeats`` covering them: ours
drawn from several samplers; ``second_sampler_offset`` k is ``sampler_offsets`` [k]), ``seed_offset`` (k > 0: fine-tune
with seed ``repeat seed + k`` for the source images and torch's global generator instead of the experiment's: the
spread the recipe itself gives on one draw), and any
:class:`posegen_ns.critic.finetune.FinetuneConfig` field (``lr``, ``source_fraction``, ``average_tail`` ...;
unset ones are the experiment's recipe, ``ExperimentConfig.finetune``). Each variant prints per-repeat MPJPE and
PA-MPJPE, their means with 95 % intervals per arm and, with ``ours`` and ``random-prior``, their paired MPJPE
difference; it appends one JSON line to ``--out`` (``mpjpe_mm_per_repeat``, ``pa_mpjpe_mm_per_repeat``: ``{arm: [mm,
...]}``).

    cd RUNDIR && python scripts/screen_finetune_recipes.py --load-config RUN/config.yml --preset cpu \\
        --variants '{"tag": "base"}' '{"tag": "sf25", "source_fraction": 0.25}'
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import tyro

from posegen_ns.atomic_io import check_torch_file, read_cache, torch_save, write_text
from posegen_ns.critic.finetune import finetune_critic
from posegen_ns.errors import PoseGenInputError
from posegen_ns.experiment import load_trained_pipeline
from posegen_ns.experiment_arms import build_eval_set, evaluate_critic_on, use_camera_ranges
from posegen_ns.experiment_config import ExperimentConfig, SamplerOverrides
from posegen_ns.experiment_tasks import ArmContext, draw_arm_set, interleave_batches, repeat_seed
from posegen_ns.stats import mean_ci95, paired_difference_ci95

SCREEN_ARMS = ("random-prior", "mining", "ours", "ours-mesh")
"""Arms whose sets the script can draw (``posegen-released`` needs the released GAN trained first: not here)."""


@dataclass
class ScreenConfig:
    """Fine-tune the pre-trained critic with several recipes on the experiment's cached draws (module docstring)."""

    load_config: Path
    """A trained run's config.yml (run the script from the folder ns-train ran in)."""
    variants: tuple[str, ...] = ('{"tag": "experiment-recipe"}',)
    """Recipes to screen, one JSON object each (module docstring)."""
    preset: Literal["tiny", "cpu", "gpu"] = "cpu"
    """Preset whose sizes (fine-tuning images, batch, epochs, evaluation set) and seeds are used."""
    arms: tuple[str, ...] = ("random-prior", "ours")
    """Arms to draw and fine-tune."""
    repeats: int = 5
    """Repeats to draw, 0 .. repeats - 1 (repeat k uses the experiment's seeds of repeat k)."""
    only_repeats: tuple[int, ...] = ()
    """Draw (and by default screen) only these repeats instead (e.g. ``--only-repeats 3``)."""
    draw_images: int = 640
    """Usable images drawn and cached per arm x repeat (a variant's ``images`` may not exceed it)."""
    cache_dir: Path = Path("screen-cache")
    """Folder of the cached draws (``ARM-REP-N.pt``), kept between calls."""
    out: Path = Path("screen-results.jsonl")
    """JSON lines, one per variant, appended."""
    ours_samplers: Optional[int] = None
    """Samplers per repeat of ours (``ns-posegen-experiment --ours-samplers``; default the preset's)."""
    loop_steps: Optional[int] = None
    """Steps of each per-repeat sampler (``ns-posegen-experiment --loop-steps``; default the preset's)."""
    ours_prior_fraction: float = ExperimentConfig.ours_prior_fraction
    """Share of prior samples in ours' and mining's sets (``ns-posegen-experiment --ours-prior-fraction``; default
    the experiment's)."""
    sampler: SamplerOverrides = dataclasses.field(default_factory=SamplerOverrides)
    """Sampler settings of the draws (``--sampler.roll-range -1.57 1.57`` ...), as ``ns-posegen-experiment``'s: camera
    ranges for every arm, the rest for ours' per-repeat samplers. Use another ``--cache-dir`` per setting."""


def cache_path(cfg: ScreenConfig, ctx: ArmContext, name: str, rep: int) -> Path:
    """``ARM-REP-N-<digest>.pt``: the digest covers everything the draw depends on besides the arm and repeat (the run,
    the seed, the samplers per repeat and their steps, the sampler overrides, ours' prior share unless it is the
    experiment's default, the outlier filter), so a cache made under other settings is never read for these."""
    exp, sizes = ctx.cfg, ctx.sizes
    setting = {"load_config": str(Path(cfg.load_config).resolve()), "seed": exp.seed, "batch": sizes.finetune_batch,
               "ours_samplers": sizes.ours_samplers, "sampler_steps": exp.relearn_steps or sizes.loop_steps,
               **({"prior_fraction": exp.ours_prior_fraction}
                  if exp.ours_prior_fraction != ExperimentConfig.ours_prior_fraction else {}),  # default: old caches
               "sampler": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.sampler.given().items()},
               "filter": [exp.finetune.max_error_mm, exp.finetune.min_error_mm, exp.finetune.joint_margin_px,
                          exp.finetune.max_box_outside]}
    digest = hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:10]
    return cfg.cache_dir / f"{name}-{rep}-{cfg.draw_images}-{digest}.pt"


def drawn_repeats(cfg: ScreenConfig) -> list[int]:
    """The repeats the script draws: ``--only-repeats``, else 0 .. ``--repeats`` - 1."""
    return list(cfg.only_repeats) if cfg.only_repeats else list(range(cfg.repeats))


def cached_draws(cfg: ScreenConfig, ctx: ArmContext) -> None:
    """Draw (:func:`posegen_ns.experiment_tasks.draw_arm_set`, the experiment's own draw) and cache (written to a
    temporary name, then renamed) every arm x repeat set not cached yet."""
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    for name in cfg.arms:
        for rep in drawn_repeats(cfg):
            path = cache_path(cfg, ctx, name, rep)
            if read_cache(path, check_torch_file, what="draw") is not None:  # a damaged one is removed and redrawn
                continue
            t = time.time()
            batches, info = draw_arm_set(ctx, name, rep, cfg.draw_images)
            # torch's global generator as the experiment's fine-tuning finds it right after this draw (seeded s + 1000
            # before the draw; ours from several samplers draws from it when it rebuilds each sampler's networks)
            torch_save({"batches": batches, "info": info, "rng_state": torch.get_rng_state()}, path)
            print(f"drew {name} repeat {rep}: {cfg.draw_images} images in {time.time() - t:.0f} s, "
                  f"pre-trained critic's MPJPE on them {info['mean_error_mm']:.1f} mm", flush=True)


def load_cached(cfg: ScreenConfig, ctx: ArmContext, name: str, rep: int) -> dict[str, Any]:
    """The cached draw of ``name`` x ``rep``: ``batches``, ``info`` and ``rng_state`` (torch's global generator after
    the draw, as the experiment's fine-tuning of that set starts with it)."""
    path = cache_path(cfg, ctx, name, rep)
    cached = read_cache(path, lambda p: torch.load(p, weights_only=False), what="cached draw")
    if cached is None:
        raise PoseGenInputError(f"{path}: no cached draw of {name} repeat {rep}; raise --repeats to cover every repeat a "
                                "variant reads (the missing draws are made first).")
    return cached


def load_set(cfg: ScreenConfig, ctx: ArmContext, name: str, rep: int, images: int) -> list[dict[str, torch.Tensor]]:
    """The first ``images`` cached images of ``name`` x ``rep`` as fine-tuning batches of the preset's size."""
    batch = ctx.sizes.finetune_batch
    cached = load_cached(cfg, ctx, name, rep)
    if images > cfg.draw_images:
        raise PoseGenInputError(f"a variant asks for {images} images but --draw-images is {cfg.draw_images}; raise it.")
    allb = {k: torch.cat([b[k] for b in cached["batches"]])[:images] for k in cached["batches"][0]}
    return [{k: v[i : i + batch] for k, v in allb.items()} for i in range(0, images, batch)]


def multi_sampler_set(cfg: ScreenConfig, ctx: ArmContext, reps: list[int], images: int) -> list[dict[str, torch.Tensor]]:
    """Ours drawn from ``len(reps)`` samplers: the first ``images / len(reps)`` cached images of ours x each repeat in
    ``reps`` (each another sampler training), batch by batch in turn."""
    n, batch = len(reps), ctx.sizes.finetune_batch
    if images % (n * batch):
        raise PoseGenInputError(f"a {n}-sampler variant needs images divisible by {n} x {batch} (got {images}).")
    sets = [load_set(cfg, ctx, "ours", r, images // n) for r in reps]
    return interleave_batches(sets)


def screen(cfg: ScreenConfig, ctx: ArmContext, variant: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune and evaluate one variant on every cached arm x repeat; print and return its figures."""
    exp, sizes, pipeline = ctx.cfg, ctx.sizes, ctx.pipeline
    v = dict(variant)
    tag = v.pop("tag")
    images, epochs = v.pop("images", sizes.finetune_images), v.pop("epochs", sizes.finetune_epochs)
    reps = v.pop("repeats", drawn_repeats(cfg))
    second = v.pop("second_sampler_offset", None)
    offsets = v.pop("sampler_offsets", [] if second is None else [second])
    seed_offset = v.pop("seed_offset", 0)
    recipe = dataclasses.replace(exp.finetune, **v)
    source = pipeline.source_sampler()
    mpjpe: dict[str, list[float]] = {}
    pa_mpjpe: dict[str, list[float]] = {}
    for name in cfg.arms:
        mpjpe[name], pa_mpjpe[name] = [], []
        for rep in reps:
            t, s = time.time(), repeat_seed(exp.seed, rep)
            critic = copy.deepcopy(pipeline.critic)
            if seed_offset:  # another fine-tuning seed on the same draw (source images, dropout): the recipe's own spread
                s += seed_offset
                torch.manual_seed(s)
            else:
                torch.set_rng_state(load_cached(cfg, ctx, name, rep)["rng_state"])  # as the experiment's fine-tuning
            if offsets and name == "ours":
                batches = multi_sampler_set(cfg, ctx, [rep] + [rep + k for k in offsets], images)
            else:
                batches = load_set(cfg, ctx, name, rep, images)
            finetune_critic(critic, batches * epochs, recipe, source=source, seed=s)
            overall = evaluate_critic_on(critic, ctx.eval_set)["overall"]
            mpjpe[name].append(overall["mpjpe_mm"])
            pa_mpjpe[name].append(overall["pa_mpjpe_mm"])
            print(f"{tag} {name} repeat {rep}: {mpjpe[name][-1]:.1f} mm, PA-MPJPE {pa_mpjpe[name][-1]:.1f} mm "
                  f"({time.time() - t:.0f} s)", flush=True)
    result = {"tag": tag, "images": images, "epochs": epochs, "repeats": reps, "sampler_offsets": offsets,
              "seed_offset": seed_offset,
              "recipe": dataclasses.asdict(recipe), "sampler": cfg.sampler.given(),
              "mpjpe_mm_per_repeat": mpjpe, "pa_mpjpe_mm_per_repeat": pa_mpjpe}
    for name, vals in mpjpe.items():
        if len(vals) > 1:
            ci, pa = mean_ci95(vals), mean_ci95(pa_mpjpe[name])
            print(f"  {tag} {name}: {ci.mean:.1f} [{ci.lo:.1f}, {ci.hi:.1f}] mm, PA-MPJPE {pa.mean:.1f} [{pa.lo:.1f}, "
                  f"{pa.hi:.1f}] mm", flush=True)
    if "ours" in mpjpe and "random-prior" in mpjpe and len(reps) > 1:
        d = paired_difference_ci95(mpjpe["ours"], mpjpe["random-prior"])
        result["ours_minus_random_prior"] = dataclasses.asdict(d)
        print(f"  {tag} ours - random-prior: {d.mean:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}] mm", flush=True)
    before = cfg.out.read_text() if cfg.out.exists() else ""
    write_text(cfg.out, before + json.dumps(result) + "\n")  # the whole file renamed into place: never half a line
    return result


def main(cfg: ScreenConfig) -> None:
    """Load the run, draw what is not cached, screen every variant."""
    bad = [a for a in cfg.arms if a not in SCREEN_ARMS]
    if bad:
        raise PoseGenInputError(f"--arms {bad}: this script draws only {list(SCREEN_ARMS)}.")
    variants = []
    for text in cfg.variants:
        try:
            variants.append(json.loads(text))
        except json.JSONDecodeError as err:
            raise PoseGenInputError(f"--variants {text!r} is not JSON ({err}); e.g. '{{\"tag\": \"lr5e-5\", \"lr\": 5e-5}}'.")
        if "tag" not in variants[-1]:
            raise PoseGenInputError(f"--variants {text!r}: each variant needs a \"tag\".")
    exp = ExperimentConfig(preset=cfg.preset, load_config=cfg.load_config, sampler=cfg.sampler,
                           ours_samplers=cfg.ours_samplers, loop_steps=cfg.loop_steps,
                           ours_prior_fraction=cfg.ours_prior_fraction)
    sizes = exp.sizes()
    pipeline = load_trained_pipeline(cfg.load_config)
    use_camera_ranges(pipeline, cfg.sampler)  # as run_experiment: every arm's cameras
    ctx = ArmContext(pipeline, exp, sizes)
    cached_draws(cfg, ctx)
    ctx.eval_set = build_eval_set(pipeline, exp, sizes)
    for v in variants:
        screen(cfg, ctx, v)


def entrypoint() -> None:
    main(tyro.cli(ScreenConfig))


if __name__ == "__main__":
    entrypoint()
