"""2D keypoints from the images when the user has none: BlazePose through the project's black-box worker transport.

BlazePose (mediapipe 0.10.21) runs in its own Python environment (mediapipe's protobuf and numpy pins conflict
with nerfstudio's; :mod:`adapters.blackbox`), found as for the ``blazepose`` critic: the ``python`` argument or
``$POSEGEN_BLAZEPOSE_PYTHON``. :class:`adapters.blackbox.SubprocessPredictor` starts
:mod:`posegen_ns.fit.blazepose2d_worker` there, which answers COCO-17 keypoints in pixels with BlazePose's
visibility as the confidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch import Tensor

from posegen_ns.fit.keypoints import COCO17_NAMES, Keypoints, check_keypoints

WORKER_2D = Path(__file__).with_name("blazepose2d_worker.py")


def detect_blazepose(
    images: Tensor,  # (T, C, H, W, 3) uint8
    python: Optional[str | Path] = None,
    batch_size: int = 16,
    worker_args: tuple[str, ...] = (),
    advance: Optional[Callable[[int], None]] = None,
) -> Keypoints:
    """COCO-17 keypoints ``(T, C, 17, 3)`` (pixels, visibility) of every image, by BlazePose.

    Args:
        images: the capture's images, RGB uint8.
        python: the BlazePose environment's interpreter (default ``$POSEGEN_BLAZEPOSE_PYTHON``).
        batch_size: images per request to the worker.
        worker_args: extra worker arguments (``("--backend", "echo")`` in tests).
        advance: called with the number of images done after each request (a progress bar).

    Raises:
        PoseGenInputError: no BlazePose environment (the message gives the commands that create it), or a worker
            that cannot start.
    """
    from adapters.blackbox import SubprocessPredictor, blazepose_python

    predictor = SubprocessPredictor(blazepose_python(python), WORKER_2D, tuple(worker_args), COCO17_NAMES)
    T, C = images.shape[:2]
    flat = images.reshape(T * C, *images.shape[2:]).permute(0, 3, 1, 2).contiguous().numpy()
    H, W = flat.shape[2:]
    out = np.zeros((T * C, 17, 3), dtype=np.float32)
    try:
        predictor.start()
        for s in range(0, T * C, batch_size):
            batch = flat[s: s + batch_size]
            boxes = np.tile(np.array([[0.0, 0.0, W, H]], dtype=np.float32), (batch.shape[0], 1))
            out[s: s + batch.shape[0]] = predictor(batch, boxes)
            if advance is not None:
                advance(batch.shape[0])
    finally:
        predictor.close()
    return check_keypoints(out.reshape(T, C, 17, 3), "coco17", "blazepose")

