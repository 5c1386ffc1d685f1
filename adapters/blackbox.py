"""Black-box critics (no gradients) and the gradient estimators that let the sampler learn against them.

:class:`BlackBoxCritic` wraps any function ``(images (B, 3, H, W) uint8 numpy, boxes (B, 4) float32
numpy) -> joints (B, J, 3)`` as a :class:`~adapters.protocol.Critic` with ``differentiable =
False``. The built-in ``blazepose`` critic runs mediapipe's BlazePose in a separate Python
environment through :class:`SubprocessPredictor` and :mod:`adapters.blazepose_worker` (mediapipe
needs protobuf>=4 and numpy<2, which conflict with nerfstudio's pins). Create that environment with::

    python3 -m venv .venv-blazepose && .venv-blazepose/bin/pip install mediapipe==0.10.21

and point ``POSEGEN_BLAZEPOSE_PYTHON`` (or ``python=``) at ``.venv-blazepose/bin/python``.

Learning against a black box. The critic error ``f(x)`` of a rendered sample ``x`` (the generator's
pose and camera) has no gradient, so the sampler uses one of two estimators, each returned as a
*surrogate loss* whose autograd gradient is the estimate (minimising it ascends the reward, e.g.
the critic's error or minus a bounded hardness loss):

- :func:`es_surrogate` — evolution strategies / Gaussian smoothing (Salimans et al. 2017;
  Nesterov & Spokoiny 2017): perturb the sampler's *noise-free* output (or parameters) ``x`` by
  ``sigma * eps``, score each perturbation with the critic, and use
  ``g = 1 / (K sigma) sum_k (f(x + sigma eps_k) - b) eps_k`` (antithetic pairs: ``b`` cancels).
  ``g`` is an unbiased estimate of the gradient of the smoothed objective
  ``E[f(x + sigma eps)]``, which tends to ``grad f`` for smooth ``f`` as ``sigma -> 0``; it needs no
  log-probability, so the generator stays a deterministic map of its input noise and the rest of
  the pipeline (prior losses, renderer gradients) is unchanged. Cost: K critic calls per sample.
  This is the default for PoseGen: the generator is deterministic given its noise.
- :func:`score_function_surrogate` — REINFORCE (Williams 1992): ``-mean((r - b) log p(x))`` for
  samples ``x`` drawn from a *stochastic* policy with tractable ``log p`` (e.g. a Gaussian head on
  the generator); unbiased for any ``f`` (even discontinuous, e.g. detection failures) but needs
  the log-probability and has higher variance; the baseline ``b`` (leave-one-out mean by default)
  keeps it unbiased while reducing variance.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adapters.blazepose_worker import PROTOCOL_VERSION, message_text, read_message, write_message
from adapters.protocol import DATA_FILES, Critic
from posegen_ns.body.joint_sets import JOINT_SETS
from posegen_ns.errors import PoseGenInputError
from posegen_ns.labels import root_of
from posegen_ns.metrics import root_align

BLAZEPOSE_PYTHON_ENV = "POSEGEN_BLAZEPOSE_PYTHON"
BLAZEPOSE_SETUP = (
    "python3 -m venv .venv-blazepose && .venv-blazepose/bin/pip install mediapipe==0.10.21, then set "
    f"{BLAZEPOSE_PYTHON_ENV}=$PWD/.venv-blazepose/bin/python (or pass python=...)"
)
WORKER_SCRIPT = Path(__file__).with_name("blazepose_worker.py")
JointFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(images (B, 3, H, W) uint8, boxes (B, 4) float32) -> joints (B, J, 3)`` (numpy)."""


class BlackBoxCritic(Critic):
    """A non-differentiable critic around a numpy joint function.

    Args:
        fn: :data:`JointFn`; rows of NaN mean "no person found" and are returned as NaN.
        joint_set: ``"h36m17"``, ``"lsp14"`` or ``"smpl24"``, the set ``fn`` returns.
        name: for messages.

    ``forward(images (B, 3, H, W) in [0, 1], boxes (B, 4))`` quantises the images to uint8
    (round to nearest), calls ``fn`` without gradients and returns ``(B, J, 3)`` float joints,
    re-rooted (pelvis, or the hip mid-point for LSP-14), on the images' device.
    """

    differentiable = False

    def __init__(self, fn: JointFn, joint_set: str, name: str = "blackbox", input_size: int = 256):
        super().__init__()
        if joint_set not in JOINT_SETS:
            raise PoseGenInputError(f"{name}: unknown joint set {joint_set!r}; use one of {sorted(JOINT_SETS)}.")
        self.fn = fn
        self.joint_set = joint_set
        self.name = name
        self.input_size = int(input_size)

    @staticmethod
    def to_uint8(images: Tensor) -> np.ndarray:
        """``(B, 3, H, W)`` floats in [0, 1] -> uint8 numpy (``round(255 x)``, clamped)."""
        return (images.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        B = images.shape[0]
        J = len(JOINT_SETS[self.joint_set])
        with torch.no_grad():
            out = np.asarray(self.fn(self.to_uint8(images), boxes.detach().float().cpu().numpy()), dtype=np.float32)
        if out.shape != (B, J, 3):
            raise RuntimeError(f"black-box critic {self.name} returned shape {out.shape}; expected ({B}, {J}, 3) ({self.joint_set}).")
        joints = torch.from_numpy(out).to(device=images.device, dtype=images.dtype)
        return root_align(joints, root_of(self.joint_set))

    def close(self) -> None:
        """Release the function's resources (a worker process) if it has a ``close``."""
        close = getattr(self.fn, "close", None)
        if close is not None:
            close()


# ---- a joint function served by another process -------------------------------------------------
class SubprocessPredictor:
    """:data:`JointFn` served by a worker process speaking :mod:`adapters.blazepose_worker`'s protocol.

    Args:
        python: interpreter of the worker's environment.
        script: the worker script (default :mod:`adapters.blazepose_worker`).
        args: extra command-line arguments for the script.
        joint_names: if given, the worker's joints (named in its hello) are returned in this
            order, matched by name (so the worker and posegen-ns may order joints differently).

    The process starts on first use (or :meth:`start`) and stops on :meth:`close`, at garbage
    collection, or when the client exits. Its stderr goes to a temporary file whose tail is
    quoted when the worker fails. Calls are serialised by a lock.

    Raises (on start):
        PoseGenInputError: the interpreter does not exist, or the worker cannot start its backend
            (e.g. mediapipe missing); the message says how to create the environment.
    """

    def __init__(self, python: str | Path, script: str | Path = WORKER_SCRIPT, args: tuple[str, ...] = (),
                 joint_names: tuple[str, ...] | None = None):
        self.python = str(python)
        self.script = str(script)
        self.args = tuple(args)
        self.joint_names = joint_names
        self.info: dict[str, Any] = {}
        self._order: list[int] | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._lock = threading.Lock()

    def _stderr_tail(self, n: int = 2000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-n:]

    def start(self) -> dict[str, Any]:
        """Start the worker and return its hello (``joint_set``, ``joint_names``, ``backend``)."""
        if self._proc is not None:
            return self.info
        if not Path(self.python).exists():
            raise PoseGenInputError(
                f"the black-box critic's Python {self.python} does not exist; create it with: {BLAZEPOSE_SETUP}."
            )
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [self.python, self.script, *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        hello = read_message(self._proc.stdout)
        text = None if hello is None else message_text(hello)
        if text is None or text.startswith("ERROR"):
            detail = text or f"no answer (exit code {self._proc.wait()}): {self._stderr_tail()}"
            self.close()
            raise PoseGenInputError(f"black-box worker {self.script} failed to start under {self.python}: {detail}. "
                                    f"Create its environment with: {BLAZEPOSE_SETUP}.")
        info = json.loads(text)
        if info.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise RuntimeError(f"worker {self.script} speaks protocol {info.get('protocol')}, not {PROTOCOL_VERSION}")
        if self.joint_names is not None:
            theirs = list(info.get("joint_names", []))
            lacking = [n for n in self.joint_names if n not in theirs]
            if lacking:
                self.close()
                raise RuntimeError(f"worker {self.script} does not provide the joints {lacking} (it has {theirs})")
            self._order = [theirs.index(n) for n in self.joint_names]
        self.info = info
        return info

    def __call__(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        with self._lock:
            self.start()
            assert self._proc is not None
            try:
                write_message(self._proc.stdin, np.ascontiguousarray(images, dtype=np.uint8))
                write_message(self._proc.stdin, np.ascontiguousarray(boxes, dtype=np.float32))
                reply = read_message(self._proc.stdout)
            except BrokenPipeError:
                reply = None
            if reply is None:
                tail = self._stderr_tail()
                self.close()
                raise RuntimeError(f"black-box worker {self.script} died; its stderr ends with:\n{tail}")
            text = message_text(reply)
            if text is not None:
                raise RuntimeError(f"black-box worker {self.script} failed on this batch: {text}")
            return reply if self._order is None else reply[:, self._order]

    def close(self) -> None:
        """Stop the worker (closing its stdin lets it exit cleanly)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - best effort, then kill our own child
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def blazepose_python(python: str | Path | None = None) -> str:
    """The interpreter of the BlazePose environment: ``python`` or ``$POSEGEN_BLAZEPOSE_PYTHON``.

    Raises:
        PoseGenInputError: neither is set (the message gives the commands to create it).
    """
    python = python or os.environ.get(BLAZEPOSE_PYTHON_ENV)
    if not python:
        raise PoseGenInputError(
            "the 'blazepose' critic runs mediapipe in its own Python environment (mediapipe needs protobuf>=4 and "
            f"numpy<2, which conflict with nerfstudio). Create it with: {BLAZEPOSE_SETUP}."
        )
    return str(python)


_BLAZEPOSE_OPTIONS = ("python", "model_complexity", "worker_args")
_IGNORED_DATA_FILES = ("body",) + DATA_FILES  # a black box needs no body files: accepted and ignored


def load_blazepose_critic(checkpoint: str | Path | None = None, **options: Any) -> BlackBoxCritic:
    """Entry point ``posegen.critics: blazepose``: BlazePose (mediapipe 0.10.21, model complexity 1)
    as a black-box LSP-14 critic (:mod:`adapters.blazepose_worker` gives the landmark map).

    Args:
        checkpoint: must be None (the model ships inside the mediapipe wheel).
        **options: ``python`` (the environment's interpreter; default ``$POSEGEN_BLAZEPOSE_PYTHON``),
            ``model_complexity`` (0, 1, 2; default 1), ``worker_args`` (extra worker arguments, e.g.
            ``("--backend", "echo")`` for tests). The body/data-file keywords of other critics are
            accepted and unused.

    Raises:
        PoseGenInputError: a checkpoint, unknown options, or no BlazePose environment. The worker
            itself starts on first use.
    """
    if checkpoint is not None:
        raise PoseGenInputError(f"the 'blazepose' critic takes no checkpoint (got {checkpoint}); its model ships in mediapipe.")
    unknown = sorted(set(options) - set(_BLAZEPOSE_OPTIONS) - set(_IGNORED_DATA_FILES))
    if unknown:
        raise PoseGenInputError(f"load_critic('blazepose'): unknown options {unknown}; accepted: {list(_BLAZEPOSE_OPTIONS)}.")
    args = tuple(options.get("worker_args") or ()) + ("--model-complexity", str(int(options.get("model_complexity") or 1)))
    predictor = SubprocessPredictor(blazepose_python(options.get("python")), WORKER_SCRIPT, args, JOINT_SETS["lsp14"])
    return BlackBoxCritic(predictor, "lsp14", name="blazepose")


# ---- gradient estimators ------------------------------------------------------------------------
def es_perturb(x: Tensor, num: int, sigma: float, generator: torch.Generator | None = None,
               antithetic: bool = True) -> tuple[Tensor, Tensor]:
    """Gaussian perturbations of ``x (B, D)`` for :func:`es_surrogate`.

    Returns:
        ``(points (B, K, D), eps (B, K, D))`` with ``points = x.detach() + sigma * eps`` and ``K = num``
        (``num`` even when ``antithetic``: ``eps[:, K/2:] = -eps[:, :K/2]``).
    """
    if antithetic and num % 2:
        raise ValueError("es_perturb: num must be even for antithetic sampling")
    B, D = x.shape
    n = num // 2 if antithetic else num
    eps = torch.randn(B, n, D, generator=generator, device=x.device if generator is None else generator.device,
                      dtype=x.dtype).to(x.device)
    if antithetic:
        eps = torch.cat([eps, -eps], dim=1)
    return x.detach()[:, None] + sigma * eps, eps


def es_gradient(rewards: Tensor, eps: Tensor, sigma: float, antithetic: bool = True) -> Tensor:
    """ES estimate ``(B, D)`` of ``d E[f(x + sigma eps)] / dx`` from ``rewards (B, K)`` at
    ``x + sigma eps`` and ``eps (B, K, D)``: ``sum_k (r_k - b) eps_k / (K sigma)``, ``b`` the mean
    reward over the ``K`` perturbations of each sample (for antithetic pairs it cancels exactly).

    Raises:
        ValueError: non-finite rewards (map failed detections to a value first, e.g. ``nan_to_num``).
    """
    if not torch.isfinite(rewards).all():
        raise ValueError("es_gradient: rewards contain NaN/inf; replace failed evaluations first")
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    return torch.einsum("bk,bkd->bd", adv.to(eps.dtype), eps) / (eps.shape[1] * sigma)


def es_surrogate(x: Tensor, rewards: Tensor, eps: Tensor, sigma: float) -> Tensor:
    """Scalar surrogate loss whose gradient w.r.t. ``x (B, D)`` is ``-es_gradient(...) / B``:
    minimising it ascends the (smoothed) mean reward. ``x`` is the differentiable, noise-free
    sampler output (or a parameter vector); gradients flow on through whatever produced it."""
    g = es_gradient(rewards, eps, sigma).detach()
    return -(g * x).sum() / x.shape[0]


def score_function_surrogate(log_prob: Tensor, rewards: Tensor, baseline: str | Tensor | None = "loo") -> Tensor:
    """REINFORCE surrogate ``-mean((r - b) * log_prob)`` (scalar; minimise to ascend ``E[r]``).

    Args:
        log_prob: ``(B,)`` log-probability of each (detached) sample under the stochastic sampler,
            differentiable w.r.t. its parameters.
        rewards: ``(B,)`` rewards of the samples (no gradient needed).
        baseline: ``"loo"`` (leave-one-out mean, unbiased), ``"mean"`` (batch mean, slightly
            biased by 1/B), ``None`` (no baseline) or a tensor ``(B,)`` / scalar.

    Raises:
        ValueError: non-finite rewards or an unknown baseline.
    """
    if not torch.isfinite(rewards).all():
        raise ValueError("score_function_surrogate: rewards contain NaN/inf; replace failed evaluations first")
    r = rewards.detach().to(log_prob.dtype)
    B = r.shape[0]
    if baseline is None:
        b = torch.zeros_like(r)
    elif isinstance(baseline, Tensor):
        b = baseline.detach().to(r)
    elif baseline == "loo":
        b = (r.sum() - r) / max(B - 1, 1)
    elif baseline == "mean":
        b = r.mean().expand_as(r)
    else:
        raise ValueError(f"unknown baseline {baseline!r}; use 'loo', 'mean', None or a tensor")
    return -((r - b) * log_prob).mean()
