#!/usr/bin/env bash
# One-command GPU validation that fits one 10-minute call:
#   bash benchmarks/gpu_check.sh OUTDIR [DATA_DIR]
# OUTDIR    where the result files go (created if missing).
# DATA_DIR  optional (or env SSLEXT_GPU_CHECK_DATA): a folder that holds CIFAR-10
#           in the python layout, DATA_DIR/cifar-10-batches-py/ (what
#           `--set data.download=true` fetches, or what cifar10_from_jpeg.py
#           unpacks from the JPEG archive). Without it the training run is skipped.
# Environment:
#   SSLEXT_GPU_CHECK_DEADLINE  seconds from the script's start by which everything
#                              has ended, build included (default 480)
#   SSLEXT_GPU_CHECK_DRY_RUN=1 print the plan (each step's start and limit if every
#                              step used its whole limit) and exit 1 unless it fits
#   PYTHON                     the interpreter (default python3)
# Steps, most valuable first: preflight (stops naming what is missing), build
# (stops if it fails), build_info, the CUDA op tests, the loss benchmark
# (rows written as they finish), memcheck and racecheck on sslext's own
# kernels only with the caching allocator off, the CUDA trainer tests, a short
# CIFAR-10 VICReg run that takes the time left. Each step's limit is
# min(its cap, time left before the deadline); a step that ignores SIGINT is
# killed GRACE seconds later, so the plan counts cap + GRACE per step. A
# sanitizer that refuses the device (no "ERROR SUMMARY" in its log) is recorded
# in summary.txt and the script goes on.
# Writes at most 8 files into OUTDIR, each as its step runs: build.log
# tests.log losses.json losses.md memcheck.log racecheck.log train.log
# summary.txt (one line per step: name, exit status, seconds, limit, note).
# The training run's own files go to runs/gpu_check/ in the repository (ignored
# by git), emptied before and after; the script names no folder outside the
# repository and its arguments.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [DATA_DIR]}
DATA=${2:-${SSLEXT_GPU_CHECK_DATA:-}}
DRY_RUN=${SSLEXT_GPU_CHECK_DRY_RUN:-0}
DEADLINE=${SSLEXT_GPU_CHECK_DEADLINE:-480}
GRACE=5     # timeout's --kill-after
RESERVE=5   # kept back for the summary and the cleanup
MIN_STEP=10 # a step with less time than this is skipped, not started
TRAIN_MIN=40
case "$DEADLINE" in ''|*[!0-9]*) echo "gpu_check.sh: SSLEXT_GPU_CHECK_DEADLINE must be whole seconds, got '$DEADLINE'" >&2; exit 2;; esac
mkdir -p "$OUT"
# Absolute paths: the script moves to the repository root below.
OUT=$(cd "$OUT" && pwd)
if [ -n "$DATA" ]; then
  [ -d "$DATA" ] || { echo "gpu_check.sh: DATA_DIR '$DATA' is not a directory" >&2; exit 2; }
  DATA=$(cd "$DATA" && pwd)
fi
cd "$(dirname "$0")/.."
SCRATCH="$PWD/runs/gpu_check"
[ "$DRY_RUN" = 1 ] || rm -rf "$SCRATCH"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
SUMMARY="$OUT/summary.txt"
start=$(date +%s)
planned=0   # the dry run's clock: every step assumed to use its whole limit + GRACE
FITS=1
elapsed() { if [ "$DRY_RUN" = 1 ]; then echo "$planned"; else echo $(( $(date +%s) - start )); fi; }
# time_left: seconds a step starting now may be given (its GRACE and the RESERVE kept back).
time_left() { echo $(( DEADLINE - RESERVE - GRACE - $(elapsed) )); }
limit_for() { local cap=$1 left; left=$(time_left); [ "$left" -lt "$cap" ] && echo "$left" || echo "$cap"; }
record() { printf '%-16s %-8s %6ss  limit %4ss  %s\n' "$@" >> "$SUMMARY"; }
: > "$SUMMARY"

# step NAME CAP LOG CMD...: runs CMD for at most min(CAP, time left) seconds,
# appending to LOG; returns CMD's exit status (124: cut by the limit).
step() {
  local name=$1 cap=$2 log=$3; shift 3
  local now limit; now=$(elapsed); limit=$(limit_for "$cap")
  if [ "$DRY_RUN" = 1 ]; then
    echo "plan: $name starts by ${now}s, limit ${limit}s (cap ${cap}s), ends by $(( now + limit + GRACE ))s: $*"
    [ "$limit" -lt "$cap" ] && FITS=0
    planned=$(( now + limit + GRACE ))
    touch "$log"
    return 0
  fi
  if [ "$limit" -lt "$MIN_STEP" ]; then
    echo "=== $name: skipped, ${limit}s left before the ${DEADLINE}s deadline" | tee -a "$log"
    record "$name" skipped 0 "$limit" "no time left"
    return 125
  fi
  echo "=== $name (limit ${limit}s, t=${now}s): $*" | tee -a "$log"
  timeout --signal=INT --kill-after=$GRACE "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  local took=$(( $(elapsed) - now ))
  echo "=== $name: exit $rc after ${took}s (t=$(elapsed)s)" | tee -a "$log"
  local note=""
  [ "$rc" = 124 ] && note="cut at its limit"
  [ "$rc" = 137 ] && note="killed: ignored SIGINT for ${GRACE}s"
  record "$name" "$rc" "$took" "$limit" "$note"
  return $rc
}

# A sanitizer step: a log without compute-sanitizer's "ERROR SUMMARY" means the
# tool never ran the program (it refused the device, or crashed): recorded, not fatal.
sanitize() {
  local name=$1 cap=$2 log=$3; shift 3
  touch "$log"
  local mark; mark=$(wc -l < "$log")
  step "$name" "$cap" "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" "$@"
  local rc=$?
  if [ "$DRY_RUN" != 1 ] && [ "$rc" != 124 ] && [ "$rc" != 125 ] && ! tail -n +"$(( mark + 1 ))" "$log" | grep -q "ERROR SUMMARY"; then
    echo "=== $name: compute-sanitizer did not run the program (refused the device?): recorded, going on" \
      | tee -a "$log"
    record "$name" refused - - "no ERROR SUMMARY in $(basename "$log")"
  fi
}

# 1. Preflight: names everything missing and stops before minutes of build.
SANITIZER=compute-sanitizer
step preflight 20 "$OUT/build.log" $PY benchmarks/gpu_preflight.py
rc=$?
if [ "$DRY_RUN" != 1 ]; then
  if [ "$rc" != 0 ]; then
    grep MISSING "$OUT/build.log" >&2
    echo "gpu_check.sh: preflight failed (exit $rc): see $OUT/build.log" >&2; exit 2
  fi
  SANITIZER=$(sed -n 's/^compute_sanitizer=//p' "$OUT/build.log" | tail -1)
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; } >> "$OUT/build.log"
fi

# 2. Build for the visible GPU (setup.py reads its compute capability when
# TORCH_CUDA_ARCH_LIST is unset). Nothing after it means anything if it failed.
step build 165 "$OUT/build.log" env SSLEXT_FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e .
rc=$?
if [ "$DRY_RUN" != 1 ] && [ "$rc" != 0 ]; then
  tail -30 "$OUT/build.log" >&2
  echo "gpu_check.sh: build failed (exit $rc): see $OUT/build.log; no further step run" >&2; exit 1
fi
step build_info 15 "$OUT/build.log" $PY -c "import sslext, json; i = sslext.build_info(); print(json.dumps(i)); \
assert i['with_cuda'], 'sslext was built without its CUDA kernels'"

# 3. The CUDA op tests (kernels against the CPU build, opcheck, compile, autocast).
step op_tests 50 "$OUT/tests.log" $PY -m pytest -q -ra -p no:cacheprovider \
  python_tests/test_cuda.py python_tests/test_ops.py python_tests/test_autocast.py -k cuda

# 4. The headline loss shapes in float32 and bfloat16; each row is in losses.json as it finishes.
step bench_losses 40 "$OUT/train.log" $PY benchmarks/bench_losses.py --device cuda --out "$OUT" \
  --shapes 256x8192,1024x4096,2048x2048 --dtypes float32,bfloat16 --no-compile --no-plot --repeats 20

# 5. Sanitizers on sslext's kernels only (cuBLAS/cuDNN's are not ours and cost
# the most under the tools); the caching allocator off, so an out-of-bounds access
# inside one of its segments is not hidden.
sanitize memcheck 35 "$OUT/memcheck.log" --tool memcheck --kernel-name kns=sslext --error-exitcode 1 \
  $PY benchmarks/sanitize_ops.py
sanitize racecheck 30 "$OUT/racecheck.log" --tool racecheck --kernel-name kns=sslext --error-exitcode 1 \
  $PY benchmarks/sanitize_ops.py

# 6. The CUDA trainer tests.
if [ -f python_tests/test_cuda_training.py ] || [ "$DRY_RUN" = 1 ]; then
  step trainer_tests 30 "$OUT/tests.log" $PY -m pytest -q -ra -p no:cacheprovider python_tests/test_cuda_training.py -k cuda
else
  echo "=== trainer_tests: python_tests/test_cuda_training.py absent, skipped" | tee -a "$OUT/tests.log"
  record trainer_tests absent 0 0 "python_tests/test_cuda_training.py not in this tree"
fi

# 7. A short VICReg run on CIFAR-10 with whatever time is left (at least TRAIN_MIN s).
if [ -n "$DATA" ] && [ -d "$DATA/cifar-10-batches-py" ]; then
  limit=$(time_left)
  if [ "$DRY_RUN" = 1 ] && [ "$limit" -lt "$TRAIN_MIN" ]; then FITS=0; fi
  # ~30 s of start-up and final evaluation, ~20 s per ResNet-18 epoch expected on
  # an H100/H200; a run cut by the limit still leaves its per-epoch metrics.
  epochs=$(( (limit - 30) / 20 )); [ "$epochs" -lt 1 ] && epochs=1
  [ "$DRY_RUN" = 1 ] && [ "$limit" -gt "$TRAIN_MIN" ] && limit=$TRAIN_MIN  # plan its minimum
  step train_vicreg "$limit" "$OUT/train.log" $PY -m sslext.train --config configs/vicreg_resnet18_cifar10.yaml \
    --set data.root="$DATA" --set train.epochs=$epochs --set optim.warmup_epochs=1 \
    --set eval.offline_epochs=20 --set train.out_dir="$SCRATCH" --set train.progress=false
  cat "$SCRATCH"/*/report.md "$SCRATCH"/*/metrics.csv >> "$OUT/train.log" 2>/dev/null || true
else
  echo "=== no DATA_DIR with cifar-10-batches-py/ given: training step skipped" | tee -a "$OUT/train.log"
  if [ "$DRY_RUN" = 1 ]; then  # its slot is planned all the same
    step train_vicreg "$TRAIN_MIN" "$OUT/train.log" "(skipped here: no DATA_DIR)"
  else
    record train_vicreg absent 0 0 "no DATA_DIR with cifar-10-batches-py/"
  fi
fi
[ "$DRY_RUN" = 1 ] || rm -rf "$SCRATCH"

if [ "$DRY_RUN" = 1 ]; then
  if [ "$FITS" = 1 ] && [ $(( planned + RESERVE )) -le "$DEADLINE" ]; then
    echo "plan fits: every step ends by ${planned}s, deadline ${DEADLINE}s (${RESERVE}s kept back)"
    exit 0
  fi
  echo "plan does not fit: the steps need $(( planned + RESERVE ))s or were shortened; deadline ${DEADLINE}s" >&2
  exit 1
fi
echo "gpu_check done in $(elapsed)s (deadline ${DEADLINE}s); summary:"
cat "$SUMMARY"
ls -la "$OUT"
