"""The labelling core: (pose, camera) -> cameras, exact labels, person boxes, critic scores.

Every part of posegen-ns that renders a labelled image calls these functions, so the pipeline's
sampler, the exporter, the viewer, the evaluation, the experiment, fine-tuning and the critic's
source renders share one camera rule, one ground truth and one crop box:

- **Camera rule** (:func:`orbit_cameras`): the camera orbits the pelvis of the posed body (with
  ``transl = 0`` the pelvis is the shaped rest pelvis, :meth:`BodyModel.rest_joints`); azimuth is
  measured about world +y from the direction the body faces (its +z axis rotated by
  ``global_orient``, :func:`body_yaw`), so azimuth 0 is a frontal view; then elevation, distance and
  roll about the optical axis. ``K`` has square pixels and its principal point at the image centre
  (:func:`intrinsics`), unless a caller frames each image tightly (:func:`fit_intrinsics`).
- **Framing** (:func:`framing_focal`): the focal length at which the subject's rest-pose height spans
  ``fill`` of the image height at ``distance`` metres (``f = fill * H * distance / height``); the
  pipeline's sampler multiplies it by its ``focal_scale``.
- **Ground truth** (:func:`camera_gt`): joints of the critic's joint set (H36M-17, SMPL-24 or LSP-14)
  in the OpenCV camera frame, metres, relative to the joint set's root (:func:`root_of`: the pelvis,
  index :data:`~posegen_ns.body.joint_sets.ROOT_INDEX`; LSP-14 has none, so the mid-point of its two
  hips, SPIN's LSP pelvis).
- **Person boxes** (:func:`person_boxes`): a square around the projected H36M-17 joints (the set with
  the head top, as SPIN's and HybrIK's boxes come from keypoints that include it) with a 20 % margin
  (:data:`BOX_SCALE`). Fine-tuning, evaluation and the source renders therefore crop the same way.
- **Render and score** (:func:`render_and_score`): any renderer returning ``rgb``, ``alpha`` and the
  posed ``body`` (the Gaussian field's :meth:`~posegen_ns.model.PoseGenModel.render` or the mesh
  renderer), then the critic on the boxes, its error against the ground truth.

Conventions (:mod:`posegen_ns.geometry`): metres, pixels, radians; world y-up; OpenCV cameras
(x right, y down, z forward; ``x_cam = R x_world + t``). Shapes: B samples, J joints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from posegen_ns.body.joint_sets import JOINT_SETS, ROOT_INDEX
from posegen_ns.errors import PoseGenInputError
from posegen_ns.geometry import axis_angle_to_matrix, matrix_to_axis_angle, orbit_extrinsics, project_points
from posegen_ns.metrics import Root, mpjpe, root_align

BOX_JOINT_SET = "h36m17"
"""The joints every person box is drawn around (projected H36M-17, head top included)."""
BOX_SCALE = 1.2
"""Box side relative to the joints' extent (20 % margin), SPIN's ``scale`` convention."""
FRAMING_FILL = 0.75
"""Default share of the image height the subject's rest-pose height spans at :data:`FRAMING_DISTANCE`."""
FRAMING_DISTANCE = 3.0
"""Default camera distance (metres) of the framing rule."""


# ---- joint sets and roots ---------------------------------------------------------------------
def root_of(joint_set: str) -> Root:
    """The :data:`~posegen_ns.metrics.Root` of a joint set: its pelvis index from
    :data:`~posegen_ns.body.joint_sets.ROOT_INDEX` (0 for H36M-17 and SMPL-24) or, for LSP-14 which
    has no pelvis, ``"midhip_lsp"`` (the mean of its two hips, SPIN's LSP pelvis).

    Raises:
        PoseGenInputError: an unknown joint set.
    """
    if joint_set not in JOINT_SETS:
        raise PoseGenInputError(f"joint set {joint_set!r} is not one of {sorted(JOINT_SETS)}.")
    index = ROOT_INDEX[joint_set]
    return "midhip_lsp" if index is None else index


def joints_in(joint_set: str, body_output: Any) -> Tensor:
    """Joints ``(B, J, 3)`` of a posed body (:class:`~posegen_ns.body.model.BodyOutput`, any frame) in
    ``joint_set``: ``joints_h36m`` (the body's H36M regressor), ``joints`` (SMPL-24) or ``joints_lsp``.

    Raises:
        PoseGenInputError: an unknown joint set.
    """
    root_of(joint_set)
    return {"h36m17": body_output.joints_h36m, "smpl24": body_output.joints, "lsp14": body_output.joints_lsp}[joint_set]


def to_camera(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """World points ``(B, J, 3)`` -> OpenCV camera frame ``R x + t`` ``(B, J, 3)``; ``R (B, 3, 3)``, ``t (B, 3)``."""
    return torch.einsum("bij,bnj->bni", R, points) + t[:, None, :]


def camera_gt(joint_set: str, body_output: Any, R: Tensor, t: Tensor) -> Tensor:
    """What a critic predicts: ground-truth joints ``(B, J, 3)`` of ``joint_set`` in the camera frame
    (OpenCV axes, metres), relative to the joint set's root (:func:`root_of`), for a world-frame
    ``body_output`` seen by cameras ``R (B, 3, 3)``, ``t (B, 3)``."""
    return root_align(to_camera(joints_in(joint_set, body_output), R, t), root_of(joint_set))


def select_joint_set(joint_set: str, joints_h36m: Tensor, joints_smpl: Tensor) -> Tensor:
    """Labels of ``joint_set`` ``(B, J, 3)`` (or ``(B, J, 2)``) from H36M-17 ``(B, 17, D)`` and SMPL-24
    ``(B, 24, D)`` labels in any frame (not root-aligned): LSP-14 is the H36M-17 subset
    :data:`~posegen_ns.body.joint_sets.H36M_TO_LSP14`.

    Raises:
        PoseGenInputError: an unknown joint set.
    """
    from posegen_ns.body.joint_sets import H36M_TO_LSP14

    root_of(joint_set)
    if joint_set == "smpl24":
        return joints_smpl
    if joint_set == "h36m17":
        return joints_h36m
    return joints_h36m[:, list(H36M_TO_LSP14)]


def gt_from_camera_joints(joint_set: str, joints_h36m_cam: Tensor, joints_smpl_cam: Tensor) -> Tensor:
    """:func:`camera_gt` from labels already in the camera frame: ``joints_h36m_cam (B, 17, 3)`` and
    ``joints_smpl_cam (B, 24, 3)`` metres -> root-relative ``(B, J, 3)`` in ``joint_set``."""
    return root_align(select_joint_set(joint_set, joints_h36m_cam, joints_smpl_cam), root_of(joint_set))


def critic_error(pred: Tensor, gt: Tensor, joint_set: str) -> Tensor:
    """Per-sample MPJPE ``(B,)`` in metres of ``pred`` against ``gt`` ``(B, J, 3)``, both aligned at
    the joint set's root (a critic that already predicts root-relative joints is unchanged by it).
    Differentiable in ``pred``."""
    return mpjpe(pred, gt, root_of(joint_set))


def camera_frame_orient(global_orient: Tensor, R: Tensor) -> Tensor:
    """SMPL global orientation seen from the camera: axis-angle of ``R @ R(global_orient)``, ``(B, 3)``
    radians, for ``global_orient (B, 3)`` world axis-angle and world-to-camera ``R (B, 3, 3)``. With
    the camera-frame translation this poses the body in the camera frame (SPIN's and HybrIK's ``pose[:3]``)."""
    return matrix_to_axis_angle(R @ axis_angle_to_matrix(global_orient.to(R.dtype)))


def camera_frame_smpl(
    global_orient: Tensor,  # (B, 3)
    transl: Tensor,  # (B, 3)
    rest_pelvis: Tensor,  # (B, 3)
    R: Tensor,  # (B, 3, 3)
    t: Tensor,  # (B, 3)
) -> tuple[Tensor, Tensor]:
    """SMPL root parameters that pose the body directly in an OpenCV camera frame.

    SMPL rotates the body about its shaped rest pelvis ``J0``: ``x = R_g (x_rest - J0) + J0 + transl``
    (smplx ``lbs``). With ``x_cam = R x + t``, the same body in the camera frame is SMPL with
    ``R_g' = R R_g`` and ``transl' = R (J0 + transl) + t - J0``.

    Args:
        global_orient: world-frame global orientation, axis-angle radians.
        transl: world-frame SMPL translation, metres.
        rest_pelvis: ``J0``, the pelvis of the shaped rest pose (``BodyOutput.rest_joints[:, 0]``), metres.
        R, t: world-to-camera rotation and translation (metres).

    Returns:
        ``global_orient_cam (B, 3)`` axis-angle radians and ``transl_cam (B, 3)`` metres.
    """
    transl_cam = torch.einsum("bij,bj->bi", R, rest_pelvis + transl) + t - rest_pelvis
    return camera_frame_orient(global_orient, R), transl_cam


# ---- cameras -----------------------------------------------------------------------------------
def body_yaw(global_orient: Tensor) -> Tensor:
    """Heading ``(B,)`` radians of bodies with ``global_orient (B, 3)`` (axis-angle, world y-up): the
    angle about world +y of the body's front (its +z axis rotated by ``global_orient``), 0 when it
    faces world +z, ``atan2(front_x, front_z)``."""
    forward = axis_angle_to_matrix(global_orient)[..., :, 2]
    return torch.atan2(forward[..., 0], forward[..., 2])


def intrinsics(focal: Tensor | float, width: int, height: int, batch: int | None = None) -> Tensor:
    """Pinhole ``K (B, 3, 3)`` with square pixels of focal length ``focal`` (pixels; a float or
    ``(B,)``) and the principal point at the image centre ``(width / 2, height / 2)``. ``batch`` gives
    B when ``focal`` is a float."""
    f = focal if isinstance(focal, Tensor) else torch.tensor(float(focal))
    if f.ndim == 0:
        f = f.expand(batch or 1)
    K = torch.zeros(f.shape[0], 3, 3, dtype=f.dtype, device=f.device)
    K[:, 0, 0] = K[:, 1, 1] = f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    return K


def subject_height(body: Any, betas: Tensor) -> float:
    """Rest-pose height (metres, extent along world y) of ``body`` with ``betas (num_betas,)``."""
    with torch.no_grad():
        verts = body.shaped_vertices(betas[None].to(body.v_template))[0]
    return float(verts[:, 1].max() - verts[:, 1].min())


def framing_focal(height_m: float, image_height: int, distance: float = FRAMING_DISTANCE, fill: float = FRAMING_FILL) -> float:
    """Focal length (pixels) at which a subject ``height_m`` metres tall spans ``fill`` of an image
    ``image_height`` pixels high at ``distance`` metres: ``f = fill * image_height * distance / height_m``."""
    return fill * image_height * distance / max(float(height_m), 1e-3)


def orbit_cameras(
    global_orient: Tensor,  # (B, 3)
    pelvis: Tensor,  # (B, 3)
    azimuth: Tensor,  # (B,)
    elevation: Tensor,  # (B,)
    distance: Tensor,  # (B,)
    focal: Tensor,  # (B,)
    width: int,
    height: int,
    roll: Tensor | None = None,  # (B,)
    relative_to_body: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The camera rule (module docstring): OpenCV cameras orbiting ``pelvis`` (world, metres).

    Args:
        global_orient: world axis-angle of the bodies (radians); sets azimuth 0 when ``relative_to_body``.
        pelvis: the orbit centre and look-at point.
        azimuth: radians about world +y, from the body's front (or from world +z without ``relative_to_body``).
        elevation: radians above the horizontal; distance: metres; roll: radians about the optical axis.
        focal: pixels (:func:`intrinsics`).

    Returns:
        ``K (B, 3, 3)``, ``R (B, 3, 3)``, ``t (B, 3)`` in ``pelvis``' dtype. Differentiable in every
        tensor argument (the sampler's camera gradients pass through it).
    """
    az = azimuth.to(pelvis)
    if relative_to_body:
        az = az + body_yaw(global_orient.to(pelvis))
    R, t = orbit_extrinsics(az, elevation.to(az), distance.to(az), pelvis, None if roll is None else roll.to(az))
    return intrinsics(focal.to(az), width, height), R, t


def fit_intrinsics(points_cam: Tensor, image_size: int, fill: float) -> Tensor:
    """Tight framing: ``K (B, 3, 3)`` that centres ``points_cam (B, N, 3)`` (camera frame, z > 0) in a
    square ``image_size`` image with their bounding square spanning ``fill`` of it (the equivalent of
    cropping a larger image around the person; the principal point moves)."""
    xy = points_cam[..., :2] / points_cam[..., 2:3]  # (B, N, 2) normalised image coordinates
    lo, hi = xy.amin(1), xy.amax(1)  # (B, 2)
    f = fill * image_size / (hi - lo).amax(-1).clamp_min(1e-6)  # (B,)
    c = 0.5 * image_size - f[:, None] * 0.5 * (lo + hi)  # (B, 2)
    K = torch.zeros(points_cam.shape[0], 3, 3, dtype=points_cam.dtype, device=points_cam.device)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, c[:, 0], c[:, 1], 1.0
    return K


# ---- boxes -------------------------------------------------------------------------------------
def boxes_from_joints(joints_2d: Tensor, scale: float = BOX_SCALE, aspect: float = 1.0) -> Tensor:
    """Boxes around 2D points.

    Args:
        joints_2d: ``(B, J, 2)`` pixel coordinates ``(x, y)``.
        scale: box size relative to the points' extent (1.2 = 20 % margin).
        aspect: box width / height (1.0 = square, as HMR/SPIN crops).

    Returns:
        ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels, centred on the centre of the points' bounding
        rectangle, with height ``scale * max(h, w / aspect)`` and width ``aspect * height`` (``w``,
        ``h``: extent of the points). Differentiable; detach if gradients through the box are unwanted.
    """
    lo = joints_2d.amin(dim=1)  # (B, 2)
    hi = joints_2d.amax(dim=1)  # (B, 2)
    centre = 0.5 * (lo + hi)
    extent = hi - lo
    height = scale * torch.maximum(extent[:, 1], extent[:, 0] / aspect)  # (B,)
    half = 0.5 * torch.stack([aspect * height, height], dim=-1)  # (B, 2)
    return torch.cat([centre - half, centre + half], dim=-1)


def person_boxes(joints_h36m_2d: Tensor, scale: float = BOX_SCALE) -> Tensor:
    """The person box every critic sees: a square ``(B, 4)`` xyxy (pixels) around the projected
    H36M-17 joints ``(B, 17, 2)`` (:data:`BOX_JOINT_SET`), side ``scale`` times their extent. Not
    differentiable (detached): the critic's gradient reaches the image, not the crop window.

    Raises:
        PoseGenInputError: joints of another joint set (not 17 per sample).
    """
    if joints_h36m_2d.ndim != 3 or joints_h36m_2d.shape[1:] != (17, 2):
        raise PoseGenInputError(
            f"person_boxes: expected projected H36M-17 joints (B, 17, 2), got {tuple(joints_h36m_2d.shape)}."
        )
    return boxes_from_joints(joints_h36m_2d.detach(), scale=scale)


# ---- labelled samples ----------------------------------------------------------------------------
@dataclass
class SampleBatch:
    """Rendered, exactly labelled samples: B images of H x W pixels (what :func:`render_and_score` returns)."""

    body_pose: Tensor  # (B, 69) axis-angle radians
    global_orient: Tensor  # (B, 3) world axis-angle radians
    transl: Tensor  # (B, 3) metres
    betas: Tensor  # (B, S)
    K: Tensor  # (B, 3, 3) pixels
    R: Tensor  # (B, 3, 3) world -> camera
    t: Tensor  # (B, 3) metres
    images: Tensor  # (B, H, W, 3) in [0, 1]
    alpha: Tensor  # (B, H, W, 1)
    joints_h36m_cam: Tensor  # (B, 17, 3) camera frame metres
    joints_smpl_cam: Tensor  # (B, 24, 3) camera frame metres
    joints_h36m_2d: Tensor  # (B, 17, 2) pixels
    joints_smpl_2d: Tensor  # (B, 24, 2) pixels
    boxes: Tensor  # (B, 4) xyxy pixels (person_boxes)
    pred_joints: Tensor  # (B, J, 3) critic output, root-relative camera frame
    error: Tensor  # (B,) critic MPJPE, metres


def concat_samples(parts: Sequence[Any]) -> Any:
    """Concatenate batches of one dataclass (:class:`SampleBatch`, :class:`~posegen_ns.sampler.PoseCameraSample`)
    along the batch: every tensor field by ``torch.cat`` on dim 0; a field that is ``None`` in any part is
    ``None`` in the result.

    Raises:
        PoseGenInputError: no parts.
    """
    if not parts:
        raise PoseGenInputError("concat_samples: nothing to concatenate.")
    out = {}
    for f in fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        out[f.name] = None if any(v is None for v in values) else torch.cat(values)
    return type(parts[0])(**out)


def critic_failure(critic: Any, rows: Sequence[int], batch: int, what: str = "joints") -> PoseGenInputError:
    """The error for a critic that predicted NaN or inf ``what`` for samples ``rows`` of a batch of ``batch``: it
    blames the critic (its weights), not the poses or the images it was shown."""
    return PoseGenInputError(
        f"the critic ({type(critic).__name__}) predicted NaN or inf {what} for samples {list(rows)[:10]} of a batch of "
        f"{batch} whose rendered images are finite: the critic is broken, not the poses (non-finite or diverged "
        "weights, e.g. after fine-tuning at too high a learning rate); pass another critic checkpoint or lower the "
        "critic's learning rate (--optimizers.critic.optimizer.lr)."
    )


def check_critic_values(critic: Any, what: str, *values: Tensor) -> None:
    """Raise :func:`critic_failure` if a row of any of a critic's raw outputs ``values`` (each ``(B, ...)``) is NaN
    or inf: a critic calls it on its network's outputs before posing a body with them, so that a broken critic is
    not reported as a bad pose by the body model. Costs one device synchronisation."""
    bad = torch.zeros(values[0].shape[0], dtype=torch.bool, device=values[0].device)
    for v in values:
        bad |= ~torch.isfinite(v.detach()).reshape(v.shape[0], -1).all(1)
    if bool(bad.any()):
        raise critic_failure(critic, bad.nonzero().flatten().tolist(), int(bad.shape[0]), what)


def check_critic_output(critic: Any, pred: Tensor, images: Tensor) -> None:
    """Blame a non-finite prediction on the critic: a differentiable critic (``critic.differentiable``, as HMR/SPIN
    and HybrIK) must predict finite joints ``pred (B, J, 3)`` for finite ``images (B, ...)``; black boxes may return
    NaN rows for "no person found" and are not checked. Costs one device synchronisation.

    Raises:
        PoseGenInputError: NaN or inf joints for samples whose images are finite (:func:`critic_failure`).
    """
    if not getattr(critic, "differentiable", True):
        return
    bad = ~torch.isfinite(pred.detach()).reshape(pred.shape[0], -1).all(1)
    if not bool(bad.any()):
        return
    bad &= torch.isfinite(images.detach()).reshape(images.shape[0], -1).all(1)
    rows = bad.nonzero().flatten().tolist()
    if rows:
        raise critic_failure(critic, rows, pred.shape[0])


RenderFn = Callable[..., Any]
"""``render(body_pose (B, 69), global_orient (B, 3), transl (B, 3), K, R, t, width, height, betas (B, S))``
returning an object with ``rgb (B, H, W, 3)``, ``alpha (B, H, W, 1)`` and ``body``
(:class:`~posegen_ns.body.model.BodyOutput`, world frame), as :meth:`~posegen_ns.model.PoseGenModel.render`."""


def render_and_score(
    render: RenderFn,
    critic: Any,
    body_pose: Tensor,  # (B, 69)
    global_orient: Tensor,  # (B, 3)
    betas: Tensor,  # (B, S)
    K: Tensor,  # (B, 3, 3)
    R: Tensor,  # (B, 3, 3)
    t: Tensor,  # (B, 3)
    width: int,
    height: int,
) -> SampleBatch:
    """Render samples (bodies at ``transl = 0``), label them exactly and score them with ``critic``.

    The critic is called as ``critic(images (B, 3, H, W), boxes (B, 4))`` on :func:`person_boxes` and
    compared with :func:`gt_from_camera_joints` in ``critic.joint_set`` (:func:`critic_error`).
    Differentiable through the render into pose and camera when the renderer and critic are.
    """
    B = body_pose.shape[0]
    transl = torch.zeros(B, 3, device=K.device, dtype=K.dtype)
    out = render(body_pose, global_orient, transl, K, R, t, width, height, betas=betas)
    j2d_h36m, j_h36m_cam = project_points(out.body.joints_h36m, K, R, t)
    j2d_smpl, j_smpl_cam = project_points(out.body.joints, K, R, t)
    boxes = person_boxes(j2d_h36m)
    pred = critic(out.rgb.permute(0, 3, 1, 2), boxes)
    check_critic_output(critic, pred, out.rgb)
    gt = gt_from_camera_joints(critic.joint_set, j_h36m_cam, j_smpl_cam)
    return SampleBatch(
        body_pose=body_pose, global_orient=global_orient, transl=transl, betas=betas, K=K, R=R, t=t,
        images=out.rgb, alpha=out.alpha, joints_h36m_cam=j_h36m_cam, joints_smpl_cam=j_smpl_cam,
        joints_h36m_2d=j2d_h36m, joints_smpl_2d=j2d_smpl, boxes=boxes, pred_joints=pred,
        error=critic_error(pred, gt, critic.joint_set),
    )
