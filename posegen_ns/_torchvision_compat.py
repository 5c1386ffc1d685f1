"""Make the registry's torchvision 0.28.0 importable under the CPU build of torch 2.13.0.

The torchvision 0.28.0 wheel on PyPI is a CUDA build. Under CPU torch its ``_C.so`` cannot load,
so the op schemas ``torchvision::nms`` / ``torchvision::qnms`` are never defined, and torchvision's
fake-op registration then fails at import with ``RuntimeError: operator torchvision::nms does not
exist``. nerfstudio imports torchvision at top level, so every entry point (``ns-train``,
``ns-viewer``, our console scripts, pytest) needs the schemas defined *before* torchvision loads.

``posegen_ns_torchvision_compat.pth`` (installed into site-packages by ``pip install -e .``) calls
:func:`apply` at interpreter start-up. Only the schemas are defined: torchvision's C++ ops (nms,
roi_align, ...) stay unavailable on CPU, which nothing in posegen-ns uses. When torchvision's
own ``_C`` loads (a matching CUDA or CPU build), the ops already exist and this does nothing.
"""

from __future__ import annotations

_LIBRARY = None  # keep the torch.library.Library alive: dropping it unregisters the schemas


def apply() -> None:
    """Define the ``torchvision::nms`` and ``torchvision::qnms`` schemas if they are missing.

    Cheap when torch is not installed yet or the ops already exist; never raises.
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
            return
        import torch

        try:
            torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
            return  # a working torchvision build already registered its ops
        except RuntimeError:
            pass
        # try torchvision's own extension first: if it loads, nothing needs defining
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY = lib
    except Exception:  # noqa: BLE001 - start-up hook must never break the interpreter
        return
