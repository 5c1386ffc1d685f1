"""Worker process answering BlazePose's *2D* landmarks as COCO-17 keypoints (pixels, confidence).

Runs in the BlazePose environment (mediapipe 0.10.21; see :mod:`adapters.blackbox`), spoken to by
:class:`adapters.blackbox.SubprocessPredictor` with the framing and hello of :mod:`adapters.blazepose_worker`
(loaded from its file, so this script needs neither torch nor posegen-ns installed in that environment). The same
protocol, with another answer:

- hello: ``{"protocol": 1, "joint_set": "coco17", "joint_names": [...17 COCO names], "backend": ...}``;
- request: ``images (B, 3, H, W) uint8`` RGB and ``boxes (B, 4)`` (ignored: BlazePose finds the person itself in
  the whole frame, as it would in the user's video);
- answer: ``(B, 17, 3) float32``: x, y in pixels of the image (``x = landmark.x * W``, ``y = landmark.y * H``; the
  landmarks are normalised to the image) and BlazePose's visibility in [0, 1] as the confidence; all zeros where no
  person was found.

``mp.solutions.pose.Pose(model_complexity=1, static_image_mode=True)``; BlazePose (Bazarevsky et al., CVPR-W 2020)
landmarks are mapped to COCO-17 by :data:`COCO17_FROM_BLAZEPOSE` (kept equal to
:data:`posegen_ns.fit.keypoints.COCO17_FROM_BLAZEPOSE`, which the tests check). ``--backend echo`` answers a fixed
figure for tests of the transport.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO17_FROM_BLAZEPOSE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def _framing():
    """:mod:`adapters.blazepose_worker` loaded from its file (two folders up, then ``adapters/``)."""
    path = Path(__file__).resolve().parents[2] / "adapters" / "blazepose_worker.py"
    spec = importlib.util.spec_from_file_location("posegen_blazepose_framing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blazepose_2d(model_complexity: int = 1):
    """``predict(images (B, 3, H, W) uint8, boxes) -> (B, 17, 3)`` COCO-17 pixels + visibility (module docstring)."""
    import mediapipe as mp  # only in the worker's environment

    pose = mp.solutions.pose.Pose(model_complexity=model_complexity, static_image_mode=True,
                                  enable_segmentation=False, min_detection_confidence=0.5)

    def predict(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = np.zeros((images.shape[0], 17, 3), dtype=np.float32)
        H, W = images.shape[2:]
        for b in range(images.shape[0]):
            result = pose.process(np.ascontiguousarray(images[b].transpose(1, 2, 0)))
            if result.pose_landmarks is None:
                continue
            marks = result.pose_landmarks.landmark
            for j, lm in enumerate(COCO17_FROM_BLAZEPOSE):
                out[b, j] = (marks[lm].x * W, marks[lm].y * H, marks[lm].visibility)
        return out

    return predict


def echo_2d():
    """Test backend: keypoints on a diagonal of each image, confidence 1."""
    def predict(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        H, W = images.shape[2:]
        ramp = np.linspace(0.1, 0.9, 17, dtype=np.float32)
        one = np.stack([ramp * W, ramp * H, np.ones(17, np.float32)], -1)
        return np.repeat(one[None], images.shape[0], 0)

    return predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("mediapipe", "echo"), default="mediapipe")
    parser.add_argument("--model-complexity", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    framing = _framing()
    # serve() sends its module's JOINT_SET and LSP14_NAMES in the hello: this private copy of the module names
    # this worker's joints instead (the framing, the request loop and the error handling stay the shared ones)
    framing.JOINT_SET = "coco17"
    framing.LSP14_NAMES = COCO17_NAMES
    out = framing.protocol_stdout()
    make = echo_2d if args.backend == "echo" else (lambda: blazepose_2d(args.model_complexity))
    return framing.serve(make, args.backend, sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
