#!/usr/bin/env python3
"""flash-linear-attention's KDA kernels at the anchor shapes of the linear-layer benchmarks, for a
side-by-side number with bench_linear. flash-linear-attention is not part of hae: point FLA_PATH at a
checkout of its source (the folder holding `fla/`); this script only calls it.

    FLA_PATH=/path/to/flash-linear-attention python3 bench/peer_fla_kda.py [--json out.jsonl]

Every call fuses what hae's kernels fuse: q/k L2 norm, the safe gate (lower_bound = -5) computed from
the raw gate input with A_log and dt_bias, and beta = sigmoid(beta logits). Times are medians of
triton.testing.do_bench (CUDA events) over fresh random inputs."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.environ.get("FLA_PATH", "."))
import torch  # noqa: E402
import triton  # noqa: E402
from fla.ops.kda import chunk_kda, fused_recurrent_kda  # noqa: E402

H, K, V, LB = 32, 128, 128, -5.0


def inputs(B, T, dev="cuda"):
    g = torch.Generator(device=dev).manual_seed(B * 100003 + T)
    r = lambda *s, dt=torch.bfloat16: torch.randn(*s, device=dev, generator=g).to(dt)  # noqa: E731
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), g=r(B, T, H, K), beta=r(B, T, H),
                A_log=torch.rand(H, device=dev, generator=g).float(), dt_bias=r(H * K, dt=torch.float32))


def prefill(B, T):
    x = inputs(B, T)
    fn = lambda: chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], A_log=x["A_log"], dt_bias=x["dt_bias"],  # noqa: E731
                           use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                           safe_gate=True, lower_bound=LB, output_final_state=True)
    with torch.inference_mode():
        o, s = fn()
        assert torch.isfinite(o.float()).all() and torch.isfinite(s).all()
        ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    flops = B * H * T * (4 * 64 * K + 6 * K * V)  # the chunked form's matrix work, chunk 64
    return ms, flops


def decode(B):
    x = inputs(B, 1)
    s0 = torch.randn(B, H, K, V, device="cuda", dtype=torch.float32)
    fn = lambda: fused_recurrent_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], A_log=x["A_log"],  # noqa: E731
                                     dt_bias=x["dt_bias"], initial_state=s0, output_final_state=True,
                                     use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                     use_beta_sigmoid_in_kernel=True, lower_bound=LB)
    with torch.inference_mode():
        o, s = fn()
        assert torch.isfinite(o.float()).all()
        ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    return ms, 2 * B * H * K * V * 4  # state read and written


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    print(f"{torch.cuda.get_device_name()}  flash-linear-attention KDA, H={H} K={K} V={V} bf16, safe gate {LB}")
    for B, T in [(1, 8192), (1, 32768), (8, 4096)]:
        ms, fl = prefill(B, T)
        rows.append(dict(op="chunk_kda", B=B, T=T, ms=ms, tflops=fl / ms / 1e9))
        print(f"chunk_kda           B={B:<3} T={T:<6} {ms * 1e3:9.1f} us  {B * T / ms / 1e3:8.2f} Mtok/s  "
              f"{fl / ms / 1e9:6.1f} TFLOP/s")
    for B in [1, 256]:
        ms, nb = decode(B)
        rows.append(dict(op="fused_recurrent_kda", B=B, T=1, ms=ms, gbs=nb / ms / 1e6))
        print(f"fused_recurrent_kda B={B:<3} T=1      {ms * 1e3:9.1f} us  state {nb / ms / 1e6:7.1f} GB/s")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
