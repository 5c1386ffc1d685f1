"""posegen_ns.metrics against hand-computed cases and an independent (scipy) Procrustes."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch
from scipy.spatial.transform import Rotation

from posegen_ns.metrics import auc, mpjpe, pa_mpjpe, pck, procrustes_align, root_joint


def _random_joints(B: int = 4, J: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(B, J, 3, generator=g, dtype=torch.float64)


def test_mpjpe_known_offset():
    gt = _random_joints()
    offset = torch.tensor([0.03, 0.04, 0.0], dtype=torch.float64)  # 50 mm
    # A global offset vanishes after root alignment but not without it.
    assert torch.allclose(mpjpe(gt + offset, gt), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(mpjpe(gt + offset, gt, root=None), torch.full((4,), 0.05, dtype=torch.float64))
    # Offsetting every joint but the root: 16 of 17 joints are 50 mm off.
    pred = gt.clone()
    pred[:, 1:] += offset
    assert torch.allclose(mpjpe(pred, gt), torch.full((4,), 0.05 * 16 / 17, dtype=torch.float64))


def test_mpjpe_lsp_midhip_root():
    gt = _random_joints(J=14)
    pred = gt.clone()
    pred[:, 2] += torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)  # left hip moves 100 mm
    # mid-hip root moves 50 mm: the left hip is 50 mm off, the other 13 joints 50 mm off too
    assert torch.allclose(mpjpe(pred, gt, root="midhip_lsp"), torch.full((4,), 0.05, dtype=torch.float64))
    assert torch.allclose(root_joint(gt, "midhip_lsp")[:, 0], 0.5 * (gt[:, 2] + gt[:, 3]))
    with pytest.raises(ValueError, match="unknown root"):
        mpjpe(pred, gt, root="neck")


def test_pa_mpjpe_zero_for_similar_copy():
    gt = _random_joints()
    R = roma.random_rotmat(4, dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 1.7, 3.0], dtype=torch.float64)
    t = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)
    pred = scale[:, None, None] * torch.einsum("bij,bnj->bni", R, gt) + t
    assert pa_mpjpe(pred, gt).max() < 1e-9
    assert mpjpe(pred, gt).min() > 0.05  # ...while plain MPJPE sees the difference


def test_pa_mpjpe_reflection_is_not_allowed():
    # Anisotropic cross (a, b, c) = (3, 2, 1) mirrored in x. By hand (Umeyama with det fix): the best
    # proper rotation is pi about y, scale s = (a^2 + b^2 - c^2) / (a^2 + b^2 + c^2) = 6/7, errors
    # a(1-s), b(1-s), c(1+s) on the three pairs -> mean 6/7.
    a, b, c = 3.0, 2.0, 1.0
    gt = torch.tensor([[a, 0, 0], [-a, 0, 0], [0, b, 0], [0, -b, 0], [0, 0, c], [0, 0, -c]], dtype=torch.float64)[None]
    pred = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert pa_mpjpe(pred, gt).item() == pytest.approx(6 / 7, abs=1e-9)


def test_pa_mpjpe_matches_scipy_kabsch():
    pred, gt = _random_joints(seed=1), _random_joints(seed=2)
    ours = pa_mpjpe(pred, gt)
    for i in range(pred.shape[0]):
        x = pred[i].numpy() - pred[i].numpy().mean(0)
        y = gt[i].numpy() - gt[i].numpy().mean(0)
        rot, _ = Rotation.align_vectors(y, x)  # proper rotation minimising sum |y - R x|^2
        rx = rot.apply(x)
        s = (y * rx).sum() / (x * x).sum()
        ref = np.linalg.norm(y - s * rx, axis=-1).mean()
        assert ours[i].item() == pytest.approx(ref, rel=1e-7)


def test_pa_mpjpe_differentiable():
    pred = _random_joints(seed=3).float().requires_grad_(True)
    gt = _random_joints(seed=4).float()
    pa_mpjpe(pred, gt).sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert procrustes_align(pred, gt).shape == pred.shape


def test_pck_and_auc_hand_case():
    gt = torch.zeros(1, 4, 3)
    pred = torch.tensor([[[0.0, 0, 0], [0.051, 0, 0], [0.101, 0, 0], [0.2, 0, 0]]])
    # errors 0, 51, 101, 200 mm
    assert pck(pred, gt, root=None).item() == pytest.approx(3 / 4)
    assert pck(pred, gt, threshold=0.06, root=None).item() == pytest.approx(2 / 4)
    # thresholds 0, 5, ..., 150 mm (31): 31, 20, 10 and 0 of them pass for the four joints
    assert auc(pred, gt, root=None).item() == pytest.approx(61 / 124)
    assert auc(pred, gt, thresholds=[0.1, 0.2], root=None).item() == pytest.approx((2 + 4) / 8)
    # root alignment at joint 0 changes nothing here (its error is 0)
    assert pck(pred, gt).item() == pytest.approx(3 / 4)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must both be"):
        mpjpe(torch.zeros(2, 17, 3), torch.zeros(2, 14, 3))


def test_circular_spread_by_hand():
    """Two views at +-(pi - 0.1) are 0.2 rad apart around the back: circular mean pi, spread
    sqrt(-2 ln cos 0.1); the plain std of the same numbers would be about 3.0. Evenly spread angles
    have R = 0 (std capped by the 1e-12 floor, i.e. large); one angle has std 0."""
    import math

    from posegen_ns.metrics import circular_spread

    std, mean = circular_spread(torch.tensor([math.pi - 0.1, -(math.pi - 0.1)]))
    assert abs(abs(mean) - math.pi) < 1e-9 and std == pytest.approx(math.sqrt(-2 * math.log(math.cos(0.1))), rel=1e-6)
    std, mean = circular_spread(torch.tensor([0.3, 0.3, 0.3]))
    assert std == pytest.approx(0.0, abs=1e-6) and mean == pytest.approx(0.3)
    std, _ = circular_spread(torch.linspace(-math.pi, math.pi, 9)[:-1])
    assert std > 5.0  # R ~ 1e-8 from float32 rounding
    with pytest.raises(ValueError, match="no angles"):
        circular_spread(torch.zeros(0))
