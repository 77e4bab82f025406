#!/bin/sh
# Builds and runs every test. The CPU suite runs CPU-only under AddressSanitizer and
# UndefinedBehaviorSanitizer; when nvcc is present a CUDA build also runs the GPU suite
# (CTest label gpu), whose tests skip themselves where no GPU answers.
set -eu
cd "$(dirname "$0")/.."
. scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHAE_CUDA=OFF -DHAE_SANITIZE=ON >/dev/null
cmake --build build-test -j "$jobs" >/dev/null
ctest --test-dir build-test -L cpu --output-on-failure -j "$jobs"
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j "$jobs" >/dev/null
  ctest --test-dir build -L gpu --output-on-failure
fi
