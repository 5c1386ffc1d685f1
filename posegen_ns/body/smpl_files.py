"""SMPL-layout model files: chumpy-free reading of the official ``.pkl``, validation, ``.npz`` writing.

Every body source in posegen-ns (official SMPL, the open default body, the tiny test body) ends up
as one ``.npz`` in SMPL's file layout that ``smplx.SMPL`` loads unchanged:

==================  ====================  ==============================================
key                 shape                 meaning
==================  ====================  ==============================================
``v_template``      ``(V, 3)``            rest (T-pose) vertices, metres, y-up
``f``               ``(F, 3)``            triangle vertex indices
``weights``         ``(V, 24)``           LBS skinning weights, rows sum to 1
``J_regressor``     ``(24, V)``           SMPL-24 joint regressor
``kintree_table``   ``(2, 24)``           row 0 parents (root's parent is any value)
``shapedirs``       ``(V, 3, S)``         shape blend shapes, S >= 1
``posedirs``        ``(V, 3, 207)``       pose-corrective blend shapes (may be zeros)
==================  ====================  ==============================================

Optional extras that posegen-ns reads when present: ``J_regressor_h36m (17, V)``, texture data
``vt (T, 2)``, ``ft (F, 3)``, ``texture (H, W, 3) uint8``.

The official SMPL ``.pkl`` files hold ``chumpy`` arrays; chumpy does not import on Python 3.11 /
numpy 2, so :func:`read_smpl_pickle` unpickles them with stand-in classes that keep the array data.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from posegen_ns.atomic_io import check_npz, read_cache, save_npz
from posegen_ns.errors import PoseGenInputError

SMPL_DOWNLOAD_HINT = (
    "Official SMPL files come from https://smpl.is.tue.mpg.de (register, then download "
    "'SMPL for Python', e.g. basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl); pass the file's path. "
    "Without one, use the open default body ('open') or the tiny test body ('tiny')."
)

REQUIRED_KEYS = ("v_template", "f", "weights", "J_regressor", "kintree_table", "shapedirs", "posedirs")


def cache_dir() -> Path:
    """Where converted bodies and other derived files are cached: ``$POSEGEN_CACHE_DIR`` or
    ``~/.cache/posegen-ns``."""
    root = Path(os.environ.get("POSEGEN_CACHE_DIR", Path.home() / ".cache" / "posegen-ns"))
    root.mkdir(parents=True, exist_ok=True)
    return root


class _ChumpyStandIn:
    """Replaces any chumpy class while unpickling; keeps the numpy data it wrapped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_numpy(self) -> np.ndarray:
        state = self.state
        if isinstance(state, dict):
            for key in ("x", "r", "a"):
                if key in state and isinstance(state[key], np.ndarray):
                    return state[key]
            for value in state.values():
                if isinstance(value, np.ndarray):
                    return value
        raise TypeError("chumpy object without array data")


class _ChumpyFreeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("chumpy"):
            return _ChumpyStandIn
        return super().find_class(module, name)


def _to_plain(value: Any) -> Any:
    if isinstance(value, _ChumpyStandIn):
        return np.asarray(value.to_numpy())
    if "scipy.sparse" in str(type(value)):
        return np.asarray(value.todense())
    return value


def read_smpl_pickle(path: Path) -> dict[str, Any]:
    """Read an official SMPL ``.pkl`` without chumpy.

    Args:
        path: the ``.pkl`` file (Python-2 pickles are read with ``encoding='latin1'``).

    Returns:
        The model dictionary with chumpy arrays and scipy sparse matrices turned into dense numpy.

    Raises:
        PoseGenInputError: the file is missing or is not a pickle of a dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise PoseGenInputError(f"SMPL model file {path} does not exist. {SMPL_DOWNLOAD_HINT}")
    try:
        data = _ChumpyFreeUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise PoseGenInputError(f"SMPL model file {path} is not a readable pickle ({exc}). {SMPL_DOWNLOAD_HINT}") from exc
    if not isinstance(data, dict):
        raise PoseGenInputError(f"SMPL model file {path} holds a {type(data).__name__}, not a dict of model arrays.")
    return {k: _to_plain(v) for k, v in data.items()}


def validate_smpl_dict(data: dict[str, Any], source: Path | str) -> dict[str, np.ndarray]:
    """Check an SMPL-layout dictionary's keys and shapes; return its arrays as numpy.

    Raises:
        PoseGenInputError: naming ``source``, the key that is missing or mis-shaped, and the fix.
    """
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise PoseGenInputError(
            f"SMPL model file {source} lacks the field(s) {missing}; an SMPL-layout file needs "
            f"{list(REQUIRED_KEYS)}. {SMPL_DOWNLOAD_HINT}"
        )
    out = {k: np.asarray(_to_plain(v)) for k, v in data.items() if not isinstance(v, (str, bytes))}
    V = out["v_template"].shape[0]
    expect = {
        "v_template": (V, 3),
        "weights": (V, 24),
        "J_regressor": (24, V),
    }
    for key, shape in expect.items():
        if out[key].shape != shape:
            raise PoseGenInputError(f"SMPL model file {source}: field '{key}' has shape {out[key].shape}, expected {shape}.")
    if out["f"].ndim != 2 or out["f"].shape[1] != 3 or out["f"].max() >= V:
        raise PoseGenInputError(f"SMPL model file {source}: field 'f' must be (F, 3) indices below V={V}.")
    if out["shapedirs"].shape[:2] != (V, 3) or out["posedirs"].shape != (V, 3, 207):
        raise PoseGenInputError(
            f"SMPL model file {source}: 'shapedirs' must be (V, 3, S) and 'posedirs' (V, 3, 207); got "
            f"{out['shapedirs'].shape} and {out['posedirs'].shape}."
        )
    if out["kintree_table"].shape != (2, 24):
        raise PoseGenInputError(f"SMPL model file {source}: 'kintree_table' must be (2, 24).")
    if "J_regressor_h36m" in out and out["J_regressor_h36m"].shape != (17, V):
        raise PoseGenInputError(f"SMPL model file {source}: 'J_regressor_h36m' must be (17, {V}).")
    for key in ("v_template", "weights", "shapedirs", "J_regressor"):
        if not np.isfinite(out[key]).all():
            raise PoseGenInputError(f"SMPL model file {source}: field '{key}' contains NaN or inf.")
    return out


def write_smpl_npz(data: dict[str, np.ndarray], path: Path) -> Path:
    """Write an SMPL-layout dictionary to ``path`` atomically (compressed; :func:`posegen_ns.atomic_io.save_npz`)."""
    return save_npz(path, data, compressed=True)


def to_smpl_npz(path: Path | str) -> Path:
    """Return an ``.npz`` that ``smplx.SMPL`` can load for the model file at ``path``.

    ``.npz`` files are validated and returned as they are; ``.pkl`` files are read without chumpy,
    validated and converted once into the cache (keyed by the file's content hash).

    Raises:
        PoseGenInputError: missing file, unknown extension, or an invalid SMPL layout.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(f"SMPL model file {path} does not exist. {SMPL_DOWNLOAD_HINT}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=True) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:  # noqa: BLE001
            raise PoseGenInputError(f"SMPL model file {path} is not a readable .npz ({exc}).") from exc
        validate_smpl_dict(data, path)
        return path
    if path.suffix != ".pkl":
        raise PoseGenInputError(f"SMPL model file {path}: expected a .pkl or .npz file. {SMPL_DOWNLOAD_HINT}")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "smpl" / f"{path.stem}-{digest}.npz"
    if read_cache(out, check_npz, "converted SMPL model"):  # a damaged conversion is redone
        return out
    data = validate_smpl_dict(read_smpl_pickle(path), path)
    return write_smpl_npz(data, out)
