"""Part-wise pose discriminator (as in PoseAug's part-aware discriminators and PoseGen's
part-wise discriminators): one small MLP per body part on 6D joint rotations plus one on the whole
body, each giving a realness logit; real = poses fitted to real mocap."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_rot6d

# SMPL joint indices per part (body_pose row = SMPL index - 1)
BODY_PARTS: dict[str, tuple[int, ...]] = {
    "torso": (3, 6, 9, 12, 13, 14, 15),
    "left_arm": (16, 18, 20),
    "right_arm": (17, 19, 21),
    "left_leg": (1, 4, 7),
    "right_leg": (2, 5, 8),
}


class PartDiscriminator(nn.Module):
    """Args: hidden width. Forward: ``body_pose (B, 69)`` axis-angle -> logits ``(B, P + 1)``
    (one per part in :data:`BODY_PARTS`, then the whole body)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.parts = nn.ModuleDict(
            {name: self._mlp(len(idx) * 6, hidden) for name, idx in BODY_PARTS.items()}
        )
        self.whole = self._mlp(23 * 6, hidden * 2)

    @staticmethod
    def _mlp(in_dim: int, hidden: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, body_pose: Tensor) -> Tensor:
        B = body_pose.shape[0]
        r6 = matrix_to_rot6d(axis_angle_to_matrix(body_pose.reshape(B, 23, 3)))  # (B, 23, 6)
        logits = [self.parts[name](r6[:, [j - 1 for j in idx]].reshape(B, -1)) for name, idx in BODY_PARTS.items()]
        logits.append(self.whole(r6.reshape(B, -1)))
        return torch.cat(logits, -1)
