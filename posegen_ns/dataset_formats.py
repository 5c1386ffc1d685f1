"""Dataset formats written next to an export's own ``labels.npz``: SPIN's ``dataset_extras`` npz
and a COCO-style JSON with 3D keypoints as HybrIK's Human3.6M-SMPL loader reads it, in HybrIK's
folder layout (``ROOT/annotations/<name>_protocol_<P>.json`` + ``ROOT/images/``).

Everything here is a pure function of the exported label arrays (``posegen_ns.export.LABEL_FIELDS``,
N samples first), so a dataset written in one process, resumed after a crash, or merged from
shards gives byte-identical files.

``spin.npz`` (nkolot/SPIN, ``datasets/base_dataset.py`` and ``datasets/preprocess/*.py``):

- ``imgname (N,)`` str: image paths relative to the dataset folder (SPIN's ``DATASET_FOLDERS``).
- ``center (N, 2)``, ``scale (N,)``: the person box as SPIN stores it, centre in pixels and
  ``box size / 200``; the box is the exporter's ``boxes`` label, a square 1.2 x the extent of the
  projected H36M-17 joints (``posegen_ns.labels.person_boxes``; SPIN's ``scaleFactor = 1.2``
  around the keypoints, as its 3DPW / MPI-INF-3DHP preprocessing).
- ``part (N, 24, 3)``: 2D keypoints in pixels in SPIN's 24-joint order (``constants.JOINT_NAMES[25:]``)
  with visibility. The 17 H36M joints go where SPIN's ``h36m_train.py`` puts them (its
  ``global_idx``, matched by joint name: pelvis -> 'Pelvis (MPII)', thorax -> 'Neck (LSP)',
  neck/nose -> 'Jaw (H36M)', head top -> 'Head (H36M)', spine -> 'Spine (H36M)'; SPIN's own
  ``J24_TO_J14`` then reads LSP-14 from them). The other 7 ('Top of Head (LSP)', 'Thorax (MPII)',
  nose, eyes, ears) are zeros with visibility 0, as for SPIN's Human3.6M data.
- ``S (N, 24, 4)``: the same joints in 3D, camera frame, metres, root-centred at the H36M pelvis
  (as every SPIN preprocessing script) with confidence 1 (0 for the joints we do not have).
- ``pose (N, 72)``: SMPL pose with the global orientation in the camera frame (SPIN's ``pw3d.py``:
  ``R_cam @ R_global``), then the 23 body joints. ``shape (N, 10)``: betas, zero-padded to 10.
- ``has_smpl (N,)``: 1 only when the body is an official SMPL model (:func:`is_official_smpl`), else
  0. SPIN runs the official SMPL on ``pose``/``shape`` and uses the result as ground truth for joints,
  vertices, camera and shape wherever ``has_smpl`` is 1; for another body (the open default body, the
  tiny test body) ``shape`` means nothing to SMPL and ``pose`` only approximately the same thing, so
  SPIN must train on the keypoints alone. (Real SMPL parameters for such a body need a fit of the
  official SMPL model to the posed body; not done here.)
- extra keys SPIN's loader ignores: ``maskname (N,)``, ``root_cam (N, 3)`` (the
  H36M pelvis, camera frame, metres: ``part = project(S + root_cam)``), ``K (N, 3, 3)``.

``annotations/posegen_protocol_2.json`` (:func:`write_hybrik_annotations`; ``_protocol_1`` is the
same file, hard-linked) matches HybrIK's ``H36mSMPL._load_jsons`` (Jeff-sjtu/HybrIK,
``hybrik/datasets/h36m_smpl.py``), which reads ``ROOT/annotations/<TRAIN_SET>_protocol_<P>.json``
and images from ``ROOT/images/<file_name>``: parallel ``images`` / ``annotations`` lists (one person
per image, same order), ``images[i]``: ``id``, ``file_name`` (relative to ``images/``), ``width``,
``height``, ``cam_param {f: [fx, fy], c: [cx, cy], R, t}``; ``annotations[i]``: ``id``,
``image_id``, ``bbox [x, y, w, h]`` (tight silhouette box), ``area``, ``h36m_joints`` (17 x 3),
``smpl_joints`` (**29 x 3**: SMPL-24 then head top, left / right middle finger tip, left / right big
toe, the body's leaf vertices posed, :data:`HYBRIK29_JOINT_NAMES`; HybrIK zero-pads a 24-joint list
and still marks all 29 visible), ``root_coord`` (the H36M pelvis, as HybrIK's Human3.6M files; its
loader takes the 29 joints' depths relative to ``smpl_joints[0]``, the SMPL pelvis), all camera frame
in **millimetres** as HybrIK's Human3.6M files; ``thetas`` (72, camera-frame global orientation
first), ``betas`` (10) and ``angle_twist {angle, cos, sin}`` (23 each: the twist of SMPL joints
1..23 about their rest bones, :func:`adapters.hybrik_ik.twist_angles`, radians; ``-999`` where
undefined, HybrIK's "invalid" value, which its loader weights 0). Extra keys HybrIK ignores:
``has_smpl`` (as SPIN's; HybrIK's ``H36mSMPL`` has no such switch and always weights its theta /
beta losses 1) and ``smpl_param {pose, shape, trans}`` (``trans`` in metres:
``SMPL(pose, shape) + trans`` is the body in the camera frame) for generic COCO-3D readers.

Pixel coordinates follow the exporter: ``u = fx x / z + cx`` with ``K`` as exported (the image's
pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from adapters.hybrik_ik import HYBRIK_JOINT_NAMES_29
from posegen_ns.atomic_io import TEMP_MARK, atomic_open
from posegen_ns.body.joint_sets import H36M_JOINT_NAMES
from posegen_ns.body.model import BodyModel

SPIN24_JOINT_NAMES: tuple[str, ...] = (
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle",
    "Right Wrist", "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)",
    "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear",
)
"""SPIN's 24 ground-truth joints (``constants.JOINT_NAMES[25:]``)."""

_H36M_NAME_TO_SPIN: dict[str, str] = {
    "pelvis": "Pelvis (MPII)", "right_hip": "Right Hip", "right_knee": "Right Knee", "right_ankle": "Right Ankle",
    "left_hip": "Left Hip", "left_knee": "Left Knee", "left_ankle": "Left Ankle", "spine": "Spine (H36M)",
    "thorax": "Neck (LSP)", "neck_nose": "Jaw (H36M)", "head_top": "Head (H36M)",
    "left_shoulder": "Left Shoulder", "left_elbow": "Left Elbow", "left_wrist": "Left Wrist",
    "right_shoulder": "Right Shoulder", "right_elbow": "Right Elbow", "right_wrist": "Right Wrist",
}
H36M_TO_SPIN24: tuple[int, ...] = tuple(SPIN24_JOINT_NAMES.index(_H36M_NAME_TO_SPIN[n]) for n in H36M_JOINT_NAMES)
"""SPIN-24 index of each H36M-17 joint (SPIN ``h36m_train.py``'s ``global_idx``, by joint name)."""

SPIN_NUM_BETAS = 10
COCO3D_LOADER = "HybrIK hybrik/datasets/h36m_smpl.py H36mSMPL._load_jsons"
HYBRIK29_JOINT_NAMES: tuple[str, ...] = HYBRIK_JOINT_NAMES_29
"""HybrIK's 29 joints (:data:`adapters.hybrik_ik.HYBRIK_JOINT_NAMES_29`): SMPL-24 then the 5 leaves."""
HYBRIK_ANNOTATION_NAME = "posegen"
"""The ``TRAIN_SET`` / ``TEST_SET`` name of the export in HybrIK's config:
``annotations/posegen_protocol_2.json``."""
HYBRIK_PROTOCOLS: tuple[int, ...] = (2, 1)
"""Protocols whose annotation file is written (HybrIK's ``DATASET.PROTOCOL`` picks the file; the
content is the same, protocol 1 only makes its evaluation Procrustes-align)."""
HYBRIK_INVALID_TWIST = -999.0
"""HybrIK's value for an undefined twist angle (its loader gives angles below -10 weight 0)."""
SMPL_NUM_VERTICES = 6890


def is_official_smpl(body: BodyModel) -> bool:
    """Whether ``body``'s parameters are official SMPL parameters (what SPIN's and HybrIK's SMPL
    layers expect): SMPL's 6890-vertex topology, pose correctives present (official SMPL has them;
    the project's converted bodies have none), and not loaded from the project's own converted files
    (the open default body ``open_body_*.npz``, the tiny test body ``tiny_body_*.npz``)."""
    name = Path(getattr(body, "model_path", "")).name
    own = name.startswith(("open_body", "tiny_body"))
    return body.num_vertices == SMPL_NUM_VERTICES and bool(body.has_pose_correctives) and not own


# ---------------------------------------------------------------------------------------- labels
def silhouette_boxes(mask: Tensor) -> tuple[Tensor, Tensor]:  # mask: (B, H, W) bool
    """Tight boxes of binary masks.

    Returns:
        ``boxes (B, 4)`` float ``x0, y0, x1, y1`` pixels with ``x1, y1`` exclusive (so the box is
        ``[x0, x1) x [y0, y1)``), NaN for an empty mask; ``area (B,)`` mask pixels.
    """
    B, H, W = mask.shape
    cols, rows = mask.any(1), mask.any(2)  # (B, W), (B, H)
    ar_w = torch.arange(W, device=mask.device)
    ar_h = torch.arange(H, device=mask.device)
    big = torch.tensor(10**9, device=mask.device)
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -big).amax(1) + 1
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -big).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], -1).float()
    boxes[~cols.any(1)] = float("nan")
    return boxes, mask.flatten(1).sum(1).float()


# ---------------------------------------------------------------------------------------- writers
def save_npz_deterministic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps (same arrays -> same bytes), written atomically
    (:func:`posegen_ns.atomic_io.atomic_open`). Readable by ``np.load``; no pickles."""
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def spin_arrays(labels: Mapping[str, np.ndarray], image_names: Sequence[str], mask_names: Sequence[str]) -> dict[str, np.ndarray]:
    """SPIN ``dataset_extras`` arrays (see the module docstring) from exported labels.

    Args:
        labels: the export's label arrays (``joints_h36m_2d (N, 17, 2)``, ``joints_h36m_cam
            (N, 17, 3)``, ``boxes (N, 4)``, ``global_orient_cam (N, 3)``, ``body_pose (N, 69)``,
            ``betas (N, S)``, ``K (N, 3, 3)``, ``has_smpl (N,)``).
        image_names, mask_names: ``N`` paths relative to the dataset folder.
    """
    j2d = np.asarray(labels["joints_h36m_2d"], np.float32)
    jcam = np.asarray(labels["joints_h36m_cam"], np.float32)
    N = j2d.shape[0]
    idx = list(H36M_TO_SPIN24)
    root = jcam[:, 0]  # (N, 3) H36M pelvis
    part = np.zeros((N, 24, 3), np.float32)
    part[:, idx, :2] = j2d
    part[:, idx, 2] = (jcam[..., 2] > 0).astype(np.float32)  # behind the camera: not visible
    S = np.zeros((N, 24, 4), np.float32)
    S[:, idx, :3] = jcam - root[:, None]
    S[:, idx, 3] = 1.0
    boxes = np.asarray(labels["boxes"], np.float32)
    betas = np.asarray(labels["betas"], np.float32)
    shape = np.zeros((N, SPIN_NUM_BETAS), np.float32)
    shape[:, : min(SPIN_NUM_BETAS, betas.shape[1])] = betas[:, :SPIN_NUM_BETAS]
    return {
        "imgname": np.asarray(image_names, dtype=str),
        "center": 0.5 * (boxes[:, :2] + boxes[:, 2:]),
        "scale": np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 200.0,
        "part": part,
        "S": S,
        "pose": np.concatenate([labels["global_orient_cam"], labels["body_pose"]], 1).astype(np.float32),
        "shape": shape,
        "has_smpl": np.asarray(labels["has_smpl"], np.float32),
        "maskname": np.asarray(mask_names, dtype=str),
        "root_cam": root,
        "K": np.asarray(labels["K"], np.float32),
    }


def write_spin_npz(path: Path, labels: Mapping[str, np.ndarray], image_names: Sequence[str], mask_names: Sequence[str]) -> None:
    """Write :func:`spin_arrays` to ``path`` (deterministic bytes)."""
    save_npz_deterministic(path, spin_arrays(labels, image_names, mask_names))


def _r(x: np.ndarray, decimals: int) -> list:
    """Rounded nested list for JSON (deterministic, compact)."""
    return np.round(np.asarray(x, np.float64), decimals).tolist()


def coco3d_records(
    labels: Mapping[str, np.ndarray], image_names: Sequence[str], width: int, height: int
) -> Iterator[tuple[dict, dict]]:
    """``(image, annotation)`` pairs of ``coco3d.json`` (see the module docstring), one per sample."""
    K = np.asarray(labels["K"], np.float64)
    mm = 1000.0
    jh = np.asarray(labels["joints_h36m_cam"], np.float64) * mm
    js = np.asarray(labels["joints_hybrik29_cam"], np.float64) * mm  # (N, 29, 3)
    twist = np.asarray(labels["twist_angle"], np.float64)  # (N, 23), NaN where undefined
    twist = np.where(np.isfinite(twist), twist, HYBRIK_INVALID_TWIST)
    has_smpl = np.asarray(labels["has_smpl"])
    betas = np.zeros((K.shape[0], SPIN_NUM_BETAS))
    b = np.asarray(labels["betas"], np.float64)[:, :SPIN_NUM_BETAS]
    betas[:, : b.shape[1]] = b
    thetas = np.concatenate([labels["global_orient_cam"], labels["body_pose"]], 1)
    for i in range(K.shape[0]):
        index = int(labels["sample_index"][i])
        x0, y0, x1, y1 = np.asarray(labels["mask_boxes"][i], np.float64)
        image = {
            "id": index, "file_name": Path(image_names[i]).name, "width": int(width), "height": int(height),
            "cam_param": {"f": _r(K[i, [0, 1], [0, 1]], 6), "c": _r(K[i, :2, 2], 6),
                          "R": _r(labels["R"][i], 8), "t": _r(np.asarray(labels["t"][i], np.float64) * mm, 4)},
        }
        theta = _r(thetas[i], 7)
        ann = {
            "id": index, "image_id": index, "category_id": 1, "iscrowd": 0,
            "bbox": _r([x0, y0, x1 - x0, y1 - y0], 3), "area": float(labels["mask_area"][i]),
            "h36m_joints": _r(jh[i].reshape(-1), 4), "smpl_joints": _r(js[i].reshape(-1), 4),
            "root_coord": _r(jh[i, 0], 4), "thetas": theta, "betas": _r(betas[i], 7),
            "angle_twist": {"angle": _r(twist[i], 7), "cos": _r(np.cos(twist[i]), 7), "sin": _r(np.sin(twist[i]), 7)},
            "has_smpl": int(has_smpl[i] > 0),
            "smpl_param": {"pose": theta, "shape": _r(betas[i], 7), "trans": _r(labels["transl_cam"][i], 7)},
        }
        yield image, ann


def write_coco3d_json(path: Path, labels: Mapping[str, np.ndarray], image_names: Sequence[str], width: int, height: int,
                      info: Mapping | None = None) -> None:
    """Stream ``coco3d.json`` to ``path`` (one record at a time; atomic rename at the end,
    :func:`posegen_ns.atomic_io.atomic_open`)."""
    path = Path(path)
    header = {
        "description": "posegen-ns samples, COCO-style with 3D keypoints",
        "loader": COCO3D_LOADER,
        "units": "h36m_joints, smpl_joints, root_coord, cam_param.t: millimetres; smpl_param.trans: metres; "
                 "pixels; radians",
        "frames": "camera frame (OpenCV: x right, y down, z forward); thetas / smpl_param.pose root in the camera frame",
        "images_root": "images",
        "h36m_joint_names": list(H36M_JOINT_NAMES),
        "smpl_joint_names": list(HYBRIK29_JOINT_NAMES),
        "angle_twist": "twist of SMPL joints 1..23 about their rest bones (HybrIK), radians; "
                       f"{HYBRIK_INVALID_TWIST:g} where undefined",
        **(dict(info) if info else {}),
    }
    dumps = lambda x: json.dumps(x, separators=(",", ":"))  # noqa: E731
    side = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}.annotations")
    try:
        with atomic_open(path, "w") as f, open(side, "w+") as g:
            f.write('{"info":' + dumps(header) + ',"categories":[{"id":1,"name":"person"}],"images":[\n')
            for i, (image, ann) in enumerate(coco3d_records(labels, image_names, width, height)):
                f.write((",\n" if i else "") + dumps(image))
                g.write((",\n" if i else "") + dumps(ann))
            f.write('\n],"annotations":[\n')
            g.seek(0)
            shutil.copyfileobj(g, f)
            f.write("\n]}\n")
    finally:
        side.unlink(missing_ok=True)


def hybrik_annotation_path(folder: Path, protocol: int = 2, name: str = HYBRIK_ANNOTATION_NAME) -> Path:
    """Where HybrIK's ``H36mSMPL(ann_file=name, root=folder)`` with ``DATASET.PROTOCOL = protocol``
    reads its annotations: ``folder/annotations/<name>_protocol_<protocol>.json``."""
    return Path(folder) / "annotations" / f"{name}_protocol_{protocol}.json"


def write_hybrik_annotations(folder: Path, labels: Mapping[str, np.ndarray], image_names: Sequence[str], width: int,
                             height: int, info: Mapping | None = None) -> list[Path]:
    """Write the COCO-3D JSON (:func:`write_coco3d_json`) as HybrIK's layout wants it,
    ``folder/annotations/<HYBRIK_ANNOTATION_NAME>_protocol_<P>.json`` for each of
    :data:`HYBRIK_PROTOCOLS` (one file, the others hard links or copies), next to ``folder/images/``.

    Returns:
        The paths written, protocol 2 first.
    """
    paths = [hybrik_annotation_path(folder, p) for p in HYBRIK_PROTOCOLS]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    write_coco3d_json(paths[0], labels, image_names, width, height, info=info)
    for other in paths[1:]:
        tmp = other.with_name(f".{other.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(paths[0], tmp)
        except OSError:
            shutil.copyfile(paths[0], tmp)
        os.replace(tmp, other)
    return paths
