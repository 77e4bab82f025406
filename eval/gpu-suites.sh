#!/bin/bash
# The eval suites on a GPU, each job under a time limit, then one merged report.
#   eval/gpu-suites.sh [BIN_DIR] [OUT_DIR]    BIN_DIR holds hae (default: build); OUT_DIR default: eval/results
#   LIMIT=SECONDS per job (default 600); JOBS="probe-mqar probe-1m ..." runs only those.
# A job cut by its limit keeps the points it finished (metrics.jsonl and results.csv are appended point by point).
set -u
bin=${1:-build}
out=${2:-eval/results}
limit=${LIMIT:-600}
mkdir -p "$out"
job() { # name, args...
  local name=$1; shift
  case " ${JOBS:-$name} " in *" $name "*) ;; *) return ;; esac
  local t0=$SECONDS
  HAE_NO_PROGRESS=1 timeout "$limit" "$bin/hae" eval "$@" --backend cuda --out "$out/$name" >"$out/$name.log" 2>&1
  local rc=$?
  printf '%-22s rc %-3s %5ds  %s\n' "$name" "$rc" $((SECONDS - t0)) "$*"
  echo "$name rc $rc $((SECONDS - t0)) s: hae eval $* --backend cuda" >>"$out/commands.txt"
}
probe=configs/eval/probe.yaml
job probe-mqar --probe "$probe" --task mqar
job probe-niah --probe "$probe" --task niah
job probe-multihop --probe "$probe" --task multihop
job probe-1m --probe "$probe" --task mqar,niah --lengths 1M --pairs 128 --K 128 --topk 2048 --seeds 2
job circuits --circuit configs/eval/circuits.yaml
job circuits-decay --circuit configs/eval/circuits.yaml --kinds kda,gdn,gla,mamba2,retnet --log-decay -1e-3
