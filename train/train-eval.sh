#!/bin/sh
# One run of a training sweep: trains CONFIG with the overrides into OUT/runs/NAME, scores its last checkpoint through
# the engine (hae eval --weights, the same overrides plus $EVAL_SETS) and writes OUT/runs/NAME.csv, a line per eval
# point: name,task,length,pairs,hops,held_out_accuracy,engine_recall,train_seconds,tokens_per_s
#   train/train-eval.sh OUT NAME CONFIG [--set KEY=VALUE ...]       HAE: the binary (default build/hae)
# The optimiser state is dropped after the eval (the weights stay). Used by mqar-sweep.sh and multihop-sweep.sh.
set -eu
out=$1 name=$2 cfg=$3
shift 3
hae=${HAE:-build/hae}
run="$out/runs/$name"
mkdir -p "$out/runs"
field() { sed -n "s/.*\"$2\": \([^,]*\),*$/\1/p" "$1" | head -1; }
echo "== $name" >&2
"$hae" train "$cfg" --out "$run" "$@" > "$run.log" 2>&1 || { echo "$name: training failed, see $run.log" >&2; exit 0; }
ckpt=$(field "$run/summary.json" checkpoint | tr -d '"')
# shellcheck disable=SC2086 # EVAL_SETS is a list of flags
"$hae" eval "$cfg" "$@" ${EVAL_SETS:-} --weights "$ckpt/model.safetensors" --out "$run/eval" > "$run/eval.log" 2>&1 ||
  { echo "$name: eval failed, see $run/eval.log" >&2; exit 0; }
held=$(field "$run/summary.json" eval_accuracy) secs=$(field "$run/summary.json" seconds)
tps=$(field "$run/summary.json" tokens_per_s)
# results.csv columns: task 1, length 2, pairs 3, hops 4, recall 21
awk -F, -v n="$name" -v h="$held" -v s="$secs" -v t="$tps" 'NR > 1 {print n "," $1 "," $2 "," $3 "," $4 "," h "," $21 "," s "," t}' \
  "$run/eval/results.csv" > "$run.csv"
rm -f "$ckpt/optim.safetensors"
