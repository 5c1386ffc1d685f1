"""Contact sheet of a trained run's hard samples, and how diverse they are.

    python scripts/contact_sheet.py --load-config RUN/config.yml --output sheet.png [--num 16] [--seed 0]

Draws ``--num`` (default 16) (pose, camera) samples from the run's learned hard distribution
(``pipeline.draw(hard=True)``), renders them with the trained field and scores them with the run's
critic (``pipeline.render_and_score``), and writes a grid of pairs: each render as it is, and beside it
the render with the exact labels drawn over it: the ground-truth SMPL-24 skeleton (projected joints, green) and, in red, the critic's
prediction (its root-relative joints placed at the ground-truth root and projected with the sample's
``K``; bones from :data:`posegen_ns.body.joint_sets.SKELETON_PARENTS`; H36M-17 and SMPL-24 critics). Each tile is captioned with the critic's MPJPE (mm).

It then prints :meth:`posegen_ns.pipeline.PoseGenPipeline.diversity` for ``--num-diversity`` hard and
as many prior samples (real mocap poses, uniform cameras): the mean pairwise joint distance (mm) of
root-relative poses in the body frame and the spread (std) of each camera parameter (azimuth: circular std and mean); a hard
distribution that collapsed shows much smaller numbers than the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import tyro

from posegen_ns.body.joint_sets import SKELETON_PARENTS
from posegen_ns.data.capture_data import write_png


@dataclass
class ContactSheetConfig:
    """Render a grid of a run's hard samples with label overlays and print their diversity."""

    load_config: Path
    """RUN/config.yml of an ns-train posegen-human run."""
    output: Path = Path("contact_sheet.png")
    """PNG to write."""
    num: int = 16
    """Samples on the sheet (ceil(sqrt(num)) columns of (render, render with labels) pairs)."""
    tile: int = 192
    """Side of one tile in pixels (renders are upscaled, nearest neighbour)."""
    num_diversity: int = 64
    """Hard and prior samples used for the diversity figures."""
    seed: int = 0
    """Seed of the samples."""


def _draw_skeleton(img: np.ndarray, pts: np.ndarray, bones, color, scale: float) -> None:
    for a, b in bones:
        pa, pb = pts[a] * scale, pts[b] * scale
        if np.isfinite(pa).all() and np.isfinite(pb).all():
            cv2.line(img, tuple(int(round(v)) for v in pa), tuple(int(round(v)) for v in pb), color, 1, cv2.LINE_AA)
    for p in pts:
        if np.isfinite(p).all():
            cv2.circle(img, tuple(int(round(v)) for v in p * scale), 1, color, -1, cv2.LINE_AA)


@torch.no_grad()
def contact_sheet(cfg: ContactSheetConfig) -> dict:
    """Write the sheet and return ``{"hard": diversity, "prior": diversity, "errors_mm": [...]}``."""
    from posegen_ns.cli import load_run
    from posegen_ns.geometry import project_points

    pipeline = load_run(cfg.load_config)
    pipeline.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    s = pipeline.render_and_score(pipeline.draw(cfg.num, hard=True, noise=gen))
    B, H, W, _ = s.images.shape
    # the critic's root-relative prediction placed at the ground-truth root (camera frame), projected with K
    js = pipeline.critic.joint_set
    root = {"h36m17": s.joints_h36m_cam[:, :1], "smpl24": s.joints_smpl_cam[:, :1]}.get(js)
    pred_cam = s.pred_joints + root if root is not None else None  # LSP-14 (hip mid-point root): not drawn
    eye = torch.eye(3, device=s.K.device).expand(B, 3, 3)
    pred_2d = project_points(pred_cam, s.K, eye, torch.zeros(B, 3, device=s.K.device))[0] if pred_cam is not None else None
    bones = {name: [(j, p) for j, p in enumerate(parents) if p >= 0] for name, parents in SKELETON_PARENTS.items()}
    cols = math.ceil(math.sqrt(B))
    rows = math.ceil(B / cols)
    scale = cfg.tile / max(H, W)
    T = cfg.tile
    sheet = np.zeros((rows * T, cols * 2 * T, 3), dtype=np.uint8)  # each sample: the render, then the render with labels
    for i in range(B):
        img = (s.images[i].clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        img = cv2.resize(img, (int(W * scale), int(H * scale)), interpolation=cv2.INTER_NEAREST)[:T, :T].copy()
        over = img.copy()
        _draw_skeleton(over, s.joints_smpl_2d[i].cpu().numpy(), bones["smpl24"], (60, 220, 60), scale)
        if pred_2d is not None:
            _draw_skeleton(over, pred_2d[i].cpu().numpy(), bones[js], (230, 50, 50), scale)
        cv2.putText(over, f"{1000 * float(s.error[i]):.0f} mm", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        y, x = r * T, c * 2 * T
        sheet[y : y + img.shape[0], x : x + img.shape[1]] = img
        sheet[y : y + over.shape[0], x + T : x + T + over.shape[1]] = over
    write_png(cfg.output, sheet)  # the project's PNG writer (atomic; creates the folder)
    out = {
        "hard": pipeline.diversity(pipeline.draw(cfg.num_diversity, hard=True, noise=torch.Generator().manual_seed(cfg.seed + 1))),
        "prior": pipeline.diversity(pipeline.draw(cfg.num_diversity, hard=False, noise=torch.Generator().manual_seed(cfg.seed + 1))),
        "errors_mm": [1000 * float(e) for e in s.error],
    }
    print(f"wrote {cfg.output}: {B} hard samples, critic MPJPE {np.nanmean(out['errors_mm']):.1f} mm "
          f"(green: ground-truth SMPL-24 skeleton, red: critic's {js} prediction at the true root)")
    print(f"diversity over {cfg.num_diversity} samples each:")
    print(f"  {'measure':<28}{'hard':>10}{'prior':>10}")
    for k in out["hard"]:
        print(f"  {k:<28}{out['hard'][k]:>10.3f}{out['prior'][k]:>10.3f}")
    return out


if __name__ == "__main__":
    contact_sheet(tyro.cli(ContactSheetConfig))
