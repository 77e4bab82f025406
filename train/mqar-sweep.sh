#!/bin/sh
# Trains configs/train/mqar-zoology.yaml (or CONFIG) once per mixer kind and pair count (train/train-eval.sh: train,
# then hae eval of the last checkpoint) and writes OUT/results.csv and OUT/table.md (held-out accuracy per kind and
# pairs).
#   train/mqar-sweep.sh [OUT] [KINDS] [PAIRS]     defaults: eval/results/train-mqar, every kind below, 4 8 16 24
# PAIRS `preset` trains each kind once on the config's own mixture (train.lengths, train.pairs) and tabulates the
# engine's recall at each of its eval.pairs.
# A kind is a layer kind, `attention` ([swa, full]) or a hybrid written kda+dsa (the pattern [kda, dsa]).
# JOBS runs that many at once (default 1; give each runtime.threads = cores / JOBS through SETS); SETS adds
# overrides to every run (SETS='--set train.steps=200 --set runtime.threads=1'); HAE is the binary (default build/hae).
set -eu
cd "$(dirname "$0")/.."
out=${1:-eval/results/train-mqar}
cfg=${CONFIG:-configs/train/mqar-zoology.yaml}
kinds=${2:-"attention linear deltanet gdn kda"}
pairs=${3:-"4 8 16 24"}
preset=false
[ "$pairs" = preset ] && preset=true
for k in $kinds; do
  pattern="[$(echo "$k" | sed 's/+/, /g')]" # kda+full: a hybrid, layer by layer
  [ "$k" = attention ] && pattern="[swa, full]"
  if $preset; then echo "$k $cfg --set 'model.layer_pattern=$pattern' ${SETS:-}"; continue; fi
  for p in $pairs; do echo "$k-$p $cfg --set 'model.layer_pattern=$pattern' --set 'eval.pairs=[$p]' ${SETS:-}"; done
done | sed "s/ *$//" | xargs -P "${JOBS:-1}" -L 1 sh -c 'train/train-eval.sh "$0" "$@"' "$out"
csv="$out/results.csv"
echo "name,task,length,pairs,hops,held_out_accuracy,engine_recall,train_seconds,tokens_per_s" > "$csv"
if $preset; then
  for k in $kinds; do cat "$out/runs/$k.csv" 2>/dev/null || true; done >> "$csv"
  pairs=$(awk -F, 'NR > 1 {print $4}' "$csv" | sort -n -u | tr '\n' ' ' | sed 's/ $//')
  cell() { awk -F, -v n="$1" -v p="$2" '$1 == n && $4 == p {print $7}' "$csv"; }
else
  for k in $kinds; do for p in $pairs; do cat "$out/runs/$k-$p.csv" 2>/dev/null || true; done; done >> "$csv"
  cell() { awk -F, -v n="$1-$2" '$1 == n {print $6}' "$csv"; }
fi
{
  echo "| kind | $(echo $pairs | sed 's/ / pairs | /g') pairs |"
  echo "|---|$(for p in $pairs; do printf -- '---:|'; done)"
  for k in $kinds; do
    printf '| %s |' "$k"
    for p in $pairs; do printf ' %s |' "$(cell "$k" "$p")"; done
    echo
  done
} > "$out/table.md"
cat "$out/table.md"
