#!/usr/bin/env bash
# moec on a GPU: parity per router kind, one MoE layer against PyTorch, and
# ViMoE-Tiny training against PyTorch eager. Two modes:
#
#   bash bench/gpu-check.sh prepare [--arch sm_90a] [--out bench/gpu-check]
#                                   [--batch 8] [--full-train]
#       here (needs build/bin/moec and moec-run): fills the folder with the
#       runtime binary, the cuda artifacts (gzipped), parity sets, and
#       Fashion-MNIST; the folder holds a .gitignore of '*', so carry it
#       with the device call (carry: ["bench/gpu-check"]).
#   bash bench/gpu-check.sh run [--dir bench/gpu-check]
#                               [--parts parity,layer,train,torch-compile]
#       on the GPU machine: writes DIR/results.md and prints it. Exits 3
#       ("no CUDA device visible") without a GPU, 2 on a bad folder, 1 if
#       a part failed or timed out, 0 otherwise. The whole run stays within
#       GPU_CHECK_BUDGET seconds (default 450); each part has its own cap.
#
# See bench/README.md ("GPU check").
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# The parity sets: one small spec per router kind (a line may list more:
# the first that compiles for cuda is used); a kind none of whose specs
# compiles is a failure of `prepare`.
PARITY_KINDS=(
  "token-choice|examples/vimoe-tiny-fmnist.json"
  "sinkhorn|examples/sinkhorn-fmnist.json"
  "soft|examples/soft-moe-fmnist.json"
  "per-image|examples/mobile-vmoe-fmnist.json"
  "expert-choice|examples/routers/expert-choice.json"
  "sinkhorn-expert-choice|test/e2e/specs/sinkhorn-expert-choice.json"
  "cosine gates|examples/routers/token-choice-cosine.json"
)

prepare() {
  local arch=sm_90a out=bench/gpu-check batch=8 full=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) arch="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      --batch) batch="$2"; shift 2 ;;
      --full-train) full=1; shift ;;
      *) usage ;;
    esac
  done
  [ -n "$out" ] || usage
  local bin="$ROOT/build/bin" fm=/usr/share/datasets/fashion-mnist
  for t in moec moec-run; do
    [ -x "$bin/$t" ] || { echo "gpu-check: $bin/$t is missing (build first)" >&2; exit 2; }
  done
  if [ -e "$out" ] && [ ! -e "$out/MANIFEST.txt" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "gpu-check: $out exists and is not a gpu-check folder; not touching it" >&2
    exit 2
  fi
  rm -rf "$out"
  mkdir -p "$out"/{bin,lib,parity,models,fmnist}
  printf '*\n' > "$out/.gitignore"   # the whole folder is git-ignored
  out="$(cd "$out" && pwd)"
  local failed=() skipped=() t0=$SECONDS
  local log="$out/prepare.log" step="$out/.step.log"
  : > "$log"
  # One moec for the whole run, even if build/ is rebuilt meanwhile.
  local wrap="$out/.moec-wrap"
  mkdir -p "$wrap"
  cp "$bin/moec" "$wrap/moec.real"
  local moec="$wrap/moec.real"
  # logged WHAT CMD...: the output goes to the log, its tail also to the
  # terminal if CMD fails.
  logged() {
    local what="$1"; shift
    echo "== $what" >> "$log"
    if "$@" > "$step" 2>&1; then cat "$step" >> "$log"; return 0; fi
    cat "$step" >> "$log"
    echo "   $what: FAILED"; tail -n 3 "$step" | cut -c1-240 | sed 's/^/     /'
    return 1
  }

  # The runtime binary. libcuda is dlopen'ed at run time; libpng16 goes
  # along in lib/ in case the GPU machine lacks it.
  cp "$bin/moec-run" "$out/bin/moec-run"
  echo "== ldd moec-run" | tee -a "$log"
  ldd "$out/bin/moec-run" | tee -a "$log"
  local png
  png="$(ldd "$out/bin/moec-run" | awk '/libpng16/ {print $3}')"
  [ -n "$png" ] && cp -L "$png" "$out/lib/"
  if ldd "$out/bin/moec-run" | grep -vE 'linux-vdso|ld-linux|/lib/x86_64-linux-gnu/|/lib64/|/usr/lib/x86_64-linux-gnu/' | grep -q '=>'; then
    echo "gpu-check: WARNING: moec-run needs a library outside the system folders" | tee -a "$log"
  fi

  # The parity sets. The cpu reference is compiled for x86-64-v3 (AVX2), so
  # that it runs on the GPU machine's CPU whatever it is: check_parity.py
  # calls BIN/moec, here a wrapper that adds --target-cpu to cpu compiles.
  cat > "$wrap/moec" <<WRAP
#!/bin/sh
case " \$* " in *" --target=cuda "*) exec "$moec" "\$@" ;; esac
exec "$moec" "\$@" --target-cpu=x86-64-v3
WRAP
  chmod +x "$wrap/moec"
  ln -sf "$out/bin/moec-run" "$wrap/moec-run"
  printf 'stem\tkind\tspec\n' > "$out/parity/kinds.tsv"
  local line kind spec stem found
  for line in "${PARITY_KINDS[@]}"; do
    kind="${line%%|*}"
    found=0
    for spec in ${line#*|}; do
      stem="$(basename "$spec" .json)"
      echo "parity $kind: $spec"
      # The cuda compile alone first: the quick one, and the one that may fail.
      logged "cuda compile $spec" "$moec" compile "$spec" --batch "$batch" \
          --entries=infer,train_step --quiet --target=cuda --gpu-arch="$arch" \
          -o "$wrap/probe.moec" || { skipped+=("$spec"); continue; }
      if logged "check_parity.py prepare $spec" python3 test/e2e/check_parity.py prepare \
          "$wrap" "$spec" "$out/parity" --gpu-arch "$arch" --batch "$batch"; then
        printf '%s\t%s\t%s\n' "$stem" "$kind" "$spec" >> "$out/parity/kinds.tsv"
        found=1
        break
      fi
      rm -f "$out/parity/$stem".*
      skipped+=("$spec")
    done
    [ "$found" = 1 ] || failed+=("parity $kind (no spec compiled)")
  done
  rm -f "$out"/parity/*.init.safetensors

  # The ViT-S MoE layer (and the dense FFN of the same active FLOPs), and
  # ViMoE-Tiny for training.
  python3 bench/gpu_check.py vit-specs "$out/models" | tee -a "$log"
  local m
  for m in vit-s-moe vit-s-dense; do
    echo "compile $m"
    logged "compile $m" "$moec" compile "$out/models/$m.json" --target=cuda \
        --gpu-arch="$arch" --entries=infer,train_step,eval --quiet \
        -o "$out/models/$m.cuda.moec" || failed+=("compile $m")
  done
  echo "compile vimoe-tiny"
  logged "compile vimoe-tiny" "$moec" compile examples/vimoe-tiny-fmnist.json \
      --target=cuda --gpu-arch="$arch" --entries=infer,train_step,eval --quiet \
      -o "$out/models/vimoe-tiny.cuda.moec" || failed+=("compile vimoe-tiny")
  rm -rf "$wrap" "$step"

  # Fashion-MNIST: the 10k test set (also the training set of the timing
  # run), or with --full-train the 60k training set too.
  cp "$fm"/t10k-images-idx3-ubyte.gz "$fm"/t10k-labels-idx1-ubyte.gz "$out/fmnist/" \
    || failed+=("fashion-mnist")
  if [ "$full" = 1 ]; then
    cp "$fm"/train-images-idx3-ubyte.gz "$fm"/train-labels-idx1-ubyte.gz "$out/fmnist/" \
      || failed+=("fashion-mnist train")
  fi

  # PTX compresses ~7x: the artifacts travel gzipped, `run` unpacks them.
  find "$out" -name '*.moec' -exec gzip -9 {} +

  {
    echo "moec GPU check folder (bench/gpu-check.sh; bench/README.md, \"GPU check\")"
    echo "prepared: $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
    echo "gpu arch: $arch; moec-run built $(date -u -r "$out/bin/moec-run" '+%Y-%m-%d %H:%M UTC'), moec built $(date -u -r "$bin/moec" '+%Y-%m-%d %H:%M UTC') (copied at the start)"
    echo "parity batch: $batch"
    echo
    echo "bin/moec-run           the runtime (libcuda is dlopen'ed; lib/ has libpng16 as a fallback)"
    echo "parity/NAME.*          check_parity.py sets: NAME.cpu.moec (fp32, x86-64-v3),"
    echo "                       NAME.cand.moec (--target=cuda), weights, images, train batch"
    echo "models/vit-s-*.json    ViT-S depth-1 specs: MoE (E 8, top-2, H 1536, cf 1.25) and dense FFN"
    echo "                       (hidden 3072), batch 256; *.cuda.moec: entries infer, train_step, eval"
    echo "models/vimoe-tiny.cuda.moec   examples/vimoe-tiny-fmnist.json, target cuda"
    if [ "$full" = 1 ]; then
      echo "fmnist/                Fashion-MNIST train and t10k (gz IDX)"
    else
      echo "fmnist/                Fashion-MNIST t10k only (gz IDX): the training-speed run trains"
      echo "                       on these 10k images (a timing run, not an accuracy run)"
    fi
    echo "*.moec.gz              gzipped artifacts; 'gpu-check.sh run' unpacks them next to the .gz"
    echo
    echo "parity sets (parity/kinds.tsv):"
    tail -n +2 "$out/parity/kinds.tsv" | sed 's/^/  /'
    [ ${#skipped[@]} -gt 0 ] && echo "parity specs that did not compile for cuda (a later one of the kind was used): ${skipped[*]}"
    [ ${#failed[@]} -gt 0 ] && echo "FAILED: ${failed[*]}"
    echo
    echo "files (bytes):"
    (cd "$out" && find . -type f ! -name MANIFEST.txt | sort | xargs ls -l | awk '{printf "  %10d  %s\n", $5, $9}')
  } > "$out/MANIFEST.txt"

  local size
  size="$(du -sb "$out" | cut -f1)"
  echo
  echo "gpu-check: prepared $out in $((SECONDS - t0)) s: $((size / 1048576)) MiB ($size bytes)"
  [ ${#skipped[@]} -gt 0 ] && echo "gpu-check: specs that did not compile for cuda: ${skipped[*]}"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu-check: FAILED: ${failed[*]} (the rest of the folder is usable)"
    return 1
  fi
  return 0
}

run_check() {
  local dir=bench/gpu-check parts=parity,layer,train,torch-compile
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir="$2"; shift 2 ;;
      --parts) parts="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "no CUDA device visible"
    exit 3
  fi
  local start=$SECONDS budget="${GPU_CHECK_BUDGET:-450}"
  [ -f "$dir/MANIFEST.txt" ] || { echo "gpu-check: $dir/MANIFEST.txt missing (run prepare, carry the folder)" >&2; exit 2; }
  dir="$(cd "$dir" && pwd)"
  local work="$dir/work"
  mkdir -p "$work"
  : > "$work/status.tsv"
  rm -f "$work"/{parity,layer,train}.json "$work"/torch-layer-*.json

  local info driver cuda
  info="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv)"
  cuda="$(nvidia-smi | grep -o 'CUDA Version: *[0-9.]*' | head -n 1)"
  echo "$info"
  echo "${cuda:-CUDA Version: unknown}"
  driver="$(echo "$info" | sed -n 2p)"
  echo "GPU: ${driver} (name, memory, driver); ${cuda:-CUDA version unknown}; $(nproc) CPUs" > "$work/gpu.txt"
  sed -n '1,5p' "$dir/MANIFEST.txt"

  # Unpack the artifacts; libpng from lib/ if the system has none.
  local f
  while IFS= read -r f; do
    gunzip -c "$f" > "${f%.gz}" 2>/dev/null ||
      python3 -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "${f%.gz}" ||
      { echo "gpu-check: cannot unpack $f" >&2; exit 2; }
  done < <(find "$dir" -name '*.moec.gz')
  if ldd "$dir/bin/moec-run" | grep -q 'not found'; then
    export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ldd "$dir/bin/moec-run" | grep 'not found' && echo "gpu-check: moec-run misses libraries" >&2
  fi
  "$dir/bin/moec-run" --help >/dev/null 2>&1 || echo "gpu-check: WARNING: moec-run --help failed" >&2

  local bad=0 part cap rc t left
  # Caps: parity 140 s, layer 140 s (moec and PyTorch eager), train 90 s,
  # then torch.compile of the PyTorch layer with what is left (>= 30 s).
  for part in parity layer train torch-compile; do
    case ",$parts," in *",$part,"*) ;; *) continue ;; esac
    case "$part" in parity) cap=140 ;; layer) cap=140 ;; train) cap=90 ;; *) cap=600 ;; esac
    left=$((budget - (SECONDS - start) - 10))
    [ "$left" -lt "$cap" ] && cap=$left
    echo
    echo "=== $part (at most ${cap} s)"
    t=$SECONDS
    if [ "$cap" -lt 20 ]; then
      rc=124
      echo "gpu-check: no time left for $part"
    else
      timeout -k 10 "$((cap + 15))" python3 bench/gpu_check.py "$part" --dir "$dir" --budget "$cap"
      rc=$?
    fi
    printf '%s\t%s\t%s\n' "$part" "$rc" "$((SECONDS - t))" >> "$work/status.tsv"
    [ "$rc" -ne 0 ] && bad=1
  done
  echo
  python3 bench/gpu_check.py report --dir "$dir" || bad=1
  echo
  echo "gpu-check: $dir/results.md written; total $((SECONDS - start)) s"
  return $bad
}

case "${1:-}" in
  prepare) shift; prepare "$@"; exit $? ;;
  run) shift; run_check "$@"; exit $? ;;
  *) usage ;;
esac
