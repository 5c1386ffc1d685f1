"""Where independent work runs: in this process (``--engine local``) or as Ray tasks (``--engine ray``).

The commands that fan out (``ns-posegen-export``'s batches, ``ns-posegen-eval``'s motions,
``ns-posegen-experiment``'s arms x repeats, :mod:`posegen_ns.experiment_tasks`) describe their work as a list of
independent tasks and two functions (:func:`run_tasks`):

- ``load()``: what a worker builds once (load the run, the critic, ...; the experiment's trained pipeline comes
  inside ``load`` itself, through the object store); its result is the worker's *state*;
- ``work(state, task)``: one task; its result goes back to the driver.

With Ray, each worker is a Ray actor (one GPU each where the cluster has GPUs, else one CPU slot): it runs
``load()`` once and then the tasks the driver hands it, at most two queued at a time. The driver shows one
progress bar (:func:`posegen_ns.cli.progress`) over all workers' tasks and collects the results in task order,
so a caller that combines them in that order gets what a single process gets. Workers are kept after a
successful call: the next call with the same ``load`` in the same Ray session reuses them (no second load);
:func:`release_workers` (or the end of :func:`ray_session`) stops them.

Cluster: with ``RAY_ADDRESS`` set (e.g. ``ray start --head`` printed it) the job runs on that cluster; without it a
local Ray is started for the command and stopped after it (:func:`ray_session`). On a cluster the run's files, the
output folder and the installed package must be reachable at the same paths on every node (a shared file system).

Retries: a worker *process* that dies (killed, out of memory, a lost node) is restarted by Ray (it loads again) and
its unfinished tasks are run again, up to ``max_retries`` times per worker; tasks must therefore be idempotent (the
export's are: a batch is written under its sample indices, and one whose labels file exists is skipped). A Python
error inside a task is not retried: it stops the job with a :class:`WorkerError` naming the worker and the task.

Determinism: torch's CPU reductions (matrix products, sums) depend on the intra-op thread count, so every worker
computes with the driver's ``torch.get_num_threads()``: the results equal a local run's on the same kind of machine
whatever the number of workers.

Test hook: ``POSEGEN_RAY_KILL_ONCE="LABEL@MARKER"`` (read on the driver) makes the worker that starts the task
labelled ``LABEL`` (e.g. ``"batch 2"``) kill its own process with SIGKILL, once: when the file ``MARKER`` does not
exist yet (it is created first). It exercises the retry path; it is not for production use.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Optional, TypeVar

import torch

from posegen_ns.cli import progress as progress_bar
from posegen_ns.errors import PoseGenInputError

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

Engine = Literal["local", "ray"]
"""Where a command's independent tasks run: ``"local"`` (this process) or ``"ray"`` (Ray actors)."""

KILL_ONCE_ENV = "POSEGEN_RAY_KILL_ONCE"
"""Environment variable of the test hook (module docstring)."""

RAY_EXTRA_HINT = 'install the extra: pip install -e ".[ray]" (ray==2.60.0 with protobuf==3.20.3)'

_IN_FLIGHT_PER_WORKER = 2
"""Tasks queued on a worker at once: the next one is there when the current one ends (no round trip)."""


class WorkerError(RuntimeError):
    """A task failed on a Ray worker (a Python error, or the worker died more often than it may be restarted).

    The message names the worker (index, host, pid) and the task. ``keep_partial`` tells the export to keep its
    partial folder: what the other tasks wrote is valid, and running the same command again resumes.
    """

    keep_partial = True

    def __init__(self, message: str, worker: int, task: str):
        super().__init__(message)
        self.worker = worker
        self.task = task


def _import_ray(flag: str = "--engine ray") -> Any:
    try:
        import ray
    except ImportError:
        raise PoseGenInputError(f"{flag} needs Ray, which is not installed; {RAY_EXTRA_HINT}") from None
    return ray


def check_engine(engine: str, num_workers: Optional[int], flag: str = "--engine") -> None:
    """Check the engine flags of a command before anything heavy runs.

    Raises:
        PoseGenInputError: ``engine`` is not ``local``/``ray``; ``num_workers < 1`` or given without ``ray``;
            ``ray`` without Ray installed.
    """
    if engine not in ("local", "ray"):
        raise PoseGenInputError(f"{flag} must be 'local' or 'ray', got {engine!r}")
    if num_workers is not None and num_workers < 1:
        raise PoseGenInputError(f"--num-workers must be at least 1, got {num_workers}")
    if num_workers is not None and engine != "ray":
        raise PoseGenInputError(f"--num-workers {num_workers} needs {flag} ray (the local engine is one process)")
    if engine == "ray":
        _import_ray(f"{flag} ray")


@contextmanager
def ray_session(num_workers: Optional[int] = None, quiet: bool = False) -> Iterator[Any]:
    """Ray for one command: the cluster of ``RAY_ADDRESS`` when it is set, else a new local Ray (``address="local"``,
    never someone else's running instance) with at least ``num_workers`` CPU slots, no dashboard, a 1 GiB object
    store and worker output kept out of the console. Disconnects (and stops a local Ray) at the end. An already
    initialised Ray (e.g. a test's) is used as it is and left running.

    Yields:
        The ``ray`` module.

    Raises:
        PoseGenInputError: Ray is not installed, or ``RAY_ADDRESS`` names no reachable cluster.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if not address:
        options.update(address="local", num_cpus=max(os.cpu_count() or 1, num_workers or 1),
                       object_store_memory=1 << 30)
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(**options)
        if on_sigterm is not None:  # ray.init makes SIGTERM a bare sys.exit; keep the command's own handling
            signal.signal(signal.SIGTERM, on_sigterm)
    except ConnectionError as exc:
        raise PoseGenInputError(
            f"RAY_ADDRESS={address} names no reachable Ray cluster ({exc}); start one with `ray start --head` and "
            f"export the address it prints, or unset RAY_ADDRESS to run on a local Ray"
        ) from None
    if not quiet:
        res = ray.cluster_resources()
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        print(f"running on {where}: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs, "
              f"{len(ray.nodes())} node(s)")
    try:
        yield ray
    finally:
        release_workers()
        ray.shutdown()


def default_num_workers(ray: Any, use_gpus: bool) -> int:
    """Workers when ``--num-workers`` is not given: one per GPU of the cluster (``use_gpus``), else one per
    ``torch.get_num_threads()`` CPUs (each worker computes with that many threads, :func:`run_tasks`)."""
    res = ray.cluster_resources()
    if use_gpus and int(res.get("GPU", 0)) > 0:
        return int(res["GPU"])
    return max(1, int(res.get("CPU", 1)) // max(1, torch.get_num_threads()))


class _Worker:
    """A Ray actor's body: ``load()`` once, then ``work(state, task)`` per task (see :func:`run_tasks`)."""

    def __init__(self, load: Callable[[], Any] | list[Any], threads: int):
        torch.set_num_threads(threads)
        self.state, self.load_error = None, None
        try:
            if isinstance(load, list):  # a large ``load`` comes as [reference]; the driver keeps it (in _POOL)
                import ray

                load = ray.get(load[0])
            self.state = load()
        except Exception as exc:  # raised again by run(): a task error, named, not a crash Ray would retry
            self.load_error = exc

    def run(self, work: Callable[[Any, Any], Any], label: str, task: Any, kill_once: Optional[str] = None) -> Any:
        if kill_once:
            target, _, marker = kill_once.partition("@")
            if (label == target or label.startswith(target + " ")) and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        if self.load_error is not None:
            raise self.load_error
        return work(self.state, task)


_POOL: dict[str, Any] = {}
"""The workers of the latest :func:`run_tasks` call (``key``, ``job``, ``workers``, and ``load`` as passed to them):
a following call with the same ``load`` in the same Ray job reuses them instead of loading again (e.g. several
exports of one run from Python)."""

_INLINE_BYTES = 64 * 1024
"""A pickled ``load`` below this size is passed inline to the workers (Ray inlines arguments below 100 KiB)."""


def release_workers() -> None:
    """Stop the workers :func:`run_tasks` keeps for reuse (their memory and GPUs are freed); a no-op without any.
    :func:`ray_session` does it at its end; call it when you initialised Ray yourself and are done."""
    workers = _POOL.pop("workers", [])
    _POOL.clear()
    if workers:
        import ray

        if ray.is_initialized():
            for a in workers:
                ray.kill(a, no_restart=True)


def _pooled_workers(ray: Any, load: Callable[[], Any], n: int, gpus: int, max_retries: int) -> list[Any]:
    """``n`` workers that ran ``load()``: the kept ones when ``load`` (by its pickled bytes), the thread count, the
    GPUs and the Ray job are the same, else new ones (the kept ones are stopped first: they hold CPU slots)."""
    import hashlib

    threads = torch.get_num_threads()
    pickled = ray.cloudpickle.dumps(load)
    key = f"{hashlib.sha1(pickled).hexdigest()}:{threads}:{gpus}:{max_retries}"
    job = ray.get_runtime_context().get_job_id()
    if _POOL.get("key") != key or _POOL.get("job") != job:
        release_workers()
        # a small ``load`` travels inside the actor's creation task; a large one (e.g. critic weights) through the
        # object store, by a reference kept here so that a restarted worker can fetch it again
        _POOL.update(key=key, job=job, workers=[], load=load if len(pickled) < _INLINE_BYTES else [ray.put(load)])
    actor = ray.remote(_Worker).options(num_cpus=1, num_gpus=gpus, max_restarts=max_retries,
                                         max_task_retries=max_retries)
    workers = _POOL["workers"]
    while len(workers) < n:
        workers.append(actor.remote(_POOL["load"], threads))
    return workers[:n]


def _where(exc: BaseException) -> str:
    """``pid N on IP`` from a Ray error's first line, or ``''``."""
    m = re.search(r"pid=(\d+), ip=([^,)\s]+)", str(exc).split("\n", 1)[0])
    return f"pid {m.group(1)} on {m.group(2)}" if m else ""


def run_tasks(
    load: Callable[[], S],
    work: Callable[[S, T], R],
    tasks: Sequence[T],
    labels: Sequence[str],
    *,
    num_workers: Optional[int] = None,
    sizes: Optional[Sequence[int]] = None,
    description: str = "tasks",
    suffix: Optional[str] = None,
    completed: int = 0,
    quiet: bool = False,
    on_result: Optional[Callable[[int, R], None]] = None,
    use_gpus: bool = True,
    max_retries: int = 3,
) -> list[R]:
    """Run ``work(state, task)`` for every task on Ray workers that each ran ``state = load()`` once.

    Call inside :func:`ray_session`. ``load`` and ``work`` travel to the workers by pickling (Ray's cloudpickle):
    module-level functions and ``functools.partial`` of them with plain arguments.

    Args:
        load: builds a worker's state (e.g. loads the run); an error in it fails the worker's first task.
        work: one task; must be idempotent (a task may run again after its worker died).
        tasks: the tasks (picklable), handed out in this order.
        labels: a name per task for messages and the test hook, e.g. ``"batch 3 (samples 6..7)"``.
        num_workers: workers (Ray actors); default :func:`default_num_workers`. Never more than the tasks.
        sizes: progress steps per task (default 1 each); the bar's total is ``completed + sum(sizes)``.
        description, suffix, completed, quiet: the progress bar (:func:`posegen_ns.cli.progress`).
        on_result: called on the driver as ``on_result(i, result)`` when task ``i`` ends (completion order).
        use_gpus: give each worker one GPU when the cluster has GPUs.
        max_retries: times a worker may be restarted after its process died (its unfinished tasks run again).

    Returns:
        The results in task order.

    Raises:
        WorkerError: a task raised (the message names the worker, the task and the error; the error is the
            ``__cause__``), or a worker died more than ``max_retries`` times. The other workers are stopped.
        PoseGenInputError: a task raised one (bad input found on a worker): re-raised with the worker and task named.
    """
    import ray

    if len(labels) != len(tasks):
        raise ValueError(f"run_tasks: {len(tasks)} tasks but {len(labels)} labels")
    sizes = list(sizes) if sizes is not None else [1] * len(tasks)
    results: list[Any] = [None] * len(tasks)
    if not tasks:
        return results
    gpus = 1 if use_gpus and int(ray.cluster_resources().get("GPU", 0)) > 0 else 0
    n = min(num_workers or default_num_workers(ray, use_gpus), len(tasks))
    workers = _pooled_workers(ray, load, n, gpus, max_retries)
    kill_once = os.environ.get(KILL_ONCE_ENV) or None
    work_ref = ray.put(work)
    queue = deque(range(len(tasks)))
    in_flight: dict[Any, tuple[int, int]] = {}

    def submit(w: int) -> None:
        if queue:
            i = queue.popleft()
            in_flight[workers[w].run.remote(work_ref, labels[i], tasks[i], kill_once)] = (i, w)

    ok = False
    try:
        for _ in range(_IN_FLIGHT_PER_WORKER):
            for w in range(n):
                submit(w)
        with progress_bar(description, completed + sum(sizes), quiet, completed=completed, suffix=suffix) as advance:
            while in_flight:
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                i, w = in_flight.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause
                    where = _where(exc)
                    head = f"ray worker {w}{f' ({where})' if where else ''} failed on {labels[i]}"
                    if isinstance(cause, PoseGenInputError):
                        raise PoseGenInputError(f"{head}: {cause}") from cause
                    raise WorkerError(f"{head}: {type(cause).__name__}: {cause}", w, labels[i]) from cause
                except ray.exceptions.RayActorError as exc:
                    raise WorkerError(
                        f"ray worker {w} died on {labels[i]} and was restarted {max_retries} times already "
                        f"(killed, out of memory or a lost node?): {str(exc).splitlines()[0] if str(exc) else exc!r}",
                        w, labels[i],
                    ) from exc
                if on_result is not None:
                    on_result(i, results[i])
                advance(sizes[i])
                submit(w)
        ok = True
    finally:
        if not ok:  # an error or an interruption: stop every worker now (a failed one may be in a bad state)
            release_workers()
    return results

