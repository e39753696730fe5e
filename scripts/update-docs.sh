#!/usr/bin/env bash
# Regenerates docs/dialect/ from ODS (the docs.up-to-date tests compare them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MOEC_BUILD_DIR:-$root/build}
cmake --build "$build" --target moec-docs
mkdir -p "$root/docs/dialect"
cp "$build/docs/moe/MoEOps.md" "$build/docs/moe/MoEPasses.md" "$root/docs/dialect/"
