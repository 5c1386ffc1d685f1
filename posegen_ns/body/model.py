"""``BodyModel``: one SMPL body over ``smplx.SMPL`` for every body source.

Outputs vertices, SMPL-24 joints, H36M-17 and LSP-14 joints and the per-joint rigid transforms of
linear blend skinning (LBS), all differentiable in pose, shape and translation. The skinning maths
are smplx's (``smplx.lbs``: Loper et al., "SMPL", SIGGRAPH Asia 2015); this class only adds the
transforms to the output and the extra joint sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import contextlib
import io

import numpy as np
import smplx
import torch
from smplx.utils import Struct
from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints
from torch import Tensor, nn

from posegen_ns.body.joint_sets import H36M_TO_LSP14, NUM_BODY_POSE_JOINTS, NUM_SMPL_JOINTS
from posegen_ns.body.smpl_files import to_smpl_npz
from posegen_ns.errors import PoseGenInputError

# smplx selects extra landmark joints by vertex index tuned for SMPL's 6890-vertex mesh; bodies with
# another topology pass index 0 everywhere and posegen-ns never reads those extra joints.
_NO_EXTRA_VERTEX_IDS = {
    k: 0 for k in ("nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
                   "RSmallToe", "RHeel", "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb",
                   "rindex", "rmiddle", "rring", "rpinky")
}


@dataclass
class BodyOutput:
    """Posed body. B = batch, V = vertices; metres, world frame (y-up)."""

    vertices: Tensor  # (B, V, 3)
    joints: Tensor  # (B, 24, 3) SMPL-24
    joints_h36m: Tensor  # (B, 17, 3) H36M-17 (from the H36M regressor)
    joints_lsp: Tensor  # (B, 14, 3) LSP-14 (subset of H36M-17)
    transforms: Tensor  # (B, 24, 4, 4) LBS transforms: rest-pose point -> posed point, per joint
    rest_joints: Tensor  # (B, 24, 3) joints of the shaped rest pose


def check_finite(name: str, value: Tensor) -> None:
    """Raise :class:`PoseGenInputError` naming ``name`` if ``value`` holds NaN or inf."""
    if not torch.isfinite(value).all():
        bad = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(-1).nonzero().flatten().tolist()
        raise PoseGenInputError(f"{name} contains NaN or inf (batch rows {bad[:10]}); fix the pose source.")


class BodyModel(nn.Module):
    """SMPL body (24 joints, 23 in ``body_pose``) from any SMPL-layout file.

    Args:
        model_path: an SMPL-layout ``.npz`` or an official SMPL ``.pkl`` (read without chumpy).
        j_regressor_h36m: optional ``(17, V)`` H36M regressor file (``.npy``, e.g. SPIN's
            ``J_regressor_h36m.npy``); overrides one stored in the model file.
        num_betas: shape coefficients used (at most what the file holds).

    Raises:
        PoseGenInputError: missing or malformed files (names the file and field).
    """

    def __init__(self, model_path: Path | str, j_regressor_h36m: Path | str | None = None, num_betas: int = 10):
        super().__init__()
        self.model_path = Path(model_path)
        npz_path = to_smpl_npz(model_path)
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        extras = {k: arrays.pop(k) for k in ("J_regressor_h36m", "vt", "ft", "texture") if k in arrays}
        self.num_betas = min(num_betas, arrays["shapedirs"].shape[-1])
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning for < 300 betas
            self.smpl = smplx.SMPL(
                model_path=str(npz_path), data_struct=Struct(**arrays), num_betas=self.num_betas,
                vertex_ids=_NO_EXTRA_VERTEX_IDS,
                create_betas=False, create_body_pose=False, create_global_orient=False, create_transl=False,
            )
        V = self.smpl.v_template.shape[0]
        if j_regressor_h36m is not None:
            path = Path(j_regressor_h36m)
            if not path.is_file():
                raise PoseGenInputError(
                    f"H36M regressor {path} does not exist; SPIN's J_regressor_h36m.npy comes with SPIN's "
                    "data (github.com/nkolot/SPIN, fetch_data.sh)."
                )
            reg = np.load(path)
            if reg.shape != (17, V):
                raise PoseGenInputError(f"H36M regressor {path} has shape {reg.shape}; this body needs (17, {V}).")
            extras["J_regressor_h36m"] = reg
        if "J_regressor_h36m" not in extras:
            raise PoseGenInputError(
                f"SMPL model file {model_path} has no H36M-17 regressor; pass j_regressor_h36m=PATH "
                "(SPIN's J_regressor_h36m.npy, github.com/nkolot/SPIN fetch_data.sh)."
            )
        self.register_buffer("J_regressor_h36m", torch.as_tensor(np.asarray(extras["J_regressor_h36m"], dtype=np.float32)))
        self.has_pose_correctives = bool(self.smpl.posedirs.abs().max() > 0)
        self.texture_data = {k: np.asarray(v) for k, v in extras.items() if k in ("vt", "ft", "texture")}

    # ---- model data --------------------------------------------------------------------------
    @property
    def faces(self) -> Tensor:
        """``(F, 3)`` long triangle indices."""
        return self.smpl.faces_tensor

    @property
    def lbs_weights(self) -> Tensor:
        """``(V, 24)`` skinning weights."""
        return self.smpl.lbs_weights

    @property
    def parents(self) -> Tensor:
        """``(24,)`` parent indices (root -1)."""
        return self.smpl.parents

    @property
    def v_template(self) -> Tensor:
        """``(V, 3)`` rest-pose vertices, metres."""
        return self.smpl.v_template

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    @property
    def shapedirs(self) -> Tensor:
        """``(V, 3, num_betas)`` shape blend shapes, metres per unit beta."""
        return self.smpl.shapedirs

    @property
    def joint_regressor(self) -> Tensor:
        """``(24, V)`` SMPL-24 joint regressor (rest-pose joints from rest-pose vertices)."""
        return self.smpl.J_regressor

    # ---- shaped rest pose ---------------------------------------------------------------------
    def shaped_vertices(self, betas: Tensor) -> Tensor:
        """Rest-pose vertices ``(B, V, 3)`` (metres, body frame) for ``betas (B, num_betas)``:
        ``v_template + shapedirs @ betas`` (SMPL's shape blend shapes, before any pose)."""
        return self.smpl.v_template + blend_shapes(betas.to(self.smpl.v_template), self.smpl.shapedirs)

    def rest_joints(self, betas: Tensor) -> Tensor:
        """Shaped rest-pose SMPL-24 joints ``(B, 24, 3)`` (metres, body frame) for ``betas (B, num_betas)``.
        Joint 0 is the pelvis: with ``transl = 0`` it stays at ``rest_joints(betas)[:, 0]`` in every pose
        (the orbit centre of :func:`posegen_ns.labels.orbit_cameras`)."""
        return vertices2joints(self.smpl.J_regressor, self.shaped_vertices(betas))

    def rest_joint_basis(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The rest joints as a linear function of betas: ``(J_template (24, 3), J_dirs (24, 3, num_betas))``
        with ``rest_joints(betas) = J_template + J_dirs @ betas`` (``J_regressor`` applied to
        ``v_template`` and to ``shapedirs``), computed in ``dtype`` (default the body's)."""
        dt = dtype or self.smpl.v_template.dtype
        reg = self.smpl.J_regressor.to(dt)
        return reg @ self.smpl.v_template.to(dt), torch.einsum("jv,vcb->jcb", reg, self.smpl.shapedirs.to(dt))

    # ---- forward -----------------------------------------------------------------------------
    def forward(
        self,
        body_pose: Tensor,
        global_orient: Tensor | None = None,
        betas: Tensor | None = None,
        transl: Tensor | None = None,
    ) -> BodyOutput:
        """Pose the body.

        Args:
            body_pose: ``(B, 69)`` or ``(B, 23, 3)`` axis-angle radians, or ``(B, 23, 3, 3)`` rotation
                matrices; joints 1..23 relative to their parents.
            global_orient: ``(B, 3)`` axis-angle or ``(B, 3, 3)`` (default identity).
            betas: ``(B, num_betas)`` shape coefficients (default zeros).
            transl: ``(B, 3)`` metres added to every output point (default zero).

        Raises:
            PoseGenInputError: wrong shapes, or NaN/inf in any argument.
        """
        B = body_pose.shape[0]
        dev, dt = self.smpl.v_template.device, self.smpl.v_template.dtype
        body_rot = self._to_rotmats(body_pose, NUM_BODY_POSE_JOINTS, "body_pose")
        if global_orient is None:
            root_rot = torch.eye(3, device=dev, dtype=dt).expand(B, 1, 3, 3)
        else:
            root_rot = self._to_rotmats(global_orient, 1, "global_orient")
        if betas is None:
            betas = torch.zeros(B, self.num_betas, device=dev, dtype=dt)
        if betas.shape != (B, self.num_betas):
            raise PoseGenInputError(f"betas has shape {tuple(betas.shape)}; expected ({B}, {self.num_betas}).")
        check_finite("betas", betas)
        if transl is not None:
            if transl.shape != (B, 3):
                raise PoseGenInputError(f"transl has shape {tuple(transl.shape)}; expected ({B}, 3).")
            check_finite("transl", transl)
        rot_mats = torch.cat([root_rot, body_rot], dim=1)  # (B, 24, 3, 3)

        smpl = self.smpl
        v_shaped = self.shaped_vertices(betas)
        rest_joints = vertices2joints(smpl.J_regressor, v_shaped)
        if self.has_pose_correctives:
            ident = torch.eye(3, dtype=dt, device=dev)
            pose_feature = (rot_mats[:, 1:] - ident).reshape(B, -1)
            v_posed = v_shaped + torch.matmul(pose_feature, smpl.posedirs).view(B, -1, 3)
        else:  # bodies without pose correctives (open, tiny): skip a (B, 207) x (207, 3V) product
            v_posed = v_shaped.expand(B, -1, -1)
        joints, A = batch_rigid_transform(rot_mats, rest_joints, smpl.parents, dtype=dt)
        T = torch.einsum("vj,bjkl->bvkl", smpl.lbs_weights, A)
        v_h = torch.nn.functional.pad(v_posed, (0, 1), value=1.0)
        verts = torch.einsum("bvkl,bvl->bvk", T, v_h)[..., :3]
        if transl is not None:
            verts = verts + transl[:, None]
            joints = joints + transl[:, None]
            A = A.clone()
            A[:, :, :3, 3] = A[:, :, :3, 3] + transl[:, None]
        joints_h36m = vertices2joints(self.J_regressor_h36m, verts)
        return BodyOutput(
            vertices=verts,
            joints=joints,
            joints_h36m=joints_h36m,
            joints_lsp=joints_h36m[:, list(H36M_TO_LSP14)],
            transforms=A,
            rest_joints=rest_joints,
        )

    @staticmethod
    def _to_rotmats(pose: Tensor, num_joints: int, name: str) -> Tensor:
        B = pose.shape[0]
        if pose.shape[1:] in ((num_joints * 3,), (num_joints, 3)):
            check_finite(name, pose)
            return batch_rodrigues(pose.reshape(-1, 3)).view(B, num_joints, 3, 3)
        if pose.shape[1:] == (num_joints, 3, 3) or (num_joints == 1 and pose.shape[1:] == (3, 3)):
            check_finite(name, pose)
            return pose.reshape(B, num_joints, 3, 3)
        raise PoseGenInputError(
            f"{name} has shape {tuple(pose.shape)}; expected (B, {num_joints * 3}), (B, {num_joints}, 3) "
            f"axis-angle or (B, {num_joints}, 3, 3) rotation matrices."
        )
