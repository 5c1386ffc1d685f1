"""Which part of our hard samples helps or hurts fine-tuning: ablations of ``ns-posegen-experiment``'s ours arm.

Loads a trained ``ns-train posegen-human`` run (its field, sampler and pre-trained critic; the pose prior cut
to the experiment's training clips, :func:`posegen_ns.experiment.load_trained_pipeline`), renders the
experiment's evaluation set once, then for each named fine-tuning set draws ``--finetune-images`` usable
images from the trained field, fine-tunes a copy of the pre-trained critic on them with the experiment's
recipe and prints its MPJPE / PA-MPJPE / PCK@150 on the held-out motions (one line per set, JSON with
``--json``). Sets:

- ``pretrained``: no fine-tuning;
- ``random-prior``: mocap prior poses, uniform cameras (the experiment's random-prior arm);
- ``ours``: the run's sampler (pose and camera), ``ours-mix``: half ours, half random-prior (the experiment's
  default ours arm);
- ``hardpose-unicam``: the sampler's poses with uniform cameras, ``hardcam``: prior poses with the sampler's
  cameras, and their ``-mix`` variants (half random-prior);
- ``mined-prior``: the hardest third (by the pre-trained critic's error) of three times as many prior samples;
  ``mined-ours``: the same over the sampler's samples.

    cd RUNDIR && python scripts/finetune_ablation.py --load-config RUN/config.yml --sets random-prior ours-mix hardcam
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import tyro

from posegen_ns import experiment as E
from posegen_ns.atomic_io import check_writable, write_json
from posegen_ns.critic.finetune import finetune_critic
from posegen_ns.labels import concat_samples
from posegen_ns.sampler import PoseCameraSample

Draw = Callable[[int, torch.Generator], PoseCameraSample]


@dataclass
class AblationConfig:
    """Fine-tune the pre-trained critic of a run on ablated versions of ours' fine-tuning set."""

    load_config: Path
    """A trained run's config.yml (run the script from the folder ns-train ran in)."""
    sets: tuple[str, ...] = ("pretrained", "random-prior", "ours", "ours-mix", "hardpose-unicam", "hardcam", "mined-prior")
    """Fine-tuning sets to compare (module docstring)."""
    seed: int = 0
    """Seed of the draws and of fine-tuning."""
    finetune_images: int = 256
    """Usable (post-filter) images per set."""
    finetune_batch: int = 16
    """Images per fine-tuning step."""
    finetune_epochs: int = 3
    """Passes over each set."""
    eval_stride: int = 16
    """Frame stride of the evaluation motions."""
    eval_elevations: tuple[float, ...] = (0.0, 20.0)
    """Elevations of the evaluation ring, degrees."""
    json: Optional[Path] = None
    """Write the results here."""


def make_draws(p: Any) -> dict[str, Draw]:
    """``{set name: draw(num, generator) -> PoseCameraSample}`` for the sets of the module docstring."""
    prior: Draw = lambda n, g: p.draw(n, hard=False, noise=g)
    ours: Draw = lambda n, g: p.draw(n, hard=True, noise=g)

    def swap(pose_from_ours: bool) -> Draw:
        def draw(n: int, g: torch.Generator) -> PoseCameraSample:
            h, u = ours(n, g), prior(n, g)
            pose = h if pose_from_ours else u
            return PoseCameraSample(pose.body_pose, pose.global_orient, (u if pose_from_ours else h).camera)

        return draw

    def mined(base: Draw, k: int = 3) -> Draw:
        def draw(n: int, g: torch.Generator) -> PoseCameraSample:
            cand = concat_samples([base(n, g) for _ in range(k)])
            top = p.render_and_score(cand).error.nan_to_num(0.0).topk(n).indices
            return PoseCameraSample(cand.body_pose[top], cand.global_orient[top], cand.camera[top])

        return draw

    sets = {"random-prior": prior, "ours": ours, "hardpose-unicam": swap(True), "hardcam": swap(False),
            "mined-prior": mined(prior), "mined-ours": mined(ours)}
    sets.update({f"{k}-mix": E.mixed_draw(p, 0.5, base=v) for k, v in list(sets.items()) if k != "random-prior"})
    return sets


def check_sets(sets: tuple[str, ...], draws: dict[str, Draw]) -> None:
    """Raises ``SystemExit`` naming the unknown entries of ``--sets`` and the known ones."""
    unknown = [s for s in sets if s != "pretrained" and s not in draws]
    if unknown:
        raise SystemExit(f"finetune_ablation.py --sets: unknown {unknown}; choose from pretrained, {', '.join(draws)}")


def main(cfg: AblationConfig) -> dict[str, dict[str, float]]:
    """Fine-tune and evaluate one critic per set of ``cfg.sets``; print a line each and return
    ``{set: {"mpjpe_mm", "pa_mpjpe_mm", "pck150", "finetune_set_error_mm", "seconds"}}`` (mm, fraction, s)."""
    if cfg.json is not None:
        check_writable(cfg.json, "--json")  # fail now, not after the ablation
    ecfg = E.ExperimentConfig(preset="gpu", load_config=cfg.load_config, finetune_images=cfg.finetune_images,
                              finetune_batch=cfg.finetune_batch, finetune_epochs=cfg.finetune_epochs,
                              eval_stride=cfg.eval_stride, eval_elevations=cfg.eval_elevations, seed=cfg.seed)
    sizes = ecfg.sizes()
    p = E.load_trained_pipeline(cfg.load_config)
    draws = make_draws(p)
    check_sets(cfg.sets, draws)
    eval_set = E.build_eval_set(p, ecfg, sizes)
    results: dict[str, dict[str, float]] = {}
    for name in cfg.sets:
        t = time.time()
        critic = copy.deepcopy(p.critic)
        torch.manual_seed(cfg.seed + 1000)
        info: dict[str, Any] = {}
        if name != "pretrained":
            with torch.no_grad():
                batches, info = E.draw_finetune_set(p, draws[name], cfg.finetune_images, cfg.finetune_batch, ecfg.finetune,
                                                    seed=cfg.seed + 100)
            finetune_critic(critic, batches * cfg.finetune_epochs, ecfg.finetune, source=p.source_sampler(), seed=cfg.seed)
        o = E.evaluate_critic_on(critic, eval_set)["overall"]
        results[name] = {"mpjpe_mm": o["mpjpe_mm"], "pa_mpjpe_mm": o["pa_mpjpe_mm"], "pck150": o["pck150"],
                         "finetune_set_error_mm": info.get("mean_error_mm", float("nan")), "seconds": time.time() - t}
        r = results[name]
        print(f"{name:22s} MPJPE {r['mpjpe_mm']:6.1f}  PA-MPJPE {r['pa_mpjpe_mm']:6.1f}  PCK@150 {100 * r['pck150']:5.1f} %  "
              f"pre-trained critic on the set {r['finetune_set_error_mm']:6.1f} mm  ({r['seconds']:.0f} s)", flush=True)
    if cfg.json is not None:
        write_json(cfg.json, {"config": str(cfg), "results": results}, indent=1)  # atomic (posegen_ns.atomic_io)
    return results


if __name__ == "__main__":
    main(tyro.cli(AblationConfig))
