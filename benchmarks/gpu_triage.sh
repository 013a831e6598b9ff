#!/usr/bin/env bash
# Short GPU triage for one device call (about 6 minutes): build the CUDA extension for this GPU,
# run the small CUDA cases under compute-sanitizer memcheck (in the background), and the GPU
# tests file by file under a time budget, each failure logged as it happens.
#
#   bash benchmarks/gpu_triage.sh [TEST_BUDGET_S] [FILES...]
#
# Writes to $OUT (or benchmarks/results/tmp): build.log, memcheck.txt, fails.txt, tests.log.
set -u
cd "$(dirname "$0")/.." || exit 1
OUTD="${OUT:-benchmarks/results/tmp}"; mkdir -p "$OUTD"
BUDGET="${1:-150}"; shift || true
FILES=("$@")
[ ${#FILES[@]} -eq 0 ] && FILES=(tests/test_kernel_matmul.py tests/test_cuda_backend.py tests/test_backends.py
  tests/test_prior_backends.py tests/test_triton_backend.py tests/test_triton_prior.py tests/test_sampling.py
  tests/test_two_sample.py tests/test_kid.py tests/test_hostile.py)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
t0=$(date +%s)
cc=$(python3 -c "import torch; print('%d%d' % torch.cuda.get_device_capability(0))")
WAE_FAST_BUILD_CUDA=1 WAE_FAST_BUILD_CUDA_EMU=0 WAE_FAST_CUDA_ARCHS="$cc" MAX_JOBS=16 \
  python3 -m pip install --no-deps --no-build-isolation -e . > "$OUTD/build.log" 2>&1 || { tail -40 "$OUTD/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
unset PYTHONPATH
( WAE_FAST_SANITIZE_BACKENDS=cuda timeout 150 compute-sanitizer --tool memcheck --print-limit 4 --leak-check no \
    python3 benchmarks/sanitize_cases.py > "$OUTD/memcheck.txt" 2>&1; echo "exit $?" >> "$OUTD/memcheck.txt" ) &
SAN=$!
export WAE_FAST_FAILLOG="$OUTD/fails.txt" CUDA_LAUNCH_BLOCKING=1
: > "$WAE_FAST_FAILLOG"
t1=$(date +%s)
for f in "${FILES[@]}"; do
  left=$(( BUDGET - ($(date +%s) - t1) ))
  if [ $left -lt 20 ]; then echo "not run (budget): $f"; continue; fi
  echo "== $f (budget left ${left} s)" | tee -a "$OUTD/tests.log"
  case "$f" in *triton*) mark="not cuda_emu";; *) mark="cuda";; esac
  timeout $left python3 -m pytest -q -p no:cacheprovider -n 12 --timeout 60 -m "$mark" \
    -p no:benchmark "$f" 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -4 | tee -a "$OUTD/tests.log"
done
wait $SAN
echo "== memcheck (cuda backend, small cases)"; grep -v "^ok " "$OUTD/memcheck.txt" | head -60
echo "== failures: $(grep -c '^=== ' "$OUTD/fails.txt") (first line of each error, counted)"
grep -h "^E  " "$OUTD/fails.txt" | cut -c1-220 | sort | uniq -c | sort -rn | head -25
grep "^=== " "$OUTD/fails.txt" | sed 's/\[.*//' | sort | uniq -c | sort -rn | head -25
echo "total: $(( $(date +%s) - t0 )) s"
