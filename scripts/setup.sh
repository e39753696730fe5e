#!/usr/bin/env bash
# Installs what moec needs from Debian 12's packages, and only what is
# missing: `apt-get update` runs once, and only if something must be
# installed. Idempotent; safe to run before every build. Arguments name
# more packages to install the same way (scripts/fuzz.sh and
# scripts/sanitize.sh ask for libclang-rt-22-dev, the sanitizer runtimes).
set -euo pipefail

PACKAGES=(
  cmake ninja-build clang-22 python3
  libmlir-22-dev mlir-22-tools llvm-22-dev llvm-22-tools
  liblld-22-dev
  nlohmann-json3-dev googletest libgtest-dev zlib1g-dev libpng-dev
  dataset-fashion-mnist
  "$@"
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
  --no-install-recommends "${missing[@]}"
