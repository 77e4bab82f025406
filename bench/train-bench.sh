#!/bin/bash
# Training throughput: each preset trained alone for STEPS steps (default 400) on the backend (default cuda), then
# a table of ms per step, tokens/s and model TFLOP/s (hae_trainer_flops: 2 per multiply-add of the products,
# backward included; norms and the optimiser not counted) and the time the preset's own schedule takes at that rate.
#   bench/train-bench.sh [BIN_DIR]      BIN_DIR holds hae (default build); logs and runs under $OUT
#   BACKEND=cpu THREADS=16 bench/train-bench.sh    the same on the CPU
set -u
bin=${1:-build}
out=${OUT:-train-bench-logs}
steps=${STEPS:-400}
backend=${BACKEND:-cuda}
mkdir -p "$out"
rows=()
bench() { # name, config, --set overrides...
  local name=$1 cfg=$2; shift 2
  local dir="$out/train-$name"
  rm -rf "$dir"
  HAE_NO_PROGRESS=1 "$bin/hae" train "$cfg" "$@" --backend "$backend" --set runtime.threads="${THREADS:-0}" \
    --set train.steps="$steps" --set train.warmup=10 --set train.eval_every=0 --set train.checkpoint_every=0 \
    --out "$dir" >"$dir.log" 2>&1
  local rc=$? full
  if [ $rc -ne 0 ] || [ ! -f "$dir/summary.json" ]; then
    printf '%-26s failed (rc %d): %s\n' "$name" "$rc" "$(tail -1 "$dir.log")" >>"$out/train-bench.txt"
    return
  fi
  full=$(sed -n 's/^  steps: \([0-9]*\).*/\1/p' "$cfg" | head -1)
  awk -v n="$name" -v rc="$rc" -v st="$steps" -v full="$full" -v p="$(grep -o '"params": [0-9]*' "$dir/summary.json" 2>/dev/null | awk '{print $2}')" '
    /"seconds"/ {s = $2 + 0} /"tokens_per_s"/ {t = $2 + 0} /"tflop_s"/ {f = $2 + 0}
    END {
      printf "%-26s %9d %9.2f %11.0f %9.3f %12.1f\n", n, p, 1000 * s / st, t, f, s / st * full
    }' FS='[:,]' "$dir/summary.json" >>"$out/train-bench.txt"
}
: >"$out/train-bench.txt"
z=configs/train/mqar-zoology.yaml
bench zoology-attention $z --set 'model.layer_pattern=[swa, full]' --set 'eval.pairs=[16]'
bench zoology-kda $z --set 'model.layer_pattern=[kda]' --set 'eval.pairs=[16]'
bench zoology-deltanet $z --set 'model.layer_pattern=[deltanet]' --set 'eval.pairs=[16]'
zg=configs/train/mqar-zoology-gpu.yaml
bench zoology512-attention $zg --set 'model.layer_pattern=[swa, full]'
bench zoology512-kda $zg
bench zoology512-attention-bf16 $zg --set 'model.layer_pattern=[swa, full]' --set train.matmul=bf16
bench zoology512-kda-bf16 $zg --set train.matmul=bf16
bench zoology512-kda-ckpt32 $zg --set train.state_checkpoint=32
bench zoology512-kda-chunk16 $zg --set train.linear_chunk=16
# kda 4x wider (d_model 512, 8 heads of 64 x 64 states), where the recurrence dominates a step: token by token, then
# in the chunk form
widek=(--set model.d_model=512 --set model.mlp.intermediate_size=2048 --set model.linear_attn.num_heads=8
  --set model.linear_attn.head_dim=64)
bench zoology512-kda-d512 $zg "${widek[@]}"
bench zoology512-kda-d512-chunk32 $zg "${widek[@]}" --set train.linear_chunk=32
# the same task on a model 4x wider (d_model 512, 8 heads of 64, MLP 2048), where the products dominate a step
wide=(--set 'model.layer_pattern=[swa, full]' --set model.d_model=512 --set model.mlp.intermediate_size=2048
  --set model.attention.num_heads=8 --set model.attention.num_kv_heads=8 --set model.attention.head_dim=64)
bench zoology512-attention-d512 $zg "${wide[@]}"
bench zoology512-attention-d512-bf16 $zg "${wide[@]}" --set train.matmul=bf16
m=configs/train/multihop-hybrid.yaml
bench multihop-full $m --set 'model.layer_pattern=[swa, full]'
bench multihop-kda3-full1 $m
bench multihop-kda3-full1-chunk16 $m --set train.linear_chunk=16
bench multihop-kda7-full1 $m --set model.n_layers=8 --set 'model.layer_pattern=[kda, kda, kda, kda, kda, kda, kda, full]'
bench multihop-kda3-dsa1 $m --set 'model.layer_pattern=[kda, kda, kda, dsa]'
bench multihop-gdn3-dsa1 $m --set 'model.layer_pattern=[gdn, gdn, gdn, dsa]'
echo "training on $backend, $steps steps each (the last column: the preset's train.steps at that rate)"
printf '%-26s %9s %9s %11s %9s %12s\n' preset params ms/step tokens/s TFLOP/s "schedule s"
cat "$out/train-bench.txt"
