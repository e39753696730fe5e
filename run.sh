#!/usr/bin/env bash
# The main job on the CPU: install what is missing, build, compile the
# reference model (examples/vimoe-tiny-fmnist.json) into a .moec artifact
# (infer, train_step and eval entry points), train it from scratch on
# Fashion-MNIST with the compiled train_step, evaluate it every epoch and
# print the final test accuracy. Idempotent: every run trains in a fresh
# folder build/run/train-<time> (checkpoints, metrics.jsonl, metrics.svg).
#
# The job keeps to a time budget, MOEC_TIME_BUDGET seconds (default 1200:
# 20 minutes) for compile + train + evaluation: moec-run times train_step
# and eval on this machine and trains as many epochs as fit what is left
# after compiling (`moec-run train --time-budget`). MOEC_EPOCHS=N trains
# exactly N epochs instead (no budget), as does an --epochs argument; a
# --time-budget argument replaces the budget.
#
# MOEC_SPEC overrides the spec; MOEC_EMIT_MLIR=1 also prints the moe module;
# MOEC_PRECISION=bf16 compiles with bf16 GEMMs (moec compile --precision;
# AVX512-BF16 dot products where the CPU has them; default fp32).
# Extra arguments go to `moec-run train` (e.g. --threads 1, --max-steps 100).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
build=${MOEC_BUILD_DIR:-$root/build}
spec=${MOEC_SPEC:-$root/examples/vimoe-tiny-fmnist.json}
out="$build/run"

"$root/scripts/setup.sh"
"$root/scripts/build.sh"
mkdir -p "$out"
if [[ "${MOEC_EMIT_MLIR:-0}" == 1 ]]; then
  "$build/bin/moec" compile "$spec" --emit=mlir
fi
model="$out/$(basename "${spec%.json}").moec"
echo "== moec compile $spec -> $model"
start=$(date +%s)
"$build/bin/moec" compile "$spec" --target=cpu \
  --precision="${MOEC_PRECISION:-fp32}" -o "$model"
"$build/bin/moec-run" inspect "$model" > "$out/inspect.txt"
sed -n '1,10p' "$out/inspect.txt"
run="$out/train-$(date +%Y%m%d-%H%M%S)"
length=()
if [[ -n "${MOEC_EPOCHS:-}" ]]; then
  length=(--epochs "$MOEC_EPOCHS")
elif [[ " $* " != *" --epochs"[\ =]* && " $* " != *" --time-budget"[\ =]* ]]; then
  budget=${MOEC_TIME_BUDGET:-1200}
  if ! [[ "$budget" =~ ^[0-9]+$ ]]; then
    echo "run.sh: error: MOEC_TIME_BUDGET: expected whole seconds, got '$budget'" >&2
    exit 2
  fi
  left=$(( budget - ($(date +%s) - start) ))
  if (( left <= 0 )); then
    echo "run.sh: error: MOEC_TIME_BUDGET=$budget s is spent before training (compiling took $(( $(date +%s) - start )) s)" >&2
    exit 2
  fi
  echo "== time budget ${budget} s, ${left} s left for training and evaluation"
  length=(--time-budget "$left")
fi
echo "== moec-run train (Fashion-MNIST; checkpoints and metrics in $run)"
"$build/bin/moec-run" train "$model" --checkpoint-dir "$run" \
  -o "$run/final.safetensors" "${length[@]}" "$@"
echo "== wall time, compile + train + evaluation: $(( $(date +%s) - start )) s"
