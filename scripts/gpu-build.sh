#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a GPU machine that has no Rust toolchain:
# gpu-bin/xtask (release, --features cuda, symbols stripped) and gpu-bin/COMMIT.
#
#   scripts/gpu-build.sh            # then carry gpu-bin/ to the GPU machine
#
# The CUDA driver API bindings are those of CUDA 13.0 (CUDARC_CUDA_VERSION=13000), which
# every driver from 580 on serves; set CUDARC_CUDA_VERSION (e.g. 12080) for an older driver.
# A target folder of its own (target/gpu) keeps the default build's cache as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
cargo build --release -p xtask --features cuda --target-dir target/gpu
mkdir -p gpu-bin
cp target/gpu/release/xtask gpu-bin/xtask.tmp
strip gpu-bin/xtask.tmp
mv gpu-bin/xtask.tmp gpu-bin/xtask
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- . ':!gpu-bin' || commit="$commit-dirty"
echo "$commit" > gpu-bin/COMMIT
size=$(stat -c %s gpu-bin/xtask)
echo "gpu-bin/xtask: $(( size / 1024 / 1024 )) MiB, commit $commit (CUDA bindings $CUDARC_CUDA_VERSION)"
if [ "$size" -gt $(( 60 * 1024 * 1024 )) ]; then
  echo "gpu-bin/xtask is over 60 MiB: it will not fit the 64 MiB a device call carries" >&2
  exit 1
fi
