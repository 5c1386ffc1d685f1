"""Console script ``ns-posegen-fit``: fit SMPL parameters to a filmed person, so ``ns-train posegen-human --data``
reads the folder.

Example::

    ns-posegen-fit --input my_video_capture --keypoints my_keypoints.npz --output-dir captures/me
    ns-train posegen-human --data captures/me

``--input`` is a capture folder without body parameters (:mod:`posegen_ns.fit.capture_io`), ``--keypoints`` an
``.npz`` or COCO ``.json`` (:mod:`posegen_ns.fit.keypoints`); without it BlazePose finds them
(:mod:`posegen_ns.fit.detect`). The fit (:mod:`posegen_ns.fit.solver`) starts from the critic's prediction
(``--init critic``, the default; :mod:`posegen_ns.fit.initialise`) or the rest pose (``--init rest``). The output
is a native capture of the fitted frames with ``fit.json`` (per-frame residual in pixels, skipped frames and why,
the settings) and ``keypoints.npz`` (the keypoints used, for every input frame). Masks come from ``--input``'s
``masks/`` or, without them, are the fitted body's silhouettes.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch

from posegen_ns.critic.loading import CriticConfig
from posegen_ns.fit.solver import FitConfig, FitResult

PROG = "ns-posegen-fit"


@dataclass
class FitCaptureConfig:
    """Fit SMPL parameters (per-frame pose and translation, one shape) to 2D keypoints of a filmed person."""

    input: Path
    """Capture folder without body parameters: capture.json (cameras; frames optional), images/<camera>/000000.png ..., masks/ optional."""
    output_dir: Path
    """Folder to write the fitted capture to (native format + fit.json; written atomically)."""
    keypoints: Optional[Path] = None
    """2D keypoints: .npz with keypoints (T, C, J, 3) and joint_set (coco17|h36m17|smpl24), or a COCO keypoint .json. Default: BlazePose finds them."""
    body: Optional[str] = None
    """Body model: 'open', 'tiny' or an SMPL file; default capture.json's 'body', else 'open'."""
    fov_deg: Optional[float] = None
    """Vertical field of view (degrees) of the single camera of an --input folder that has no capture.json."""
    init: Literal["critic", "rest"] = "critic"
    """Start from the critic's prediction (EFT-style; the default critic is pre-trained on first use and cached) or from the rest pose."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The critic that starts the fit (--init critic); one that predicts SMPL parameters (default, hmr/spin, hybrik-*)."""
    blazepose_python: Optional[Path] = None
    """Python of the BlazePose environment (default $POSEGEN_BLAZEPOSE_PYTHON); used without --keypoints."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Weights and iterations of the fit."""
    overwrite: bool = False
    """Replace an existing --output-dir."""
    quiet: bool = False
    """No progress bars or messages."""


class _Bars:
    """``bars(description, total) -> advance``: one progress bar per stage, the previous one closed."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.stack: Optional[ExitStack] = None

    def __call__(self, description: str, total: int) -> Callable[..., None]:
        from posegen_ns.cli import progress

        self.close()
        self.stack = ExitStack()
        return self.stack.enter_context(progress(description, total, quiet=self.quiet))

    def close(self) -> None:
        if self.stack is not None:
            self.stack.close()
            self.stack = None


def silhouettes(body: Any, result: FitResult, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, width: int,
                height: int, chunk: int = 32) -> torch.Tensor:
    """``(F, C, H, W)`` bool masks: the fitted body rendered into every camera (the z-buffer renderer of
    :mod:`posegen_ns.render.mesh`), for captures filmed without masks."""
    from posegen_ns.render.mesh import render_mesh

    F, C = result.num_fitted, K.shape[0]
    with torch.no_grad():
        verts = body(result.body_pose, result.global_orient, result.betas.expand(F, -1), result.transl).vertices
    masks = torch.zeros(F, C, height, width, dtype=torch.bool)
    pairs = [(f, c) for f in range(F) for c in range(C)]
    for s in range(0, len(pairs), chunk):
        fi = torch.tensor([p[0] for p in pairs[s: s + chunk]])
        ci = torch.tensor([p[1] for p in pairs[s: s + chunk]])
        out = render_mesh(verts[fi], body.faces, K[ci], R[ci], t[ci], width, height)
        masks[fi, ci] = out.mask > 0.5
    return masks


def _finite(x: float) -> Optional[float]:
    return round(float(x), 3) if math.isfinite(float(x)) else None


def high_residual_frames(residual_px: torch.Tensor, factor: float = 3.0, floor_px: float = 2.0) -> list[int]:
    """Indices (into the fitted frames) whose residual exceeds ``factor`` times the median and ``floor_px`` pixels:
    fits to check (a wrong detection, a local minimum), flagged in ``fit.json`` and printed."""
    limit = max(factor * float(residual_px.median()), floor_px)
    return [i for i, r in enumerate(residual_px.tolist()) if r > limit]


def fit_metadata(cfg: FitCaptureConfig, data: Any, body_source: str, keypoints: Any, result: FitResult,
                 masks_from: str) -> dict[str, Any]:
    """The content of ``fit.json``: inputs, settings, what started the fit, per-frame residuals (pixels) and the
    skipped frames with their reasons."""
    from posegen_ns.cli import jsonable

    res = result.residual_px
    suspect = set(high_residual_frames(res))
    frames = []
    for o, i in enumerate(result.frames.tolist()):
        frames.append({
            "index": o, "input_frame": i, "clip": data.clip_names[i], "frame": int(data.frame_ids[i]),
            "residual_px": _finite(res[o]),
            "residual_px_per_camera": {n: _finite(result.residual_px_camera[o, c]) for c, n in enumerate(data.camera_names)},
            "root_hypothesis": result.hypothesis[o],
            "high_residual": o in suspect,
        })
    return {
        "version": 1,
        "tool": PROG,
        "input": str(data.root),
        "body": body_source,
        "keypoints": keypoints.source,
        "joint_set": keypoints.joint_set,
        "initialisation": result.initialisation,
        "masks": masks_from,
        "betas": [round(float(b), 5) for b in result.betas],
        "residual_px": {"mean": _finite(res.mean()), "median": _finite(res.median()), "max": _finite(res.max())},
        "high_residual_frames": [int(result.frames[o]) for o in sorted(suspect)],
        "num_input_frames": data.num_frames,
        "num_fitted_frames": result.num_fitted,
        "frames": frames,
        "skipped": [
            {"input_frame": i, "clip": data.clip_names[i], "frame": int(data.frame_ids[i]), "reason": why}
            for i, why in sorted(result.skipped.items())
        ],
        "energy": {k: round(v, 6) for k, v in result.energy.items()},
        "seconds": round(result.seconds, 2),
        "settings": jsonable(cfg.fit),
    }


def main(cfg: FitCaptureConfig) -> Path:
    """Run the fit described by ``cfg`` and write the capture; returns its folder.

    Raises:
        PoseGenInputError: bad input (folder, keypoints, cameras), no BlazePose environment when keypoints are not
            given, an existing --output-dir without --overwrite, or no frame with enough keypoints.
    """
    from posegen_ns.atomic_io import check_writable
    from posegen_ns.body import load_body_model
    from posegen_ns.cli import say_for
    from posegen_ns.errors import PoseGenInputError
    from posegen_ns.fit.capture_io import fitted_capture, read_unfitted_capture, write_fitted_capture
    from posegen_ns.fit.detect import detect_blazepose
    from posegen_ns.fit.initialise import critic_guess, load_initialising_critic
    from posegen_ns.fit.keypoints import read_keypoints
    from posegen_ns.fit.solver import fit_keypoints

    say = say_for(PROG, quiet=cfg.quiet)
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not cfg.overwrite:
        raise PoseGenInputError(f"--output-dir {out} already exists; pass --overwrite or choose another folder.")
    check_writable(out.parent / f".{out.name}.probe", "--output-dir")
    t0 = time.perf_counter()
    data = read_unfitted_capture(cfg.input, cfg.fov_deg)
    body_source = cfg.body or data.body or "open"
    body = load_body_model(body_source)
    say(f"{data.root}: {data.num_frames} frames x {data.num_cameras} cameras ({data.width}x{data.height}), body '{body_source}'")
    bars = _Bars(cfg.quiet)
    try:
        if cfg.keypoints is not None:
            keypoints = read_keypoints(cfg.keypoints, data.num_frames, data.camera_names)
        else:
            say("no --keypoints: detecting them with BlazePose (COCO-17)")
            advance = bars("BlazePose", data.num_frames * data.num_cameras)
            keypoints = detect_blazepose(data.images, python=cfg.blazepose_python, advance=advance)
        guess = None
        if cfg.init == "critic":
            critic = load_initialising_critic(cfg.critic, body_source, say=say)
            if critic is not None:
                guess = critic_guess(critic, data.images, keypoints, data.R, cfg.fit.min_confidence,
                                     source=f"critic '{cfg.critic.name}'")
        else:
            say("--init rest: the fit starts from the rest pose")
        result = fit_keypoints(body, keypoints, data.K, data.R, data.t, cfg.fit, guess=guess,
                               clip_names=data.clip_names, frame_ids=data.frame_ids, progress=bars)
        if data.masks is None:
            masks_from = "fitted body silhouette (the input has no masks/)"
            advance = bars("masks from the fitted body", 1)
            masks = silhouettes(body, result, data.K, data.R, data.t, data.width, data.height)
            advance(1)
        else:
            masks_from, masks = "input", None
    finally:
        bars.close()
    capture = fitted_capture(data, body_source, result.frames, result.global_orient, result.body_pose, result.transl,
                             result.betas, masks)
    meta = fit_metadata(cfg, data, body_source, keypoints, result, masks_from)
    write_fitted_capture(capture, meta, out, overwrite=cfg.overwrite, extra_npz={
        "keypoints.npz": {"keypoints": keypoints.points.numpy(), "joint_set": np.asarray(keypoints.joint_set)}})
    for i, why in sorted(result.skipped.items()):
        say(f"[yellow]skipped[/yellow] frame {i} ({data.clip_names[i]} #{int(data.frame_ids[i])}): {why}")
    res = result.residual_px
    for o in high_residual_frames(res):
        i = int(result.frames[o])
        say(f"[yellow]check[/yellow] frame {i} ({data.clip_names[i]} #{int(data.frame_ids[i])}): residual "
            f"{float(res[o]):.1f} px, more than 3x the median {float(res.median()):.1f} px")
    say(f"fitted {result.num_fitted} of {data.num_frames} frames from the {result.initialisation} in "
        f"{time.perf_counter() - t0:.1f} s; reprojection residual mean {float(res.mean()):.2f} px, max "
        f"{float(res.max()):.2f} px (per frame and camera in {out / 'fit.json'})")
    say(f"wrote {out}; train on it with: ns-train posegen-human --data {out}")
    return out


def entrypoint() -> None:
    """Console script ``ns-posegen-fit``."""
    from posegen_ns.cli import run_console_script

    run_console_script(PROG, FitCaptureConfig, main)


if __name__ == "__main__":
    entrypoint()
