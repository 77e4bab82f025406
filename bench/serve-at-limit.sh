#!/bin/bash
# Serving at the full-attention twin's memory limit (issue 5): under a GPU budget and CONTEXT tokens per sequence,
# the largest batch `hae mem`'s plan fits for the twin (every layer `full`, all on the GPU), for CONFIG with its
# dsa K/V on the GPU and with them in the host tier, and RATIO times the twin's batch with `dsa_kv: auto` (the
# fewest sequences' dsa K/V in the host tier that the budget needs); then `hae run` of each on the GPU and a table
# of decode tokens/s against the twin's.
#   bench/serve-at-limit.sh [CONFIG]      (default configs/hybrid-1b.yaml)
#   BUDGET=16GiB CONTEXT=32768 CHUNK=128 DECODE=64 SLOTS=2048 RATIO=6 BIN=build OUT=serve-logs   (the defaults;
#   a prefill forward holds batch x CHUNK tokens' activations, so large batches want small chunks)
#   PLACEMENTS="twin gpu host split" (the default) runs those of them, in that order; `split-one` is `split` with
#   its decode steps in one batch (runtime.micro_batches=[batch]) where `split` takes auto's micro-batches, and
#   `host-one` likewise for `host` (a name may repeat, for runs alternating in one call); MICRO="[44, 10]" gives
#   `split` those micro-batches in place of auto's
#   SET="model.attention.form=mla memory.dsa_kv_fp8=true" adds --set overrides to every run (the twin's own win)
#   HOST_BUDGET=100GiB also holds each placement's host-tier bytes to that (default: no bound)
#   PLAN_ONLY=1 prints the batches without running; BACKEND=cpu runs on the CPU (a smoke test).
set -eu
cfg=${1:-configs/hybrid-1b.yaml}
budget=${BUDGET:-16GiB} ctx=${CONTEXT:-32768} chunk=${CHUNK:-128} decode=${DECODE:-64} slots=${SLOTS:-2048}
bin=${BIN:-build} out=${OUT:-serve-logs}
mkdir -p "$out"
common=(--set "runtime.prefill=$ctx" --set "runtime.prefill_chunk=$chunk" --set "runtime.decode=$decode")
for kv in ${SET:-}; do common+=(--set "$kv"); done
twin=(--set "model.layer_pattern=[full]" --set memory.dsa_kv=gpu --set memory.full_kv=gpu --set memory.dsa_kv_fp8=false)
read -r -a placements <<<"${PLACEMENTS:-twin gpu host split}"
ratio=${RATIO:-6}

# The plan's GPU bytes and the budget in bytes of a placement at a batch.
plan() { # placement batch
  local extra=()
  case $1 in
  twin) extra=("${twin[@]}") ;;
  gpu) extra=(--set memory.dsa_kv=gpu) ;;
  host | host-one) extra=(--set memory.dsa_kv=host --set "memory.cache_tokens=$slots") ;;
  split | split-one) extra=(--set memory.dsa_kv=auto --set "memory.cache_tokens=$slots") ;;
  esac
  rm -f "$out/plan/mem.csv"
  "$bin/hae" mem "$cfg" --context $((ctx + decode)) --gpu-budget "$budget" --batch "$2" "${common[@]}" "${extra[@]}" \
    --out "$out/plan" >/dev/null 2>"$out/plan.err" || { cat "$out/plan.err" >&2; return 1; }
  awk -F, '$1 == "config" { print $12, $4, $19, $20 }' "$out/plan/mem.csv"
}
bytes() { # 16GiB, 100GB, 4096 -> bytes
  awk -v s="$1" 'BEGIN { n = s + 0; u = s; sub(/^[0-9.]+/, "", u)
    m["KiB"] = 2^10; m["MiB"] = 2^20; m["GiB"] = 2^30; m["TiB"] = 2^40; m["KB"] = 1e3; m["MB"] = 1e6; m["GB"] = 1e9; m["TB"] = 1e12
    if (u != "" && !(u in m)) exit 1; printf "%.0f", n * (u == "" ? 1 : m[u]) }' || { echo "bad byte count '$1'" >&2; exit 1; }
}
host_budget=$(bytes "${HOST_BUDGET:-0}")
for p in twin "${placements[@]}"; do plan "$p" 1 >/dev/null; done # a config hae mem refuses stops here, with its error
fits() {
  local gpu budget_b host seqs
  read -r gpu budget_b host seqs <<<"$(plan "$1" "$2")"
  [ "$gpu" -le "$budget_b" ] && { [ "$host_budget" = 0 ] || [ "$host" -le "$host_budget" ]; }
}
largest() { # the largest batch that fits, 0 if none
  local lo=0 hi=1
  while fits "$1" "$hi"; do lo=$hi; hi=$((hi * 2)); [ $hi -gt 65536 ] && break; done
  while [ $((hi - lo)) -gt 1 ]; do
    local mid=$(((lo + hi) / 2))
    if fits "$1" "$mid"; then lo=$mid; else hi=$mid; fi
  done
  echo $lo
}

declare -A batch
batch[twin]=$(largest twin)
[ "${batch[twin]}" -gt 0 ] || { echo "the twin fits no sequence in $budget" >&2; exit 1; }
for p in "${placements[@]}"; do
  case $p in
  twin) ;;
  split | split-one)
    batch[$p]=$((ratio * batch[twin]))
    fits split "${batch[$p]}" || { echo "$p: $ratio x the twin's batch (${batch[$p]}) does not fit $budget even with every sequence's dsa K/V in the host tier" >&2; batch[$p]=0; }
    ;;
  host-one) batch[$p]=$(largest host) ;;
  *) batch[$p]=$(largest "$p") ;;
  esac
done
line="$cfg at $ctx + $decode tokens a sequence, GPU budget $budget (plan): twin batch ${batch[twin]}"
[ -n "${batch[gpu]:-}" ] && line+=", dsa K/V on the GPU ${batch[gpu]}"
[ -n "${batch[host]:-}" ] && line+=", in the host tier (${slots} slots) ${batch[host]}"
if [ "${batch[split]:-0}" -gt 0 ]; then
  read -r _ _ _ seqs <<<"$(plan split "${batch[split]}")"
  line+=", dsa_kv auto at ${batch[split]}: $((batch[split] - seqs)) sequences' dsa K/V in the host tier"
fi
echo "$line"
[ "${PLAN_ONLY:-0}" = 1 ] && exit 0

printf '| model | placement | batch | dsa K/V on the GPU | decode micro-batches | decode tok/s | step p50 ms | vs twin |\n|---|---|---:|---:|---|---:|---:|---:|\n' >"$out/table.md"
base=""
for p in twin "${placements[@]}"; do
  [ "$p" = twin ] && [ -n "$base" ] && continue
  b=${batch[$p]}
  [ "$b" -gt 0 ] || continue
  extra=()
  case $p in
  twin) extra=("${twin[@]}") ;;
  gpu) extra=(--set memory.dsa_kv=gpu) ;;
  host | host-one) extra=(--set memory.dsa_kv=host --set "memory.cache_tokens=$slots") ;;
  split | split-one) extra=(--set memory.dsa_kv=auto --set "memory.gpu_budget=$budget" --set "memory.cache_tokens=$slots") ;;
  esac
  case $p in *-one) extra+=(--set "runtime.micro_batches=[$b]") ;; esac
  [ "$p" = split ] && [ -n "${MICRO:-}" ] && extra+=(--set "runtime.micro_batches=$MICRO")
  HAE_NO_PROGRESS=1 "$bin/hae" run "$cfg" --backend "${BACKEND:-cuda}" --set "runtime.batch=$b" "${common[@]}" "${extra[@]}" \
    --out "$out/run-$p" >"$out/run-$p.log" 2>&1
  tok=$(grep -o '"decode_tok_s": [0-9.]*' "$out/run-$p/summary.json" | awk '{print $2}')
  p50=$(grep -o '"decode_p50_ms": [0-9.]*' "$out/run-$p/summary.json" | awk '{print $2}')
  ongpu=$(grep -o '"dsa_gpu_seqs": [0-9]*' "$out/run-$p/summary.json" | awk '{print $2}')
  micro=$(grep -o '"micro_batches": \[[0-9, ]*\]' "$out/run-$p/summary.json" | sed 's/.*\[//; s/\]//; s/, / + /g')
  [ -n "$base" ] || base=$tok
  vs=$(awk -v a="$tok" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $(basename "$cfg" .yaml)$([ $p = twin ] && echo ' twin') | $p | $b | $([ $p = twin ] && echo - || echo "$ongpu") | $micro | $tok | $p50 | $vs |" >>"$out/table.md"
done
cat "$out/table.md"
