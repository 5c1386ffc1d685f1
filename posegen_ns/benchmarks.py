"""Evaluation on a benchmark's own files: 3DPW, Human3.6M (protocols 1 and 2) and MPI-INF-3DHP.

The files are SPIN's preprocessed ``dataset_extras`` npz (github.com/nkolot/SPIN,
``datasets/preprocess/*.py``) plus the benchmark's images, which the user obtains from the dataset
owners. The protocols follow SPIN's ``eval.py``:

=================  ==========================  ===========================================  ================
``--benchmark``    npz (SPIN name)             ground truth                                 joints, metrics
=================  ==========================  ===========================================  ================
``3dpw``           ``3dpw_test.npz``           SMPL ``pose (N, 72)``, ``shape (N, 10)``,    LSP-14; MPJPE,
                                               ``gender`` -> gendered body -> H36M          PA-MPJPE
                                               regressor (or ``S`` when present)
``h36m-p1``        ``h36m_valid_protocol1.npz`` ``S (N, 24, 4)``; S9, S11, every 5th frame,   LSP-14; MPJPE,
                                               all 4 cameras                                PA-MPJPE
``h36m-p2``        ``h36m_valid_protocol2.npz`` ``S (N, 24, 4)``; frontal camera only         LSP-14; PA-MPJPE
                                                                                            (+ MPJPE)
``mpi-inf-3dhp``   ``mpi_inf_3dhp_test.npz``   ``S (N, 24, 4)`` (17 valid joints)           H36M-17; PCK@150,
                                                                                            AUC (+ MPJPE,
                                                                                            PA-MPJPE, PA-PCK)
=================  ==========================  ===========================================  ================

Layout of every npz: ``imgname (N,)`` paths relative to ``--image-root``, ``center (N, 2)`` pixels,
``scale (N,)`` with the person box a square of side ``200 * scale`` pixels around ``center``. ``S``
is SPIN's 24-joint ground-truth layout (:data:`J24_FROM_H36M17`; 4th column = confidence), metres,
camera frame, root-centred; an ``S (N, 17, 3|4)`` is read as H36M-17 in
:data:`~posegen_ns.body.joint_sets.H36M_JOINT_NAMES` order.

Errors are measured as SPIN does: ground truth and prediction both relative to their H36M pelvis,
then the 14 LSP joints (:data:`~posegen_ns.body.joint_sets.H36M_TO_LSP14`, pelvis not among them)
or all 17 joints; PA-MPJPE after a similarity Procrustes alignment; PCK at 150 mm and AUC over
0..150 mm (3DHP also after Procrustes, ``pa_pck150`` / ``pa_auc``, the "rigid alignment" figures of
SPIN's table). A critic with the ``lsp14`` joint set (no pelvis) is aligned at the hip mid-point on
both sides instead. Rows are grouped per sequence (3DPW, 3DHP) or action (H36M) for the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from posegen_ns.body.joint_sets import H36M_TO_LSP14
from posegen_ns.critic.evaluation import MetricAccumulator, module_device, per_sample_metrics
from posegen_ns.errors import PoseGenInputError, require_folder
from posegen_ns.dataset_formats import H36M_TO_SPIN24
from posegen_ns.labels import root_of
from posegen_ns.metrics import auc, pck, procrustes_align, root_align

J24_FROM_H36M17: tuple[int, ...] = H36M_TO_SPIN24
"""Row of SPIN's 24-joint ground-truth layout (``S``) holding each H36M-17 joint (SPIN's
``global_idx``; defined once in :mod:`posegen_ns.dataset_formats`). With it, SPIN's ``J24_TO_J14`` /
``J24_TO_J17`` select the same joints as ``H36M_TO_J14`` / ``H36M_TO_J17`` on predictions."""

SPIN_BOX_PIXELS = 200.0
"""SPIN's box convention: side = ``scale * 200`` pixels."""


@dataclass(frozen=True)
class BenchmarkProtocol:
    """How one benchmark is evaluated (module docstring)."""

    name: str
    npz_name: str  # SPIN's file name in dataset_extras
    num_joints: int  # 14 (LSP-14 from H36M-17) or 17 (H36M-17)
    metrics: tuple[str, ...]  # reported, headline first
    gt: str  # "S" or "S_or_smpl"
    grouping: str  # "sequence" or "action"
    description: str


PROTOCOLS: dict[str, BenchmarkProtocol] = {
    "3dpw": BenchmarkProtocol("3dpw", "3dpw_test.npz", 14, ("mpjpe_mm", "pa_mpjpe_mm"), "S_or_smpl", "sequence",
                              "3DPW test, LSP-14, MPJPE and PA-MPJPE"),
    "h36m-p1": BenchmarkProtocol("h36m-p1", "h36m_valid_protocol1.npz", 14, ("mpjpe_mm", "pa_mpjpe_mm"), "S", "action",
                                 "Human3.6M protocol 1 (S9, S11, all cameras), LSP-14"),
    "h36m-p2": BenchmarkProtocol("h36m-p2", "h36m_valid_protocol2.npz", 14, ("pa_mpjpe_mm", "mpjpe_mm"), "S", "action",
                                 "Human3.6M protocol 2 (S9, S11, frontal camera), LSP-14, PA-MPJPE"),
    "mpi-inf-3dhp": BenchmarkProtocol("mpi-inf-3dhp", "mpi_inf_3dhp_test.npz", 17,
                                      ("pck150", "auc", "mpjpe_mm", "pa_mpjpe_mm", "pa_pck150", "pa_auc"), "S", "sequence",
                                      "MPI-INF-3DHP test, H36M-17, 3D-PCK@150 mm and AUC"),
}
"""``--benchmark`` name -> protocol."""

_LAYOUT = {
    "S": "S (N, 24, 4): SPIN's 24-joint layout, metres, root-centred, 4th column confidence (or (N, 17, 3|4) H36M-17)",
    "smpl": "pose (N, 72) SMPL axis-angle with the global orientation in the camera frame, shape (N, 10), gender (N,) 'm'/'f'",
    "box": "imgname (N,) paths relative to --image-root, center (N, 2) pixels, scale (N,) (box side = 200 * scale px)",
}


@dataclass
class BenchmarkData:
    """A benchmark's rows. N images; camera frame (OpenCV axes), metres."""

    protocol: BenchmarkProtocol
    imgname: list[str]  # N paths relative to the image root
    center: np.ndarray  # (N, 2) pixels
    scale: np.ndarray  # (N,) box side / 200 px
    joints_h36m: Tensor  # (N, 17, 3) ground truth, pelvis at the origin
    groups: list[str]  # N group names (sequence or action)
    source: Path

    def __len__(self) -> int:
        return len(self.imgname)


# ---- loading --------------------------------------------------------------------------------------
def _need(data: Any, key: str, path: Path, what: str) -> np.ndarray:
    if key not in data.files:
        raise PoseGenInputError(
            f"benchmark file {path} has no field '{key}' (it has {sorted(data.files)}); SPIN's layout: {what}."
        )
    return data[key]


def joints_from_S(S: np.ndarray, path: Path) -> Tensor:
    """H36M-17 joints ``(N, 17, 3)`` from SPIN's ``S (N, 24, 3|4)`` (via :data:`J24_FROM_H36M17`)
    or an ``S (N, 17, 3|4)`` already in H36M-17 order, re-centred at the pelvis.

    Raises:
        PoseGenInputError: another shape, or an H36M-17 joint with confidence 0 in a 24-joint ``S``.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 3 or S.shape[1] not in (17, 24) or S.shape[2] not in (3, 4):
        raise PoseGenInputError(f"benchmark file {path}: field 'S' has shape {S.shape}; expected {_LAYOUT['S']}.")
    if S.shape[1] == 24:
        S = S[:, list(J24_FROM_H36M17)]
    if S.shape[2] == 4:
        missing = np.argwhere(S[:, :, 3] <= 0)
        if len(missing):
            row, joint = missing[0]
            raise PoseGenInputError(
                f"benchmark file {path}: field 'S' row {row} has confidence 0 for H36M joint {joint} "
                f"({len(missing)} such entries); every H36M-17 joint must be labelled ({_LAYOUT['S']})."
            )
    joints = torch.as_tensor(S[:, :, :3])
    return joints - joints[:, :1]


def joints_from_smpl(pose: np.ndarray, shape: np.ndarray, gender: np.ndarray | None, bodies: dict[str, Any],
                     batch_size: int = 256) -> Tensor:
    """H36M-17 joints ``(N, 17, 3)`` (pelvis at the origin, float64) of SMPL parameters, as SPIN's
    ``eval.py`` for 3DPW: the body of each row's gender (``bodies['m']``, ``bodies['f']``,
    else ``bodies['neutral']``), its H36M regressor on the posed vertices.

    Args:
        pose: ``(N, 72)`` axis-angle (global orientation first), radians.
        shape: ``(N, >= num_betas)`` shape coefficients.
        gender: ``(N,)`` ``'m'``/``'f'`` (anything else: neutral) or None.
        bodies: :class:`~posegen_ns.body.BodyModel` per key ``'neutral'`` (required), ``'m'``, ``'f'``.
    """
    N = pose.shape[0]
    out = torch.zeros(N, 17, 3, dtype=torch.float64)
    genders = np.array(["neutral"] * N, dtype=object)
    if gender is not None:
        g = np.array([str(x).lower()[:1] for x in gender])
        for key in ("m", "f"):
            if key in bodies:
                genders[g == key] = key
    for key in dict.fromkeys(genders.tolist()):
        body = bodies[key]
        rows = np.nonzero(genders == key)[0]
        for s in range(0, len(rows), batch_size):
            r = rows[s : s + batch_size]
            p = torch.as_tensor(pose[r], dtype=torch.float32)
            b = torch.as_tensor(shape[r, : body.num_betas], dtype=torch.float32)
            with torch.no_grad():
                j = body(p[:, 3:], p[:, :3], b).joints_h36m.double()  # (B, 17, 3)
            out[torch.as_tensor(r)] = j - j[:, :1]
    return out


def group_name(protocol: BenchmarkProtocol, imgname: str) -> str:
    """Table group of one row: the H36M action (``images/S9_Directions_1.54138969_000001.jpg`` ->
    ``Directions``), or the sequence folder (3DPW ``imageFiles/<seq>/...``, 3DHP ``.../TS1/...``)."""
    p = Path(imgname)
    if protocol.grouping == "action":
        m = re.match(r"S\d+_(.+?)\.\d+_\d+\.\w+$", p.name)
        if m:
            return re.sub(r"[_ ]\d+$", "", m.group(1))
        return p.parent.name or "all"
    for part in p.parts:
        if re.fullmatch(r"TS\d+", part):
            return part
    return p.parent.name or "all"


def load_benchmark(protocol: str | BenchmarkProtocol, npz_path: Path | str, bodies: dict[str, Any] | None = None,
                   max_images: int | None = None) -> BenchmarkData:
    """Read a benchmark npz in SPIN's layout (module docstring).

    Args:
        protocol: a :data:`PROTOCOLS` name or entry.
        npz_path: the npz file.
        bodies: for 3DPW rows without ``S``: ``{'neutral': BodyModel, 'm': ..., 'f': ...}`` (see
            :func:`joints_from_smpl`).
        max_images: keep the first N rows.

    Raises:
        PoseGenInputError: unknown protocol, missing file, missing or malformed field (named, with
            the expected layout).
    """
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise PoseGenInputError(f"unknown benchmark {protocol!r}; use one of {sorted(PROTOCOLS)}.")
        protocol = PROTOCOLS[protocol]
    path = Path(npz_path).expanduser()
    if not path.is_file():
        raise PoseGenInputError(
            f"benchmark file {path} does not exist; pass --dataset-npz PATH to SPIN's {protocol.npz_name} "
            "(github.com/nkolot/SPIN, dataset_extras; made by datasets/preprocess)."
        )
    with np.load(path, allow_pickle=True) as data:
        imgname = [str(x) for x in _need(data, "imgname", path, _LAYOUT["box"])]
        N = len(imgname)
        keep = slice(0, N if max_images is None else min(N, max_images))
        center = np.asarray(_need(data, "center", path, _LAYOUT["box"]), dtype=np.float64)
        scale = np.asarray(_need(data, "scale", path, _LAYOUT["box"]), dtype=np.float64).reshape(-1)
        if center.shape != (N, 2) or scale.shape != (N,):
            raise PoseGenInputError(
                f"benchmark file {path}: 'center' {center.shape} / 'scale' {scale.shape} do not match {N} rows of "
                f"'imgname'; expected {_LAYOUT['box']}."
            )
        if "S" in data.files or protocol.gt == "S":
            joints = joints_from_S(_need(data, "S", path, _LAYOUT["S"])[keep], path)
        else:
            pose = np.asarray(_need(data, "pose", path, _LAYOUT["smpl"]), dtype=np.float64)[keep]
            shape = np.asarray(_need(data, "shape", path, _LAYOUT["smpl"]), dtype=np.float64)[keep]
            gender = data["gender"][keep] if "gender" in data.files else None
            if pose.ndim != 2 or pose.shape[1] != 72 or shape.ndim != 2 or shape.shape[0] != pose.shape[0]:
                raise PoseGenInputError(
                    f"benchmark file {path}: 'pose' {pose.shape} / 'shape' {shape.shape}; expected {_LAYOUT['smpl']}."
                )
            if not bodies or "neutral" not in bodies:
                raise PoseGenInputError(f"benchmark file {path} has no 'S': pass a body model to turn 'pose'/'shape' into joints.")
            joints = joints_from_smpl(pose, shape, gender, bodies)
    if joints.shape[0] != len(imgname[keep]):
        raise PoseGenInputError(f"benchmark file {path}: {joints.shape[0]} ground-truth rows for {N} images.")
    names = imgname[keep]
    return BenchmarkData(
        protocol=protocol, imgname=names, center=center[keep], scale=scale[keep], joints_h36m=joints.float(),
        groups=[group_name(protocol, n) for n in names], source=path,
    )


# ---- images ---------------------------------------------------------------------------------------
def read_rgb(path: Path, row: int | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file.

    Raises:
        PoseGenInputError: missing or unreadable file (naming the npz row when given).
    """
    where = f" (npz row {row})" if row is not None else ""
    if not path.is_file():
        raise PoseGenInputError(f"benchmark image {path}{where} does not exist; is --image-root the folder 'imgname' is relative to?")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise PoseGenInputError(f"benchmark image {path}{where} is not a readable image.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def crop_square(image: np.ndarray, center: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Cut SPIN's box (side ``200 * scale`` px, centred on ``center (2,)`` pixels, continuous
    coordinates as :mod:`adapters.crop`) out of ``image (H, W, 3)`` and resize it to ``size x size``.

    The box is first cut at native resolution (bilinear sub-pixel shift, zeros outside the image;
    side rounded to whole pixels), then resized with area averaging when shrinking (anti-aliased) or
    bilinearly when enlarging. Returns ``(size, size, 3)`` uint8.
    """
    side = SPIN_BOX_PIXELS * float(scale)
    n = max(1, int(round(side)))
    x0, y0 = float(center[0]) - 0.5 * n, float(center[1]) - 0.5 * n
    M = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
    patch = cv2.warpAffine(image, M, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if n == size:
        return patch
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if n > size else cv2.INTER_LINEAR)


def load_crops(data: BenchmarkData, rows: np.ndarray, image_root: Path, size: int) -> Tensor:
    """Crops ``(B, 3, size, size)`` float in [0, 1] of ``rows`` of ``data``."""
    crops = [crop_square(read_rgb(image_root / data.imgname[r], int(r)), data.center[r], data.scale[r], size) for r in rows]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


# ---- metrics --------------------------------------------------------------------------------------
def protocol_metrics(pred: Tensor, gt17: Tensor, protocol: BenchmarkProtocol, joint_set: str) -> dict[str, Tensor]:
    """Per-image metrics ``(B,)`` of one protocol (module docstring).

    Args:
        pred: ``(B, J, 3)`` critic output in ``joint_set`` (``"h36m17"`` or ``"lsp14"``), metres.
        gt17: ``(B, 17, 3)`` ground truth, H36M-17, pelvis at the origin.

    Raises:
        PoseGenInputError: a joint set the protocol cannot use.
    """
    pred, gt17 = pred.detach().double(), gt17.detach().double().to(pred.device)
    if joint_set == "h36m17":  # SPIN's protocol: align at the pelvis, then (for 14 joints) cut to LSP-14 unaligned
        pred = root_align(pred, root_of("h36m17"))
        if protocol.num_joints == 14:
            pred, gt, root = pred[:, list(H36M_TO_LSP14)], gt17[:, list(H36M_TO_LSP14)], None
        else:
            gt, root = gt17, root_of("h36m17")
    elif joint_set == "lsp14" and protocol.num_joints == 14:
        gt, root = gt17[:, list(H36M_TO_LSP14)], root_of("lsp14")
    else:
        raise PoseGenInputError(
            f"benchmark {protocol.name} needs {protocol.num_joints} H36M joints; a critic with joint set "
            f"{joint_set!r} cannot be evaluated on it (use an 'h36m17' critic{'' if protocol.num_joints == 17 else ' or lsp14'})."
        )
    m = per_sample_metrics(pred, gt, root)
    if protocol.num_joints == 17:
        aligned = procrustes_align(pred, gt)
        m["pa_pck150"] = pck(aligned, gt, 0.150, root=None)
        m["pa_auc"] = auc(aligned, gt, root=None)
    return m


@torch.no_grad()
def evaluate_benchmark(critic: Any, data: BenchmarkData, image_root: Path | str, batch_size: int = 32,
                       progress=None) -> dict[str, Any]:
    """Run ``critic`` on every row of ``data`` (crops of side ``critic.input_size``, box = the whole
    crop) and return ``{"overall": {...}, "clips": {group: {...}}}`` (metric means, ``num_images``;
    ``overall`` also names the protocol and its headline metric).

    Raises:
        PoseGenInputError: missing image root or image, or a critic joint set the protocol cannot use.
    """
    root = require_folder(image_root, "--image-root", f"pass the folder that {data.source.name}'s 'imgname' paths are relative to")
    size = int(getattr(critic, "input_size", 224))
    device = module_device(critic)
    joint_set = getattr(critic, "joint_set", "h36m17")
    acc = MetricAccumulator()
    for s in range(0, len(data), batch_size):
        rows = np.arange(s, min(s + batch_size, len(data)))
        images = load_crops(data, rows, root, size).to(device)
        boxes = torch.tensor([[0.0, 0.0, size, size]], device=device).expand(len(rows), 4)
        pred = critic(images, boxes)
        m = protocol_metrics(pred, data.joints_h36m[rows], data.protocol, joint_set)
        acc.add("clips", [data.groups[r] for r in rows], m)
        acc.add("overall", ["overall"] * len(rows), m)
        if progress is not None:
            progress(len(rows))
    overall = acc.summary("overall").get("overall", {})
    overall = {"protocol": data.protocol.description, "headline": data.protocol.metrics[0], **overall}
    return {"overall": overall, "clips": acc.summary("clips")}
