#!/usr/bin/env bash
# Creates bench/.venv, a virtual environment with a current PyTorch 2.x from
# PyPI for CPU use (bench/moe_layer_torch.py runs under it). Idempotent: the
# install is skipped when bench/.venv/bin/python can already import torch.
#
# PyPI's Linux torch wheel is a CUDA build: its shared libraries link the CUDA
# runtime libraries, so `import torch` fails without them even on a machine
# without a GPU (PyPI has no CPU-only Linux x86_64 wheel). A plain
# `pip install torch` also brings triton, cuda-bindings, cuSOLVER, NVTX and
# CUDA headers, which a CPU run never loads. So torch is installed with
# --no-deps, followed by:
#   * its pure-Python requirements (filelock, typing-extensions, setuptools,
#     sympy, networkx, jinja2, fsspec; through them mpmath and MarkupSafe);
#   * only the CUDA libraries that torch's shared libraries list as DT_NEEDED
#     and load at `import torch`: cudart, cupti, cublas, cufft, cufile,
#     cusparse (+ nvjitlink), nvrtc (extras of torch's cuda-toolkit
#     requirement), cudnn, nccl, cusparselt and nvshmem, at the versions
#     torch's metadata pins. Leaning on a system CUDA (/usr/local/cuda*) for
#     some of them is not safe: torch then binds that older libnccl and fails
#     with "undefined symbol: ncclCommResume".
# pip then warns that torch's requirements triton and cuda-bindings (and the
# full cuda-toolkit set) are missing: expected.
#
# torch.compile on the CPU (inductor's C++ backend) needs a C++ compiler,
# g++ or clang++; the script warns if there is none.
#
# Environment: PYTHON (default python3) creates the venv; TORCH_SPEC (default
# "torch>=2,<3") is the pip requirement for torch.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$HERE/.venv"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch>=2,<3}

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "bench/setup-venv: torch already importable in $VENV"
else
  if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
      command -v sudo >/dev/null 2>&1 || {
        echo "bench/setup-venv: $PYTHON lacks the venv module; need root (or sudo) to install python3-venv" >&2
        exit 1
      }
      SUDO=(sudo)
    fi
    echo "bench/setup-venv: installing python3-venv"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
      --no-install-recommends python3-venv
  fi

  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bench/setup-venv: creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
  "${PIP[@]}" install -q --upgrade pip

  echo "bench/setup-venv: installing $TORCH_SPEC with --no-deps"
  "${PIP[@]}" install -q --no-deps "$TORCH_SPEC"

  # torch's requirements, less triton, cuda-bindings and the CUDA libraries
  # that are not loaded at import (see above).
  mapfile -t deps < <("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires
LOADED = {"cublas", "cudart", "cufft", "cufile", "cupti", "cusparse",
          "nvjitlink", "nvrtc"}
for req in requires("torch") or []:
    spec, _, marker = (part.strip() for part in req.partition(";"))
    if "extra ==" in marker:
        continue
    name = re.split(r"[\s\[<>=!~(]", spec, maxsplit=1)[0].lower()
    if name in ("triton", "cuda-bindings"):
        continue
    m = re.fullmatch(r"(cuda-toolkit)\[([^\]]*)\](.*)", spec)
    if m:
        extras = [e.strip() for e in m.group(2).split(",") if e.strip() in LOADED]
        spec = f"{m.group(1)}[{','.join(extras)}]{m.group(3)}"
    print(spec)
PY
  )
  echo "bench/setup-venv: installing torch's dependencies: ${deps[*]}"
  echo "bench/setup-venv: (pip's warnings about triton, cuda-bindings and cuda-toolkit are expected)"
  "${PIP[@]}" install -q "${deps[@]}"
fi

# numpy: bench/moe_torch.py (infer_vs_pytorch.py, train_vs_pytorch.py)
# hands tensors over as numpy arrays.
if ! "$VENV/bin/python" -c 'import numpy' >/dev/null 2>&1; then
  echo "bench/setup-venv: installing numpy"
  "$VENV/bin/python" -m pip install -q numpy
fi

if ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  echo "bench/setup-venv: warning: no g++ or clang++; torch.compile on the CPU needs one" >&2
fi

"$VENV/bin/python" - <<'PY'
import torch
a = torch.randn(4, 4) @ torch.randn(4, 4)
assert a.shape == (4, 4)
print(f"bench/setup-venv: torch {torch.__version__} "
      f"(CPU capability {torch.backends.cpu.get_cpu_capability()})")
PY
