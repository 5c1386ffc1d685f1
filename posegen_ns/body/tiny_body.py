"""A tiny generated body in SMPL's file layout, for fast tests (a few hundred vertices).

Each SMPL joint gets a 1 cm cube centred on it (so the SMPL-24 regressor is an exact average of 8
vertices) and each bone a box from the joint towards its child, rigidly skinned to the joint. Two
shape coefficients: ``betas[0]`` scales the body about the pelvis by 10 % per unit, ``betas[1]``
widens it along x by 10 % per unit. No pose correctives (``posedirs`` are zero).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from posegen_ns.atomic_io import check_npz, read_cache
from posegen_ns.body.smpl_files import cache_dir, write_smpl_npz

# Rest T-pose joints in metres; y-up, the body faces +z, its left side is +x (SMPL convention).
TINY_REST_JOINTS = np.array(
    [
        [0.00, 0.00, 0.00], [0.09, -0.08, 0.00], [-0.09, -0.08, 0.00], [0.00, 0.11, 0.00],
        [0.10, -0.48, 0.00], [-0.10, -0.48, 0.00], [0.00, 0.24, 0.00], [0.10, -0.88, -0.03],
        [-0.10, -0.88, -0.03], [0.00, 0.30, 0.00], [0.10, -0.94, 0.10], [-0.10, -0.94, 0.10],
        [0.00, 0.50, 0.00], [0.07, 0.42, 0.00], [-0.07, 0.42, 0.00], [0.00, 0.58, 0.00],
        [0.17, 0.44, 0.00], [-0.17, 0.44, 0.00], [0.43, 0.44, 0.00], [-0.43, 0.44, 0.00],
        [0.68, 0.44, 0.00], [-0.68, 0.44, 0.00], [0.76, 0.44, 0.00], [-0.76, 0.44, 0.00],
    ],
    dtype=np.float64,
)

# extra segment for leaf joints: (joint, end offset)
_LEAF_TIPS = {15: (0.0, 0.20, 0.02), 22: (0.07, 0.0, 0.0), 23: (-0.07, 0.0, 0.0), 10: (0.0, -0.02, 0.06), 11: (0.0, -0.02, 0.06)}
_CUBE_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_CUBE_FACES = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
)


def _box(a: np.ndarray, b: np.ndarray, half_width: float) -> np.ndarray:
    """8 corners of a box around segment a->b (inflated at both ends by half_width)."""
    d = b - a
    length = np.linalg.norm(d)
    axis = d / max(length, 1e-9)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    corners = []
    for s in (0, 1):
        centre = a + d * s
        for su in (-1, 1):
            for sv in (-1, 1):
                corners.append(centre + half_width * (su * u + sv * v))
    # reorder to the cube corner convention (x <- along axis)
    return np.array(corners)


def build_tiny_body() -> dict[str, np.ndarray]:
    """Return the tiny body as an SMPL-layout dictionary (see :mod:`posegen_ns.body.smpl_files`)."""
    verts, faces, owner = [], [], []

    def add(corners: np.ndarray, joint: int) -> None:
        base = sum(len(v) for v in verts)
        verts.append(corners)
        faces.append(_CUBE_FACES + base)
        owner.extend([joint] * 8)

    for j in range(24):  # joint cubes first: vertices 8j .. 8j+7 belong to joint j
        add(TINY_REST_JOINTS[j] + 0.01 * _CUBE_CORNERS, j)
    for j in range(24):
        children = [c for c in range(24) if SMPL_PARENTS[c] == j]
        ends = [TINY_REST_JOINTS[c] for c in children]
        if j in _LEAF_TIPS:
            ends.append(TINY_REST_JOINTS[j] + np.array(_LEAF_TIPS[j]))
        for end in ends:
            width = 0.07 if j in (0, 3, 6, 9) else 0.04
            add(_box(TINY_REST_JOINTS[j], end, width), j)
    v = np.concatenate(verts)
    f = np.concatenate(faces).astype(np.int64)
    V = len(v)
    weights = np.zeros((V, 24))
    weights[np.arange(V), owner] = 1.0
    J_reg = np.zeros((24, V))
    for j in range(24):
        J_reg[j, 8 * j : 8 * j + 8] = 1.0 / 8
    idx = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    h36m_from = {
        "pelvis": ["pelvis"], "spine": ["spine2"], "thorax": ["neck"], "neck_nose": ["neck", "head"],
        "head_top": ["head", "head", "head"],  # refined below
    }
    J_h36m = np.zeros((17, V))
    for k, name in enumerate(H36M_JOINT_NAMES):
        srcs = h36m_from.get(name, [name])
        for s in srcs:
            J_h36m[k] += J_reg[idx[s]] / len(srcs)
    # head top: the head box's far end (last 4 corners of the head segment box)
    head_box_start = None
    cursor = 24 * 8
    for j in range(24):
        n_ends = sum(1 for c in range(24) if SMPL_PARENTS[c] == j) + (1 if j in _LEAF_TIPS else 0)
        if j == 15:
            head_box_start = cursor
        cursor += 8 * n_ends
    J_h36m[H36M_JOINT_NAMES.index("head_top")] = 0.0
    J_h36m[H36M_JOINT_NAMES.index("head_top"), head_box_start + 4 : head_box_start + 8] = 0.25
    shapedirs = np.zeros((V, 3, 2))
    shapedirs[:, :, 0] = 0.1 * v
    shapedirs[:, 0, 1] = 0.1 * v[:, 0]
    kintree = np.array([list(SMPL_PARENTS), list(range(24))], dtype=np.int64)
    kintree[0, 0] = 4294967295  # as in the official files
    return {
        "v_template": v.astype(np.float64),
        "f": f,
        "weights": weights,
        "J_regressor": J_reg,
        "kintree_table": kintree,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((V, 3, 207)),
        "J_regressor_h36m": J_h36m,
    }


def tiny_body_path() -> Path:
    """Path of the cached tiny body ``.npz`` (written on first call)."""
    path = cache_dir() / "tiny_body_v2.npz"
    if not read_cache(path, check_npz, "tiny body"):  # missing or damaged: (re)built
        write_smpl_npz(build_tiny_body(), path)
    return path
