"""Make the registry's torchvision 0.28.0 importable under the CPU build of torch 2.13.0.

The torchvision 0.28.0 wheel on PyPI is a CUDA build. Under CPU torch its ``_C.so`` cannot load,
so the op schemas ``torchvision::nms`` / ``torchvision::qnms`` are never defined, and torchvision's
fake-op registration then fails at import with ``RuntimeError: operator torchvision::nms does not
exist``. nerfstudio imports torchvision at top level, so every entry point (``ns-train``,
``ns-viewer``, our console scripts, pytest) needs the schemas defined *before* torchvision loads.

``posegen_ns_torchvision_compat.pth`` (installed into site-packages by ``pip install -e .``) calls
:func:`install` at interpreter start-up. That only puts a finder on ``sys.meta_path``; the first
``import torchvision`` triggers :func:`apply` (which imports torch and defines the missing schemas),
so interpreters that never touch torchvision pay nothing. Only the schemas are defined:
torchvision's C++ ops (nms, roi_align, ...) stay unavailable on CPU, and posegen-ns uses none of
them. When a matching torchvision build registers its ops, :func:`apply` does nothing.
"""

from __future__ import annotations

import sys

_LIBRARY = None  # keep the torch.library.Library alive: dropping it unregisters the schemas


def apply() -> None:
    """Define the ``torchvision::nms`` and ``torchvision::qnms`` schemas if they are missing.

    Never raises: a start-up hook must not break the interpreter.
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return
    try:
        import torch

        try:
            torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
            return  # a working torchvision build already registered its ops
        except RuntimeError:
            pass
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY = lib
    except Exception:  # noqa: BLE001
        return


class _BeforeTorchvision:
    """``sys.meta_path`` finder that runs :func:`apply` once, just before torchvision is imported."""

    def find_spec(self, name, path=None, target=None):  # noqa: D401 - importlib protocol
        if name == "torchvision":
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            apply()
        return None  # let the normal finders locate the module


def install() -> None:
    """Register the import hook (idempotent)."""
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
