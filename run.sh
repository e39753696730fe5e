#!/usr/bin/env bash
# The main job on the CPU: install what is missing, build, compile the
# reference model (examples/vimoe-tiny-fmnist.json) into a .moec artifact and
# run it on the Fashion-MNIST test set. Idempotent.
#
# Training is not there yet, so the weights are the random initial ones
# (accuracy near chance); the run shows the compiled model working end to
# end and its speed. Pass --weights W.safetensors to evaluate trained weights.
# MOEC_SPEC overrides the spec; MOEC_EMIT_MLIR=1 also prints the moe module.
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
"$build/bin/moec" compile "$spec" --target=cpu -o "$model"
"$build/bin/moec-run" inspect "$model" > "$out/inspect.txt"
sed -n '1,10p' "$out/inspect.txt"
tail -n 6 "$out/inspect.txt"
echo "== moec-run infer (Fashion-MNIST test set)"
"$build/bin/moec-run" infer "$model" "$@"
