"""Captures and poses: the native capture format, the ZJU-MoCap reader, the default capture, pose banks.

Modules:
- :mod:`~posegen_ns.data.capture_data`: :class:`Capture` (in memory), its checks, PNG reading and writing.
- :mod:`~posegen_ns.data.capture`: :func:`read_capture`, :func:`write_capture` (the native format).
- :mod:`~posegen_ns.data.zju`: :func:`read_zju` (ZJU-MoCap layout).
- :mod:`~posegen_ns.data.appearance`: how the ground-truth body looks; :func:`render_body`.
- :mod:`~posegen_ns.data.poses`: :func:`load_pose_bank` (mocap fitted to a body, cached).
- :mod:`~posegen_ns.data.default_capture`: :func:`build_default_capture`, :func:`default_capture_dir`.
- :mod:`~posegen_ns.data.source_poses`: :func:`make_source_sampler` (the critic's source set).
- :mod:`~posegen_ns.data.capture_cli`: the ``ns-posegen-capture`` console script.

Names are imported lazily so that importing this package (e.g. from the dataparser spec) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Capture": "capture_data", "read_capture": "capture", "write_capture": "capture",
    "read_zju": "zju", "zju_to_smpl_params": "zju",
    "BodyAppearance": "appearance", "make_body_appearance": "appearance", "render_body": "appearance",
    "render_vertices": "appearance",
    "PoseBank": "poses", "load_pose_bank": "poses",
    "build_default_capture": "default_capture", "default_capture_dir": "default_capture",
    "make_source_sampler": "source_poses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"posegen_ns.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'posegen_ns.data' has no attribute {name!r}")
