"""Worker process serving a 3D pose estimator over stdin/stdout (BlazePose from ``mediapipe``).

Runs in its *own* Python environment: ``mediapipe==0.10.21`` needs protobuf>=4 and numpy<2, which
conflict with nerfstudio's pins. This file imports only the standard library and numpy at module
level (mediapipe only inside :func:`blazepose_predictor`), so posegen-ns also imports it for the
message framing (:func:`write_message` / :func:`read_message`), one definition for both sides.

Protocol (binary, on the worker's stdin/stdout; every message is an 8-byte little-endian length
followed by that many bytes of a ``.npy`` file, read with ``allow_pickle=False``):

1. worker -> client, once: a 0-d unicode array holding JSON ``{"protocol": 1, "joint_set": "lsp14",
   "joint_names": [...], "backend": ...}``, or a string starting with ``"ERROR:"`` if it cannot start.
2. client -> worker, per request: ``images (B, 3, H, W) uint8`` RGB, then ``boxes (B, 4) float32``
   xyxy pixels of the person.
3. worker -> client: ``joints (B, J, 3) float32`` (metres, camera axes x right / y down / z away
   from the camera, root-relative; rows of NaN where no person was found), or an ``"ERROR: ..."``
   string (the worker keeps serving).
4. The client closes stdin; the worker exits.

The worker writes the protocol on a duplicate of its original stdout and points file descriptor 1
at stderr, so libraries that print cannot corrupt the stream.

BlazePose (Bazarevsky et al., "BlazePose: On-device Real-time Body Pose tracking", CVPR-W 2020;
GHUM-based 3D landmarks): ``mp.solutions.pose.Pose(model_complexity=1, static_image_mode=True)``,
run on a square crop of the box enlarged by :data:`BOX_SCALE` (black outside the image). Its 33
*world* landmarks are metric, centred between the hips, in the camera's orientation. They map to
LSP-14 (posegen-ns' ``JOINT_SETS['lsp14']`` order) by :data:`LSP14_FROM_BLAZEPOSE`:
ankles 27/28, knees 25/26, hips 23/24, wrists 15/16, elbows 13/14, shoulders 11/12 (BlazePose's
left/right are the person's, as posegen-ns' names); thorax = mid-shoulders; head top (no BlazePose
landmark) = mid-ears + 0.6 x (mid-ears - mid-shoulders), about 12 cm above the ears of an adult
(an anatomical approximation, the largest source of systematic error of this map). The pelvis
(LSP-14's root, the hip mid-point) is BlazePose's origin.

Usage: ``python blazepose_worker.py [--backend mediapipe|echo] [--model-complexity 1]``; the
``echo`` backend (no mediapipe) answers a fixed skeleton scaled by each image's mean intensity,
for tests of the transport.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import traceback
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

PROTOCOL_VERSION = 1
JOINT_SET = "lsp14"
LSP14_NAMES: tuple[str, ...] = (
    "left_ankle", "left_knee", "left_hip", "right_hip", "right_knee", "right_ankle", "right_wrist",
    "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "thorax", "head_top",
)
"""The worker's joint order, sent in its hello; clients match joints by these names."""
LSP14_FROM_BLAZEPOSE: tuple[int | None, ...] = (27, 25, 23, 24, 26, 28, 16, 14, 12, 11, 13, 15, None, None)
"""BlazePose landmark of each LSP-14 joint; ``None``: derived (thorax, head top; module docstring)."""
HEAD_TOP_FACTOR = 0.6
BOX_SCALE = 1.25
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---- framing ------------------------------------------------------------------------------------
def write_message(stream: BinaryIO, array: np.ndarray | str) -> None:
    """Write one length-prefixed ``.npy`` message (a ``str`` is sent as a 0-d unicode array)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    data = buf.getvalue()
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> np.ndarray | None:
    """Read one message; ``None`` at end of stream (also mid-message: the peer is gone)."""
    head = _read_exact(stream, 8)
    if head is None:
        return None
    body = _read_exact(stream, struct.unpack("<Q", head)[0])
    if body is None:
        return None
    return np.load(io.BytesIO(body), allow_pickle=False)


def message_text(array: np.ndarray) -> str | None:
    """The text of a unicode message, ``None`` for numeric arrays."""
    return str(array[()]) if array.dtype.kind == "U" else None


# ---- BlazePose ----------------------------------------------------------------------------------
def landmarks_to_lsp14(world: np.ndarray) -> np.ndarray:
    """``(33, 3)`` BlazePose world landmarks -> ``(14, 3)`` LSP-14 (module docstring)."""
    out = np.empty((14, 3), dtype=np.float32)
    for j, lm in enumerate(LSP14_FROM_BLAZEPOSE):
        if lm is not None:
            out[j] = world[lm]
    shoulders = 0.5 * (world[11] + world[12])
    ears = 0.5 * (world[7] + world[8])
    out[12] = shoulders
    out[13] = ears + HEAD_TOP_FACTOR * (ears - shoulders)
    return out


def square_crop(image: np.ndarray, box: np.ndarray, scale: float = BOX_SCALE) -> np.ndarray:
    """``(H, W, 3)`` image -> square crop ``(S, S, 3)`` of ``box`` (xyxy) enlarged by ``scale``,
    black outside the image (no resampling)."""
    H, W = image.shape[:2]
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    half = 0.5 * scale * max(box[2] - box[0], box[3] - box[1])
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    side = max(int(round(2 * half)), 1)
    out = np.zeros((side, side, 3), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, W), min(y0 + side, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def blazepose_predictor(model_complexity: int = 1) -> Predict:
    """``predict(images (B, 3, H, W) uint8, boxes (B, 4)) -> (B, 14, 3)`` with mediapipe's BlazePose."""
    import mediapipe as mp  # only in the worker's environment

    pose = mp.solutions.pose.Pose(model_complexity=model_complexity, static_image_mode=True,
                                  enable_segmentation=False, min_detection_confidence=0.5)

    def predict(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = np.full((images.shape[0], 14, 3), np.nan, dtype=np.float32)
        for b in range(images.shape[0]):
            crop = np.ascontiguousarray(square_crop(images[b].transpose(1, 2, 0), boxes[b]))
            result = pose.process(crop)
            if result.pose_world_landmarks is not None:
                world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark], dtype=np.float32)
                out[b] = landmarks_to_lsp14(world)
        return out

    return predict


def echo_predictor() -> Predict:
    """Test backend: a fixed LSP-14 stick figure times ``1 + mean(image) / 255``."""
    base = np.linspace(-0.5, 0.5, 14 * 3, dtype=np.float32).reshape(14, 3)

    def predict(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        scale = 1.0 + images.reshape(images.shape[0], -1).mean(axis=1) / 255.0
        return (base[None] * scale[:, None, None]).astype(np.float32)

    return predict


# ---- serving ------------------------------------------------------------------------------------
def protocol_stdout() -> BinaryIO:
    """A private copy of stdout for the protocol; fd 1 is redirected to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout.flush()
    os.dup2(2, 1)
    return out


def serve(make_predict: Callable[[], Predict], backend: str, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Run the protocol until stdin closes. Returns the process exit code."""
    try:
        predict = make_predict()
    except Exception as err:  # noqa: BLE001 - reported to the client, which explains the fix
        write_message(stdout, f"ERROR: cannot start the {backend} backend in {sys.executable}: {err!r}")
        return 1
    hello = {"protocol": PROTOCOL_VERSION, "joint_set": JOINT_SET, "joint_names": list(LSP14_NAMES), "backend": backend}
    write_message(stdout, json.dumps(hello))
    while True:
        images = read_message(stdin)
        if images is None:
            return 0
        boxes = read_message(stdin)
        if boxes is None:
            return 0
        try:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or boxes.shape != (images.shape[0], 4):
                raise ValueError(f"expected images (B, 3, H, W) uint8 and boxes (B, 4); got {images.shape} "
                                 f"{images.dtype} and {boxes.shape}")
            write_message(stdout, np.asarray(predict(images, boxes.astype(np.float32)), dtype=np.float32))
        except Exception:  # noqa: BLE001 - one bad request must not kill the worker
            write_message(stdout, "ERROR: " + traceback.format_exc())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("mediapipe", "echo"), default="mediapipe")
    parser.add_argument("--model-complexity", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    out = protocol_stdout()
    if args.backend == "echo":
        make = echo_predictor
    else:
        def make() -> Predict:
            return blazepose_predictor(args.model_complexity)
    return serve(make, args.backend, sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
