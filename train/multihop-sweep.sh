#!/bin/sh
# Trains the multi-hop presets of configs/train/multihop-hybrid.yaml (train/train-eval.sh: train on 128 tokens, then
# hae eval of the last checkpoint at 1x, 4x and 16x that length) and writes OUT/results.csv and OUT/table.md
# (accuracy per preset, hops and length).
#   train/multihop-sweep.sh [OUT]     default eval/results/train-multihop
# JOBS runs that many at once (default 1); SETS adds overrides to every run (SETS='--set runtime.backend=cuda' trains on the GPU;
# then EVAL_SETS='--set runtime.backend=cpu' scores on the CPU, whose linear layers take any head size, as
# train-eval.sh says); THREADS gives runtime.threads to each
# run, doubled for the 8-layer preset; PRESETS picks some of the presets below (the table shows every preset with
# a run in OUT); HAE is the binary (default build/hae).
set -eu
cd "$(dirname "$0")/.."
out=${1:-eval/results/train-multihop}
cfg=configs/train/multihop-hybrid.yaml
t=${THREADS:-0}
presets="full kda3-full1 gdn3-full1 kda7-full1 kda3-dsa1 gdn3-dsa1"
overrides() { # the preset's --set's
  case $1 in
    full) echo "--set 'model.layer_pattern=[swa, full]'" ;;
    kda3-full1) echo "" ;;
    gdn3-full1) echo "--set 'model.layer_pattern=[gdn, gdn, gdn, full]'" ;;
    kda7-full1) echo "--set model.n_layers=8 --set 'model.layer_pattern=[kda, kda, kda, kda, kda, kda, kda, full]'" ;;
    kda3-dsa1) echo "--set 'model.layer_pattern=[kda, kda, kda, dsa]'" ;;
    gdn3-dsa1) echo "--set 'model.layer_pattern=[gdn, gdn, gdn, dsa]'" ;;
  esac
}
for p in ${PRESETS:-$presets}; do
  threads=$t
  [ "$p" = kda7-full1 ] && threads=$((2 * t))
  echo "$p $cfg $(overrides "$p") --set runtime.threads=$threads ${SETS:-}"
done | sed "s/ *$//" | EVAL_SETS="--set eval.lengths=[128,512,2048] ${EVAL_SETS:-}" xargs -P "${JOBS:-1}" -L 1 sh -c 'train/train-eval.sh "$0" "$@"' "$out"
csv="$out/results.csv"
echo "name,task,length,pairs,hops,held_out_accuracy,engine_recall,train_seconds,tokens_per_s" > "$csv"
for p in $presets; do cat "$out/runs/$p.csv" 2>/dev/null || true; done >> "$csv"
lengths="128 512 2048"
{
  printf '| preset | held-out (128) |'
  for h in 1 2 3 4; do for l in $lengths; do printf ' %s hop%s @%s |' "$h" "$([ "$h" = 1 ] || echo s)" "$l"; done; done
  echo
  printf '|---|---:|'
  for h in 1 2 3 4; do for l in $lengths; do printf -- '---:|'; done; done
  echo
  for p in $presets; do
    printf '| %s | %s |' "$p" "$(awk -F, -v n="$p" '$1 == n {print $6; exit}' "$csv")"
    for h in 1 2 3 4; do for l in $lengths; do
      printf ' %s |' "$(awk -F, -v n="$p" -v h="$h" -v l="$l" '$1 == n && $5 == h && $3 == l {printf "%.3f", $7}' "$csv")"
    done; done
    echo
  done
} > "$out/table.md"
cat "$out/table.md"
