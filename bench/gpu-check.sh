#!/bin/bash
# Every GPU test and benchmark in one call, with a short table last.
#   bench/gpu-check.sh [BIN_DIR]    BIN_DIR holds hae, gpu_* tests and bench_* (default: build)
#   FLA_PATH=DIR also runs flash-linear-attention's KDA kernels (bench/peer_fla_kda.py) for the ratios.
#   SKIP="bench_linear default-cpu train ..." leaves out those tests, benchmarks, hae runs or the training benchmark.
#   SERVE=1 also serves at the full-attention twin's memory limit (bench/serve-at-limit.sh, several minutes).
#   NCU=1 also profiles the kernels the issues' open targets hang on (the linear prefill's two sequential-chain
#   kernels, the FP8 sparse decode) with Nsight Compute and prints where their warps wait (bench/ncu-lines.py).
# Logs go to $OUT (default: ./gpu-check-logs).
set -u
bin=${1:-build}
out=${OUT:-gpu-check-logs}
mkdir -p "$out"
summary=()
row() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }
skipped() { case " ${SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv >"$out/gpu.txt" 2>&1
gpu=$(sed -n 2p "$out/gpu.txt")
echo "device: $gpu"

for t in "$bin"/gpu_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  skipped "$name" && continue
  "$t" --jobs 1 --verbose >"$out/$name.log" 2>&1
  rc=$?
  synth=$(grep -a 'Synthesis' "$out/$name.log" | tail -1 | sed 's/.*Synthesis: //')
  row "$name (rc $rc)" "$synth"
  grep -a -E '\[FAIL\]|\[----\]' "$out/$name.log" | head -20
done

for b in "$bin"/bench_*; do
  [ -x "$b" ] || continue
  name=$(basename "$b")
  skipped "$name" && continue
  "$b" >"$out/$name.log" 2>&1
  row "$name (rc $?)" "see $name.log"
  cat "$out/$name.log"
done

run() { # label, args...
  local label=$1; shift
  skipped "$label" && return
  HAE_NO_PROGRESS=1 "$bin/hae" run "$@" --out "$out/run-$label" >"$out/run-$label.log" 2>&1
  local rc=$?
  local p d
  p=$(grep -a -o '"prefill_tok_s": [0-9.]*' "$out/run-$label/summary.json" 2>/dev/null | awk '{print $2}')
  d=$(grep -a -o '"decode_tok_s": [0-9.]*' "$out/run-$label/summary.json" 2>/dev/null | awk '{print $2}')
  local ms iss hits miss
  ms=$(grep -a -o '"decode_p50_ms": [0-9.]*' "$out/run-$label/summary.json" 2>/dev/null | awk '{print $2}')
  iss=$(grep -a -o '"decode_issue_p50_ms": [0-9.]*' "$out/run-$label/summary.json" 2>/dev/null | awk '{print $2}')
  hits=$(grep -a -o '"slot_hits": [0-9]*' "$out/run-$label/summary.json" 2>/dev/null | awk '{print $2}')
  miss=$(grep -a -o '"slot_misses": [0-9]*' "$out/run-$label/summary.json" 2>/dev/null | awk '{print $2}')
  local hr=""
  [ -n "$hits" ] && [ $((hits + miss)) -gt 0 ] && hr=", slot hit rate $(awk -v h="$hits" -v m="$miss" 'BEGIN{printf "%.1f%%", 100*h/(h+m)}')"
  row "hae run $label (rc $rc)" "prefill ${p:-?} tok/s, decode ${d:-?} tok/s, step p50 ${ms:-?} ms (issued in ${iss:-?})$hr"
  [ $rc -eq 0 ] || tail -5 "$out/run-$label.log"
}
run default-cuda --backend cuda
run default-cpu --backend cpu
run default-full-cuda --backend cuda --set "model.layer_pattern=[kda, kda, kda, full]"
run default-full-cpu --backend cpu --set "model.layer_pattern=[kda, kda, kda, full]"
run twin-1b-cuda configs/hybrid-1b-twin.yaml --backend cuda
run swa-1b-cuda configs/swa-1b.yaml --backend cuda
run kda-1b-cuda configs/kda-1b.yaml --backend cuda
run hybrid-1b-cuda configs/hybrid-1b.yaml --backend cuda
run hybrid-1b-mla-cuda configs/hybrid-1b.yaml --backend cuda --set model.attention.form=mla
# DESIGN.md's goal: hybrid-1b decoding at 128K context against its full-attention twin
long=(--backend cuda --set runtime.prefill=131072 --set runtime.decode=64 --set runtime.prefill_chunk=8192)
run twin-1b-128k configs/hybrid-1b-twin.yaml "${long[@]}"
run hybrid-1b-128k configs/hybrid-1b.yaml "${long[@]}"
run hybrid-1b-fp8-128k configs/hybrid-1b.yaml "${long[@]}" --set memory.dsa_kv_fp8=true # gqa's FP8 dsa rows
# the mla variant, its dsa K/V in bf16 (1152 bytes a token) and in the FP8 token layout (656)
mla=(--set model.attention.form=mla)
run hybrid-1b-mla-128k configs/hybrid-1b.yaml "${long[@]}" "${mla[@]}"
run hybrid-1b-mla-fp8-128k configs/hybrid-1b.yaml "${long[@]}" "${mla[@]}" --set memory.dsa_kv_fp8=true
run twin-1b-128k-b4 configs/hybrid-1b-twin.yaml "${long[@]}" --set runtime.batch=4
run hybrid-1b-128k-b4 configs/hybrid-1b.yaml "${long[@]}" --set runtime.batch=4
# dsa K/V in the host tier (issue 5): the same runs, the decode step time and the slots' hit rate
run hybrid-1b-128k-host configs/hybrid-1b.yaml "${long[@]}" --set memory.dsa_kv=host
run hybrid-1b-128k-b4-host configs/hybrid-1b.yaml "${long[@]}" --set runtime.batch=4 --set memory.dsa_kv=host
mid=(--backend cuda --set runtime.prefill=32768 --set runtime.decode=64 --set runtime.prefill_chunk=8192)
run hybrid-1b-32k configs/hybrid-1b.yaml "${mid[@]}"
run twin-1b-mla-32k configs/hybrid-1b-twin.yaml "${mid[@]}" "${mla[@]}"
run hybrid-1b-32k-host configs/hybrid-1b.yaml "${mid[@]}" --set memory.dsa_kv=host

# At the full-attention twin's memory limit (issue 5), with SERVE=1 (minutes: each run prefills 32K tokens for up to
# 90 sequences): hybrid-1b's mla form with FP8 dsa rows, its twin, 6x the batch in one batch and in micro-batches;
# then the gqa form with FP8 dsa rows at 6x its twin's batch.
if [ "${SERVE:-0}" = 1 ] && ! skipped serve; then
  PLACEMENTS="twin split-one split" SET="model.attention.form=mla memory.dsa_kv_fp8=true" BIN="$bin" OUT="$out/serve" \
    "$(dirname "$0")/serve-at-limit.sh" >"$out/serve.log" 2>&1
  row "serve-at-limit mla (rc $?)" "see serve.log"
  cat "$out/serve.log"
  PLACEMENTS="twin split" SET="memory.dsa_kv_fp8=true" BIN="$bin" OUT="$out/serve-gqa" \
    "$(dirname "$0")/serve-at-limit.sh" >"$out/serve-gqa.log" 2>&1
  row "serve-at-limit gqa (rc $?)" "see serve-gqa.log"
  cat "$out/serve-gqa.log"
fi

# Training: each preset alone for a few hundred steps (bench/train-bench.sh: ms per step, tokens/s, TFLOP/s).
if ! skipped train; then
  OUT="$out" "$(dirname "$0")/train-bench.sh" "$bin" >"$out/train-bench.log" 2>&1
  row "train-bench (rc $?)" "see train-bench.log"
  cat "$out/train-bench.log"
fi

# The peer, side by side, when its source is given (FLA_PATH: a flash-linear-attention checkout).
if [ -n "${FLA_PATH:-}" ]; then
  python3 "$(dirname "$0")/peer_fla_kda.py" --json "$out/fla.jsonl" >"$out/fla.log" 2>&1
  row "flash-linear-attention (rc $?)" "see fla.log"
  cat "$out/fla.log"
fi

# Where the open targets' kernels wait: one launch each, in the benchmarks' warm-up (skips count matching
# launches; the benchmarks' checks come first), source counters summed per line and per opcode.
prof() { # name, mangled-name regex, launches to skip, benchmark
  ncu --set full --import-source yes --kernel-name-base mangled -k "regex:$2" --launch-skip "$3" -c 1 \
    -o "$out/ncu-$1" --force-overwrite "$bin/$4" >"$out/ncu-$1.run.log" 2>&1
  local rc=$?
  ncu -i "$out/ncu-$1.ncu-rep" --page source --csv --print-source sass,cuda 2>/dev/null | gzip >"$out/ncu-$1.csv.gz"
  python3 "$(dirname "$0")/ncu-lines.py" "$out/ncu-$1.csv.gz" --top 15 --sass 8 >"$out/ncu-$1.txt" 2>&1
  row "ncu $1 (rc $rc)" "see ncu-$1.txt"
  cat "$out/ncu-$1.txt"
}
if [ "${NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
  prof chunk_prep 'chunk_prep_kernelI10hae_bf16_tLi128ELi3ELb1E' 6 bench_linear
  prof chunk_state 'chunk_state_kernelI10hae_bf16_tLi128ELb1ELb1E' 2 bench_linear
  prof sparse_fp8_decode 'wg_kernelILb1E' 5 bench_sparse
fi

echo
echo "=== gpu-check: $gpu"
printf '%s\n' "${summary[@]}"
