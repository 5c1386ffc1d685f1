"""The paper's three disjoint sets of real motion, as data (clip names = file stems are the unit).

PoseGen (and PoseAug, PoseSyn) keep three sets of motion apart:

- :data:`SOURCE_CLIPS`: what the critic is pre-trained on, the stand-in for Human3.6M: everyday
  actions (walking, sitting down / getting up, bending over and picking up, standing and gesturing).
- :data:`PRIOR_CLIPS`: the broad pose bank the samplers draw from, the stand-in for AMASS: every
  other clip that is not held out for evaluation (walking and running too, as in AMASS, but never a
  source clip).
- :data:`EVAL_CLIPS`: motions no arm ever sees (not in the critic's source, not in any prior or
  fine-tuning set), one clip from each of seven categories unlike the source (jump, sports, dance,
  martial arts, acrobatics, floor, climbing). They include the two clips evaluated before this split
  existed (``02_04_jump_balance_ccrig``, ``10_03_soccer_kick``).

The clips are the 35 CMU clips of the project's mocap subset (``../shared/data/mocap``, manifest
categories in :data:`CLIP_CATEGORIES`); the package ships all of them fitted to the open body as a
pose bank (:mod:`posegen_ns.data.pose_bank`). :func:`check_disjoint` runs at import, so an edit that
lets a clip into two sets fails immediately.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from posegen_ns.errors import PoseGenInputError

__all__ = [
    "SPLITS", "SOURCE_CLIPS", "PRIOR_CLIPS", "EVAL_CLIPS", "ALL_CLIPS", "CLIP_CATEGORIES",
    "split_of", "clips_of", "check_disjoint",
]

SPLITS: tuple[str, ...] = ("source", "prior", "eval")
"""Names of the three sets, as :func:`split_of` returns them."""

CLIP_CATEGORIES: MappingProxyType = MappingProxyType({
    # walk_run
    "03_01_walk_uneven_terrain_ccrig": "walk_run",
    "07_05_slow_walk": "walk_run",
    "08_02_walk": "walk_run",
    "09_06_run": "walk_run",
    "09_11_run": "walk_run",
    "12_01_walk": "walk_run",
    "131_01_start_walk_stop": "walk_run",
    "131_02_start_walk_stop": "walk_run",
    # sit_getup / bend_pickup
    "111_10_seated_in_chair_start_trunc": "sit_getup",
    "02_06_bend_over_scoop_up_ccrig": "bend_pickup",
    "115_02_bend_from_waist_window_trunc": "bend_pickup",
    # jump
    "01_01_playground_forward_jumps": "jump",
    "02_04_jump_balance_ccrig": "jump",
    "131_03_start_hop_stop": "jump",
    "131_04_start_hop_stop": "jump",
    # dance
    "05_06_dance_cartwheel_pirouette": "dance",
    "55_01_dance_whirl": "dance",
    "60_01_salsa": "dance",
    "60_10_salsa": "dance",
    # martial_arts_boxing
    "02_05_punch_strike_ccrig": "martial_arts_boxing",
    "02_07_swordplay_ccrig": "martial_arts_boxing",
    # sports
    "10_01_soccer_kick": "sports",
    "10_03_soccer_kick": "sports",
    "11_01_soccer_kick": "sports",
    "64_12_golf_putt_address_trunc": "sports",
    # acrobatics
    "90_08_side_flip_window_trunc": "acrobatics",
    # floor_lying_crawl_roll
    "114_02_lying_on_floor_start_trunc": "floor_lying_crawl_roll",
    "140_03_lying_on_side_start_trunc": "floor_lying_crawl_roll",
    "90_34_wide_leg_roll_window_trunc": "floor_lying_crawl_roll",
    # climb_playground
    "01_03_playground_climb_hang_swing": "climb_playground",
    "01_08_playground_climb_sit_lower_to_ground_ccrig": "climb_playground",
    "01_14_playground_climb_jump_down_ccrig": "climb_playground",
    # stretch_exercise
    "13_29_jumping_jacks_twists_bend_squats": "stretch_exercise",
    "13_30_jumping_jacks_twists_squats_jog": "stretch_exercise",
    "13_31_jumping_jacks_twists_bend_jog": "stretch_exercise",
})
"""Manifest category of each of the 35 CMU clips (file stem -> category)."""

SOURCE_CLIPS: tuple[str, ...] = (
    "07_05_slow_walk",  # walk_run: slow walk
    "08_02_walk",  # walk_run: walk
    "12_01_walk",  # walk_run: walk
    "131_01_start_walk_stop",  # walk_run: stand, start walking, stop (standing and gesturing at the ends)
    "111_10_seated_in_chair_start_trunc",  # sit_getup: seated, starting to rise
    "02_06_bend_over_scoop_up_ccrig",  # bend_pickup: bend over, scoop up, rise, lift arm
    "115_02_bend_from_waist_window_trunc",  # bend_pickup: bent at the waist picking up a box
)
"""The critic's source (Human3.6M-like everyday actions)."""

EVAL_CLIPS: tuple[str, ...] = (
    "02_04_jump_balance_ccrig",  # jump
    "10_03_soccer_kick",  # sports
    "05_06_dance_cartwheel_pirouette",  # dance
    "02_05_punch_strike_ccrig",  # martial_arts_boxing
    "90_08_side_flip_window_trunc",  # acrobatics
    "90_34_wide_leg_roll_window_trunc",  # floor_lying_crawl_roll
    "01_14_playground_climb_jump_down_ccrig",  # climb_playground
)
"""Evaluation motions no arm ever sees (categories unlike the source)."""

PRIOR_CLIPS: tuple[str, ...] = tuple(
    c for c in CLIP_CATEGORIES if c not in SOURCE_CLIPS and c not in EVAL_CLIPS
)
"""The broad pose prior (AMASS-like): every clip neither in the source nor held out for evaluation."""

ALL_CLIPS: tuple[str, ...] = tuple(CLIP_CATEGORIES)
"""All 35 clips, manifest order."""


def _stem(clip: str | Path) -> str:
    name = Path(str(clip)).name
    return Path(name).stem if Path(name).suffix.lower() in (".bvh", ".npz") else name


def split_of(clip: str | Path) -> str:
    """Which set a clip belongs to: ``"source"``, ``"prior"`` or ``"eval"``.

    Args:
        clip: a clip name (file stem, ``"10_03_soccer_kick"``), a file name or a path to the clip.

    Raises:
        PoseGenInputError: the clip is not one of the 35 CMU clips of the split.
    """
    name = _stem(clip)
    for split, clips in zip(SPLITS, (SOURCE_CLIPS, PRIOR_CLIPS, EVAL_CLIPS)):
        if name in clips:
            return split
    raise PoseGenInputError(
        f"clip {name!r} (from {clip!r}) is in none of the source / prior / eval sets of "
        f"posegen_ns.data.splits; known clips: {', '.join(ALL_CLIPS)}."
    )


def clips_of(split: str) -> tuple[str, ...]:
    """The clip names of ``split`` (``"source"``, ``"prior"`` or ``"eval"``).

    Raises:
        PoseGenInputError: unknown split name.
    """
    table = {"source": SOURCE_CLIPS, "prior": PRIOR_CLIPS, "eval": EVAL_CLIPS}
    if split not in table:
        raise PoseGenInputError(f"unknown split {split!r}; expected one of {SPLITS}.")
    return table[split]


def check_disjoint() -> None:
    """Assert the three sets are disjoint, free of duplicates and together cover every clip exactly once.

    Raises:
        PoseGenInputError: naming each clip in two sets, duplicated, unknown or in no set.
    """
    problems: list[str] = []
    sets = {"source": SOURCE_CLIPS, "prior": PRIOR_CLIPS, "eval": EVAL_CLIPS}
    for name, clips in sets.items():
        dup = sorted({c for c in clips if clips.count(c) > 1})
        if dup:
            problems.append(f"{name} lists {dup} more than once")
        unknown = sorted(set(clips) - set(ALL_CLIPS))
        if unknown:
            problems.append(f"{name} lists clips without a category {unknown}")
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sorted(set(sets[a]) & set(sets[b]))
            if both:
                problems.append(f"{both} are in both {a} and {b}")
    missing = sorted(set(ALL_CLIPS) - set().union(*map(set, sets.values())))
    if missing:
        problems.append(f"{missing} are in no set")
    if problems:
        raise PoseGenInputError("posegen_ns.data.splits: the motion sets overlap or are incomplete: " + "; ".join(problems) + ".")


check_disjoint()
