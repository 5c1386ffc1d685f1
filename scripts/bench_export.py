"""Benchmark the export's throughput (labelled images per second) with ``--engine local`` and with
``--engine ray`` on 1, 2, ... workers, and check that every Ray export equals the local one byte for byte.

    python scripts/bench_export.py [--load-config RUN/config.yml] [--num-samples 64] [--batch-size 4]
                                   [--workers 1 2] [--threads 0 1] [--json PATH]

Without ``--load-config`` it builds a toy run first (the tests' size: the tiny body, a 2-camera 40 x 40 capture,
``ns-train posegen-human-tiny``) in ``--work-dir``. Ray is started once (local, or ``RAY_ADDRESS``'s cluster).

For every torch thread count of ``--threads`` (``0`` = torch's default, all cores; Ray workers compute with the
driver's count, :mod:`posegen_ns.engine`): the local export, then for each worker count a warm-up export
(its time includes starting the workers and loading the run in each) and a timed export on the warm workers.
Reported per row: images per second of the timed export (``--num-samples`` / wall seconds, writing PNGs and labels
included, finalising included), the warm-up's wall seconds, and whether the dataset equals the local one.

``--json PATH`` writes ``{"machine": ..., "num_samples": ..., "batch_size": ..., "resolution": ..., "results":
[{"engine", "workers", "threads", "images_per_second", "seconds", "warmup_seconds", "identical"}]}``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Passive OpenMP waiting (unless set): spinning OpenMP threads slow torch down many times on a shared CPU
# (see scripts/bench_render.py); OpenMP reads it when torch loads, so re-run this script with it set.
if "OMP_WAIT_POLICY" not in os.environ and __name__ == "__main__":
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import tyro  # noqa: E402

from posegen_ns.atomic_io import write_json  # noqa: E402
from posegen_ns.cli import load_run  # noqa: E402
from posegen_ns.engine import ray_session, release_workers  # noqa: E402
from posegen_ns.export import export_samples, ray_renderer  # noqa: E402

BIN = Path(sys.executable).parent


@dataclass
class BenchConfig:
    """Export throughput, local and on Ray workers."""

    load_config: Optional[Path] = None
    """A trained run's config.yml; default: build the toy run in --work-dir."""
    work_dir: Path = Path("/tmp/posegen-bench-export")
    """Scratch folder (the toy run and the exported datasets; datasets are deleted after each measurement)."""
    num_samples: int = 64
    """Samples per export."""
    batch_size: int = 4
    """Samples per batch (per Ray task)."""
    workers: tuple[int, ...] = (1, 2)
    """Ray worker counts to measure."""
    threads: tuple[int, ...] = (0, 1)
    """torch thread counts of the driver (and so of every worker); 0 = torch's default (all cores)."""
    json: Optional[Path] = None
    """Also write the figures as JSON here."""


def _toy_run(work_dir: Path) -> Path:
    found = sorted((work_dir / "out").rglob("config.yml"))
    if found:
        return found[-1]
    for args in (
        [str(BIN / "ns-posegen-capture"), "--output-dir", str(work_dir / "capture"), "--body", "tiny",
         "--num-cameras", "2", "--resolution", "40", "--frame-stride", "24"],
        [str(BIN / "ns-train"), "posegen-human-tiny", "--data", str(work_dir / "capture"), "--output-dir",
         str(work_dir / "out")],
    ):
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{args[0]} failed:\n{proc.stderr[-3000:]}")
    return sorted((work_dir / "out").rglob("config.yml"))[-1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    args = tyro.cli(BenchConfig, description=__doc__.splitlines()[0])
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_config = args.load_config or _toy_run(args.work_dir)
    pipeline = load_run(run_config)
    default_threads = torch.get_num_threads()
    out = args.work_dir / "datasets"
    results = []

    def export(name: str, renderer=None) -> tuple[float, Path]:
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        t = time.perf_counter()
        export_samples(pipeline, target, args.num_samples, batch_size=args.batch_size, run_config=run_config,
                       overwrite=True, renderer=renderer)
        return time.perf_counter() - t, target

    with ray_session(max(args.workers)):
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            n_threads = torch.get_num_threads()
            seconds, local = export(f"local-t{n_threads}")
            reference = _files(local)
            results.append({"engine": "local", "workers": 1, "threads": n_threads, "seconds": seconds,
                            "images_per_second": args.num_samples / seconds, "warmup_seconds": None, "identical": True})
            for n in args.workers:
                warmup, _ = export(f"ray-w{n}-t{n_threads}-warmup", ray_renderer(run_config, n, quiet=True))
                seconds, folder = export(f"ray-w{n}-t{n_threads}", ray_renderer(run_config, n, quiet=True))
                results.append({"engine": "ray", "workers": n, "threads": n_threads, "seconds": seconds,
                                "images_per_second": args.num_samples / seconds, "warmup_seconds": warmup,
                                "identical": _files(folder) == reference})
            release_workers()
            shutil.rmtree(out, ignore_errors=True)

    machine = (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs (os.cpu_count), "
               f"load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}").replace("  ", " ")
    h, w = pipeline.image_hw
    print(f"\nexport throughput: {args.num_samples} samples of {w} x {h} px, batches of {args.batch_size}; {machine}")
    print(f"{'engine':<8}{'workers':>8}{'threads':>8}{'img/s':>9}{'seconds':>9}{'warm-up s':>11}  identical")
    for r in results:
        warm = f"{r['warmup_seconds']:.1f}" if r["warmup_seconds"] is not None else "-"
        print(f"{r['engine']:<8}{r['workers']:>8}{r['threads']:>8}{r['images_per_second']:>9.1f}{r['seconds']:>9.2f}"
              f"{warm:>11}  {'yes' if r['identical'] else 'NO'}")
    if args.json is not None:
        write_json(args.json, {"machine": machine, "num_samples": args.num_samples, "batch_size": args.batch_size,
                               "resolution": [int(h), int(w)], "results": results})


if __name__ == "__main__":
    main()
