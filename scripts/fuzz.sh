#!/usr/bin/env bash
# Runs one libFuzzer target (test/fuzz/) for a while.
#
#   scripts/fuzz.sh list             the targets
#   scripts/fuzz.sh TARGET SECONDS   fuzz TARGET for SECONDS
#
# Installs clang-22 and libclang-rt-22-dev (the fuzzer and sanitizer
# runtimes) when missing, configures build-fuzz (or $MOEC_FUZZ_BUILD_DIR)
# with MOEC_FUZZ=ON and without the compiler (no MLIR), builds the target
# and the seeds, and runs it on one core. The corpus grows in
# build-fuzz/fuzz-corpus/TARGET (the seeds, rewritten on each run, are in
# build-fuzz/fuzz-seeds/TARGET); crashes are left as
# build-fuzz/fuzz-crashes/TARGET/crash-* (or leak-*, oom-*, timeout-*).
# Exits non-zero when the run found one. Extra libFuzzer flags can be
# given in $MOEC_FUZZ_FLAGS. Reproduce with: build-fuzz/bin/moec-fuzz-TARGET FILE
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MOEC_FUZZ_BUILD_DIR:-$root/build-fuzz}
targets=(spec artifact safetensors checkpoint idx cifar png)

usage() {
  echo "usage: scripts/fuzz.sh list | TARGET SECONDS" >&2
  exit 2
}

if [[ $# -eq 1 && $1 == list ]]; then
  printf '%s\n' "${targets[@]}"
  exit 0
fi
[[ $# -eq 2 ]] || usage
target=$1
seconds=$2
[[ " ${targets[*]} " == *" $target "* ]] ||
  { echo "fuzz: unknown target '$target' (scripts/fuzz.sh list)" >&2; exit 2; }
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage

# libclang-rt-22-dev: the fuzzer and sanitizer runtimes, which only the
# fuzz and sanitizer builds need (setup.sh installs it on request).
"$root/scripts/setup.sh" libclang-rt-22-dev

if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
    -DMOEC_BUILD_COMPILER=OFF -DMOEC_BUILD_TESTS=OFF -DMOEC_FUZZ=ON
fi
cmake --build "$build" --target "moec-fuzz-$target" fuzz-seeds \
  -j "${MOEC_JOBS:-$(nproc)}"

corpus=$build/fuzz-corpus/$target
crashes=$build/fuzz-crashes/$target
mkdir -p "$corpus" "$crashes"
log=$build/fuzz-$target.log
# The file-based targets write each input into $TMPDIR/moec-fuzz-PID: in
# memory (/dev/shm) where there is such a file system, since on a disk the
# fuzzer waits on writes for about half its time.
if [[ -d /dev/shm && -w /dev/shm ]]; then
  scratch=/dev/shm/moec-fuzz-$target-$$
else
  scratch=$build/fuzz-tmp/$target
fi
rm -rf "$scratch"
mkdir -p "$scratch"
echo "fuzz: $target for ${seconds}s (corpus $corpus, log $log)"
set +e
# shellcheck disable=SC2086
TMPDIR=$scratch ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$build/bin/moec-fuzz-$target" -max_total_time="$seconds" \
  -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$crashes/" ${MOEC_FUZZ_FLAGS:-} \
  "$corpus" "$build/fuzz-seeds/$target" >"$log" 2>&1
rc=$?
set -e
rm -rf "$scratch"

# The summary: the last status line, the final stats, any crash.
grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
echo "fuzz: $target: ${cov:-no coverage line}, corpus $(find "$corpus" -type f | wc -l) files"
if ((rc != 0)); then
  grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -n 5 || true
  grep -E 'Test unit written to' "$log" || true
  echo "fuzz: $target FAILED (exit $rc); see $log" >&2
  exit 1
fi
echo "fuzz: $target: no crash"
