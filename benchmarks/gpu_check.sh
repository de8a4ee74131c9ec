#!/usr/bin/env bash
# One-command GPU validation, within one 10-minute call:
#   bash benchmarks/gpu_check.sh OUTDIR [DATA_DIR]
# OUTDIR    where the result files go (created if missing).
# DATA_DIR  optional (or env SSLEXT_GPU_CHECK_DATA): a folder that holds CIFAR-10
#           in the python layout, DATA_DIR/cifar-10-batches-py/ (what
#           `--set data.download=true` fetches). Without it the throughput
#           benchmark and the short training run are skipped.
# The training run's own files go to runs/gpu_check/ in the repository (ignored
# by git), emptied before and after; the script names no folder outside the
# repository and its arguments.
# SSLEXT_GPU_CHECK_DRY_RUN=1 prints the steps without running them (any machine).
# It builds the extension for the visible GPU, runs the whole test suite with the
# CUDA tests, compute-sanitizer memcheck + racecheck over every op forward and
# backward (benchmarks/sanitize_ops.py) and over the CUDA kernel tests,
# the loss benchmarks and (when the trainer and CIFAR-10 are at hand) a
# throughput benchmark and a short VICReg pretraining run. Writes at most 8
# files into OUTDIR: build.log tests.log memcheck.log racecheck.log
# losses.json losses.md losses.png train.log. Every step has its own time
# limit so one slow step cannot cost the others their results.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [DATA_DIR]}
DATA=${2:-${SSLEXT_GPU_CHECK_DATA:-}}
DRY_RUN=${SSLEXT_GPU_CHECK_DRY_RUN:-0}
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
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

# step NAME LIMIT_S LOG CMD...: runs CMD with a time limit, appends to LOG.
step() {
  local name=$1 limit=$2 log=$3; shift 3
  echo "=== $name (limit ${limit}s, t=$(elapsed)s): $*" | tee -a "$log"
  if [ "$DRY_RUN" = 1 ]; then echo "(dry run)" | tee -a "$log"; return 0; fi
  timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $(elapsed)s" | tee -a "$log"
  return 0
}

if [ "$DRY_RUN" != 1 ]; then
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible: this script is for the GPU machine" >&2; exit 2
  fi
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  fi
  export TORCH_CUDA_ARCH_LIST
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; nvcc --version 2>&1 | tail -1; } > "$OUT/build.log"

step build 240 "$OUT/build.log" env SSLEXT_FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e .
step build_info 30 "$OUT/build.log" $PY -c "import sslext, json; print(json.dumps(sslext.build_info()))"

step tests 150 "$OUT/tests.log" $PY -m pytest python_tests -q -ra -x -p no:cacheprovider

# Every op, forward + backward, both strategies, three dtypes, small shapes: fast under the tools.
step memcheck_ops 60 "$OUT/memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/sanitize_ops.py
step racecheck_ops 60 "$OUT/racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 1 $PY benchmarks/sanitize_ops.py

# The kernel tests without torch.compile (its codegen is not ours and is slow under the tools)
# and without the every-path determinism matrix (sanitize_ops.py covers those paths).
SAN_TESTS=(python_tests/test_cuda.py -q -p no:cacheprovider -k "not compiled and not opcheck and not every_path")
step memcheck 120 "$OUT/memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest "${SAN_TESTS[@]}"
step racecheck 90 "$OUT/racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 1 $PY -m pytest "${SAN_TESTS[@]}" -k "test_cuda_deterministic[ or low_level"

# The headline shapes of issue 5 in float32 and bfloat16, plus the covariance-path shape.
step bench_losses 150 "$OUT/train.log" $PY benchmarks/bench_losses.py --device cuda --out "$OUT" \
  --shapes 256x8192,256x4096,1024x4096,2048x2048 --dtypes float32,bfloat16

if [ -n "$DATA" ] && [ -d "$DATA/cifar-10-batches-py" ]; then
  if [ -f benchmarks/bench_throughput.py ]; then
    step throughput 90 "$OUT/train.log" $PY benchmarks/bench_throughput.py --device cuda --data "$DATA"
  fi
  remaining=$(( 570 - $(elapsed) ))
  if [ "$remaining" -gt 90 ]; then
    # Epoch count sized for what is left (~15 s per ResNet-18 epoch expected on an
    # H100); a run cut by the limit still leaves its per-epoch metrics.
    epochs=$(( (remaining - 60) / 20 )); [ "$epochs" -lt 1 ] && epochs=1
    step train_vicreg "$remaining" "$OUT/train.log" $PY -m sslext.train --config configs/vicreg_resnet18_cifar10.yaml \
      --set data.root="$DATA" --set train.epochs=$epochs --set optim.warmup_epochs=1 \
      --set eval.offline_epochs=20 --set train.out_dir="$SCRATCH" --set train.progress=false
    cat "$SCRATCH"/*/report.md "$SCRATCH"/*/metrics.csv >> "$OUT/train.log" 2>/dev/null || true
  fi
else
  echo "=== no DATA_DIR with cifar-10-batches-py/ given: throughput and training steps skipped" | tee -a "$OUT/train.log"
fi
[ "$DRY_RUN" = 1 ] || rm -rf "$SCRATCH"
echo "gpu_check done in $(elapsed)s; files:" ; ls -la "$OUT"
