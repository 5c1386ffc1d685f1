"""scripts/finetune_ablation.py: each fine-tuning set draws what its name says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from posegen_ns.sampler import CameraRanges, PoseCameraSample

HARD_CAMERA = torch.tensor([3.0, 0.5, 3.5, 0.2, 1.1])


class FakePipeline:
    """What make_draws uses of a PoseGenPipeline: prior samples are rows of a pose bank with uniform cameras;
    'hard' samples are bank rows + 1 rad on every joint with a fixed camera; the critic's error on a sample is
    its first pose component, and the last scored batch is kept."""

    def __init__(self):
        self.prior_body_pose = torch.randn(50, 69, generator=torch.Generator().manual_seed(0))
        self.ranges = CameraRanges()
        self.scored: PoseCameraSample | None = None

    def draw(self, n: int, hard: bool, noise: torch.Generator) -> PoseCameraSample:
        pose = self.prior_body_pose[torch.randint(50, (n,), generator=noise)]
        camera = self.ranges.sample_uniform(n, noise)
        if hard:
            return PoseCameraSample(pose + 1.0, torch.zeros(n, 3), HARD_CAMERA.expand(n, 5).clone())
        return PoseCameraSample(pose, torch.zeros(n, 3), camera)

    def render_and_score(self, sample: PoseCameraSample):
        self.scored = sample
        return SimpleNamespace(error=sample.body_pose[:, 0].clone())


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    path = Path(__file__).resolve().parents[1] / "scripts" / "finetune_ablation.py"
    spec = importlib.util.spec_from_file_location("finetune_ablation", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["finetune_ablation"] = mod  # dataclasses resolve annotations through it
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules["finetune_ablation"]
    return mod


def test_sets_draw_what_their_names_say(ablation):
    p = FakePipeline()
    draws = ablation.make_draws(p)
    assert {"random-prior", "ours", "hardcam", "hardpose-unicam", "mined-prior", "mined-ours", "ours-mix", "hardcam-mix",
            "hardpose-unicam-mix", "mined-prior-mix", "mined-ours-mix"} == set(draws)
    bank = p.prior_body_pose

    def in_bank(pose):
        return [bool(((bank - x).abs().amax(-1) < 1e-6).any()) for x in pose]

    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    hardcam, unicam = draws["hardcam"](4, g()), draws["hardpose-unicam"](4, g())
    assert in_bank(hardcam.body_pose) == [True] * 4 and torch.equal(hardcam.camera, HARD_CAMERA.expand(4, 5))
    assert in_bank(unicam.body_pose) == [False] * 4 and in_bank(unicam.body_pose - 1.0) == [True] * 4
    assert not (unicam.camera == HARD_CAMERA).all(-1).any()
    lo, hi = p.ranges.bounds()[:, 0], p.ranges.bounds()[:, 1]
    assert bool(((unicam.camera >= lo) & (unicam.camera <= hi)).all())
    # mixes: the first half from the named set, the second half prior samples
    mixed = draws["ours-mix"](6, g())
    assert in_bank(mixed.body_pose) == [False] * 3 + [True] * 3
    # mining: the n samples of 3n candidates with the largest critic error, hardest first
    mined = draws["mined-prior"](4, g())
    cand = p.scored
    assert cand.body_pose.shape == (12, 69)
    top = cand.body_pose[:, 0].topk(4).indices
    torch.testing.assert_close(mined.body_pose, cand.body_pose[top])
    torch.testing.assert_close(mined.camera, cand.camera[top])
    assert float(mined.body_pose[:, 0].min()) >= float(cand.body_pose[:, 0].sort(descending=True).values[3])


def test_unknown_set_is_refused_by_name(ablation, tmp_path):
    with pytest.raises(SystemExit, match="unknown \\['bogus'\\]"):
        ablation.check_sets(("pretrained", "bogus"), ablation.make_draws(FakePipeline()))
