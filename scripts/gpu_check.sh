#!/usr/bin/env bash
# The GPU path of posegen-ns, checked once on a CUDA machine (the device machine: Python 3.12 with its own
# torch, no package registry), in under 8 minutes so that a 15-minute device budget allows one rerun.
#
# Prepare here first (wheels and small caches, git-ignored):   bash scripts/gpu_prepare.sh
# Then one device call:   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu_cache"], timeout_s=570)
#
# Stages (each timed; a failed stage does not stop the later ones; all output goes under $OUT):
#   install   the carried wheels with --no-deps over the machine's torch (+ posegen-ns's entry points)
#   gsplat    gsplat's first-use CUDA build (JIT: nvcc + ninja), timed apart from everything else; if it
#             fails, every later stage runs on the torch rasteriser ('auto' says why in one line)
#   tests     pytest -m cuda tests/test_cuda.py (gsplat vs torch, model.render CUDA vs CPU, pipeline steps,
#             exporter); measured differences in cuda_report.jsonl
#   bench     scripts/bench_render.py --device cuda (256^2 and 512^2, batch 1..256, peak memory)
#   default   the default job, `ns-train posegen-human` with no arguments, wall time and its report
#   experiment  `ns-posegen-experiment --preset gpu` with whatever time is left (it is not expected to finish)
# Files under $OUT (at most 8, one folder deep): gpu_check.log, summary.json, pytest_cuda.xml,
# cuda_report.jsonl, bench_render.json, default_job_report.json, experiment.json.
# GPU_CHECK_SECONDS (default 420) is the deadline for starting and bounding stages; GPU_CHECK_SKIP="experiment ..."
# skips stages by name (e.g. on a rerun).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
DEADLINE=${GPU_CHECK_SECONDS:-420}
STAGES=$OUT/.stages.tsv
: > "$STAGES"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
cap() { local a=$1 b; b=$(( $(left) - ${2:-0} )); [ "$b" -lt "$a" ] && a=$b; [ "$a" -lt 1 ] && a=1; echo "$a"; }
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, record "name rc seconds"
    local name=$1 limit=$2 t0 rc ms
    shift 2
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        echo "=== $name: skipped (GPU_CHECK_SKIP) ==="
        printf '%s\tskipped\t0\t0\n' "$name" >> "$STAGES"
        return 0
    fi
    echo "=== $name (limit ${limit}s, $(left)s left of ${DEADLINE}s) ==="
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    record "$name" "$rc" "$t0" "$limit"
    return $rc
}
record() {  # record NAME RC T0_NS LIMIT
    local ms=$(( ($(date +%s%N) - $3) / 1000000 ))
    printf '%s\t%s\t%d.%03d\t%s\n' "$1" "$2" $((ms / 1000)) $((ms % 1000)) "$4" >> "$STAGES"
    echo "=== $1: exit $2 ==="
}

echo "=== machine ==="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import sys, torch, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'gpu', torch.cuda.is_available())"
command -v nvcc ninja || true

# ---- install: wheels into /tmp/site; posegen-ns from this checkout (entry points written by hand: the
# machine has no build backend for `pip install -e .`)
echo "=== install ==="
t0=$(date +%s%N)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && \
python3 - <<'PY'
import pathlib, stat, sys, tomllib
pyproject = tomllib.loads(pathlib.Path("pyproject.toml").read_text())
project, site = pyproject["project"], pathlib.Path("/tmp/site")
info = site / f"posegen_ns-{project['version']}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: posegen-ns\nVersion: {project['version']}\n")
groups = {"console_scripts": project["scripts"], **project["entry-points"]}
(info / "entry_points.txt").write_text("".join(
    f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))
(site / "bin").mkdir(exist_ok=True)
for name, target in project["scripts"].items():
    module, func = target.split(":")
    script = site / "bin" / name
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.argv[0] = {name!r}\nsys.exit({func}())\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
print("posegen-ns entry points:", ", ".join(project["scripts"]))
PY
record install $? "$t0" 0
export PYTHONPATH=/tmp/site:$REPO PATH=/tmp/site/bin:$PATH
export POSEGEN_CACHE_DIR=/tmp/posegen_cache TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
export MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)}
mkdir -p "$POSEGEN_CACHE_DIR" && cp -r .gpu_cache/. "$POSEGEN_CACHE_DIR"/ 2>/dev/null || echo "no .gpu_cache carried: the caches are rebuilt (slower)"
python3 -c "import nerfstudio, gsplat, viser, tyro, smplx, roma; import posegen_ns.pipeline; from nerfstudio.plugins.registry import discover_methods; m, _ = discover_methods(); assert 'posegen-human' in m, sorted(m); print('imports ok; posegen-human registered')"

# ---- gsplat's first-use build, timed apart
stage gsplat "$(cap 240 170)" python3 - <<'PY'
import json, os, time
t = time.perf_counter()
from posegen_ns.field.rasterize import gsplat_status
ok, reason = gsplat_status()
seconds = time.perf_counter() - t
print(f"gsplat usable: {ok} {reason} ({seconds:.1f} s for import + JIT build, MAX_JOBS={os.environ.get('MAX_JOBS')}, "
      f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})")
json.dump({"usable": ok, "reason": reason, "build_seconds": round(seconds, 1)}, open("/tmp/gsplat_build.json", "w"))
raise SystemExit(0 if ok else 1)
PY
if [ $? -ne 0 ]; then  # a failed or unfinished build is not retried by every later process: torch rasteriser
    export POSEGEN_GSPLAT=0
    echo "gsplat unusable: the later stages run on the torch rasteriser on CUDA (POSEGEN_GSPLAT=0)"
fi

# ---- the cuda tests
stage tests "$(cap 150 100)" env POSEGEN_CUDA_REPORT="$OUT/cuda_report.jsonl" \
    python3 -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" -o addopts="-ra"

# ---- render throughput
stage bench "$(cap 80 130)" python3 scripts/bench_render.py --device cuda --json "$OUT/bench_render.json" \
    --budget-seconds 45 --max-call-seconds 3 --min-seconds 0.3 --repeats 3

# ---- the default job (ns-train posegen-human, no arguments), wall time
rm -rf /tmp/default_job
stage default "$(cap 300 10)" ns-train posegen-human --output-dir /tmp/default_job \
    --viewer.quit-on-train-completion True
report=$(ls /tmp/default_job/*/*/*/posegen_report.json 2>/dev/null | head -1)
[ -n "$report" ] && cp "$report" "$OUT/default_job_report.json"

# ---- the experiment's gpu preset, if time allows (partial: it records how far it got)
if [ "$(left)" -gt 60 ]; then
    stage experiment "$(cap 100000 10)" ns-posegen-experiment --preset gpu --output-dir /tmp/experiment_gpu
    [ -f /tmp/experiment_gpu/experiment.json ] && cp /tmp/experiment_gpu/experiment.json "$OUT/experiment.json"
else
    printf 'experiment\tskipped\t0\t0\n' >> "$STAGES"
fi

# ---- summary.json
python3 - "$OUT" <<'PY'
import json, pathlib, re, subprocess, sys
import xml.etree.ElementTree as ET
out = pathlib.Path(sys.argv[1])
import os
summary = {"stages": {}, "POSEGEN_GSPLAT": os.environ.get("POSEGEN_GSPLAT"), "deadline_seconds": int(os.environ.get("GPU_CHECK_SECONDS", 420))}
for line in (out / ".stages.tsv").read_text().splitlines():
    name, rc, seconds, limit = line.split("\t")
    summary["stages"][name] = {"exit": rc, "seconds": float(seconds), "limit_seconds": float(limit),
                               "timed_out": rc in ("124", "137")}
try:
    summary["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
    import torch
    summary["torch"], summary["cuda"] = torch.__version__, torch.version.cuda
except Exception as exc:  # noqa: BLE001
    summary["gpu_error"] = str(exc)
for key, path in (("gsplat_build", pathlib.Path("/tmp/gsplat_build.json")), ("bench_render", out / "bench_render.json"),
                  ("default_job_report", out / "default_job_report.json")):
    if path.is_file():
        summary[key] = json.loads(path.read_text())
junit = out / "pytest_cuda.xml"
if junit.is_file():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["tests"]["failed"] = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
report = out / "cuda_report.jsonl"
if report.is_file():
    summary["measured"] = [json.loads(l) for l in report.read_text().splitlines() if l.strip()]
log = (out / "gpu_check.log").read_text(errors="replace")
fallback = re.findall(r"posegen-ns: rasteriser 'auto' uses the torch backend.*", log)
summary["auto_fallback_lines"] = sorted(set(fallback))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k not in ("bench_render", "measured", "default_job_report")}, indent=1))
PY
rm -f "$STAGES"
echo "gpu_check: done in $(( $(date +%s) - START )) s"
