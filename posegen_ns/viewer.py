"""Hard-sample browser for the nerfstudio viewer.

:class:`HardSampleBrowser` lives on :class:`~posegen_ns.pipeline.PoseGenPipeline` as
``pipeline.hard_samples``. nerfstudio's viewer (``ns-train ... --vis viewer`` or ``ns-viewer``) finds
its ``ViewerElement`` attributes (``nerfstudio.viewer.utils.parse_object`` walks the pipeline's
``nn.Module`` tree) and installs them in the "Custom Elements / hard_samples" folder of the
Control tab; its ``ViewerControl`` gives it the viser server for scene nodes.

What the panel does:

- **Draw batch** renders a new batch of ``Batch size`` samples, both *hard* (the learned generator)
  and *prior* (the same real mocap poses, cameras uniform in the ranges): sample ``i`` of batch
  ``b`` is drawn exactly as ``ns-posegen-export --seed b`` draws sample ``i``
  (:func:`posegen_ns.export.render_batch`), so the hard sample and its prior pair share their real
  pose and the exported batch is the batch on screen.
- **Sample kind** switches between the hard samples and their prior pairs; **Previous / Next** and
  **Sample** step through the batch.
- The shown sample's pose becomes the model's ``viewer_pose`` (the main render shows it); the
  ground-truth skeleton (green) and the critic's predicted skeleton (red) are added to the 3D scene,
  with the sample's camera as a frustum carrying the overlay image; the panel shows the sample's
  render with both skeletons drawn (:func:`overlay_skeletons`), the critic's MPJPE and how much
  harder the sample is than its prior pair.
- **Export batch** writes the shown batch (its kind) with the dataset writer of
  ``ns-posegen-export`` (:func:`posegen_ns.export.export_samples`, atomic) to
  ``RUN/viewer_exports/batch-XXXX``.
- **The initial camera**: every browser that connects opens on the body framed as the capture's cameras
  frame it (:meth:`HardSampleBrowser.initial_camera`: the first training camera's position, orientation and
  vertical field of view, looking at the body in ``viewer_pose``, world +y up), instead of viser's default camera
  a few decimetres from the world origin, which is at the subject's feet.

The button callbacks only call plain methods (:meth:`HardSampleBrowser.draw_batch`,
:meth:`~HardSampleBrowser.select`, :meth:`~HardSampleBrowser.export_batch`), which work without a
viewer too.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
    ViewerNumber,
    ViewerText,
)

from posegen_ns.body.joint_sets import SKELETON_PARENTS
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import project_points
from posegen_ns.labels import root_of, select_joint_set
from posegen_ns.metrics import root_joint

GT_COLOR: Tuple[int, int, int] = (40, 220, 40)
"""RGB of the ground-truth skeleton."""
PRED_COLOR: Tuple[int, int, int] = (240, 40, 40)
"""RGB of the critic's predicted skeleton."""

MAX_BATCH = 64
"""Largest batch the panel draws (rendering happens inside the viewer's callback)."""


def overlay_skeletons(
    image: np.ndarray,  # (H, W, 3)
    joints_2d_gt: np.ndarray,  # (J, 2)
    joints_2d_pred: np.ndarray,  # (J, 2)
    parents: Sequence[int],
    thickness: int = 1,
) -> np.ndarray:
    """Draw a ground-truth and a predicted skeleton on an image.

    Each joint ``j`` with ``parents[j] >= 0`` gets a bone from ``parents[j]`` to ``j``, and every
    joint a dot; ground truth in :data:`GT_COLOR` first, the prediction in :data:`PRED_COLOR` on top.
    Joints follow the project's pixel convention (``u = fx x / z + cx``; pixel ``(x, y)`` covers
    ``[x, x+1) x [y, y+1)``), drawn with sub-pixel precision (OpenCV, 8-connected, no
    anti-aliasing). Bones and dots with a non-finite end (e.g. a black-box critic that found no
    person) are skipped.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in [0, 1]; not modified.
        joints_2d_gt: ``(J, 2)`` pixels.
        joints_2d_pred: ``(J, 2)`` pixels, same joint set.
        parents: ``(J,)`` parent index per joint, -1 for a root (see :data:`SKELETON_PARENTS`).
        thickness: line thickness, pixels.

    Returns:
        ``(H, W, 3)`` uint8 RGB copy with the skeletons drawn.

    Raises:
        PoseGenInputError: wrong shapes or a parent index out of range.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise PoseGenInputError(f"overlay_skeletons: image must be (H, W, 3) RGB, got shape {image.shape}")
    gt, pred = np.asarray(joints_2d_gt, dtype=np.float64), np.asarray(joints_2d_pred, dtype=np.float64)
    J = len(parents)
    for name, joints in (("joints_2d_gt", gt), ("joints_2d_pred", pred)):
        if joints.shape != (J, 2):
            raise PoseGenInputError(f"overlay_skeletons: {name} must be ({J}, 2) for {J} parents, got {joints.shape}")
    if any(not -1 <= p < J for p in parents):
        raise PoseGenInputError(f"overlay_skeletons: parents must be in [-1, {J}), got {tuple(parents)}")
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    out = np.ascontiguousarray(image.copy())
    shift = 4  # sub-pixel bits: cv2 points are fixed-point with pixel centres at integers

    def fixed(p: np.ndarray) -> Tuple[int, int]:
        return int(round((p[0] - 0.5) * (1 << shift))), int(round((p[1] - 0.5) * (1 << shift)))

    for joints, color in ((gt, GT_COLOR), (pred, PRED_COLOR)):
        ok = np.isfinite(joints).all(-1)
        for j, p in enumerate(parents):
            if p >= 0 and ok[j] and ok[p]:
                cv2.line(out, fixed(joints[p]), fixed(joints[j]), color, thickness, cv2.LINE_8, shift)
        for j in np.flatnonzero(ok):
            cv2.circle(out, fixed(joints[j]), thickness << shift, color, -1, cv2.LINE_8, shift)
    return out


def _png_data_url(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an ``(H, W, 3)`` uint8 RGB image."""
    import cv2

    ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("could not encode the overlay image as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


class ViewerMarkdown(ViewerElement[str]):
    """A markdown block in the viewer panel (viser ``gui.add_markdown``); images may be
    ``data:`` URLs. ``content`` is kept without a viewer and sent when installed."""

    def __init__(self, name: str, content: str = "", visible: bool = True) -> None:
        super().__init__(name, visible=visible)
        self._content = content

    def _create_gui_handle(self, viser_server) -> None:
        # image_root only silences viser's warning about relative paths; images here are data: URLs
        self.gui_handle = viser_server.gui.add_markdown(self._content, image_root=Path(__file__).parent, visible=self.visible)

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)

    @property
    def content(self) -> str:
        return self._content

    @content.setter
    def content(self, content: str) -> None:
        self._content = content
        if self.gui_handle is not None:
            self.gui_handle.content = content


@dataclass
class BrowserBatch:
    """One drawn batch: the same ``B`` real poses as hard samples and as their prior pairs.

    ``labels[kind]`` holds :data:`posegen_ns.export.LABEL_FIELDS` (numpy, ``B`` first: K, R, t,
    ``joints_*_cam`` / ``joints_*_2d``, ``critic_pred`` on ``joint_set``, ``critic_error_mm``...) and
    ``images[kind]`` the renders ``(B, H, W, 3)`` uint8, for ``kind`` in ``("hard", "prior")``.
    """

    number: int  # batch number in this session (also the draw seed unless given)
    seed: int  # ns-posegen-export --seed that draws the same samples
    joint_set: str  # the critic's joint set
    labels: Dict[str, Dict[str, np.ndarray]]
    images: Dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.labels["hard"]["sample_index"])


class _FramingViewerControl(ViewerControl):
    """nerfstudio's :class:`ViewerControl` (the viewer calls ``_setup`` with itself) that also hands every newly
    connected browser to ``on_connect`` (viser calls it once the browser has sent its first camera)."""

    def __init__(self, on_connect) -> None:
        super().__init__()
        self._on_connect = on_connect

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        viewer.viser_server.on_client_connect(self._on_connect)


class HardSampleBrowser(torch.nn.Module):
    """The viewer panel over hard samples of a :class:`~posegen_ns.pipeline.PoseGenPipeline` (see
    the module docstring).

    An ``nn.Module`` without parameters or buffers (the pipeline's state dict is unchanged) so that
    nerfstudio's viewer finds the elements below when it walks the pipeline's module tree. The
    pipeline is kept outside the module tree (``_pipeline``). Elements are installed in the
    alphabetical order of their attribute names, hence the names.

    Attributes:
        batch: the last drawn :class:`BrowserBatch` (None before the first draw).
        index: index of the shown sample in ``batch``.
        export_root: folder for exported batches; default ``RUN/viewer_exports`` (the viewer's run folder).
        exports: ``{(batch number, kind): folder}`` of what was exported this session.
    """

    def __init__(self, pipeline, default_batch_size: int = 8) -> None:
        super().__init__()
        object.__setattr__(self, "_pipeline", pipeline)
        self.batch: Optional[BrowserBatch] = None
        self.index = 0
        self.export_root: Optional[Path] = None
        self.exports: Dict[Tuple[int, str], Path] = {}
        self._draws = 0
        self.viewer_control = _FramingViewerControl(self.frame_client)
        self.batch_kind = ViewerDropdown(
            "Sample kind", "hard", ["hard", "prior"], cb_hook=self._on_kind,
            hint="hard: the learned generator's samples; prior: the same real poses with uniform cameras",
        )
        self.batch_size = ViewerNumber("Batch size", default_batch_size, hint=f"samples per drawn batch (1-{MAX_BATCH})")
        self.draw_button = ViewerButton("Draw batch", cb_hook=lambda _: self._guarded(self.draw_batch))
        self.sample_back = ViewerButton("Previous sample", cb_hook=lambda _: self._guarded(self.step, -1))
        self.sample_index = ViewerNumber("Sample", 0, cb_hook=self._on_index, hint="index of the shown sample in the batch")
        self.sample_next = ViewerButton("Next sample", cb_hook=lambda _: self._guarded(self.step, 1))
        self.sample_view = ViewerButton("View from sample camera", cb_hook=lambda _: self._guarded(self.view_from_sample))
        self.shown_error = ViewerText("Critic MPJPE (mm)", "no batch yet", disabled=True)
        self.shown_hardness = ViewerText("Hardness", "", disabled=True)
        self.shown_overlay = ViewerMarkdown("Overlay", "")
        self.write_export = ViewerButton("Export batch", cb_hook=lambda _: self._guarded(self.export_batch))
        self.write_status = ViewerText("Status", "", disabled=True)

    # ------------------------------------------------------------------ viewer plumbing
    @property
    def _server(self):
        return getattr(self.viewer_control, "viser_server", None)

    def _guarded(self, fn, *args):
        """Run a button action; errors go to the Status field (and the console) instead of viser's log."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the user, the viewer keeps running
            self.write_status.value = f"error: {exc}"
            CONSOLE.print(f"[bold red]hard-sample viewer: {exc}")
            return None

    def _on_kind(self, _element) -> None:
        if self.batch is not None:
            self._guarded(self.select, self.index)

    def _on_index(self, _element) -> None:
        if self.batch is not None and int(self.sample_index.value) != self.index:
            self._guarded(self.select, int(self.sample_index.value))

    @property
    def kind(self) -> str:
        """The shown kind, 'hard' or 'prior'."""
        return str(self.batch_kind.value)

    # ------------------------------------------------------------------ actions
    @torch.no_grad()
    def draw_batch(self, num: Optional[int] = None, seed: Optional[int] = None) -> BrowserBatch:
        """Render a new batch (hard samples and their prior pairs) and show its first sample.

        Args:
            num: batch size (default: the ``Batch size`` field), 1..MAX_BATCH.
            seed: draw seed (default: the batch number); sample ``i`` is ns-posegen-export's sample
                ``i`` with ``--seed seed``.

        Raises:
            PoseGenInputError: batch size out of range.
        """
        from posegen_ns.export import render_batch

        num = int(self.batch_size.value if num is None else num)
        if not 1 <= num <= MAX_BATCH:
            raise PoseGenInputError(f"Batch size must be in [1, {MAX_BATCH}], got {num}")
        pipeline = self._pipeline
        number = self._draws
        seed = number if seed is None else int(seed)
        labels, images = {}, {}
        was_training = pipeline.training
        pipeline.eval()
        try:
            for kind in ("hard", "prior"):
                labels[kind], images[kind], _ = render_batch(pipeline, range(num), kind == "hard", seed)
        finally:
            pipeline.train(was_training)
        self._draws += 1
        self.batch = BrowserBatch(number, seed, pipeline.critic.joint_set, labels, images)
        self.write_status.value = f"batch {number}: {num} samples (seed {seed})"
        self.select(0)
        return self.batch

    def step(self, delta: int) -> int:
        """Show the sample ``delta`` places on (wrapping around the batch); returns its index."""
        if self.batch is None:
            raise PoseGenInputError("no batch yet: press 'Draw batch' first")
        return self.select((self.index + delta) % len(self.batch))

    def select(self, index: int, kind: Optional[str] = None) -> int:
        """Show sample ``index`` (of ``kind``, default the ``Sample kind`` field): sets the model's
        ``viewer_pose``, the scene skeletons and camera, the overlay and the error texts.

        Raises:
            PoseGenInputError: no batch yet, index out of range or unknown kind.
        """
        if self.batch is None:
            raise PoseGenInputError("no batch yet: press 'Draw batch' first")
        if kind is not None:
            if kind not in ("hard", "prior"):
                raise PoseGenInputError(f"Sample kind must be 'hard' or 'prior', got {kind!r}")
            self.batch_kind.value = kind
        kind = self.kind
        B = len(self.batch)
        if not 0 <= index < B:
            raise PoseGenInputError(f"Sample must be in [0, {B - 1}] for a batch of {B}, got {index}")
        self.index = index
        if int(self.sample_index.value) != index:
            self.sample_index.value = index
        L = self.batch.labels[kind]
        model = self._pipeline.model
        dev = model.betas.device
        model.viewer_pose = tuple(
            torch.as_tensor(L[k][index], dtype=torch.float32, device=dev).clone()
            for k in ("body_pose", "global_orient", "transl")
        )
        self.shown_error.value = self._error_text(index, kind)
        self.shown_hardness.value = self._hardness_text(index)
        overlay = self.overlay(index, kind)
        self.shown_overlay.content = (
            f"**{kind} sample {index}** of batch {self.batch.number} — green: ground truth, red: critic "
            f"({self.batch.joint_set})\n\n![{kind} sample {index}]({_png_data_url(overlay)})"
        )
        self._update_scene(index, kind, overlay)
        return index

    def sample_camera(self, index: Optional[int] = None, kind: Optional[str] = None) -> Dict[str, np.ndarray]:
        """Camera of sample ``index`` (default the shown one) for viser (OpenCV axes, world frame, metres):
        ``position (3,)`` the camera centre ``-R^T t``, ``wxyz (4,)`` the camera-to-world rotation
        ``R^T`` as a quaternion, ``up (3,)`` the image's up direction in the world, ``fov`` vertical (radians)."""
        import viser.transforms as vtf

        if self.batch is None:
            raise PoseGenInputError("no batch yet: press 'Draw batch' first")
        index = self.index if index is None else index
        kind = kind or self.kind
        L = self.batch.labels[kind]
        K, R, t = (L[k][index].astype(np.float64) for k in ("K", "R", "t"))
        H = self.batch.images[kind].shape[1]
        return {"position": -R.T @ t, "wxyz": vtf.SO3.from_matrix(R.T).wxyz, "up": -R[1],
                "fov": np.float64(2 * np.arctan(H / (2 * K[1, 1])))}

    def initial_camera(self) -> Dict[str, np.ndarray]:
        """The camera a browser opens on: the first training camera of the capture (the capture's cameras frame the
        whole body) looking at the body in the model's ``viewer_pose``.

        The position and orientation are that camera's, with the look-at point on its optical axis at the depth of
        the centre of the posed body's bounding box (the orbit controls turn about it), the image's up direction as
        up (world +y for the capture writer's cameras) and its vertical field of view; so the opening view is the
        capture camera's image of the body.

        Returns:
            ``position (3,)``, ``look_at (3,)``, ``up (3,)`` world frame, metres (viser's scene is nerfstudio's
            world times ``VISER_NERFSTUDIO_SCALE_RATIO``), ``fov`` vertical, radians, and ``camera`` (its index).
        """
        pipeline = self._pipeline
        capture = pipeline.datamanager.train_capture
        camera = int(pipeline.datamanager.train_camera_indices[0])
        K, R, t = (x[camera].detach().double().cpu().numpy() for x in (capture.K, capture.R, capture.t))
        model = pipeline.model
        dev = model.betas.device
        body_pose, global_orient, transl = (torch.as_tensor(x, device=dev).float()[None] for x in model.viewer_pose)
        with torch.no_grad():
            verts = model.body(body_pose, global_orient, model.betas[None].float(), transl).vertices[0]
        verts = verts.double().cpu().numpy()
        centre = 0.5 * (verts.min(0) + verts.max(0))
        position = -R.T @ t
        depth = float(R[2] @ centre + t[2])
        return {"position": position, "look_at": position + depth * R[2], "up": -R[1],
                "fov": np.float64(2 * np.arctan(capture.height / (2 * K[1, 1]))), "camera": camera}

    def frame_client(self, client) -> None:
        """Move a newly connected browser's camera to :meth:`initial_camera` (the viewer calls this on connect;
        an error is printed, the browser keeps viser's default camera)."""
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO as S

        try:
            cam = self.initial_camera()
            with client.atomic():
                client.camera.up_direction = cam["up"]
                client.camera.position = cam["position"] * S
                client.camera.look_at = cam["look_at"] * S
                client.camera.fov = float(cam["fov"])
        except Exception as exc:  # noqa: BLE001 - the viewer keeps running with viser's default camera
            CONSOLE.print(f"[bold red]hard-sample viewer: could not set the initial camera: {exc}")

    def view_from_sample(self) -> int:
        """Move every connected browser's camera to the shown sample's camera (position, orientation,
        roll and vertical field of view), so the main render shows the sample as the critic saw it.
        Returns the number of browsers moved."""
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO as S

        cam = self.sample_camera()
        server = self._server
        clients = list(server.get_clients().values()) if server is not None else []
        for client in clients:
            with client.atomic():
                client.camera.position = cam["position"] * S
                client.camera.up_direction = cam["up"]
                client.camera.wxyz = cam["wxyz"]
                client.camera.fov = float(cam["fov"])
        return len(clients)

    def export_batch(self) -> Path:
        """Write the shown batch (its shown kind) as a dataset with ns-posegen-export's writer
        (atomic: a partial folder renamed when complete) into ``export_root/batch-XXXX`` (next free
        number); exporting the same batch and kind again returns the earlier folder.

        Raises:
            PoseGenInputError: no batch yet, or no folder to write to (no viewer and no ``export_root``).
        """
        from posegen_ns.export import export_samples

        if self.batch is None:
            raise PoseGenInputError("no batch yet: press 'Draw batch' first")
        key = (self.batch.number, self.kind)
        if key in self.exports and self.exports[key].is_dir():
            self.write_status.value = f"already exported to {self.exports[key]}"
            return self.exports[key]
        root, run_config = self._export_root()
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name.split("-")[1]) for p in root.glob("batch-*") if p.name.split("-")[1].isdigit()]
        target = root / f"batch-{max(taken, default=-1) + 1:04d}"
        pipeline = self._pipeline
        was_training = pipeline.training
        try:
            with torch.no_grad():
                export_samples(pipeline, target, len(self.batch), kind=self.kind, batch_size=len(self.batch),
                               seed=self.batch.seed, run_config=run_config, image_workers=2)
        finally:
            pipeline.train(was_training)
        self.exports[key] = target
        self.write_status.value = f"exported {len(self.batch)} {self.kind} samples to {target}"
        CONSOLE.print(f"hard-sample viewer: exported {len(self.batch)} {self.kind} samples to {target}")
        return target

    # ------------------------------------------------------------------ what is shown
    def _export_root(self) -> Tuple[Path, Optional[Path]]:
        if self.export_root is not None:
            run_dir = None
            root = Path(self.export_root)
        else:
            viewer = getattr(self.viewer_control, "viewer", None)
            if viewer is None:
                raise PoseGenInputError("no folder to export to: set HardSampleBrowser.export_root (no viewer is attached)")
            run_dir = Path(viewer.log_filename).parent
            root = run_dir / "viewer_exports"
        config = run_dir / "config.yml" if run_dir is not None else None
        return root, config if config is not None and config.is_file() else None

    def critic_joints(self, index: int, kind: Optional[str] = None) -> Dict[str, np.ndarray]:
        """Ground truth and prediction of sample ``index`` on the critic's joint set ``J``.

        Returns:
            ``gt_cam``, ``pred_cam`` ``(J, 3)`` camera frame, metres (the root-relative prediction
            placed at the ground-truth root, the root as the pipeline defines it for the critic);
            ``gt_world``, ``pred_world`` ``(J, 3)`` world frame, metres (``R^T (x - t)``);
            ``gt_2d``, ``pred_2d`` ``(J, 2)`` pixels (projected with ``K``).
        """
        assert self.batch is not None
        L = self.batch.labels[kind or self.kind]
        js = self.batch.joint_set
        h36m, smpl = L["joints_h36m_cam"][index], L["joints_smpl_cam"][index]
        gt_cam = select_joint_set(js, h36m[None], smpl[None])[0]
        root = root_joint(torch.from_numpy(gt_cam)[None], root_of(js))[0, 0].numpy()  # the critic's root, camera frame
        pred_cam = L["critic_pred"][index] + root
        K, R, t = L["K"][index], L["R"][index], L["t"][index]
        out = {"gt_cam": gt_cam, "pred_cam": pred_cam}
        for name, cam in (("gt", gt_cam), ("pred", pred_cam)):
            out[f"{name}_world"] = (cam - t) @ R  # R^T (x - t), row vectors
            # camera-frame points: project with K and the identity pose
            uv, _ = project_points(torch.from_numpy(cam)[None].float(), torch.from_numpy(K)[None],
                                   torch.eye(3)[None], torch.zeros(1, 3))
            out[f"{name}_2d"] = uv[0].numpy()
        return out

    def overlay(self, index: int, kind: Optional[str] = None, min_size: int = 256) -> np.ndarray:
        """Render of sample ``index`` with both skeletons drawn (:func:`overlay_skeletons`),
        enlarged by an integer factor (nearest) to at least ``min_size`` pixels on its long side.
        Returns ``(s H, s W, 3)`` uint8."""
        assert self.batch is not None
        image = self.batch.images[kind or self.kind][index]
        s = max(1, math.ceil(min_size / max(image.shape[:2])))
        big = np.repeat(np.repeat(image, s, 0), s, 1)
        j = self.critic_joints(index, kind)
        return overlay_skeletons(big, j["gt_2d"] * s, j["pred_2d"] * s, SKELETON_PARENTS[self.batch.joint_set],
                                 thickness=max(1, round(max(big.shape[:2]) / 150)))

    def _error_text(self, index: int, kind: str) -> str:
        err = self.batch.labels[kind]["critic_error_mm"]
        return f"{err[index]:.1f} (batch mean {np.nanmean(err):.1f}, {kind})"

    def _hardness_text(self, index: int) -> str:
        """Hard vs. its prior pair (same real pose): error ratio and how far the generator moved the pose."""
        from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle

        H, P = self.batch.labels["hard"], self.batch.labels["prior"]
        ratio = H["critic_error_mm"][index] / P["critic_error_mm"][index]
        rot_h, rot_p = (axis_angle_to_matrix(torch.from_numpy(L["body_pose"][index]).reshape(23, 3)) for L in (H, P))
        change = matrix_to_axis_angle(rot_p.transpose(-1, -2) @ rot_h).norm(dim=-1).mean()  # mean over the 23 joints
        text = f"hard / prior pair x{ratio:.2f}; pose moved {math.degrees(float(change)):.1f} deg/joint"
        ref = self._pipeline.reference_error
        if bool(torch.isfinite(ref)):
            text += f"; hard / running prior x{H['critic_error_mm'][index] / (float(ref) * 1000):.2f} " \
                    f"(target x{self._pipeline.config.sampler.target_ratio:.1f})"
        return text

    def _update_scene(self, index: int, kind: str, overlay: np.ndarray) -> None:
        """Skeletons (3D lines and joints) and the sample's camera frustum in the viser scene."""
        server = self._server
        if server is None:
            return
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO as S

        j = self.critic_joints(index, kind)
        parents = SKELETON_PARENTS[self.batch.joint_set]
        for name, color in (("gt", GT_COLOR), ("pred", PRED_COLOR)):
            world = j[f"{name}_world"] * S
            ok = np.isfinite(world).all(-1)
            for c, p in enumerate(parents):
                if p >= 0:
                    server.scene.add_spline_catmull_rom(
                        f"/hard_samples/{name}/bone_{c:02d}", world[[p, c]] if ok[p] and ok[c] else np.zeros((2, 3)),
                        line_width=3.0, color=color, segments=1, visible=bool(ok[p] and ok[c]),
                    )
            server.scene.add_point_cloud(f"/hard_samples/{name}/joints", world[ok].astype(np.float32),
                                         colors=color, point_size=0.15, point_shape="circle")
        cam = self.sample_camera(index, kind)
        H, W = self.batch.images[kind].shape[1:3]
        server.scene.add_camera_frustum(
            "/hard_samples/camera", fov=float(cam["fov"]), aspect=W / H, scale=1.0, color=PRED_COLOR,
            image=overlay, format="png", wxyz=cam["wxyz"], position=cam["position"] * S,
        )
