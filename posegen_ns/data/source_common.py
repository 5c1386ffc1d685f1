"""Settings shared by every source set a critic is pre-trained on (the narrow set of
:mod:`posegen_ns.data.source_poses` and the Human3.6M-like set of :mod:`posegen_ns.data.h36m_source`)."""

HELDOUT_EVERY = 5
"""Every this-many-th frame of each source clip (by position in the clip) is held out for the in-distribution test."""
FILL = 0.85
"""Share of the rendered image the body's bounding square spans (tight framing, :func:`posegen_ns.labels.fit_intrinsics`)."""
RENDER_CHUNK = 32
"""Images rendered per call of the mesh renderer."""
