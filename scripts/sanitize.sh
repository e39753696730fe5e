#!/usr/bin/env bash
# Builds moec with AddressSanitizer and UndefinedBehaviorSanitizer and runs
# its tests (ctest) there.
#
#   scripts/sanitize.sh             the whole project in build-asan
#   scripts/sanitize.sh --runtime   the runtime alone (cmake -S runtime) in
#                                   build-asan-runtime: minutes, no MLIR
#
# clang-22 with -fsanitize=address,undefined -fno-sanitize-recover=undefined,
# so the first undefined behaviour fails its test. Installs
# libclang-rt-22-dev (the sanitizer runtimes) when missing. Extra ctest
# arguments follow the mode: scripts/sanitize.sh --runtime -R Checkpoint.
# The build dirs can be moved with $MOEC_ASAN_BUILD_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${MOEC_JOBS:-$(nproc)}

source_dir=$root
build=${MOEC_ASAN_BUILD_DIR:-$root/build-asan}
extra=(-DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir
  -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-22/bin/lit)
if [[ ${1:-} == --runtime ]]; then
  shift
  source_dir=$root/runtime
  build=${MOEC_ASAN_BUILD_DIR:-$root/build-asan-runtime}
  extra=()
fi

"$root/scripts/setup.sh" libclang-rt-22-dev

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
flags+=" -fno-omit-frame-pointer -g"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$source_dir" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
    "${extra[@]}"
fi
cmake --build "$build" -j "$jobs"

# Leak checking stays on; print a stack for every UB report. User poisoning
# is off: LLVM's BumpPtrAllocator poisons and unpoisons its slabs in inline
# header code, which is instrumented here, while Debian's liblld and
# libLLVM, which also run it, are not; lld's allocations then read as
# use-after-poison in every moec compile (a false report, not a bug).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allow_user_poisoning=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$build"
ctest --output-on-failure -j "$jobs" "$@"
