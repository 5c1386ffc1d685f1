"""Console script ``ns-posegen-capture``: render a multi-camera capture of the body in mocap poses.

Example::

    ns-posegen-capture --mocap-dir ../shared/data/mocap/cmu --output-dir captures/cmu --num-cameras 8

writes a capture in the native format (:mod:`posegen_ns.data.capture`) that
``ns-train posegen-human --data captures/cmu`` reads. See :mod:`posegen_ns.data.default_capture` for
how the poses, cameras and appearance are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posegen_ns.data.default_capture import build_default_capture


@dataclass
class CaptureConfig:
    """Render the body in real mocap poses from a calibrated camera ring and write a capture."""

    output_dir: Path
    """Folder to write the capture to (written atomically; must not exist unless --overwrite)."""
    mocap_dir: Path | None = None
    """Folder of BVH (or AMASS .npz) clips, searched recursively; default the CMU clips shipped with posegen-ns."""
    body: str = "open"
    """Body model: 'open' (the open default body), 'tiny' (test body) or a path to official SMPL files."""
    num_cameras: int = 6
    """Cameras on the ring around the subject."""
    resolution: int = 128
    """Image side in pixels (square images)."""
    frame_stride: int = 8
    """Keep every N-th mocap frame."""
    max_frames_per_clip: int = 12
    """At most this many frames per clip, spread evenly over it."""
    heldout_clips: tuple[str, ...] | None = None
    """Clip names (file stems) for the held-out split; default one non-walking clip."""
    seed: int = 0
    """Clothing colours and the held-out clip choice."""
    overwrite: bool = False
    """Replace an existing output folder."""


def main(cfg: CaptureConfig) -> Path:
    """Build the capture described by ``cfg``; returns its folder."""
    return build_default_capture(
        cfg.output_dir, mocap_dir=cfg.mocap_dir, body=cfg.body, num_cameras=cfg.num_cameras,
        resolution=cfg.resolution, frame_stride=cfg.frame_stride, max_frames_per_clip=cfg.max_frames_per_clip,
        heldout_clips=cfg.heldout_clips, seed=cfg.seed, overwrite=cfg.overwrite, verbose=True,
    )


def entrypoint() -> None:
    """Console script ``ns-posegen-capture``."""
    from posegen_ns.cli import run_console_script

    run_console_script("ns-posegen-capture", CaptureConfig, main)


if __name__ == "__main__":
    entrypoint()
