#!/usr/bin/env bash
# Runs several training recipes of one spec at once (bench/torch_train.py,
# one process each), e.g. on a GPU machine: every line of the CONFIGS file
# is one run, a name then --set KEY=JSON overrides. Each run's per-epoch
# JSON lines go to OUT/<name>.jsonl.
#
#   bench/recipe_sweep.sh SPEC CONFIGS DATA OUT [DEVICE]
set -euo pipefail
spec=$1 configs=$2 data=$3 out=$4 device=${5:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
pids=()
while read -r name rest; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  sets=()
  for kv in $rest; do sets+=(--set "$kv"); done
  python3 "$(dirname "$0")/torch_train.py" --spec "$spec" --data "$data" \
    --device "$device" --threads 1 "${sets[@]}" >"$out/$name.jsonl" 2>"$out/$name.err" &
  pids+=($!)
done <"$configs"
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
