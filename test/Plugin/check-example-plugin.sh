#!/usr/bin/env bash
# The custom-pass tutorial (docs/custom-passes.md), end to end: install moec
# into a scratch prefix, build examples/pass-plugin against it, and compile a
# spec with its moe-cap-top-k at the frontend point. The artifact must show
# top-1 routing: each of the spec's two MoE layers counts one expert's
# parameters (16576) per token instead of two, and fewer FLOPs.
# usage: check-example-plugin.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
build=$1 src=$2 scratch=$3
rm -rf "$scratch"
mkdir -p "$scratch"
prefix=$scratch/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
# The install has headers, not build-system leftovers.
if [ -n "$(find "$prefix/include" -name CMakeFiles)" ]; then
  echo "error: CMakeFiles directories installed under $prefix/include" >&2
  exit 1
fi
cmake -G Ninja -S "$src/examples/pass-plugin" -B "$scratch/build" \
  -DCMAKE_PREFIX_PATH="$prefix;/usr/lib/llvm-22" \
  -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 >/dev/null
cmake --build "$scratch/build" >/dev/null
plugin=$scratch/build/MoECapTopK.so
# The plugin holds no copy of MLIR or of the moe dialect: it resolves them
# from the tool that loads it (it may need the shared libLLVM.so, which
# add_llvm_library links for LLVMSupport; that is the tool's copy too).
if nm -C --defined-only --extern-only "$plugin" | awk '$2 ~ /^[TDBR]$/' \
    | grep -E 'moec::moe::|mlir::'; then
  echo "error: $plugin contains a copy of MLIR or of the moe dialect" >&2
  exit 1
fi
# RouterOp's type id and rebuildRouter come from the tool.
undefined=$(nm -C --undefined-only "$plugin")
grep -q 'TypeIDResolver<moec::moe::RouterOp' <<<"$undefined"
grep -q 'moec::moe::rebuildRouter' <<<"$undefined"
if readelf -d "$plugin" | grep -E 'NEEDED.*(MLIR|moec|MoE)'; then
  echo "error: $plugin links MLIR or moec libraries" >&2
  exit 1
fi

spec=$src/examples/vimoe-tiny-fmnist.json
moec=$prefix/bin/moec
run=$prefix/bin/moec-run

# moec-opt: the routers of the frontend's module go from top-2 to top-1 and
# their capacity from 50 to 25 slots.
"$moec" compile "$spec" --batch 8 --emit=mlir -o "$scratch/model.mlir"
"$prefix/bin/moec-opt" "$scratch/model.mlir" --load-pass-plugin="$plugin" \
  --pass-pipeline='builtin.module(moe-cap-top-k{k=1})' >"$scratch/capped.mlir"
grep -q 'moe.router token_choice .*k = 1 : i64.*-> (tensor<8x50x4x25xf32>' "$scratch/capped.mlir"
if grep -q 'k = 2 : i64' "$scratch/capped.mlir"; then
  echo "error: moe-cap-top-k left a k = 2" >&2
  exit 1
fi

# moec compile: the plugin's pass at the frontend point reaches the artifact.
"$moec" compile "$spec" --entries=infer --batch 8 -o "$scratch/top2.moec"
"$moec" compile "$spec" --entries=infer --batch 8 \
  --load-pass-plugin="$plugin" --run-passes='frontend:moe-cap-top-k{k=1}' \
  -o "$scratch/top1.moec"
value() { # value FILE LABEL: the number after "LABEL:" in moec-run inspect
  "$run" inspect "$1" | sed -n "s/^$2: *\([0-9]*\).*/\1/p"
}
active2=$(value "$scratch/top2.moec" "active params per image")
active1=$(value "$scratch/top1.moec" "active params per image")
flops2=$(value "$scratch/top2.moec" "FLOPs per image")
flops1=$(value "$scratch/top1.moec" "FLOPs per image")
echo "top-2: $active2 active params, $flops2 FLOPs per image"
echo "top-1: $active1 active params, $flops1 FLOPs per image"
[ "$active2" = 239626 ] || { echo "error: expected 239626 active params with top-2" >&2; exit 1; }
[ "$active1" = 206474 ] || { echo "error: expected 206474 active params with top-1" >&2; exit 1; }
[ "$flops1" -lt "$flops2" ] || { echo "error: top-1 does not cut the FLOPs" >&2; exit 1; }

# After moe-autodiff the capacity is baked into the backward pass: the pass
# fails with rebuildRouter's diagnostic, and moec exits with 1.
set +e
"$moec" compile "$spec" --emit=plan --entries=infer,train_step --batch 8 \
  --load-pass-plugin="$plugin" --run-passes='autodiff:moe-cap-top-k{k=1}' \
  -o "$scratch/late.mlir" 2>"$scratch/late.err"
rc=$?
set -e
[ "$rc" = 1 ] || { echo "error: expected exit code 1, got $rc" >&2; exit 1; }
grep -q "rebuild routers before moe-autodiff" "$scratch/late.err"
[ ! -e "$scratch/late.mlir" ] || { echo "error: a failed compile wrote its output" >&2; exit 1; }
echo "examples/pass-plugin against the installed moec: ok"
