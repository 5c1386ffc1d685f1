"""nerfstudio dataparser for posegen captures (native format or ZJU-MoCap layout).

It turns a :class:`~posegen_ns.data.capture.Capture` into nerfstudio's ``DataparserOutputs`` so that
nerfstudio's trainer, viewer and ``eval_setup`` see ordinary images and cameras. One image per
(frame, camera) pair, ordered frame-major: ``index = frame * num_cameras + camera``. The world frame
is kept as it is (no re-centring or rescaling): body parameters are metric and must stay valid.
Cameras are converted from OpenCV to nerfstudio's OpenGL camera-to-world here and only here
(:func:`posegen_ns.geometry.opencv_to_nerfstudio_c2w`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Type

import numpy as np

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.scene_box import SceneBox

from posegen_ns.geometry import opencv_to_nerfstudio_c2w


def capture_cameras(capture, frame_indices: torch.Tensor) -> Cameras:
    """nerfstudio ``Cameras`` for every camera of the given frames, frame-major, ``(len(frames) * C,)``."""
    C = capture.num_cameras
    cam_idx = torch.arange(C).repeat(len(frame_indices))
    K = capture.K[cam_idx].float()
    c2w = opencv_to_nerfstudio_c2w(capture.R[cam_idx].float(), capture.t[cam_idx].float())
    return Cameras(
        camera_to_worlds=c2w,
        fx=K[:, 0, 0:1],
        fy=K[:, 1, 1:2],
        cx=K[:, 0, 2:3],
        cy=K[:, 1, 2:3],
        width=capture.width,
        height=capture.height,
        camera_type=CameraType.PERSPECTIVE,
    )


@dataclass
class PoseGenCaptureDataParserConfig(DataParserConfig):
    """A posegen capture folder: native format (``capture.json``) or ZJU-MoCap (``annots.npy``)."""

    _target: Type = field(default_factory=lambda: PoseGenCaptureDataParser)
    data: Path = Path()
    """Capture folder. Empty: the default capture, built from the shipped CMU clips on first use and cached."""
    body: str = "open"
    """Body model for ZJU-MoCap captures (their parameters need the body's rest pelvis): 'open', 'tiny' or an SMPL file."""
    eval_split: Literal["heldout", "train"] = "heldout"
    """Frames used for evaluation: the capture's held-out clips (novel poses) or the training frames."""


class CaptureDataset(InputDataset):
    """nerfstudio dataset over an in-memory capture (what the viewer and ``eval_setup`` read).

    Item ``i`` is frame ``i // C``, camera ``i % C``; it holds ``image (H, W, 3)`` float in [0, 1]
    and ``mask (H, W, 1)`` bool.
    """

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.capture = dataparser_outputs.metadata["capture"]

    def get_numpy_image(self, image_idx: int) -> np.ndarray:
        C = self.capture.num_cameras
        return self.capture.images[image_idx // C, image_idx % C].numpy()

    def get_metadata(self, data: Dict) -> Dict:
        C = self.capture.num_cameras
        i = data["image_idx"]
        return {"mask": self.capture.masks[i // C, i % C][..., None]}


class PoseGenCaptureDataParser(DataParser):
    """Reads a capture and exposes it as nerfstudio images + cameras; the capture itself is in
    ``metadata["capture"]`` (restricted to the split) for the posegen datamanager."""

    config: PoseGenCaptureDataParserConfig

    def capture_dir(self) -> Path:
        """The capture folder, building the default capture when none is configured."""
        if str(self.config.data) in ("", "."):
            from posegen_ns.data.default_capture import default_capture_dir

            return default_capture_dir()
        return Path(self.config.data)

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        from posegen_ns.data.capture import read_capture

        root = self.capture_dir()
        capture = read_capture(root) if not (root / "annots.npy").exists() else self._read_zju(root)
        wanted = "train" if split == "train" else self.config.eval_split
        sub = capture.subset(wanted)
        if sub.num_frames == 0:  # no held-out clip: evaluate on training frames
            sub = capture.subset("train")
        frames = torch.arange(sub.num_frames)
        cameras = capture_cameras(sub, frames)
        # images are served from memory by CaptureDataset; these names only label them
        image_filenames = [
            root / sub.clip_names[f] / name / f"{int(sub.frame_ids[f]):06d}.png"
            for f in range(sub.num_frames)
            for name in sub.camera_names
        ]
        centre = sub.transl.float().mean(0) if sub.num_frames else torch.zeros(3)
        aabb = torch.stack([centre - 1.5, centre + 1.5])
        return DataparserOutputs(
            image_filenames=image_filenames,
            cameras=cameras,
            scene_box=SceneBox(aabb=aabb),
            dataparser_scale=1.0,
            metadata={"capture": sub, "capture_dir": root},
        )

    def _read_zju(self, root: Path):
        from posegen_ns.body import load_body_model
        from posegen_ns.data.zju import read_zju

        return read_zju(root, load_body_model(self.config.body))
