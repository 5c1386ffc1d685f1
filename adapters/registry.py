"""Critic registry: built-in critics plus the entry-point group ``posegen.critics``.

A third-party package adds a critic without editing posegen-ns by declaring, in its
``pyproject.toml``::

    [project.entry-points."posegen.critics"]
    mycritic = "mypkg.critic:load_my_critic"   # load_my_critic(checkpoint=None, **data_files) -> Critic

A loader receives the data-file keywords of :data:`adapters.protocol.DATA_FILES` (those the caller set);
:func:`adapters.protocol.critic_options` checks them and folds the alias ``body`` into ``smpl_model_path``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from adapters.protocol import Critic
from posegen_ns.errors import PoseGenInputError

ENTRY_POINT_GROUP = "posegen.critics"

BUILTIN_CRITICS: dict[str, str] = {
    "hmr": "adapters.hmr:load_hmr_critic",
    "spin": "adapters.hmr:load_hmr_critic",  # SPIN's weights are an HMR regressor
    "hybrik-res34": "adapters.hybrik:load_hybrik_res34_critic",  # Simple3DPoseBaseSMPLCam
    "hybrik-hrw48": "adapters.hybrik:load_hybrik_hrw48_critic",  # HRNetSMPLCam
    "blazepose": "adapters.blackbox:load_blazepose_critic",  # mediapipe, own environment, no gradients
}
"""Built-in critic name -> ``"module:function"`` loader (available without installing the package)."""


def _resolve(target: str) -> Callable[..., Critic]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available_critics() -> dict[str, str]:
    """Name -> loader target, built-ins first (in :data:`BUILTIN_CRITICS` order), then installed
    entry points sorted by name (which may not override a built-in name)."""
    found = dict(BUILTIN_CRITICS)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        found.setdefault(ep.name, ep.value)
    return found


def load_critic(name: str, checkpoint: str | Path | None = None, **data_files: Any) -> Critic:
    """Build the critic called ``name`` with ``loader(checkpoint, **data_files)``.

    Raises:
        PoseGenInputError: unknown name (the message lists the available names), or whatever
            the loader raises for bad files.
    """
    critics = available_critics()
    if name not in critics:
        raise PoseGenInputError(
            f"unknown critic {name!r}; available critics: {', '.join(critics)} "
            f"(third-party critics register under the entry-point group '{ENTRY_POINT_GROUP}')."
        )
    critic = _resolve(critics[name])(checkpoint, **data_files)
    if not isinstance(critic, Critic):
        raise TypeError(f"critic loader {critics[name]} returned {type(critic).__name__}, not an adapters.protocol.Critic")
    return critic
