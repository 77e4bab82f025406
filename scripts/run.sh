#!/bin/sh
# Builds hae (with CUDA when nvcc is found) and runs the main job: `hae run` on the built-in
# default config, on the GPU when one answers, else on the CPU. Extra arguments go to `hae run`.
set -eu
cd "$(dirname "$0")/.."
. scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
exec ./build/hae run "$@"
