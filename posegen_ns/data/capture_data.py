"""The in-memory capture (:class:`Capture`), its checks, and image files: what every capture reader and
writer shares.

:mod:`posegen_ns.data.capture` (the native format) and :mod:`posegen_ns.data.zju` (ZJU-MoCap) both build
a :class:`Capture`; the export writes its images with :func:`write_png`. Conventions are the native
format's (:mod:`posegen_ns.data.capture`): OpenCV cameras, world y-up, metres, SMPL axis-angle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from posegen_ns.atomic_io import write_bytes
from posegen_ns.errors import PoseGenInputError

SPLITS = ("train", "heldout")
"""Split of each capture frame: fitted on, or held out to measure the field."""


class ImageGridSizes:
    """``num_frames``, ``num_cameras``, ``height``, ``width`` (pixels) of a capture's ``images (T, C, H, W, 3)``,
    for :class:`Capture` and the fit's unfitted capture (:class:`posegen_ns.fit.capture_io.UnfittedCapture`)."""

    images: Tensor

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_cameras(self) -> int:
        return int(self.images.shape[1])

    @property
    def height(self) -> int:
        return int(self.images.shape[2])

    @property
    def width(self) -> int:
        return int(self.images.shape[3])


@dataclass
class Capture(ImageGridSizes):
    """One person, T frames, C calibrated cameras (see the module docstring for conventions).

    Attributes:
        images: ``(T, C, H, W, 3)`` uint8 RGB.
        masks: ``(T, C, H, W)`` bool, True on the person.
        K: ``(C, 3, 3)`` float32 intrinsics, pixels.
        R: ``(C, 3, 3)`` float32 world-to-camera rotations (OpenCV).
        t: ``(C, 3)`` float32 world-to-camera translations, metres.
        global_orient: ``(T, 3)`` float32 axis-angle, radians.
        body_pose: ``(T, 69)`` float32 axis-angle of joints 1..23, radians.
        transl: ``(T, 3)`` float32 metres.
        betas: ``(nb,)`` float32 shape coefficients (one subject, constant over frames).
        clip_names: T clip names (the motion each frame comes from).
        frame_ids: ``(T,)`` long, frame index within its clip.
        split: T entries in ``{"train", "heldout"}``.
        body: body source name (``"open"``, ``"tiny"``) or SMPL file path the parameters are for.
        camera_names: C names (folder names under ``images/`` and ``masks/``).
        root: the folder the capture was read from, if any.
    """

    images: Tensor
    masks: Tensor
    K: Tensor
    R: Tensor
    t: Tensor
    global_orient: Tensor
    body_pose: Tensor
    transl: Tensor
    betas: Tensor
    clip_names: list[str]
    frame_ids: Tensor
    split: list[str]
    body: str
    camera_names: list[str]
    root: Path | None = field(default=None)

    def select(self, frame_indices: Sequence[int] | Tensor) -> "Capture":
        """A capture with only the given frames (same cameras), in the given order."""
        idx = torch.as_tensor(frame_indices, dtype=torch.long).reshape(-1)
        keep = idx.tolist()
        return replace(
            self,
            images=self.images[idx], masks=self.masks[idx],
            global_orient=self.global_orient[idx], body_pose=self.body_pose[idx], transl=self.transl[idx],
            clip_names=[self.clip_names[i] for i in keep], frame_ids=self.frame_ids[idx],
            split=[self.split[i] for i in keep],
        )

    def subset(self, split: str) -> "Capture":
        """The frames of one split (``"train"`` or ``"heldout"``).

        Raises:
            PoseGenInputError: unknown split name.
        """
        if split not in SPLITS:
            raise PoseGenInputError(f"Capture.subset: split {split!r} is not one of {SPLITS}.")
        return self.select([i for i, s in enumerate(self.split) if s == split])

    def validate(self, source: str = "capture") -> None:
        """Check shapes, dtypes, finiteness and camera matrices.

        Raises:
            PoseGenInputError: naming ``source`` and the offending field.
        """
        T, C = self.images.shape[:2] if self.images.ndim == 5 else (None, None)
        if self.images.ndim != 5 or self.images.shape[-1] != 3 or self.images.dtype != torch.uint8:
            raise PoseGenInputError(
                f"{source}: images must be a (T, C, H, W, 3) uint8 tensor; got {tuple(self.images.shape)} "
                f"{self.images.dtype}."
            )
        H, W = self.images.shape[2:4]
        if tuple(self.masks.shape) != (T, C, H, W) or self.masks.dtype != torch.bool:
            raise PoseGenInputError(
                f"{source}: masks must be ({T}, {C}, {H}, {W}) bool; got {tuple(self.masks.shape)} {self.masks.dtype}."
            )
        for name, shape in (("K", (C, 3, 3)), ("R", (C, 3, 3)), ("t", (C, 3))):
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise PoseGenInputError(f"{source}: camera field '{name}' has shape {tuple(value.shape)}, expected {shape}.")
        check_cameras(self.K, self.R, self.t, self.camera_names, source)
        for name, width in (("global_orient", 3), ("body_pose", 69), ("transl", 3)):
            value = getattr(self, name)
            if tuple(value.shape) != (T, width):
                raise PoseGenInputError(
                    f"{source}: body parameter '{name}' has shape {tuple(value.shape)}, expected ({T}, {width}) "
                    f"(one row per frame; the capture has {T} frames)."
                )
            check_finite_rows(value, name, source)
        if self.betas.ndim != 1:
            raise PoseGenInputError(f"{source}: 'betas' must be (nb,), got {tuple(self.betas.shape)}.")
        check_finite_rows(self.betas[None], "betas", source)
        if len(self.clip_names) != T or len(self.split) != T or tuple(self.frame_ids.shape) != (T,):
            raise PoseGenInputError(
                f"{source}: clip_names ({len(self.clip_names)}), split ({len(self.split)}) and frame_ids "
                f"({tuple(self.frame_ids.shape)}) must each have one entry per frame ({T})."
            )
        bad = sorted({s for s in self.split if s not in SPLITS})
        if bad:
            raise PoseGenInputError(f"{source}: split values {bad} are not in {SPLITS}.")
        if len(self.camera_names) != C or len(set(self.camera_names)) != C:
            raise PoseGenInputError(f"{source}: need {C} distinct camera names, got {self.camera_names}.")
        for name in self.camera_names:
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise PoseGenInputError(f"{source}: camera name {name!r} is not usable as a folder name.")


# ---- validation helpers ---------------------------------------------------------------------------

def check_finite_rows(value: Tensor, name: str, source: str) -> None:
    """Raise if ``value (T, ...)`` holds NaN/inf, naming the first bad rows (frames)."""
    finite = torch.isfinite(value.reshape(value.shape[0], -1)).all(-1)
    if not bool(finite.all()):
        rows = (~finite).nonzero().flatten().tolist()
        raise PoseGenInputError(
            f"{source}: field '{name}' contains NaN or inf at frame(s) {rows[:10]}"
            f"{' ...' if len(rows) > 10 else ''}; fix or drop those frames."
        )


def check_cameras(K: Tensor, R: Tensor, t: Tensor, names: Sequence[str], source: str) -> None:
    """Validate OpenCV cameras: ``K (C, 3, 3)`` upper-triangular with positive focals and last row
    ``[0, 0, 1]``; ``R (C, 3, 3)`` a rotation (orthonormal, det +1); ``t (C, 3)`` finite.

    Raises:
        PoseGenInputError: naming ``source``, the camera and the matrix.
    """
    for c in range(K.shape[0]):
        cam = names[c] if c < len(names) else str(c)
        k, r, tc = K[c].double(), R[c].double(), t[c].double()
        if not (torch.isfinite(k).all() and torch.isfinite(r).all() and torch.isfinite(tc).all()):
            raise PoseGenInputError(f"{source}: camera '{cam}' has NaN or inf in K, R or t.")
        if not torch.allclose(k[2], torch.tensor([0.0, 0.0, 1.0], dtype=k.dtype), atol=1e-6) or k[1, 0] != 0:
            raise PoseGenInputError(
                f"{source}: camera '{cam}' K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]]; got {k.tolist()}."
            )
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise PoseGenInputError(f"{source}: camera '{cam}' K has non-positive focal lengths ({k[0, 0]:.4g}, {k[1, 1]:.4g}).")
        ortho_err = (r @ r.T - torch.eye(3, dtype=r.dtype)).abs().max().item()
        if ortho_err > 1e-4 or torch.det(r).item() < 0:
            raise PoseGenInputError(
                f"{source}: camera '{cam}' R is not a rotation (|R R^T - I| = {ortho_err:.2e}, det = "
                f"{torch.det(r).item():.4f}); R must be the orthonormal world-to-camera rotation with det +1."
            )


# ---- image I/O ------------------------------------------------------------------------------------

def write_png(path: Path, array: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` RGB or ``(H, W)`` uint8 image as PNG (fast compression, zlib level 1), atomically
    (encoded in memory, then :func:`posegen_ns.atomic_io.write_bytes`): the project's one PNG writer.

    Raises:
        OSError: the file could not be written (its ``errno`` says why: ``ENOSPC``, ``EROFS``, ...).
        ValueError: the array cannot be encoded as PNG.
    """
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"could not encode {path} as PNG (array {array.shape} {array.dtype})")
    write_bytes(path, buf.tobytes())


def read_image(path: Path, grayscale: bool = False) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` RGB uint8, or ``(H, W)`` uint8 when ``grayscale``.

    Raises:
        PoseGenInputError: the file is missing or not a readable image.
    """
    if not path.is_file():
        raise PoseGenInputError(f"Image file {path} does not exist; the capture lists it, so add it or fix the capture.")
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise PoseGenInputError(f"Image file {path} is not a readable image.")
    if array.dtype != np.uint8:
        array = (array / (np.iinfo(array.dtype).max / 255.0)).round().astype(np.uint8) if array.dtype.kind == "u" else array.astype(np.uint8)
    if grayscale:
        return array if array.ndim == 2 else array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    code = cv2.COLOR_BGRA2RGB if array.shape[-1] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(array, code)
