#!/usr/bin/env bash
# The main job on the CPU: install what is missing, build, and compile the
# reference model (examples/vimoe-tiny-fmnist.json) into a verified moe
# module. Idempotent. Extra arguments go to `moec compile`.
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
build=${MOEC_BUILD_DIR:-$root/build}

"$root/scripts/setup.sh"
"$root/scripts/build.sh"
"$build/bin/moec" compile "$root/examples/vimoe-tiny-fmnist.json" --emit=mlir "$@"
