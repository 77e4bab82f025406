#!/bin/sh
# Trains configs/train/mqar-zoology.yaml once per mixer kind and pair count, scores each last checkpoint through the
# engine (hae eval --weights) and writes OUT/results.csv and OUT/table.md (held-out accuracy per kind and pairs).
#   train/mqar-sweep.sh [OUT] [KINDS] [PAIRS]     defaults: eval/results/train-mqar, every kind below, 4 8 16 24
# JOBS runs that many at once (default 1; give each runtime.threads = cores / JOBS through SETS); SETS adds
# overrides to every run (SETS='--set train.steps=200 --set runtime.threads=1'); HAE is the binary (default build/hae).
# Each run's directory (metrics.jsonl, summary.json, the last weights) stays under OUT/runs.
set -eu
cd "$(dirname "$0")/.."
hae=${HAE:-build/hae}
sets=${SETS:-}
cfg=configs/train/mqar-zoology.yaml
field() { sed -n "s/.*\"$2\": \([^,]*\),*$/\1/p" "$1" | head -1; }

if [ "${1:-}" = --one ]; then # one run: --one OUT KIND PAIRS, its CSV line into OUT/runs/KIND-PAIRS.csv
  out=$2 k=$3 p=$4
  pattern="[$k]"
  [ "$k" = attention ] && pattern="[swa, full]"
  run="$out/runs/$k-$p"
  echo "== $k, $p pairs" >&2
  "$hae" train "$cfg" --out "$run" --set "model.layer_pattern=$pattern" --set "eval.pairs=[$p]" $sets > "$run.log" 2>&1 ||
    { echo "$k $p: training failed, see $run.log" >&2; exit 0; }
  ckpt=$(field "$run/summary.json" checkpoint | tr -d '"')
  "$hae" eval "$cfg" --set "model.layer_pattern=$pattern" --set "eval.pairs=[$p]" $sets --weights "$ckpt/model.safetensors" \
    --out "$run/eval" > "$run/eval.log" 2>&1 || { echo "$k $p: eval failed, see $run/eval.log" >&2; exit 0; }
  recall=$(awk -F, 'NR == 2 {print $21}' "$run/eval/results.csv") # the recall column
  echo "$k,$p,$(field "$run/summary.json" eval_accuracy),$recall,$(field "$run/summary.json" seconds),$(field "$run/summary.json" tokens_per_s)" > "$run.csv"
  rm -f "$ckpt/optim.safetensors"
  exit 0
fi

out=${1:-eval/results/train-mqar}
kinds=${2:-"attention linear deltanet gdn kda"}
pairs=${3:-"4 8 16 24"}
mkdir -p "$out/runs"
for k in $kinds; do for p in $pairs; do echo "$k $p"; done; done |
  HAE=$hae SETS=$sets xargs -P "${JOBS:-1}" -L 1 sh -c '"$0" --one "$1" "$2" "$3"' "$0" "$out"
csv="$out/results.csv"
echo "kind,pairs,held_out_accuracy,engine_recall,train_seconds,tokens_per_s" > "$csv"
for k in $kinds; do for p in $pairs; do cat "$out/runs/$k-$p.csv" 2>/dev/null || true; done; done >> "$csv"
{
  echo "| kind | $(echo $pairs | sed 's/ / pairs | /g') pairs |"
  echo "|---|$(for p in $pairs; do printf -- '---:|'; done)"
  for k in $kinds; do
    printf '| %s |' "$k"
    for p in $pairs; do printf ' %s |' "$(awk -F, -v k="$k" -v p="$p" '$1==k && $2==p {print $3}' "$csv")"; done
    echo
  done
} > "$out/table.md"
cat "$out/table.md"
