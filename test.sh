#!/usr/bin/env bash
# Every test: install what is missing, build, and run lit + GoogleTest
# through ctest (its summary line ends the output).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
build=${MOEC_BUILD_DIR:-$root/build}

"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "$build"
ctest --output-on-failure -j "${MOEC_JOBS:-$(nproc)}"
