#!/usr/bin/env bash
# One-command GPU validation of wae_fast on a bare machine with an NVIDIA GPU and no network.
#
#   bash benchmarks/gpu_validate.sh env build          # versions, clocks, ceilings; install + build CUDA ext
#   bash benchmarks/gpu_validate.sh test [--pytest-args "tests/test_x.py -k cuda"]  # pytest -q tests, CUDA enabled
#   bash benchmarks/gpu_validate.sh sanitize           # compute-sanitizer memcheck + racecheck, small shapes
#   bash benchmarks/gpu_validate.sh bench [--rows gpu-headline,gpu-nsweep] [--budget 400]
#   bash benchmarks/gpu_validate.sh prior [--budget 400]  # N = 10M codes vs in-kernel prior samples
#   bash benchmarks/gpu_validate.sh kid [--budget 400]    # kernel_matmul, KID (10k, 50k), mmd_test rows
#   bash benchmarks/gpu_validate.sh all                # everything (longer than one 10-minute device call)
#   bash benchmarks/gpu_validate.sh --dry-run all      # CPU-only machine: every stage at tiny sizes
#   WAE_FAST_DRY_RUN=1 bash benchmarks/gpu_validate.sh all
#
# Each stage fits one device call (< 8 min) and installs the package first if a fresh machine
# lacks it. Reports: benchmarks/results/<gpu>-<date>.{md,csv,log,-env.json,-time.png,-mem.png},
# appended as each stage goes and copied to $OUT (when set) after each row/stage.
# Optional peers: wheels in .whl/ (see benchmarks/fetch_wheels.sh) are pip-installed --no-index.
set -u
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3 >/dev/null 2>&1; then PY=python3; else PY=python; fi
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
if [ "$#" -eq 0 ]; then set -- all; fi
exec "$PY" -m benchmarks.gpu_validate "$@"
