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
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from posegen_ns.errors import PoseGenInputError

DATA_FILES: tuple[str, ...] = ("smpl_model_path", "smpl_mean_params", "j_regressor_h36m", "h36m_mean_beta")
"""The data-file keywords of ``load_critic(name, checkpoint=PATH, **data_files)``, the same for every critic;
each loader accepts all of them and ignores those it does not use:

- ``smpl_model_path``: the body the critic predicts with: a ``BodyModel``, ``"open"``, ``"tiny"`` or an SMPL
  file (``.pkl`` / ``.npz``). ``body`` is accepted as an alias.
- ``smpl_mean_params``: SPIN's ``smpl_mean_params.npz`` (HMR/SPIN's initial pose, shape and camera).
- ``j_regressor_h36m``: SPIN's ``J_regressor_h36m.npy`` (H36M-17 joints of official SMPL files).
- ``h36m_mean_beta``: HybrIK's ``h36m_mean_beta.npy``.
"""

BODY_ALIAS = "body"
"""Alias of ``smpl_model_path`` accepted by every loader."""


def critic_options(critic: str, given: Mapping[str, Any], options: Sequence[str] = ()) -> dict[str, Any]:
    """The keywords of one critic loader: ``given`` checked against :data:`DATA_FILES`, the loader's own
    ``options`` and the alias ``body`` (folded into ``smpl_model_path``).

    Returns:
        Every name of :data:`DATA_FILES` and ``options``, ``None`` where not given.

    Raises:
        PoseGenInputError: an unknown keyword, or ``body`` and ``smpl_model_path`` both given and different.
    """
    known = (*DATA_FILES, *options)
    unknown = sorted(set(given) - set(known) - {BODY_ALIAS})
    if unknown:
        raise PoseGenInputError(
            f"load_critic({critic!r}): unknown options {unknown}; accepted: {list(known)} (and {BODY_ALIAS!r}, "
            "an alias of 'smpl_model_path')."
        )
    out = {k: given.get(k) for k in known}
    alias = given.get(BODY_ALIAS)
    if alias is not None:
        if out["smpl_model_path"] is not None and out["smpl_model_path"] is not alias and str(out["smpl_model_path"]) != str(alias):
            raise PoseGenInputError(
                f"load_critic({critic!r}): smpl_model_path={out['smpl_model_path']!r} and its alias body={alias!r} disagree; pass one."
            )
        out["smpl_model_path"] = alias
    return out


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
