"""Labels agree with pixels: every projected SMPL-24 joint of a labelled image lies on the person in that image.

The exact label maths is tested elsewhere (test_end_to_end, test_labels); here the rendered image is checked
against its label, for every path that writes or shows labelled images: the exporter (field renders of a tiny,
quickly trained run), the viewer's overlay (the hard-sample browser), and the experiment's mesh renders (the
``ours-mesh`` scorer and the evaluation set of ``iter_eval_batches``). A joint "lies inside the mask" when the
pixel holding it (pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``) is at most ``TOLERANCE_PX`` pixels from a
mask pixel (a dilation of the mask by that radius). Tiny body, 40-64 px images.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from posegen_ns.geometry import project_points

TOLERANCE_PX = 2.0
"""Largest distance (pixels) from a joint's pixel to the nearest pixel of the person's mask."""


def joint_mask_distance(mask: np.ndarray, joints_2d: np.ndarray) -> np.ndarray:
    """Distance in pixels from each joint's pixel to the nearest mask pixel (0 inside the mask).

    Args:
        mask: ``(H, W)`` bool, the person's pixels.
        joints_2d: ``(J, 2)`` pixel coordinates (x, y).

    Returns:
        ``(J,)`` distances; ``inf`` for a joint outside the image.
    """
    mask = np.asarray(mask, dtype=bool)
    H, W = mask.shape
    dist = distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, np.inf)
    x, y = np.floor(joints_2d[:, 0]).astype(np.int64), np.floor(joints_2d[:, 1]).astype(np.int64)
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    out = np.full(len(joints_2d), np.inf)
    out[inside] = dist[y[inside], x[inside]]
    return out


def assert_joints_on_masks(masks: np.ndarray, joints_2d: np.ndarray, what: str) -> None:
    """Every joint of every image within ``TOLERANCE_PX`` of its mask; ``masks (B, H, W)``, ``joints_2d (B, J, 2)``."""
    assert len(masks) == len(joints_2d) and len(masks) > 0
    for i, (mask, joints) in enumerate(zip(masks, joints_2d)):
        assert mask.any(), f"{what}: image {i} has an empty mask"
        d = joint_mask_distance(mask, joints)
        bad = np.flatnonzero(d > TOLERANCE_PX)
        assert bad.size == 0, (f"{what}: image {i}, joints {bad.tolist()} at {joints[bad].round(1).tolist()} are "
                               f"{d[bad].round(1).tolist()} px from the mask (tolerance {TOLERANCE_PX} px)")


def test_joint_mask_distance_by_hand():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:6] = True  # rows 2..4, columns 3..5
    joints = np.array([[4.9, 3.2], [7.5, 3.5], [3.0, 8.99], [12.0, 1.0], [-0.1, 4.0]])
    np.testing.assert_allclose(joint_mask_distance(mask, joints), [0.0, 2.0, 4.0, np.inf, np.inf])
    with pytest.raises(AssertionError, match=r"joints \[1\]"):
        assert_joints_on_masks(mask[None], np.array([[[4.5, 3.5], [9.5, 3.5]]]), "hand-made")


# ------------------------------------------------------------------------------------ a tiny trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """posegen-human-tiny on a tiny-body capture (2 cameras, 40 px), trained in-process for 4 field steps and
    2 sampler steps with nerfstudio's Trainer (no checkpoint or report: only the steps)."""
    from posegen_ns.configs import posegen_human_tiny
    from posegen_ns.data.default_capture import build_default_capture

    root = tmp_path_factory.mktemp("labels_pixels")
    capture = build_default_capture(root / "capture", body="tiny", num_cameras=2, resolution=40, frame_stride=24,
                                    max_frames_per_clip=3, verbose=False)
    cfg = copy.deepcopy(posegen_human_tiny.config)
    cfg.data = cfg.pipeline.datamanager.data = capture
    cfg.output_dir = root / "outputs"
    cfg.pipeline.field_steps = 4
    cfg.max_num_iterations = 6
    cfg.machine.device_type = "cpu"
    cfg.set_timestamp()
    torch.manual_seed(0)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    for step in range(cfg.max_num_iterations):
        trainer.train_iteration(step)
    pipeline = trainer.pipeline
    pipeline.eval()
    return pipeline


@pytest.mark.parametrize("kind", ["hard", "prior"])
def test_exported_smpl24_joints_lie_in_their_masks(trained, tmp_path, kind):
    """ns-posegen-export's files: labels.npz ``joints_smpl_2d`` against ``masks/*.png`` (alpha > 0.5)."""
    from posegen_ns.export import export_samples

    out = export_samples(trained, tmp_path / kind, 8, kind=kind, batch_size=4, seed=2)
    labels = np.load(out / "labels.npz")
    names = sorted((out / "masks").iterdir())
    assert len(names) == 8
    masks = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127 for p in names])
    order = np.argsort(labels["sample_index"])
    assert_joints_on_masks(masks, labels["joints_smpl_2d"][order], f"export ({kind})")


def test_viewer_overlay_joints_lie_in_the_rendered_person(trained):
    """The hard-sample browser: sample ``i`` of a batch drawn with seed ``s`` is the exporter's sample ``i`` with
    ``--seed s`` (same labels), so the exporter's masks are the browser's images' masks. The critic-set ground
    truth the overlay draws (``critic_joints(i)["gt_2d"]``) and the SMPL-24 joints lie on the person, and the
    overlay (the image enlarged ``s`` times) has the ground-truth dots on the enlarged mask."""
    from posegen_ns.export import render_batch
    from posegen_ns.viewer import GT_COLOR, PRED_COLOR

    browser = trained.hard_samples
    batch = browser.draw_batch(4, seed=5)
    for kind in ("hard", "prior"):
        labels, rgb, mask = render_batch(trained, range(4), kind == "hard", 5)
        np.testing.assert_allclose(batch.labels[kind]["K"], labels["K"])
        np.testing.assert_allclose(batch.labels[kind]["joints_smpl_2d"], labels["joints_smpl_2d"], atol=1e-4)
        np.testing.assert_array_equal(batch.images[kind], rgb)
        masks = mask > 127
        assert_joints_on_masks(masks, batch.labels[kind]["joints_smpl_2d"], f"viewer SMPL-24 ({kind})")
        gt = np.stack([browser.critic_joints(i, kind)["gt_2d"] for i in range(4)])
        assert_joints_on_masks(masks, gt, f"viewer overlay, {batch.joint_set} ({kind})")
        for i in range(4):
            overlay = browser.overlay(i, kind)
            s = overlay.shape[0] // masks.shape[1]
            big_mask = np.repeat(np.repeat(masks[i], s, 0), s, 1)
            dots = gt[i] * s
            x, y = np.floor(dots[:, 0]).astype(int), np.floor(dots[:, 1]).astype(int)
            drawn = overlay[y, x]
            assert (np.all(drawn == GT_COLOR, -1) | np.all(drawn == PRED_COLOR, -1)).all()  # a dot at each joint
            d = joint_mask_distance(big_mask, dots)
            assert (d <= TOLERANCE_PX * s).all(), (kind, i, d.round(1).tolist())


# ------------------------------------------------------------------------------------ the experiment's mesh renders


def test_experiment_mesh_scorer_joints_lie_in_the_silhouette(trained):
    """``ours-mesh``: the pipeline's samples and cameras, rendered as the body mesh (labelled_mesh_renderer)."""
    from posegen_ns.experiment import mesh_scorer

    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for hard in (True, False):
            scored = mesh_scorer(trained)(trained.draw(8, hard=hard, noise=gen))
            masks = (scored.alpha[..., 0] > 0.5).numpy()
            assert_joints_on_masks(masks, scored.joints_smpl_2d.numpy(), f"experiment mesh scorer (hard={hard})")


def test_evaluation_renders_joints_lie_in_the_silhouette():
    """The evaluation set (``iter_eval_batches``, the experiment's ``build_eval_set`` and ``ns-posegen-eval``):
    the view ring at three elevations and three distances, rendered by the mesh renderer at 64 px. Each batch's
    labels are the ones of the rendered camera, and every joint inside the image lies on the silhouette. Near
    views (distance x 0.8, the person larger than the framing rule's 75 %) may cut the feet off at the bottom of
    the image (the camera looks at the pelvis); views at the framing distance and farther keep every joint in."""
    from posegen_ns.body import load_body_model
    from posegen_ns.data.pose_bank import bank_motions
    from posegen_ns.data.poses import load_pose_bank
    from posegen_ns.evaluate import ViewConfig, iter_eval_batches, labelled_mesh_renderer
    from posegen_ns.labels import camera_gt

    body = load_body_model("tiny")
    motions = bank_motions(load_pose_bank("tiny", stride=48), max_frames=2)[:3]
    betas = torch.zeros(body.num_betas)
    mesh = labelled_mesh_renderer(body)
    rendered = []

    def render(body_pose, global_orient, transl, K, R, t, size):
        out = mesh(body_pose, global_orient, transl, K, R, t, size, size, betas=betas[None].expand(len(body_pose), -1))
        rendered.append((out, K, R, t))
        return out.rgb

    scales = (0.8, 1.0, 1.4)
    views = ViewConfig(num_cameras=4, elevations_deg=(-10.0, 20.0, 45.0), resolution=64, distance_scales=scales)
    V = 4 * 3 * len(scales)
    cut = 0
    for batch in iter_eval_batches(motions, body, betas, render, "smpl24", views, batch_size=16):
        out, K, R, t = rendered[-1]
        torch.testing.assert_close(batch.gt, camera_gt("smpl24", out.body, R, t))  # labels of the rendered camera
        uv = project_points(out.body.joints, K, R, t)[0].numpy()
        masks = (out.alpha[..., 0] > 0.5).numpy()
        for i in range(len(uv)):
            in_image = (uv[i] >= 0).all(-1) & (uv[i, :, 0] < 64) & (uv[i, :, 1] < 64)
            scale = scales[int(batch.view_index[i]) // (V // len(scales))]
            if not in_image.all():
                assert scale < 1.0, f"view {int(batch.view_index[i])} (distance x{scale}) cuts joints off"
                assert (uv[i, ~in_image, 1] >= 64).all()  # only at the bottom: the feet
                cut += 1
            assert_joints_on_masks(masks[i : i + 1], uv[i : i + 1, in_image], f"evaluation view {int(batch.view_index[i])}")
    assert len(rendered) > 0 and cut < len(rendered) * 16 // 2
