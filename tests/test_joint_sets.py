"""Joint-set conventions: H36M-17 in SPIN's regressor order (left leg at 1-3), LSP-14 in LSP order."""

import pytest
import torch

from posegen_ns.body import load_body_model
from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, LSP_JOINT_NAMES, SMPL_JOINT_NAMES, SMPL_TO_H36M_APPROX


def test_lsp14_is_the_standard_lsp_order():
    assert LSP_JOINT_NAMES == (
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
        "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "thorax", "head_top",
    )
    assert H36M_JOINT_NAMES[1:4] == ("left_hip", "left_knee", "left_ankle")  # SPIN's / HybrIK's reading


@pytest.mark.parametrize("source", ["tiny", "open"])
def test_h36m_regressor_puts_each_joint_on_its_own_side(source):
    body = load_body_model(source)
    pose = torch.zeros(1, 69)
    pose[0, (SMPL_JOINT_NAMES.index("left_knee") - 1) * 3] = 1.2  # bend the left knee only
    out = body(pose, torch.zeros(1, 3))
    for smpl_name, h36m_name in SMPL_TO_H36M_APPROX.items():
        if smpl_name == "pelvis":  # H36M's pelvis may sit at the mid-hip, SMPL's ~9 cm higher
            continue
        j_smpl = out.joints[0, SMPL_JOINT_NAMES.index(smpl_name)]
        j_h36m = out.joints_h36m[0, H36M_JOINT_NAMES.index(h36m_name)]
        assert (j_smpl - j_h36m).norm() < 0.08, (smpl_name, (j_smpl - j_h36m).norm())
    # the subject's left is +x in SMPL's canonical frame
    assert out.joints_h36m[0, H36M_JOINT_NAMES.index("left_hip"), 0] > 0
    assert out.joints_h36m[0, H36M_JOINT_NAMES.index("right_wrist"), 0] < 0
