"""BVH rigs: joint-name maps to SMPL-24, rig detection and unit scale.

A :class:`Rig` names, for the SMPL-24 joints that have a good counterpart in that rig, the BVH joint
whose *position* (its origin after forward kinematics) lies at the same anatomical place, and a
weight for the fit (1 for limb joints, lower where the correspondence is loose, e.g. along the
spine, whose segmentation differs between rigs). SMPL joints without a counterpart are left out;
the fit keeps them near the rest pose with its prior.

Left and right are the *subject's* sides in every rig here (CMU "Left...", DAZ "l...", Character
Creator "L_"), as are SMPL's ``left_*`` joints (on +x in SMPL's canonical frame, where the body
faces +z). :func:`check_left_right` verifies this on the data itself.

Supported rigs (see the mocap data README):
- ``cmu31``: the CMU 31-joint skeleton with cgspeed's MotionBuilder names (Hips, LeftUpLeg, ...).
- ``cmu31_max``: the same tree with cgspeed's 3ds Max names (LeftHip, LeftKnee, ...; 131_* clips).
- ``daz``: the DAZ / Second Life rig (hip, abdomen, chest, lThigh, lShin, ...).
- ``cc``: Reallusion Character Creator (CC_Base_*).
Other code may add rigs to :data:`RIGS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posegen_ns.body.joint_sets import SMPL_JOINT_NAMES
from posegen_ns.errors import PoseGenInputError
from posegen_ns.mocap.bvh import BVHSkeleton

CMU_UNIT_M = 0.0254 / 0.45
"""Length of one CMU ASF unit in metres (ASF ``length 0.45``: 1 unit = 1/0.45 inch = 5.644 cm)."""

UNIT_SCALES: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "inch": 0.0254, "cmu": CMU_UNIT_M}
"""Candidate file units -> metres, for :func:`detect_unit_scale`."""

TYPICAL_LEG_LENGTH_M = 0.80
"""Typical adult hip-to-ankle chain length (thigh + shank), metres; used to pick the file unit."""


@dataclass(frozen=True)
class Rig:
    """A BVH rig's correspondence to SMPL-24.

    Attributes:
        name: short rig name.
        description: one line for messages.
        joint_map: SMPL joint name -> (BVH joint name, weight in the fit).
        units: candidate units (keys of :data:`UNIT_SCALES`) this rig is seen in; the skeleton
            size decides among them.
    """

    name: str
    description: str
    joint_map: dict[str, tuple[str, float]]
    units: tuple[str, ...] = field(default=tuple(UNIT_SCALES))

    @property
    def bvh_names(self) -> list[str]:
        return [b for b, _ in self.joint_map.values()]

    def smpl_indices(self) -> np.ndarray:
        """``(K,)`` SMPL-24 index of each mapped joint, in ``joint_map`` order."""
        return np.array([SMPL_JOINT_NAMES.index(s) for s in self.joint_map])

    def weights(self) -> np.ndarray:
        """``(K,)`` fit weight of each mapped joint."""
        return np.array([w for _, w in self.joint_map.values()], dtype=np.float64)

    def matches(self, skeleton: BVHSkeleton) -> bool:
        names = set(skeleton.names)
        return all(b in names for b in self.bvh_names)


def _sided(pairs: dict[str, tuple[str, float]]) -> dict[str, tuple[str, float]]:
    """Expand ``{"{s}_hip": ("{S}UpLeg", 1)}`` templates to left and right entries.

    ``{s}`` becomes ``left``/``right``; ``{S}`` ``Left``/``Right``; ``{c}`` ``l``/``r``; ``{C}`` ``L``/``R``.
    """
    out: dict[str, tuple[str, float]] = {}
    for smpl, (bvh, w) in pairs.items():
        if "{s}" not in smpl:
            out[smpl] = (bvh, w)
            continue
        for s, S, c, C in (("left", "Left", "l", "L"), ("right", "Right", "r", "R")):
            out[smpl.format(s=s)] = (bvh.format(S=S, c=c, C=C), w)
    return out


_SPINE_W = 0.5  # root/spine/neck joints: their placement differs between rigs
# The DAZ root ("hip") sits at the height of the hip joints and Character Creator's pelvis 3 cm above
# them, where SMPL's pelvis is ~9 cm above: neither is mapped; the hips place the body's pelvis.

RIGS: dict[str, Rig] = {
    "cmu31": Rig(
        "cmu31",
        "CMU 31-joint skeleton, cgspeed MotionBuilder names (Hips, LeftUpLeg, LeftLeg, Spine, Neck1, LeftArm, ...)",
        _sided({
            "pelvis": ("Hips", _SPINE_W),
            "{s}_hip": ("{S}UpLeg", 1.0), "{s}_knee": ("{S}Leg", 1.0), "{s}_ankle": ("{S}Foot", 1.0),
            "{s}_foot": ("{S}ToeBase", 0.5),
            "spine1": ("Spine", _SPINE_W), "neck": ("Neck1", _SPINE_W), "head": ("Head", _SPINE_W),
            "{s}_shoulder": ("{S}Arm", 1.0), "{s}_elbow": ("{S}ForeArm", 1.0), "{s}_wrist": ("{S}Hand", 1.0),
        }),
        units=("cmu", "cm", "m", "inch"),
    ),
    "cmu31_max": Rig(
        "cmu31_max",
        "CMU 31-joint skeleton, cgspeed 3ds Max names (Hips, LeftHip, LeftKnee, Chest, Neck, LeftShoulder, LeftElbow, ...)",
        _sided({
            "pelvis": ("Hips", _SPINE_W),
            "{s}_hip": ("{S}Hip", 1.0), "{s}_knee": ("{S}Knee", 1.0), "{s}_ankle": ("{S}Ankle", 1.0),
            "{s}_foot": ("{S}Toe", 0.5),
            "spine1": ("Chest", _SPINE_W), "neck": ("Neck", _SPINE_W), "head": ("Head", _SPINE_W),
            "{s}_shoulder": ("{S}Shoulder", 1.0), "{s}_elbow": ("{S}Elbow", 1.0), "{s}_wrist": ("{S}Wrist", 1.0),
        }),
        units=("cmu", "cm", "m", "inch"),
    ),
    "daz": Rig(
        "daz",
        "DAZ / Second Life rig (hip, abdomen, chest, neck, head, lThigh, lShin, lFoot, lShldr, lForeArm, lHand, ...)",
        _sided({
            "{s}_hip": ("{c}Thigh", 1.0), "{s}_knee": ("{c}Shin", 1.0), "{s}_ankle": ("{c}Foot", 1.0),
            "{s}_foot": ("{c}Foot_End", 0.25),
            "spine1": ("abdomen", _SPINE_W), "neck": ("neck", _SPINE_W), "head": ("head", _SPINE_W),
            "{s}_shoulder": ("{c}Shldr", 1.0), "{s}_elbow": ("{c}ForeArm", 1.0), "{s}_wrist": ("{c}Hand", 1.0),
        }),
        units=("cm", "m", "inch"),
    ),
    "cc": Rig(
        "cc",
        "Reallusion Character Creator rig (CC_Base_Hip, CC_Base_L_Thigh, CC_Base_L_Calf, CC_Base_L_Upperarm, ...)",
        _sided({
            "{s}_hip": ("CC_Base_{C}_Thigh", 1.0), "{s}_knee": ("CC_Base_{C}_Calf", 1.0),
            "{s}_ankle": ("CC_Base_{C}_Foot", 1.0), "{s}_foot": ("CC_Base_{C}_ToeBase", 0.5),
            "spine1": ("CC_Base_Spine01", _SPINE_W), "neck": ("CC_Base_NeckTwist01", _SPINE_W),
            "head": ("CC_Base_Head", _SPINE_W),
            "{s}_shoulder": ("CC_Base_{C}_Upperarm", 1.0), "{s}_elbow": ("CC_Base_{C}_Forearm", 1.0),
            "{s}_wrist": ("CC_Base_{C}_Hand", 1.0),
        }),
        units=("cm", "m", "inch"),
    ),
}
"""Rig name -> :class:`Rig`. Detection tries them in this order (first full match wins)."""


def detect_rig(skeleton: BVHSkeleton, path: str | Path = "<bvh>") -> Rig:
    """The first rig of :data:`RIGS` whose mapped joint names all occur in ``skeleton``.

    Raises:
        PoseGenInputError: no rig matches; the message names the file, the joints found and the
            supported rigs with the names each needs.
    """
    for rig in RIGS.values():
        if rig.matches(skeleton):
            return rig
    found = [n for n in skeleton.names if not n.endswith("_End")]
    shown = ", ".join(found[:40]) + (f", ... ({len(found)} joints)" if len(found) > 40 else "")
    supported = "; ".join(f"{r.name}: {r.description}" for r in RIGS.values())
    raise PoseGenInputError(
        f"BVH file {path}: unknown rig; no supported joint-name map matches its joints [{shown}]. "
        f"Supported rigs: {supported}. Rename the joints to one of these conventions or add a Rig to "
        "posegen_ns.mocap.rigs.RIGS."
    )


def chain_length(skeleton: BVHSkeleton, start: str, end: str) -> float:
    """Sum of rest offset lengths from joint ``end`` up to its ancestor ``start`` (file units).

    Bone lengths do not depend on the pose, so this is the same in every frame.

    Raises:
        PoseGenInputError: ``start`` is not an ancestor of ``end``.
    """
    j, stop = skeleton.index(end), skeleton.index(start)
    total = 0.0
    while j != stop:
        if j < 0:
            raise PoseGenInputError(f"joint {start!r} is not an ancestor of {end!r} in the BVH tree.")
        total += float(np.linalg.norm(skeleton.offsets[j]))
        j = int(skeleton.parents[j])
    return total


def detect_unit_scale(skeleton: BVHSkeleton, rig: Rig) -> tuple[float, str]:
    """Metres per file unit, chosen from the rig's candidate units by the leg length.

    The hip-to-ankle chain (mean of both legs) is compared with :data:`TYPICAL_LEG_LENGTH_M`; the
    candidate unit whose conversion lands closest (in log ratio) wins. The candidates differ by
    factors >= 2.2, so adult and teenage skeletons are classified correctly.

    Returns:
        ``(scale, unit_name)``.
    """
    jm = rig.joint_map
    legs = [chain_length(skeleton, jm[f"{s}_hip"][0], jm[f"{s}_ankle"][0]) for s in ("left", "right")]
    leg = float(np.mean(legs))
    if leg <= 0:
        raise PoseGenInputError("the BVH skeleton has zero-length legs; cannot infer its unit.")
    best = min(rig.units, key=lambda u: abs(np.log(leg * UNIT_SCALES[u] / TYPICAL_LEG_LENGTH_M)))
    return UNIT_SCALES[best], best


def check_left_right(targets: np.ndarray, rig: Rig, path: str | Path = "<bvh>") -> float:
    """Check that the rig's left joints are the subject's left side; return the agreement score.

    The facing direction ``(left_hip - right_hip) x (mid-shoulder - mid-hip)`` must agree with the direction
    the feet point (``foot - ankle``) for a right-handed body with correctly labelled sides; a
    mirrored file (swapped labels or a left-handed world) makes them disagree in every frame,
    whatever the pose.

    Args:
        targets: ``(T, K, 3)`` mapped joint positions in ``rig.joint_map`` order.

    Returns:
        The median cosine between the two directions over frames (positive when correct).

    Raises:
        PoseGenInputError: the median cosine is negative (left and right look swapped).
    """
    names = list(rig.joint_map)
    g = lambda n: targets[:, names.index(n)]  # noqa: E731
    up = 0.5 * (g("left_shoulder") + g("right_shoulder") - g("left_hip") - g("right_hip"))
    facing = np.cross(g("left_hip") - g("right_hip"), up)
    toes = (g("left_foot") - g("left_ankle")) + (g("right_foot") - g("right_ankle"))
    cos = np.sum(facing * toes, -1) / (np.linalg.norm(facing, axis=-1) * np.linalg.norm(toes, axis=-1) + 1e-9)
    score = float(np.median(cos))
    if score < 0:
        raise PoseGenInputError(
            f"BVH file {path}: its left/right joints look swapped (the feet point backwards relative to "
            f"the facing direction from the hips; median cosine {score:.2f}). The file is mirrored: swap "
            "its Left/Right joint names or flip the x axis of its world."
        )
    return score
