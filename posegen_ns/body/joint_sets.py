"""Joint sets used across posegen-ns: SMPL-24, H36M-17 and LSP-14 (one definition each).

Orders:
- SMPL-24 follows the SMPL kinematic tree (Loper et al. 2015, smplx's ``JOINT_NAMES[:24]``).
- H36M-17 follows the order of SPIN's ``J_regressor_h36m.npy`` (nkolot/SPIN, the Human3.6M
  17-joint protocol) as SPIN, HybrIK and VIBE name it: pelvis, *left* leg (1-3), *right* leg (4-6),
  spine, thorax, neck/nose, head top, left arm, right arm. (Human3.6M's own files label joints 1-3
  "right"; SPIN's ``H36M_TO_J14`` and HybrIK's ``joints_name_17`` read them as the subject's left, and
  that is the convention of every critic and benchmark file this project loads.)
- LSP-14 is taken from H36M-17 with SPIN's ``H36M_TO_J14`` indices, so PA-MPJPE on LSP-14 here is
  the number SPIN's and HybrIK's evaluation scripts report.
"""

from __future__ import annotations

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
"""The 24 SMPL joints, in SMPL's order."""

SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)
"""Parent index of each SMPL joint (-1 for the root), SMPL's ``kintree_table[0]``."""

NUM_SMPL_JOINTS = 24
NUM_BODY_POSE_JOINTS = 23  # body_pose excludes the root (global_orient)

H36M_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "spine", "thorax", "neck_nose", "head_top", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
"""The 17 Human3.6M joints in the order of SPIN's ``J_regressor_h36m.npy`` (left leg first, see above)."""

H36M_PELVIS = 0

H36M_TO_LSP14: tuple[int, ...] = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
"""H36M-17 indices that give LSP-14 (SPIN's ``constants.H36M_TO_J14``)."""

LSP_JOINT_NAMES: tuple[str, ...] = tuple(H36M_JOINT_NAMES[i] for i in H36M_TO_LSP14)

JOINT_SETS: dict[str, tuple[str, ...]] = {
    "smpl24": SMPL_JOINT_NAMES,
    "h36m17": H36M_JOINT_NAMES,
    "lsp14": LSP_JOINT_NAMES,
}
"""Joint-set name -> joint names. Names used on the command line and in exported manifests."""

H36M_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
"""Parent of each H36M-17 joint (order of :data:`H36M_JOINT_NAMES`; -1 root):
legs hang from the pelvis, spine -> thorax -> neck/nose -> head top, arms from the thorax."""

LSP_PARENTS: tuple[int, ...] = (1, 2, 12, 12, 3, 4, 7, 8, 12, 12, 9, 10, -1, 12)
"""Parent of each LSP-14 joint (order of :data:`LSP_JOINT_NAMES`): LSP has
no pelvis, so both hips and both shoulders hang from the thorax (the torso's sides)."""

SKELETON_PARENTS: dict[str, tuple[int, ...]] = {"smpl24": SMPL_PARENTS, "h36m17": H36M_PARENTS, "lsp14": LSP_PARENTS}
"""Joint set -> parent index of each joint, for drawing bones (joint ``j`` to ``parents[j]``)."""

ROOT_INDEX: dict[str, int | None] = {"smpl24": 0, "h36m17": H36M_PELVIS, "lsp14": None}
"""Index of the pelvis in each joint set; LSP-14 has none (use the mid-hip, see metrics)."""

SMPL_TO_H36M_APPROX: dict[str, str] = {
    "pelvis": "pelvis", "right_hip": "right_hip", "right_knee": "right_knee",
    "right_ankle": "right_ankle", "left_hip": "left_hip", "left_knee": "left_knee",
    "left_ankle": "left_ankle", "left_shoulder": "left_shoulder", "left_elbow": "left_elbow",
    "left_wrist": "left_wrist", "right_shoulder": "right_shoulder", "right_elbow": "right_elbow",
    "right_wrist": "right_wrist",
}
"""H36M joints whose location coincides (approximately) with an SMPL joint of the same name."""
