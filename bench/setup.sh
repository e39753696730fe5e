#!/usr/bin/env bash
# Installs what the CPU inference benchmark (bench/) needs from Debian 12's
# packages, and only what is missing: `apt-get update` runs at most once, and
# only if something must be installed. Then makes OpenBLAS the active
# libblas.so.3 alternative (Debian's python3-torch links libblas.so.3; on the
# reference BLAS its matmuls are ~30x slower). Idempotent.
set -euo pipefail

PACKAGES=(python3 python3-torch libopenblas0-pthread)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    need_root=1
  fi
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
  if [[ -n "${need_root:-}" ]]; then
    echo "bench/setup: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "bench/setup: installing ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
fi

# Select OpenBLAS (pthread build) as libblas.so.3.
ALT=libblas.so.3-x86_64-linux-gnu
OPENBLAS=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
current=$(update-alternatives --query "$ALT" 2>/dev/null | sed -n 's/^Value: //p')
if [[ "$current" != "$OPENBLAS" ]]; then
  if [[ ! -e "$OPENBLAS" ]]; then
    echo "bench/setup: $OPENBLAS not found (is libopenblas0-pthread installed?)" >&2
    exit 1
  fi
  if [[ -n "${need_root:-}" ]]; then
    echo "bench/setup: need root (or sudo) to select $OPENBLAS for $ALT" >&2
    exit 1
  fi
  echo "bench/setup: selecting $OPENBLAS for $ALT"
  "${SUDO[@]}" update-alternatives --set "$ALT" "$OPENBLAS"
fi
