"""Settings shared by every source set a critic is pre-trained on (the narrow set of
:mod:`posegen_ns.data.source_poses` and the Human3.6M-like set of :mod:`posegen_ns.data.h36m_source`)."""

HELDOUT_EVERY = 5
"""Every this-many-th frame of each source clip (by position in the clip) is held out for the in-distribution test."""
FILL = 0.85
"""Share of the rendered image the body's bounding square spans (tight framing, :func:`posegen_ns.labels.fit_intrinsics`)."""
RENDER_CHUNK = 32
"""Images rendered per call of the mesh renderer."""


def render_tight_labelled(
    body,
    body_pose,  # (N, 69) axis-angle radians
    global_orient,  # (N, 3) world axis-angle radians (float64 keeps the cameras exact)
    betas,  # (N, nb)
    azimuth,  # (N,) radians from the body's front
    elevation,  # (N,) radians
    distance,  # (N,) metres
    image_size: int,
    appearances: list,
    appearance_index=None,  # (N,) long index into ``appearances`` (default: all 0)
) -> dict:
    """Render a source set: each body (no translation) seen by the camera rule of :mod:`posegen_ns.labels`
    (orbit the pelvis) with tight framing (:func:`posegen_ns.labels.fit_intrinsics`, :data:`FILL`), labelled.

    Returns:
        numpy arrays: ``images (N, S, S, 3)`` uint8, ``masks (N, S, S)`` bool, ``boxes (N, 4)``
        (:func:`posegen_ns.labels.person_boxes`), ``joints_h36m_cam (N, 17, 3)`` metres, ``global_orient_cam (N, 3)``,
        ``K (N, 3, 3)`` pixels; rendered in chunks of :data:`RENDER_CHUNK`.
    """
    import numpy as np
    import torch

    from posegen_ns.data.appearance import render_vertices
    from posegen_ns.geometry import project_points
    from posegen_ns.labels import BOX_SCALE, camera_frame_orient, fit_intrinsics, orbit_cameras, person_boxes, to_camera

    N = body_pose.shape[0]
    dev = body.v_template.device
    which = torch.zeros(N, dtype=torch.long) if appearance_index is None else appearance_index
    out = {
        "images": np.zeros((N, image_size, image_size, 3), dtype=np.uint8),
        "masks": np.zeros((N, image_size, image_size), dtype=bool),
        "boxes": np.zeros((N, 4), dtype=np.float32),
        "joints_h36m_cam": np.zeros((N, 17, 3), dtype=np.float32),
        "global_orient_cam": np.zeros((N, 3), dtype=np.float32),
        "K": np.zeros((N, 3, 3), dtype=np.float32),
    }
    for s in range(0, N, RENDER_CHUNK):
        sl = slice(s, min(s + RENDER_CHUNK, N))
        g = global_orient[sl].double().to(dev)
        posed = body(body_pose[sl].float().to(dev), g.float(), betas[sl].float().to(dev))
        verts, joints = posed.vertices.double(), posed.joints_h36m.double()
        n = g.shape[0]
        _, R, t = orbit_cameras(g, posed.joints[:, 0].double(), azimuth[sl].double().to(dev), elevation[sl].double().to(dev),
                                distance[sl].double().to(dev), torch.ones(n, dtype=torch.float64, device=dev),
                                image_size, image_size)
        K = fit_intrinsics(to_camera(verts, R, t), image_size, FILL)  # tight framing (a crop of a bigger frame)
        uv, joints_cam = project_points(joints, K, R, t)
        out["boxes"][sl] = person_boxes(uv, scale=BOX_SCALE).float().cpu().numpy()
        out["joints_h36m_cam"][sl] = joints_cam.float().cpu().numpy()
        out["global_orient_cam"][sl] = camera_frame_orient(g, R).float().cpu().numpy()
        out["K"][sl] = K.float().cpu().numpy()
        sub = which[sl]
        for k in sub.unique().tolist():
            m = (sub == k).to(dev)
            r = render_vertices(verts[m].float(), body.faces, appearances[k], K[m].float(), R[m].float(), t[m].float(),
                                image_size, image_size)
            rows = np.arange(sl.start, sl.stop)[m.cpu().numpy()]
            out["images"][rows] = (r.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            out["masks"][rows] = (r.mask > 0.5).cpu().numpy()
    return out
