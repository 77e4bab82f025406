#!/bin/sh
# Builds and runs every test. When nvcc is present a CUDA build compiles every kernel and, where a GPU answers,
# runs the GPU suite (CTest label gpu); the CPU suite then runs CPU-only under AddressSanitizer and
# UndefinedBehaviorSanitizer, last, so its summary is the one a run ends with.
set -eu
cd "$(dirname "$0")/.."
. scripts/deps.sh
jobs=$(nproc)
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j "$jobs" >/dev/null
  if nvidia-smi -L >/dev/null 2>&1; then
    ctest --test-dir build -L gpu --output-on-failure
  else
    echo "CUDA build done; no GPU answers here, so the GPU suite (ctest --test-dir build -L gpu) is not run"
  fi
fi
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHAE_CUDA=OFF -DHAE_SANITIZE=ON >/dev/null
cmake --build build-test -j "$jobs" >/dev/null
ctest --test-dir build-test -L cpu --output-on-failure -j "$jobs"
