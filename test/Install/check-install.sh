#!/usr/bin/env bash
# cmake --install into a scratch prefix, build a pass plugin out of tree
# against it, and run it with the installed moec-opt.
# usage: check-install.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
build=$1 src=$2 scratch=$3
rm -rf "$scratch"
mkdir -p "$scratch"
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
cmake -G Ninja -S "$src/test/Install/consumer" -B "$scratch/consumer" \
  -DCMAKE_PREFIX_PATH="$scratch/prefix;/usr/lib/llvm-22" \
  -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 >/dev/null
cmake --build "$scratch/consumer" >/dev/null
"$scratch/prefix/bin/moec-opt" "$src/test/Plugin/plugin.mlir" \
  --load-pass-plugin="$scratch/consumer/ConsumerPlugin.so" \
  --pass-pipeline='builtin.module(moe-test-count-ops)' \
  | grep -q 'test.num_ops = 2 : i64'
echo "installed moec + out-of-tree plugin: ok"
