"""The source / prior / eval split of the CMU clips, and the shipped pose bank that serves it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from posegen_ns.data import splits
from posegen_ns.data.pose_bank import load_shipped_pose_bank, read_pose_bank_file, shipped_pose_bank_path
from posegen_ns.data.splits import (
    ALL_CLIPS, CLIP_CATEGORIES, EVAL_CLIPS, PRIOR_CLIPS, SOURCE_CLIPS, check_disjoint, clips_of, split_of,
)
from posegen_ns.errors import PoseGenInputError
from posegen_ns.mocap import shipped_clips_dir

SHARED_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mocap" / "manifest.csv"
SOURCE_CATEGORIES = {"walk_run", "sit_getup", "bend_pickup"}


def _manifest_stems(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {Path(r["file"]).stem: r["category"] for r in csv.DictReader(fh) if r.get("file")}


def test_sets_are_disjoint_and_cover_every_clip_once():
    check_disjoint()
    s, p, e = set(SOURCE_CLIPS), set(PRIOR_CLIPS), set(EVAL_CLIPS)
    assert not (s & p) and not (s & e) and not (p & e)
    assert len(SOURCE_CLIPS) == len(s) and len(PRIOR_CLIPS) == len(p) and len(EVAL_CLIPS) == len(e)
    assert s | p | e == set(ALL_CLIPS) and len(ALL_CLIPS) == 35
    for clip in ALL_CLIPS:
        assert [clip in s, clip in p, clip in e].count(True) == 1
        assert clips_of(split_of(clip)).count(clip) == 1


def test_eval_clips_are_unseen_and_unlike_the_source():
    assert {"02_04_jump_balance_ccrig", "10_03_soccer_kick"} <= set(EVAL_CLIPS)
    for clip in EVAL_CLIPS:
        assert clip not in SOURCE_CLIPS and clip not in PRIOR_CLIPS
        assert split_of(clip) == "eval"
        assert CLIP_CATEGORIES[clip] not in SOURCE_CATEGORIES
    assert {CLIP_CATEGORIES[c] for c in SOURCE_CLIPS} == SOURCE_CATEGORIES


def test_every_manifest_clip_is_in_exactly_one_set():
    manifests = [shipped_clips_dir() / "manifest.csv"] + ([SHARED_MANIFEST] if SHARED_MANIFEST.is_file() else [])
    for m in manifests:
        for stem, category in _manifest_stems(m).items():
            assert split_of(stem) in splits.SPLITS, stem
            assert CLIP_CATEGORIES[stem] == category, (m, stem)
    if SHARED_MANIFEST.is_file():
        assert set(_manifest_stems(SHARED_MANIFEST)) == set(ALL_CLIPS)
    for bvh in shipped_clips_dir().glob("*.bvh"):
        assert split_of(bvh) == split_of(bvh.stem)  # paths and file names work too


def test_split_of_unknown_and_overlap_raise(monkeypatch):
    with pytest.raises(PoseGenInputError, match="none of the source"):
        split_of("99_99_not_a_clip")
    with pytest.raises(PoseGenInputError, match="unknown split"):
        clips_of("train")
    monkeypatch.setattr(splits, "PRIOR_CLIPS", splits.PRIOR_CLIPS + (EVAL_CLIPS[0],))
    with pytest.raises(PoseGenInputError, match="both prior and eval"):
        splits.check_disjoint()


def test_shipped_bank_is_finite_and_holds_every_split():
    path = shipped_pose_bank_path()
    assert path.is_file() and path.stat().st_size < 2_000_000
    bank = load_shipped_pose_bank()
    assert set(bank.clips) == set(ALL_CLIPS)
    assert bank.body_pose.shape == (len(bank), 69) and bank.global_orient.shape == (len(bank), 3)
    assert bank.body_pose.dtype == torch.float32
    for t in (bank.body_pose, bank.global_orient, bank.transl):
        assert torch.isfinite(t).all()
    assert bank.body_pose.abs().max() < 2 * np.pi
    for name, cat in zip(bank.clip_names[::97], bank.categories[::97]):
        assert CLIP_CATEGORIES[name] == cat
    for split in splits.SPLITS:
        part = load_shipped_pose_bank(split=split)
        assert set(part.clips) == set(clips_of(split)) and len(part) > 0
        assert all(split_of(c) == split for c in part.clip_names)
    assert not set(load_shipped_pose_bank(split="prior").clips) & set(EVAL_CLIPS)


def test_select_clips_by_name_keeps_order_and_frames():
    bank = load_shipped_pose_bank(clips=["10_03_soccer_kick.bvh", "07_05_slow_walk"])
    assert bank.clips == ["10_03_soccer_kick", "07_05_slow_walk"]
    kick = bank.frame_ids[: bank.clip_names.count("10_03_soccer_kick")]
    assert int(kick[0]) > 0  # the manifest's synthetic T-pose frame 0 is not in the bank
    assert torch.all(kick[1:] > kick[:-1])
    both = load_shipped_pose_bank(clips=["10_03_soccer_kick", "07_05_slow_walk"], split="source")
    assert both.clips == ["07_05_slow_walk"]
    with pytest.raises(PoseGenInputError, match="has no clips"):
        load_shipped_pose_bank(clips=["nope"])


def test_bad_bank_files_are_named(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(PoseGenInputError, match="missing.npz"):
        load_shipped_pose_bank(path=missing)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PoseGenInputError, match="junk.npz"):
        read_pose_bank_file(junk)
    d = dict(read_pose_bank_file(shipped_pose_bank_path()))
    d["body_pose"] = d["body_pose"].copy()
    d["body_pose"][0, 0] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, **d)
    with pytest.raises(PoseGenInputError, match="nan.npz.*body_pose"):
        load_shipped_pose_bank(path=bad)
    d["body_pose"][0, 0] = 0
    d["format_version"] = np.array(99)
    np.savez(bad, **d)
    with pytest.raises(PoseGenInputError, match="format_version"):
        read_pose_bank_file(bad)


def test_bank_motions_cap_and_spread_frames_per_clip():
    from posegen_ns.data.pose_bank import bank_motions, load_shipped_pose_bank

    bank = load_shipped_pose_bank(split="eval")
    motions = bank_motions(bank, max_frames=5)
    assert [m.name for m in motions] == bank.clips and all(len(m) == min(5, bank.clip_names.count(m.name)) for m in motions)
    for m in motions:
        frames = m.meta["frame_indices"]
        original = bank.frame_ids[[i for i, n in enumerate(bank.clip_names) if n == m.name]].tolist()
        assert frames[0] == original[0] and frames[-1] == original[-1]  # spread over the whole clip
        assert m.meta["category"] == bank.categories[bank.clip_names.index(m.name)]
