#!/usr/bin/env bash
# Proof that the emulated suite catches broken CUDA kernels (docs/dev/emulator.md):
#   bash benchmarks/mutate_cuda.sh WORKDIR
# For each mutation below: a copy of csrc/cuda/ in WORKDIR gets the one edit,
# the emulated build is compiled from the copy (into WORKDIR, never over
# sslext/_C_emu.so) and the emulated suite runs against it; the mutation is
# CAUGHT when the suite fails. Exit status: the number of mutations whose
# outcome differs from the expected one (0: all as expected).
# Needs the CPU build in place (the parity tests compare against it) and the
# venv (PYTHON, default .venv/bin/python, with cmake and ninja beside it).
set -uo pipefail
WORK=$(mkdir -p "${1:?usage: mutate_cuda.sh WORKDIR}" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute, symlink kept (venv)
BIN=$(dirname "$PY")

# name | file in csrc/cuda | python expression turning the text s into the mutant
# (nth(s, old, new, k) replaces the k-th occurrence only) | expected outcome.
# The three of issue 10 come first; the other barriers of reduce.cuh follow.
# The third one (block_reduce_sum's trailing barrier) is expected to survive:
# the broadcast has its own scratch slot, so no thread touches a byte another
# thread uses between the second barrier and the next call's first one, and
# racecheck rightly finds no hazard (docs/dev/emulator.md). MUTATIONS_ONLY=name,...
# runs a subset.
MUTATIONS=(
  "drop-barrier-1|reduce.cuh|nth(s, '__syncthreads();', '', 1)|caught"
  "bound-c<=d|column_moments_cuda.cu|s.replace('if (c < d) out[c]', 'if (c <= d) out[c]', 1)|caught"
  "shuffle-offset|reduce.cuh|s.replace('offset = kWarpSize / 2', 'offset = kWarpSize / 4', 1)|caught"
  "drop-barrier-2|reduce.cuh|nth(s, '__syncthreads();', '', 2)|caught"
  "drop-barrier-3|reduce.cuh|nth(s, '__syncthreads();', '', 3)|survives"
  "drop-barrier-4|reduce.cuh|nth(s, '__syncthreads();', '', 4)|caught"
  "drop-barrier-5|reduce.cuh|nth(s, '__syncthreads();', '', 5)|caught"
)

rm -rf "$WORK/cuda" && cp -rp csrc/cuda "$WORK/cuda"
"$BIN/cmake" -S csrc/emu -B "$WORK/build" -G Ninja -DCMAKE_MAKE_PROGRAM="$BIN/ninja" -DSSLEXT_PYTHON="$PY" \
  -DSSLEXT_EMU_CUDA_DIR="$WORK/cuda" -DSSLEXT_EMU_OUTPUT_DIR="$WORK/lib" > "$WORK/configure.log" 2>&1 \
  || { tail -20 "$WORK/configure.log"; exit 2; }

missed=0
for m in "${MUTATIONS[@]}"; do
  IFS='|' read -r name file expr expect <<< "$m"
  if [ -n "${MUTATIONS_ONLY:-}" ] && [[ ",$MUTATIONS_ONLY," != *",$name,"* ]]; then continue; fi
  cp -p csrc/cuda/* "$WORK/cuda/" && touch "$WORK/cuda/"*  # a restored file must rebuild too
  "$PY" - "$WORK/cuda/$file" "$expr" <<'PYEOF' || { echo "$name: the edit did not apply"; exit 2; }
import sys
path, expr = sys.argv[1], sys.argv[2]
s = open(path).read()


def nth(text, old, new, k):
    at = -1
    for _ in range(k):
        at = text.find(old, at + 1)
        if at < 0:
            return text
    return text[:at] + new + text[at + len(old):]


t = eval(expr, {"s": s, "nth": nth})
if t == s:
    sys.exit(1)
open(path, "w").write(t)
PYEOF
  start=$(date +%s)
  if ! "$BIN/cmake" --build "$WORK/build" > "$WORK/$name.build.log" 2>&1; then
    echo "$name: CAUGHT (does not compile)"
    [ "$expect" = caught ] || missed=$((missed + 1)); continue
  fi
  SSLEXT_EMULATED=1 SSLEXT_EMU_LIBRARY="$WORK/lib/_C_emu.so" "$PY" -m pytest python_tests/emulated -x -q \
    -p no:cacheprovider > "$WORK/$name.test.log" 2>&1
  rc=$?
  first=$(grep -m1 -E "^(FAILED|ERROR) " "$WORK/$name.test.log" | cut -c1-160)
  if [ $rc -ne 0 ]; then
    echo "$name: CAUGHT after $(( $(date +%s) - start ))s: $first"
    grep -m1 -oE "sslext emu [a-z ]+: kernel [a-z_]+[^:]*" "$WORK/$name.test.log" | sed 's/^/    /'
    [ "$expect" = caught ] || { echo "    (expected to survive)"; missed=$((missed + 1)); }
  elif [ "$expect" = survives ]; then
    echo "$name: survives, as expected (the emulated suite passed)"
  else
    echo "$name: MISSED (the emulated suite passed)"; missed=$((missed + 1))
  fi
done
exit $missed
