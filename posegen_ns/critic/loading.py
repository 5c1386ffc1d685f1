"""Which critic a run or an evaluation uses: one policy, :func:`load_configured_critic`.

``ns-train posegen-human`` (``--pipeline.critic.*``, :class:`CriticConfig`) and ``ns-posegen-eval``
(``--critic``, ``--checkpoint``, ``--critic-body``, ... mapped onto a :class:`CriticConfig`) load their
critic here, with the same defaults:

- ``name='default'``: an HMR critic (``backbone`` default ``resnet18``, ``input_size`` default 64 px)
  pre-trained by :func:`posegen_ns.critic.pretrain.default_critic_checkpoint` for ``pretrain_steps`` steps
  (default 1000) on the source pose set rendered with the critic's body, cached; or ``checkpoint`` if given.
- ``'hmr'`` / ``'spin'``: ``adapters.load_critic`` with ``checkpoint`` (``None``: random weights). The body
  is ``body`` if given, else the one the checkpoint records (files written by ``ns-posegen-pretrain-critic``),
  else the run's / subject's body.
- any other name (``'hybrik-*'``, ``'blazepose'``, an entry point of ``posegen.critics``): ``adapters.load_critic``
  with ``checkpoint`` and the data files that are set (HybrIK without ``body`` uses its checkpoint's SMPL).

The critic's body is "the run's body" unless ``body`` names another: ``'open'``, ``'tiny'`` or an SMPL file.

Every critic loaded here is probed once (:func:`probe_critic`): NaN weights or a non-finite prediction on a blank
image are refused at load, naming the checkpoint, instead of surfacing as NaN poses after a long run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from posegen_ns.errors import PoseGenInputError

DEFAULT_INPUT_SIZE = 64
"""Crop side (pixels) of the default critic."""
DEFAULT_BACKBONE = "resnet18"
"""Backbone of the default critic."""


@dataclass
class CriticConfig:
    """The 3D pose estimator attacked by the loop (and scored by ``ns-posegen-eval``); module docstring."""

    name: str = "default"
    """'default' (an HMR critic pre-trained here on a narrow source pose set, cached) or a name known to
    ``adapters.load_critic`` (built-ins or the ``posegen.critics`` entry-point group)."""
    checkpoint: Optional[Path] = None
    """Checkpoint of the critic (official file for 'spin' / 'hybrik-*')."""
    body: Optional[str] = None
    """Body the critic predicts with: an SMPL file for official SPIN/HybrIK weights (default: what an hmr checkpoint
    records, else the run's body; HybrIK checkpoints carry their own SMPL buffers and need none)."""
    j_regressor_h36m: Optional[Path] = None
    """SPIN's J_regressor_h36m.npy (with official SMPL files)."""
    smpl_mean_params: Optional[Path] = None
    """SPIN's smpl_mean_params.npz (for 'spin' / 'hmr' with official weights)."""
    h36m_mean_beta: Optional[Path] = None
    """HybrIK's h36m_mean_beta.npy (optional; the checkpoint's own buffer otherwise)."""
    python: Optional[Path] = None
    """Python with mediapipe for 'blazepose' (default: $POSEGEN_BLAZEPOSE_PYTHON)."""
    es_samples: int = 4
    """Black-box critics: perturbations per sample for the evolution-strategy gradient (even)."""
    es_sigma: float = 0.05
    """Black-box critics: perturbation scale (radians for poses and angles, metres, focal scale)."""
    pretrain_steps: int = 1000
    """Steps of pre-training for the default critic (only when it is not cached yet)."""
    source: Literal["narrow", "h36m"] = "narrow"
    """Source set of the default critic (:data:`posegen_ns.data.source_poses.SOURCE_KINDS`): 'narrow' (walking seen
    from the front; fast, the default run's) or 'h36m' (a critic like SPIN: Human3.6M-like actions, four cameras,
    several subjects; 1600 steps at 128 px reach 74 mm held-out MPJPE). Fine-tuning mixes in images of this set."""
    input_size: Optional[int] = None
    """Crop size (pixels) of the critic's input. Default: 64 for the default critic; for 'spin'/'hmr' what the
    checkpoint records (224 for SPIN's official file); 256 for HybrIK. Not used by 'blazepose'."""
    backbone: Optional[str] = None
    """HMR backbone ('resnet18', 'resnet50', ...) for the default critic (default 'resnet18') and 'spin'/'hmr'
    (default: what the checkpoint records, 'resnet50' for SPIN's official file)."""


def check_critic_files(cfg: CriticConfig, prefix: str = "--pipeline.critic.") -> None:
    """Cheap checks of ``cfg`` before a run starts (nothing is loaded): a known critic name, and every file it
    names (``checkpoint``, ``body`` when it is a path, ``j_regressor_h36m``, ``smpl_mean_params``,
    ``h36m_mean_beta``, ``python``) exists and is a file. ``prefix`` is the flags' prefix in messages.

    Raises:
        PoseGenInputError: the first problem, naming the flag, the path and the fix.
    """
    from adapters.registry import available_critics

    names = ["default", *available_critics()]
    if cfg.name not in names:
        raise PoseGenInputError(f"{prefix}name {cfg.name!r} is not a known critic; use one of {', '.join(names)}.")
    body = cfg.body if cfg.body not in (None, "open", "tiny") else None
    for flag, value in (("checkpoint", cfg.checkpoint), ("body", body), ("j-regressor-h36m", cfg.j_regressor_h36m),
                        ("smpl-mean-params", cfg.smpl_mean_params), ("h36m-mean-beta", cfg.h36m_mean_beta),
                        ("python", cfg.python)):
        if value is None or str(value) == "default":
            continue
        path = Path(value).expanduser()
        if path.is_dir():
            raise PoseGenInputError(f"{prefix}{flag} {path} is a folder, not a file; pass the file itself.")
        if not path.is_file():
            raise PoseGenInputError(f"{prefix}{flag} {path} does not exist; pass an existing file (or leave the option out).")


def _checkpoint_records_body(checkpoint: Path | str | None) -> bool:
    """Whether an hmr/spin ``checkpoint`` says which body it predicts for (files of ``ns-posegen-pretrain-critic``)."""
    if checkpoint is None or str(checkpoint) == "default":
        return str(checkpoint) == "default"
    from adapters.hmr import read_spin_checkpoint

    return "body" in read_spin_checkpoint(checkpoint).get("posegen", {})


def load_configured_critic(cfg: CriticConfig, body_source: Any) -> Any:
    """The critic ``cfg`` describes (module docstring), as its loader returns it (on the CPU).

    Args:
        cfg: the critic's settings.
        body_source: the run's (or evaluated subject's) body: ``'open'``, ``'tiny'``, an SMPL file path or a
            :class:`~posegen_ns.body.BodyModel`; the critic's body where ``cfg.body`` is not set.

    Raises:
        PoseGenInputError: an unknown critic name, or files that do not fit (from the critic's loader).
    """
    from adapters.registry import load_critic

    body = cfg.body if cfg.body is not None else body_source
    if cfg.name == "default":
        from posegen_ns.critic.pretrain import default_critic_checkpoint

        input_size, backbone = cfg.input_size or DEFAULT_INPUT_SIZE, cfg.backbone or DEFAULT_BACKBONE
        checkpoint = cfg.checkpoint or default_critic_checkpoint(
            body=body, steps=cfg.pretrain_steps, input_size=input_size, backbone=backbone, source=cfg.source
        )
        critic = load_critic("hmr", checkpoint=checkpoint, smpl_model_path=body, backbone=backbone, input_size=input_size,
                             j_regressor_h36m=cfg.j_regressor_h36m)
        probe_critic(critic, "default", checkpoint, cached=cfg.checkpoint is None)
        return critic
    options = {
        "smpl_model_path": cfg.body, "j_regressor_h36m": cfg.j_regressor_h36m, "smpl_mean_params": cfg.smpl_mean_params,
        "h36m_mean_beta": cfg.h36m_mean_beta, "python": cfg.python,
    }
    if cfg.name in ("hmr", "spin"):
        options.update(backbone=cfg.backbone, input_size=cfg.input_size)
        if cfg.body is None and not _checkpoint_records_body(cfg.checkpoint):
            options["smpl_model_path"] = body_source  # HMR needs a body; HybrIK falls back to its checkpoint's SMPL
    elif cfg.name.startswith("hybrik"):
        options.update(input_size=cfg.input_size)
    critic = load_critic(cfg.name, checkpoint=cfg.checkpoint, **{k: v for k, v in options.items() if v is not None})
    probe_critic(critic, cfg.name, cfg.checkpoint)
    return critic


def probe_critic(critic: Any, name: str, checkpoint: Path | str | None, cached: bool = False) -> None:
    """Check a freshly loaded critic once, so that a broken one is blamed at load and not after a long run:
    every floating-point weight and buffer is finite, and a differentiable critic predicts finite joints for a
    blank (mid-grey) image of its input size (``critic.input_size``) with a box over the whole image. Black-box
    critics (``differentiable = False``, which may answer NaN for "no person") and critics without parameters
    (nothing to diverge; e.g. test doubles) get the weight check only.

    Args:
        critic: the loaded critic (on any device; its train/eval modes are restored).
        name: the critic's name, for the message.
        checkpoint: the file its weights came from (``None``: random weights), named in the message.
        cached: ``checkpoint`` is the project's cached default critic (the fix is then to delete it).

    Raises:
        PoseGenInputError: NaN or inf weights, or a non-finite prediction, naming ``checkpoint``.
    """
    import torch

    source = f"checkpoint {checkpoint}" if checkpoint is not None else "random weights"
    fix = (f"delete {checkpoint} so that it is pre-trained again" if cached else
           "pass another --checkpoint (download it again if it was damaged)" if checkpoint is not None else
           "pass a checkpoint")
    tensors = [*critic.named_parameters(), *critic.named_buffers()]
    bad = [k for k, v in tensors if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PoseGenInputError(
            f"critic '{name}' ({source}) has NaN or inf weights in {len(bad)} tensors ({', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}): the file is damaged or its training diverged; {fix}."
        )
    if not getattr(critic, "differentiable", True) or not any(True for _ in critic.parameters()):
        return  # black boxes may answer NaN ("no person"); critics without weights have none to break
    size = int(getattr(critic, "input_size", 224))
    device = next((v.device for _, v in tensors), torch.device("cpu"))
    modes = {m: m.training for m in critic.modules()}
    critic.eval()
    try:
        with torch.no_grad():
            pred = critic(torch.full((1, 3, size, size), 0.5, device=device),
                          torch.tensor([[0.0, 0.0, float(size), float(size)]], device=device))
        finite = bool(torch.isfinite(pred).all())
    except PoseGenInputError:  # the critic's own check of its raw outputs (posegen_ns.labels.check_critic_values)
        finite = False
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not finite:
        raise PoseGenInputError(
            f"critic '{name}' ({source}) predicts NaN or inf joints for a blank {size} x {size} image although its "
            f"weights are finite: the critic is broken (diverged weights or a mismatched input size); {fix}."
        )


def critic_config_from_flags(
    critic: str, checkpoint: str, body: Optional[str] = None, backbone: Optional[str] = None,
    input_size: Optional[int] = None, j_regressor_h36m: Optional[Path] = None,
) -> CriticConfig:
    """The :class:`CriticConfig` of ``ns-posegen-eval``'s flags: ``--critic NAME`` with ``--checkpoint
    default|none|PATH``; ``hmr``/``spin`` with ``default`` is the critic ``'default'``, ``none`` means random
    weights (no checkpoint).

    Raises:
        PoseGenInputError: an hmr/spin ``--checkpoint`` path that does not exist.
    """
    path: Optional[Path] = None if checkpoint.lower() == "none" else Path(checkpoint)
    name = critic
    if critic in ("hmr", "spin") and checkpoint == "default":
        name, path = "default", None
    elif critic in ("hmr", "spin") and path is not None and not path.expanduser().is_file():
        raise PoseGenInputError(f"--checkpoint {checkpoint} does not exist; pass 'default', 'none' or a critic file.")
    return CriticConfig(name=name, checkpoint=path, body=body, backbone=backbone, input_size=input_size,
                        j_regressor_h36m=j_regressor_h36m)
