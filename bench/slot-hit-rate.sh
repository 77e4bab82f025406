#!/bin/bash
# The GPU token slots' hit rate with trained weights against random ones (issue 5): trains a small DSA hybrid
# (configs/train/multihop-hybrid.yaml as GDN x3 + DSA x1, top-16 of the indexer), then decodes with its dsa K/V in
# the host tier and slots for 2x and 4x the top-k, once with the trained weights and once with the seed's random
# ones, and prints the decode steps' hit rates, then replays the trained model's selections (--trace-selections)
# through other policies and the clairvoyant bound (bench/slot-policies.py). The prompt is random tokens; the decode
# samples (temperature 1), since greedy decoding of a small model can loop on a few tokens, which repeats its
# selections by itself.
#   bench/slot-hit-rate.sh                     (CPU; 3m20s on 2 cores)
#   BIN=build OUT=hit-logs PROMPT=2048 DECODE=256 STEPS=800 BACKEND=cpu THREADS=2   (the defaults)
# BACKEND=cuda trains on the GPU; the decodes run on the CPU either way (the engine's CUDA linear kernels take
# heads of 64 or 128 dims, this model's have 16).
set -eu
bin=${BIN:-build} out=${OUT:-hit-logs} prompt=${PROMPT:-2048} decode=${DECODE:-256} steps=${STEPS:-800}
backend=${BACKEND:-cpu} threads=${THREADS:-2}
cfg=configs/train/multihop-hybrid.yaml
model=(--set "model.layer_pattern=[gdn, gdn, gdn, dsa]" --set "runtime.threads=$threads")
mkdir -p "$out"
export HAE_NO_PROGRESS=1
"$bin/hae" train "$cfg" "${model[@]}" --set "train.steps=$steps" --set "train.checkpoint_every=$steps" \
  --backend "$backend" --out "$out/train" >"$out/train.log" 2>&1 || { tail -5 "$out/train.log" >&2; exit 1; }
weights=$(printf '%s/train/checkpoints/step-%06d/model.safetensors' "$out" "$steps")
topk=$(awk '$1 == "index_topk:" { print $2; exit }' "$out/train/config.resolved.yaml")
echo "trained: $(grep -a 'held-out' "$out/train.log" | sed 's/^ *//')"
echo
echo "| weights | slots | decode slot hit rate | fetched per step |"
echo "|---|---|---|---|"
for w in trained random; do
  for x in 2 4; do
    slots=$((x * topk))
    extra=()
    [ "$w" = trained ] && extra=(--weights "$weights")
    run="$out/run-$w-$slots"
    "$bin/hae" run "$cfg" "${model[@]}" "${extra[@]}" --set memory.dsa_kv=host --set "memory.cache_tokens=$slots" --trace-selections \
      --set "runtime.prefill=$prompt" --set "runtime.decode=$decode" --set runtime.temperature=1.0 \
      --set runtime.batch=1 --backend cpu --out "$run" >"$run.log" 2>&1 || { tail -5 "$run.log" >&2; exit 1; }
    hr=$(grep -a -o '"decode_slot_hit_rate": [0-9.]*' "$run/summary.json" | awk '{ printf "%.1f%%", 100 * $2 }')
    fb=$(grep -a -o '"decode_fetched_bytes_per_step": [0-9.]*' "$run/summary.json" | awk '{ printf "%.0f B", $2 }')
    echo "| $w | $slots (${x}x the top-$topk) | $hr | $fb |"
  done
done
echo
echo "The trained model's selections replayed through other policies and the clairvoyant bound (bench/slot-policies.py):"
python3 "$(dirname "$0")/slot-policies.py" "$out/run-trained-$((2 * topk))/selections.txt" --slots "$((2 * topk)),$((4 * topk))" \
  --check "$out/run-trained-$((2 * topk))/summary.json"
