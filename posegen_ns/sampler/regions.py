"""A learned distribution over regions of the pose prior: which real poses the hard sampler augments.

The generator (:class:`~posegen_ns.sampler.generator.HardPoseGenerator`) moves a real pose by a bounded residual
(at most ``max_residual`` radians per joint) and picks a camera; it cannot reach a lying or inverted body from a
standing one. Which real poses it starts from therefore decides most of what the critic sees. PoseGen learns the
pose distribution itself; here the prior's frames are cut into ``R`` regions once (k-means, Lloyd 1982 with
k-means++ seeding, Arthur & Vassilvitskii 2007, on the body pose and the direction of the body's up axis, so
upright, lying and inverted bodies fall apart), the critic's error on prior samples of each region is tracked
during the sampler's training, and hard draws pick a region with probability

    p_r = (1 - uniform_mix) * h_r^(1 / temperature) / sum_s h_s^(1 / temperature) + uniform_mix / R,

``h_r`` the region's critic error over the mean of all regions' (regions not yet scored count as average),
then a frame of that region uniformly. A region's error is shrunk towards that mean by its sample count ``n_r``
(an empirical-Bayes estimate, ``e'_r = (n_r e_r + k m) / (n_r + k)`` with ``k = shrink_count`` pseudo-samples
at the mean ``m``): a small region scored once at an extreme error does not take a large share of the draws on
one noisy figure (measured: one 14-frame region of lying bodies, scored once at 500 mm, received 17 % of the
hard draws without it). The uniform share keeps every region in play (no collapse onto a few
poses; the per-region bandit of hardness-aware sampling, cf. PoseSyn's error extraction, which keeps the hardest
prior samples, and Shrivastava et al. CVPR 2016's online hard example mining). Error statistics are running
means that turn into an exponential average after ``window`` samples, so they follow a critic that is fine-tuned
between rounds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posegen_ns.geometry import axis_angle_to_matrix


def pose_features(body_pose: Tensor, global_orient: Tensor, up_weight: float = 3.0) -> Tensor:
    """Clustering features ``(N, 72)``: ``body_pose (N, 69)`` axis-angle radians, then the body's up axis in the
    world (the root rotation's y column of ``global_orient (N, 3)``, y-up world) times ``up_weight`` (yaw-invariant:
    a body turned about the vertical keeps its features, a lying one does not)."""
    up = axis_angle_to_matrix(global_orient)[..., :, 1]  # (N, 3)
    return torch.cat([body_pose, up_weight * up], -1)


def kmeans(x: Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[Tensor, Tensor]:
    """k-means with k-means++ seeding on ``x (N, D)``: returns ``(centres (k, D), assignment (N,) long)``.
    Deterministic for a seed; an emptied cluster is re-seeded at the point farthest from its centre.

    Raises:
        ValueError: ``k < 1`` or fewer points than clusters.
    """
    n = x.shape[0]
    if k < 1 or n < k:
        raise ValueError(f"kmeans: need 1 <= k <= number of points (k={k}, points={n})")
    g = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(-1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        centres.append(x[torch.multinomial(probs, 1, generator=g)].squeeze(0))
        d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(-1))
    c = torch.stack(centres)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(x, c)  # (N, k)
        new = dist.argmin(-1)
        for j in range(k):
            members = new == j
            if members.any():
                c[j] = x[members].mean(0)
            else:  # re-seed at the worst-served point
                far = int(dist.min(-1).values.argmax())
                c[j], new[far] = x[far], j
        if torch.equal(new, assign):
            break
        assign = new
    return c, assign


class PoseRegions(nn.Module):
    """Regions of a pose prior and the critic's running error in each (module docstring).

    Args:
        body_pose: ``(N, 69)`` the prior's body poses, axis-angle radians.
        global_orient: ``(N, 3)`` their root orientations, axis-angle radians, world frame (y-up).
        num_regions: ``R``; 0 or 1 switches the learned choice off (every draw uniform over the frames).
        temperature: sharpness of the choice (``h_r^(1 / temperature)``; smaller = harder regions more often).
        uniform_mix: share of draws spread uniformly over the regions (in [0, 1]).
        window: samples after which a region's running mean becomes an exponential average of rate
            ``1 / window``.
        seed: seed of the clustering.
        shrink_count: ``k``, pseudo-samples at the mean error that each region's error is shrunk with (0: none).

    Buffers (saved in checkpoints): ``region_of (N,)`` long, ``region_error (R,)`` metres (NaN: not yet scored),
    ``region_count (R,)`` samples scored.

    Raises:
        ValueError: a temperature that is not positive, ``uniform_mix`` outside [0, 1] or a negative
            ``shrink_count``.
    """

    def __init__(self, body_pose: Tensor, global_orient: Tensor, num_regions: int = 16, temperature: float = 0.5,
                 uniform_mix: float = 0.3, window: int = 50, seed: int = 0, shrink_count: float = 8.0):
        super().__init__()
        if temperature <= 0 or not 0.0 <= uniform_mix <= 1.0 or shrink_count < 0:
            raise ValueError(f"PoseRegions: temperature must be > 0, uniform_mix in [0, 1] and shrink_count >= 0 "
                             f"(got {temperature}, {uniform_mix}, {shrink_count})")
        self.shrink_count = float(shrink_count)
        n = body_pose.shape[0]
        r = max(1, min(int(num_regions), n))
        if r > 1:
            _, assign = kmeans(pose_features(body_pose.cpu(), global_orient.cpu()), r, seed=seed)
        else:
            assign = torch.zeros(n, dtype=torch.long)
        self.temperature, self.uniform_mix, self.window = float(temperature), float(uniform_mix), int(window)
        self.register_buffer("region_of", assign.to(body_pose.device))
        self.register_buffer("region_error", torch.full((r,), float("nan"), device=body_pose.device))
        self.register_buffer("region_count", torch.zeros(r, device=body_pose.device))

    @property
    def num_regions(self) -> int:
        return int(self.region_error.shape[0])

    def sizes(self) -> Tensor:
        """``(R,)`` frames per region."""
        return torch.bincount(self.region_of, minlength=self.num_regions)

    def shrunk_error(self) -> Tensor:
        """``(R,)`` each region's running error (metres) shrunk towards the mean of the scored regions by its sample
        count, ``(n_r e_r + k m) / (n_r + k)`` (module docstring); NaN where a region is not scored yet."""
        err, n = self.region_error, self.region_count
        scored = torch.isfinite(err)
        if not bool(scored.any()) or self.shrink_count == 0:
            return err.clone()
        mean = err[scored].mean()
        k = self.shrink_count
        return torch.where(scored, (n * torch.nan_to_num(err) + k * mean) / (n + k).clamp_min(1e-9), err)

    def probabilities(self) -> Tensor:
        """``(R,)`` the probability of drawing each region (module docstring); uniform before any region is scored."""
        err = self.shrunk_error()
        scored = torch.isfinite(err)
        r = self.num_regions
        if r == 1 or not bool(scored.any()):
            return torch.full((r,), 1.0 / r, device=err.device)
        mean = err[scored].mean()
        rel = torch.where(scored, err, mean) / mean.clamp_min(1e-9)
        w = rel.clamp_min(1e-6) ** (1.0 / self.temperature)
        return (1.0 - self.uniform_mix) * w / w.sum() + self.uniform_mix / r

    def sample_indices(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``(num,)`` long frame indices into the prior (on the buffers' device): a region by
        :meth:`probabilities`, then a frame of it uniformly. With one region: uniform over all frames."""
        n = self.region_of.shape[0]
        if self.num_regions == 1:
            return torch.randint(n, (num,), generator=generator).to(self.region_of.device)
        regions = torch.multinomial(self.probabilities().cpu(), num, replacement=True, generator=generator)
        region_of = self.region_of.cpu()
        u = torch.rand(num, generator=generator)
        out = torch.empty(num, dtype=torch.long)
        for j in regions.unique().tolist():
            members = torch.nonzero(region_of == j).squeeze(1)
            at = regions == j
            out[at] = members[(u[at] * members.numel()).long().clamp_max(members.numel() - 1)]
        return out.to(self.region_of.device)

    def reference(self, frame_index: Tensor, fallback: Tensor | float) -> Tensor:
        """``(B,)`` the running error (metres, shrunk: :meth:`shrunk_error`) of the region of each prior frame in ``frame_index (B,)``, the
        reference of that sample's hardness (the generator makes a pose harder than its region is on average, the
        choice of region does the rest); ``fallback`` (e.g. the mean over the whole prior) where a region is not
        scored yet."""
        ref = self.shrunk_error()[self.region_of[frame_index.to(self.region_of.device)]]
        fb = torch.as_tensor(fallback, dtype=ref.dtype, device=ref.device).expand_as(ref)
        return torch.where(torch.isfinite(ref), ref, fb).detach()

    @torch.no_grad()
    def update(self, frame_index: Tensor, error: Tensor) -> None:
        """Add the critic's errors ``error (B,)`` (metres; NaN ignored) of samples of prior frames
        ``frame_index (B,)`` to their regions' running statistics."""
        regions = self.region_of[frame_index.to(self.region_of.device)]
        error = error.detach().to(self.region_error.device)
        for j in regions.unique().tolist():
            e = error[(regions == j)]
            e = e[torch.isfinite(e)]
            if e.numel() == 0:
                continue
            for v in e:
                c = float(self.region_count[j]) + 1.0
                rate = max(1.0 / c, 1.0 / self.window)
                old = self.region_error[j]
                self.region_error[j] = v if not bool(torch.isfinite(old)) else old + rate * (v - old)
                self.region_count[j] = c

    def report(self) -> dict[str, list]:
        """``{"frames", "mpjpe_mm", "shrunk_mpjpe_mm", "scored", "probability"}`` per region (lists of length R)."""
        return {"frames": self.sizes().tolist(), "mpjpe_mm": (self.region_error * 1000).tolist(),
                "shrunk_mpjpe_mm": (self.shrunk_error() * 1000).tolist(),
                "scored": self.region_count.tolist(), "probability": self.probabilities().tolist()}
