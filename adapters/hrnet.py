"""HRNet backbone in the parameter layout of HybrIK's ``preact`` (``HRNetSMPLCam``).

HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human Pose Estimation",
CVPR 2019) keeps a stride-4 branch through the network and adds 1/8, 1/16, 1/32 branches stage by
stage, fusing all of them after every module. HybrIK (github.com/Jeff-sjtu/HybrIK,
``hybrik/models/layers/hrnet/hrnet.py`` with ``w48.yaml``) uses it with two heads:

- ``final_layer``: a 1x1 conv of the stride-4 branch to ``num_joints * depth_dim`` channels
  (the 3D heatmap logits; 29 x 64 for HybrIK);
- a classification-style head (``incre_modules`` / ``downsamp_modules`` / ``final_feat_layer``,
  from the HRNet ImageNet model) that pools all branches into a 2048-d feature vector.

Module and parameter names follow that layout exactly (a ``None`` entry of a ``ModuleList`` keeps
its index, so e.g. ``transition2`` has only index 2), so HybrIK's checkpoints load with strict key
matching under the ``preact.`` prefix. The configuration of W48 (``w48.yaml``): stage 2/3/4 with
1/4/3 modules of 2/3/4 branches, 4 BasicBlocks per branch, branch widths ``w * (1, 2, 4, 8)``.
``width`` is a parameter so tests can build a narrow network with the same key names.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

BN_MOMENTUM = 0.1
HEAD_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)
"""Bottleneck widths of ``incre_modules`` (x4 after expansion), as in HRNet's classification head."""
FEATURE_DIM = 2048
"""Width of the pooled feature that ``final_feat_layer`` produces."""
STAGES: tuple[tuple[int, int], ...] = ((1, 2), (4, 3), (3, 4))
"""(modules, branches) of stages 2, 3 and 4 (``w48.yaml``); every branch has 4 BasicBlocks."""
BLOCKS_PER_BRANCH = 4


def _bn(c: int, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=momentum)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (``conv1/bn1/conv2/bn2[/downsample]``)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) with a residual (``conv1..3/bn1..3[/downsample]``)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _layer(block: type[BasicBlock] | type[Bottleneck], cin: int, planes: int, n: int) -> nn.Sequential:
    """``n`` blocks; the first gets a 1x1 conv + BN shortcut when the width changes."""
    cout = planes * block.expansion
    down = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))
    return nn.Sequential(block(cin, planes, 1, down), *[block(cout, planes) for _ in range(n - 1)])


def _conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool, bn_momentum: float = BN_MOMENTUM) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), _bn(cout, bn_momentum)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """One HRNet module: per-branch BasicBlocks (``branches.b.k``), then every output branch ``i``
    sums all input branches ``j`` (``fuse_layers.i.j``): 1x1 conv + BN + nearest upsampling for
    ``j > i``, a chain of stride-2 3x3 convs for ``j < i``, the branch itself for ``j == i``."""

    def __init__(self, channels: list[int]):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList([_layer(BasicBlock, c, c, BLOCKS_PER_BRANCH) for c in channels])
        fuse: list[nn.Module] = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(
                        nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False),
                        nn.BatchNorm2d(channels[i]),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    ))
                elif j == i:
                    row.append(None)
                else:  # i - j stride-2 convs; only the last changes the width (and has no ReLU)
                    steps = [
                        nn.Sequential(nn.Conv2d(channels[j], channels[j], 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(channels[j]), nn.ReLU(inplace=True))
                        for _ in range(i - j - 1)
                    ]
                    steps.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 3, 2, 1, bias=False),
                                               nn.BatchNorm2d(channels[i])))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse) if n > 1 else None

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j != i:
                    y = y + layer(xs[j])
            out.append(F.relu(y))
        return out


class HRNet(nn.Module):
    """HybrIK's HRNet (``PoseHighResolutionNet`` with ``generate_feat=True, generate_hm=True``).

    Args:
        width: channels of the stride-4 branch (48 for HRNet-W48); branches ``width * (1, 2, 4, 8)``.
        heatmap_channels: output channels of ``final_layer`` (``num_joints * depth_dim``, 29 * 64).

    ``forward(x (B, 3, S, S))`` -> ``(heatmap logits (B, heatmap_channels, S/4, S/4), features (B, 2048))``.
    S must be a multiple of 32.
    """

    def __init__(self, width: int = 48, heatmap_channels: int = 29 * 64):
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _layer(Bottleneck, 64, 64, 4)  # -> 256 channels
        pre = [256]
        for s, (modules, branches) in enumerate(STAGES, start=2):
            cur = [width * 2 ** b for b in range(branches)]
            setattr(self, f"transition{s - 1}", self._transition(pre, cur))
            setattr(self, f"stage{s}", nn.Sequential(*[HighResolutionModule(cur) for _ in range(modules)]))
            pre = cur
        self.incre_modules = nn.ModuleList(
            [_layer(Bottleneck, c, h, 1) for c, h in zip(pre, HEAD_CHANNELS)]
        )
        self.downsamp_modules = nn.ModuleList([
            nn.Sequential(nn.Conv2d(HEAD_CHANNELS[i] * 4, HEAD_CHANNELS[i + 1] * 4, 3, 2, 1),
                          _bn(HEAD_CHANNELS[i + 1] * 4), nn.ReLU(inplace=True))
            for i in range(len(HEAD_CHANNELS) - 1)
        ])
        self.final_feat_layer = nn.Sequential(
            nn.Conv2d(HEAD_CHANNELS[-1] * 4, FEATURE_DIM, 1, 1, 0), _bn(FEATURE_DIM), nn.ReLU(inplace=True)
        )
        self.final_layer = nn.Conv2d(width, heatmap_channels, 1, 1, 0)

    @staticmethod
    def _transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
        """Existing branches: a 3x3 conv if the width changes, else ``None``; each new branch: a
        chain of stride-2 3x3 convs from the lowest-resolution previous branch."""
        layers: list[nn.Module | None] = []
        for i, c in enumerate(cur):
            if i < len(pre):
                layers.append(None if c == pre[i] else _conv_bn(pre[i], c, 3, 1, True))
            else:
                steps = [_conv_bn(pre[-1], c if k == i - len(pre) else pre[-1], 3, 2, True)
                         for k in range(i + 1 - len(pre))]
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(self.relu(self.bn2(self.conv2(x))))
        ys = [x]
        for s in range(2, 5):
            transition = getattr(self, f"transition{s - 1}")
            xs = [
                (ys[i] if i < len(ys) else ys[-1]) if t is None else t(ys[i] if i < len(ys) else ys[-1])
                for i, t in enumerate(transition)
            ]
            ys = getattr(self, f"stage{s}")(xs)
        heatmaps = self.final_layer(ys[0])
        y = self.incre_modules[0](ys[0])
        for i, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](ys[i + 1]) + down(y)
        feat = self.final_feat_layer(y).mean(dim=(2, 3))  # global average pool -> (B, 2048)
        return heatmaps, feat
