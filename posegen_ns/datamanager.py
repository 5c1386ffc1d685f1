"""Datamanager: serves batches of whole images of a capture, each with its frame's body parameters.

Unlike nerfstudio's ray-based datamanagers, a batch is B (frame, camera) pairs drawn at random:
``(Cameras (B,), batch)`` with ``batch`` holding ``image (B, H, W, 3)`` float in [0, 1],
``mask (B, H, W, 1)`` float, ``K (B, 3, 3)``, ``R (B, 3, 3)``, ``t (B, 3)`` (OpenCV world->camera),
and ``body_pose (B, 69)``, ``global_orient (B, 3)``, ``transl (B, 3)``, ``betas (B, S)``, plus
``frame_index``, ``camera_index`` and ``train_frame (B,)`` long (the frame's index in the training
capture, -1 for frames of the eval capture; per-frame pose refinement keys on it).

Evaluation splits (:meth:`PoseGenDataManager.split_pairs`): ``"novel_pose"`` is every camera of the
eval capture (held-out clips); ``"novel_view"`` is the training frames seen from the cameras listed
in ``heldout_cameras``, which training never draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import DataManager, DataManagerConfig
from torch.nn import Parameter

from posegen_ns.data.dataparser import CaptureDataset, PoseGenCaptureDataParserConfig, capture_cameras
from posegen_ns.errors import PoseGenInputError


@dataclass
class PoseGenDataManagerConfig(DataManagerConfig):
    """Whole-image batches from a posegen capture."""

    _target: Type = field(default_factory=lambda: PoseGenDataManager)
    dataparser: PoseGenCaptureDataParserConfig = field(default_factory=PoseGenCaptureDataParserConfig)
    """Where the capture comes from (``--data`` sets its folder)."""
    images_per_batch: int = 2
    """(frame, camera) images per training step."""
    seed: int = 0
    """Seed of the batch order."""
    heldout_cameras: Tuple[int, ...] = ()
    """Camera indices never used for training; the training frames seen from them are the novel-view split."""


class PoseGenDataManager(DataManager):
    """Holds the train and eval captures in memory (``train_capture``, ``eval_capture``)."""

    config: PoseGenDataManagerConfig

    def __init__(
        self,
        config: PoseGenDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        self.config = config
        self.device = device
        self.test_mode = test_mode
        if config.data is not None:
            config.dataparser.data = Path(config.data)
        self.dataparser = config.dataparser.setup()
        self.train_dataparser_outputs = self.dataparser.get_dataparser_outputs(split="train")
        self.eval_dataparser_outputs = self.dataparser.get_dataparser_outputs(split="test")
        self.train_dataset = CaptureDataset(self.train_dataparser_outputs)
        self.eval_dataset = CaptureDataset(self.eval_dataparser_outputs)
        self.train_capture = self.train_dataparser_outputs.metadata["capture"]
        self.eval_capture = self.eval_dataparser_outputs.metadata["capture"]
        self.generator = torch.Generator().manual_seed(config.seed)
        C = self.train_capture.num_cameras
        held = sorted(set(int(c) for c in config.heldout_cameras))
        if any(c < 0 or c >= C for c in held) or len(held) >= C:
            raise PoseGenInputError(
                f"datamanager.heldout_cameras={tuple(config.heldout_cameras)}: the capture has cameras 0..{C - 1}; "
                "hold out some of them but not all (--pipeline.datamanager.heldout-cameras)."
            )
        self.heldout_camera_indices = torch.tensor(held, dtype=torch.long)
        self.train_camera_indices = torch.tensor([c for c in range(C) if c not in held], dtype=torch.long)
        super().__init__()

    def setup_train(self) -> None:
        """Nothing to set up: the capture is already in memory."""

    def setup_eval(self) -> None:
        """Nothing to set up: the capture is already in memory."""

    def capture_batch(self, capture, frames: torch.Tensor, cams: torch.Tensor) -> Tuple[Cameras, Dict]:
        """The batch for explicit (frame, camera) index pairs ``frames (B,)``, ``cams (B,)``."""
        B = len(frames)
        batch = {
            "image": capture.images[frames, cams].float().div(255.0),
            "mask": capture.masks[frames, cams].float()[..., None],
            "K": capture.K[cams].float(),
            "R": capture.R[cams].float(),
            "t": capture.t[cams].float(),
            "body_pose": capture.body_pose[frames].float(),
            "global_orient": capture.global_orient[frames].float(),
            "transl": capture.transl[frames].float(),
            "betas": capture.betas.float()[None].expand(B, -1),
            "frame_index": frames,
            "camera_index": cams,
            "train_frame": frames if capture is self.train_capture else torch.full_like(frames, -1),
        }
        batch = {k: v.to(self.device) for k, v in batch.items()}
        cameras = capture_cameras(capture, frames)[cams + torch.arange(B) * capture.num_cameras]
        return cameras.to(self.device), batch

    def _random_batch(self, capture, num: int, cameras: torch.Tensor | None = None) -> Tuple[Cameras, Dict]:
        frames = torch.randint(capture.num_frames, (num,), generator=self.generator)
        if cameras is None:
            cams = torch.randint(capture.num_cameras, (num,), generator=self.generator)
        else:
            cams = cameras[torch.randint(len(cameras), (num,), generator=self.generator)]
        return self.capture_batch(capture, frames, cams)

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        self.train_count += 1
        return self._random_batch(self.train_capture, self.config.images_per_batch, self.train_camera_indices)

    def split_pairs(self, split: Literal["novel_view", "novel_pose"]):
        """``(capture, frames (P,), cams (P,))``: every (frame, camera) image of an evaluation split.

        ``"novel_pose"``: all cameras of the eval capture (its held-out clips; the training frames when
        the capture holds out none). ``"novel_view"``: training frames from the held-out cameras
        (empty when ``heldout_cameras`` is empty).
        """
        if split == "novel_pose":
            cap, cams = self.eval_capture, torch.arange(self.eval_capture.num_cameras)
        elif split == "novel_view":
            cap, cams = self.train_capture, self.heldout_camera_indices
        else:
            raise PoseGenInputError(f"split_pairs: split {split!r} is not 'novel_view' or 'novel_pose'.")
        frames = torch.arange(cap.num_frames).repeat_interleave(len(cams))
        return cap, frames, cams.repeat(cap.num_frames)

    def split_batches(self, split: Literal["novel_view", "novel_pose"], chunk: int = 8) -> Iterator[Dict]:
        """Batches (as :meth:`capture_batch`) of at most ``chunk`` images covering :meth:`split_pairs`."""
        cap, frames, cams = self.split_pairs(split)
        for idx in torch.split(torch.arange(len(frames)), chunk):
            yield self.capture_batch(cap, frames[idx], cams[idx])[1]

    def next_eval(self, step: int) -> Tuple[Cameras, Dict]:
        self.eval_count += 1
        return self._random_batch(self.eval_capture, self.config.images_per_batch)

    def next_eval_image(self, step: int) -> Tuple[Cameras, Dict]:
        self.eval_count += 1
        return self._random_batch(self.eval_capture, 1)

    def get_train_rays_per_batch(self) -> int:
        return self.config.images_per_batch * self.train_capture.height * self.train_capture.width

    def get_eval_rays_per_batch(self) -> int:
        return self.get_train_rays_per_batch()

    def get_datapath(self) -> Path:
        return Path(self.train_dataparser_outputs.metadata["capture_dir"])

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {}
