#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a GPU machine that has no Rust toolchain:
# gpu-bin/xtask.gz (release, --features cuda, symbols stripped, gzipped: ~15 MiB of the
# 64 MiB a device call carries; scripts/gpu-check.sh unpacks it) and gpu-bin/COMMIT.
# The unpacked binary stays in target/gpu/release/xtask.
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
rm -rf gpu-bin
mkdir -p gpu-bin
cp target/gpu/release/xtask gpu-bin/xtask.tmp
strip gpu-bin/xtask.tmp
gzip -9 -c gpu-bin/xtask.tmp > gpu-bin/xtask.gz.tmp
rm gpu-bin/xtask.tmp
mv gpu-bin/xtask.gz.tmp gpu-bin/xtask.gz
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- . ':!gpu-bin' || commit="$commit-dirty"
echo "$commit" > gpu-bin/COMMIT
size=$(stat -c %s gpu-bin/xtask.gz)
echo "gpu-bin/xtask.gz: $(( size / 1024 / 1024 )) MiB, commit $commit (CUDA bindings $CUDARC_CUDA_VERSION)"
if [ "$size" -gt $(( 48 * 1024 * 1024 )) ]; then
  echo "gpu-bin/xtask.gz is over 48 MiB: with the working tree it will not fit the 64 MiB a device call carries" >&2
  exit 1
fi
