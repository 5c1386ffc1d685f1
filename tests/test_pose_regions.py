"""The learned choice of prior frames (posegen_ns.sampler.regions): clustering, the region probabilities by hand,
draws that follow them, and the running error statistics."""

from __future__ import annotations

import math

import pytest
import torch

from posegen_ns.sampler.regions import PoseRegions, kmeans, pose_features


def test_kmeans_finds_separated_blobs_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    c1, a1 = kmeans(x, 3, seed=1)
    c2, a2 = kmeans(x, 3, seed=1)
    assert torch.equal(a1, a2)
    # each true blob is exactly one cluster, and the centres are the blob means
    for b in range(3):
        labels = a1[50 * b : 50 * (b + 1)]
        assert (labels == labels[0]).all()
        assert torch.allclose(c1[labels[0]], x[50 * b : 50 * (b + 1)].mean(0), atol=1e-5)
    assert len(set(a1.tolist())) == 3
    with pytest.raises(ValueError, match="k <= number of points"):
        kmeans(x[:2], 3)


def test_upright_and_lying_bodies_fall_into_different_regions_whatever_their_yaw():
    n = 40
    pose = torch.zeros(n, 69)
    yaw = torch.linspace(-math.pi, math.pi, n)
    upright = torch.stack([torch.zeros(n), yaw, torch.zeros(n)], -1)  # turned about the vertical
    lying = torch.tensor([math.pi / 2, 0.0, 0.0]).expand(n, 3)  # rotated 90 deg about x
    feats = pose_features(torch.cat([pose, pose]), torch.cat([upright, lying]))
    # yaw leaves the up axis alone: all upright bodies share one feature vector
    assert torch.allclose(feats[:n], feats[:1].expand(n, -1), atol=1e-5)
    r = PoseRegions(torch.cat([pose, pose]), torch.cat([upright, lying]), num_regions=2)
    assert len(set(r.region_of[:n].tolist())) == 1 and len(set(r.region_of[n:].tolist())) == 1
    assert r.region_of[0] != r.region_of[n]


def _two_regions(errors, temperature=0.5, mix=0.2, shrink=0.0) -> PoseRegions:
    pose = torch.zeros(20, 69)
    orient = torch.cat([torch.zeros(10, 3), torch.tensor([math.pi / 2, 0.0, 0.0]).expand(10, 3)])
    r = PoseRegions(pose, orient, num_regions=2, temperature=temperature, uniform_mix=mix, shrink_count=shrink)
    r.region_error.copy_(torch.tensor(errors))
    return r


def test_region_probabilities_by_hand():
    # errors 0.1, 0.3 m: relative 0.5, 1.5; squared (temperature 0.5): 0.25, 2.25 -> 0.1, 0.9; 80 % of that + 10 % each
    r = _two_regions([0.1, 0.3])
    assert torch.allclose(r.probabilities(), torch.tensor([0.18, 0.82]), atol=1e-6)
    # a region not yet scored counts as average: relative 1 and 1 -> uniform
    r = _two_regions([float("nan"), 0.3])
    assert torch.allclose(r.probabilities(), torch.tensor([0.5, 0.5]), atol=1e-6)
    # nothing scored: uniform
    assert torch.allclose(_two_regions([float("nan")] * 2).probabilities(), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="temperature"):
        _two_regions([0.1, 0.2], temperature=0.0)


def test_a_region_scored_few_times_is_shrunk_towards_the_mean_by_hand():
    r = _two_regions([0.1, 0.5], shrink=8.0)
    a, b = int(r.region_of[0]), int(r.region_of[10])
    r.region_count[a], r.region_count[b] = 24.0, 1.0
    # mean 0.3; a: (24 * 0.1 + 8 * 0.3) / 32 = 0.15; b: (1 * 0.5 + 8 * 0.3) / 9 = 0.32222
    assert torch.allclose(r.shrunk_error()[[a, b]], torch.tensor([0.15, 2.9 / 9]), atol=1e-6)
    # choice on the shrunk errors: mean 0.23611; relative 0.63529, 1.36471; squared 0.40359, 1.86243 -> 0.17811, 0.82189
    mean = (0.15 + 2.9 / 9) / 2
    w = torch.tensor([(0.15 / mean) ** 2, (2.9 / 9 / mean) ** 2])
    expected = 0.8 * w / w.sum() + 0.1
    assert torch.allclose(r.probabilities()[[a, b]], expected, atol=1e-6)
    # without shrinkage the once-scored region dominates more: relative 1/3, 5/3 -> 1/26, 25/26
    assert float(_two_regions([0.1, 0.5]).probabilities()[b]) == pytest.approx(0.8 * 25 / 26 + 0.1, abs=1e-6)
    # the hardness reference uses the shrunk error too; an unscored region stays NaN (then the fallback)
    assert float(r.reference(torch.tensor([10]), 0.0)) == pytest.approx(2.9 / 9, abs=1e-6)
    with pytest.raises(ValueError, match="shrink_count"):
        _two_regions([0.1, 0.2], shrink=-1.0)


def test_draws_follow_the_region_probabilities_and_stay_in_their_region():
    r = _two_regions([0.1, 0.3])
    idx = r.sample_indices(20000, torch.Generator().manual_seed(0))
    hard_region = int(r.region_of[10])
    frac = float((r.region_of[idx] == hard_region).float().mean())
    assert frac == pytest.approx(0.82, abs=0.015)
    # within a region every frame is drawn (uniformly)
    counts = torch.bincount(idx, minlength=20).float()
    members = r.region_of == hard_region
    assert (counts[members] > 0).all() and counts[members].std() / counts[members].mean() < 0.1
    # one region: uniform over all frames
    one = PoseRegions(torch.zeros(5, 69), torch.zeros(5, 3), num_regions=1)
    assert set(one.sample_indices(200, torch.Generator().manual_seed(0)).tolist()) == set(range(5))


def test_running_error_is_a_mean_then_an_exponential_average():
    r = _two_regions([float("nan")] * 2)
    r.window = 2
    j = int(r.region_of[0])
    r.update(torch.tensor([0, 1]), torch.tensor([0.2, 0.4]))  # mean of the first two: 0.3
    assert float(r.region_error[j]) == pytest.approx(0.3)
    r.update(torch.tensor([2]), torch.tensor([0.5]))  # rate max(1/3, 1/2) = 1/2: 0.3 + 0.5 * 0.2 = 0.4
    assert float(r.region_error[j]) == pytest.approx(0.4)
    r.update(torch.tensor([3]), torch.tensor([float("nan")]))  # ignored
    assert float(r.region_count[j]) == 3 and math.isnan(float(r.region_error[1 - j]))


def test_reference_is_the_region_error_with_a_fallback():
    r = _two_regions([0.1, float("nan")])
    frames = torch.tensor([0, 15])  # one frame of each region
    ref = r.reference(frames, fallback=0.25)
    expected = torch.where(r.region_of[frames] == int(r.region_of[0]), torch.tensor(0.1), torch.tensor(0.25))
    assert torch.allclose(ref, expected)
