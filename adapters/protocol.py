"""The critic protocol: what PoseGen needs from a 3D pose estimator.

A critic maps images of a person and a box around them to 3D joints. PoseGen's feedback loss
back-propagates the critic's error into the rendered image, so differentiable critics keep the
graph from ``images`` to the output; black-box critics set ``differentiable = False``.

Conventions of every critic's output: metres, the camera frame of the input image (OpenCV axes:
x right, y down, z forward), root-relative (the pelvis of the joint set at the origin; for LSP-14
the hip mid-point).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Critic(nn.Module, ABC):
    """Abstract 3D pose estimator used as PoseGen's critic.

    Attributes (set by subclasses):
        joint_set: ``"h36m17"``, ``"lsp14"`` or ``"smpl24"`` (see ``posegen_ns.body.JOINT_SETS``).
        input_size: side in pixels of the square crop the network sees.
        differentiable: whether ``forward`` is differentiable w.r.t. ``images``.
    """

    joint_set: str = "h36m17"
    input_size: int = 224
    differentiable: bool = True

    @abstractmethod
    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        """Predict root-relative 3D joints.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1].
            boxes: ``(B, 4)`` person boxes ``(x0, y0, x1, y1)`` in pixels of ``images``
                (see :mod:`adapters.crop` for the pixel convention).

        Returns:
            ``(B, J, 3)`` joints of :attr:`joint_set`, metres, camera frame, root at the origin.
        """

    def train_mode(self) -> "Critic":
        """Training mode for fine-tuning: dropout etc. active, every BatchNorm layer in eval mode
        (running statistics frozen and used), as SPIN/HMR fine-tuning on small batches needs."""
        self.train()
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def eval_mode(self) -> "Critic":
        """Inference mode (``nn.Module.eval``)."""
        self.eval()
        return self
