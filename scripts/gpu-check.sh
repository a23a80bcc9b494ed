#!/usr/bin/env bash
# The GPU check of issue 23 on a machine with one NVIDIA GPU, its driver and PyTorch, but no
# Rust toolchain and no network: the binary comes from scripts/gpu-build.sh (built elsewhere,
# carried over), the PyTorch reference is scripts/gpu/torch_dit.py.
#
#   scripts/gpu-check.sh [--bin gpu-bin/xtask (or its .gz)] [--out docs/gpu] [--python python3]
#                        [--device cuda:0] [--budget 450] [--dry-run]
#
# Runs the stages of `xtask gpu-check` (speed, torch, parity, sample), each under a timeout
# taken from what is left of --budget seconds, so the whole check stops by itself; a stage
# that fails or runs out of time is listed as missing and the others still count. Then writes
# OUT/report.json and OUT/README.md; each stage's log is OUT/logs/<stage>.log.
# --dry-run: the same on the CPU backend with the tiny network (seconds), to catch mistakes
# before spending GPU time; its torch stage runs only if the Python has torch.
#
# CUDA: burn's CUDA backend loads libcuda (the driver) and NVRTC at run time and compiles its
# kernels with the CUDA headers in $CUDA_PATH/include. Without a toolkit in /usr/local/cuda,
# both are taken from PyTorch's wheels (site-packages/nvidia/...).
set -u -o pipefail

BIN=gpu-bin/xtask OUT=docs/gpu PY=python3 DEVICE=cuda:0 BUDGET=450 DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu-check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
if [ ! -x "$BIN" ] && [ -f "$BIN.gz" ]; then
  # scripts/gpu-build.sh's compressed copy, as carried.
  UNPACKED=$(mktemp -d)/xtask
  gzip -dc "$BIN.gz" > "$UNPACKED" && chmod +x "$UNPACKED" && cp -f "$(dirname "$BIN")/COMMIT" "$(dirname "$UNPACKED")/" 2> /dev/null
  BIN=$UNPACKED
fi
if [ ! -x "$BIN" ]; then
  echo "gpu-check.sh: no executable at --bin $BIN; build it with scripts/gpu-build.sh (or pass --bin)" >&2
  exit 2
fi
mkdir -p "$OUT/logs" || { echo "gpu-check.sh: cannot create --out $OUT" >&2; exit 2; }
rm -f "$OUT"/{speed,torch,parity,sample}.json

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  COMMON=(--device cpu --preset tiny --out "$OUT" --iters 2 --sample-batch 2)
  PRECISION=f32
else
  COMMON=(--device "$DEVICE" --preset xl --out "$OUT" --iters 5 --sample-batch 8)
  PRECISION=f32,bf16
fi

# --- CUDA headers and libraries -------------------------------------------------------------
nvidia_dir() { "$PY" -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null; }
if [ "$DRY" = 0 ]; then
  if [ -z "${CUDA_PATH:-}" ]; then
    for d in /usr/local/cuda /opt/cuda; do
      if [ -f "$d/include/cuda_fp16.h" ]; then CUDA_PATH=$d; break; fi
    done
  fi
  NV=$(nvidia_dir)
  if [ -z "${CUDA_PATH:-}" ] && [ -n "$NV" ]; then
    for d in "$NV"/cu13 "$NV"/cu12; do
      if [ -f "$d/include/cuda_fp16.h" ]; then CUDA_PATH=$d; break; fi
    done
    if [ -z "${CUDA_PATH:-}" ]; then
      # Older wheels spread the headers over nvidia/<part>/include: gather them in one tree.
      CUDA_PATH=$(mktemp -d)/cuda
      mkdir -p "$CUDA_PATH/include"
      for f in "$NV"/*/include/*; do ln -sf "$f" "$CUDA_PATH/include/"; done
    fi
  fi
  if [ -z "${CUDA_PATH:-}" ]; then
    echo "gpu-check.sh: no CUDA headers found (no /usr/local/cuda, no nvidia wheels for $PY); set CUDA_PATH" >&2
    exit 2
  fi
  export CUDA_PATH
  LIBS=$(mktemp -d)
  for d in "$CUDA_PATH/lib64" "$CUDA_PATH/lib" ${NV:+"$NV"/*/lib} /usr/local/nvidia/lib64; do
    [ -d "$d" ] || continue
    LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
    # cudarc looks for libnvrtc.so first: point it at the first NVRTC found.
    f=$(ls "$d"/libnvrtc.so.* 2> /dev/null | sort -V | tail -1)
    if [ -n "$f" ] && [ ! -e "$LIBS/libnvrtc.so" ]; then ln -s "$f" "$LIBS/libnvrtc.so"; fi
  done
  export LD_LIBRARY_PATH="$LIBS:$LD_LIBRARY_PATH"
  echo "CUDA_PATH=$CUDA_PATH"
  echo "NVRTC: $(readlink "$LIBS/libnvrtc.so" || echo 'not found (cudarc will search the loader path)')"
fi

# --- stages -------------------------------------------------------------------------------------
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
# run_stage NAME SHARE_SECONDS ARGS…: runs one stage under min(SHARE, what is left − 15 s).
run_stage() {
  local name=$1 share=$2; shift 2
  local limit; limit=$(left); limit=$(( limit - 15 ))
  [ "$limit" -gt "$share" ] && limit=$share
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, the budget is spent" | tee "$OUT/logs/$name.log"
    return
  fi
  echo "== $name (at most ${limit} s)"
  timeout -k 10 "$limit" "$BIN" gpu-check --stage "$name" "${COMMON[@]}" "$@" \
    > >(tee "$OUT/logs/$name.log") 2>&1
  local rc=$?
  case $rc in
    0) ;;
    124|137) echo "== $name: stopped after ${limit} s" | tee -a "$OUT/logs/$name.log" ;;
    *) echo "== $name: failed (exit $rc)" | tee -a "$OUT/logs/$name.log" ;;
  esac
}

PEAK_ARGS=()
if [ "$DRY" = 0 ] && command -v nvidia-smi > /dev/null; then
  NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  IDLE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/logs/memory.csv" &
  SMI=$!
  run_stage speed 170 --precision "$PRECISION"
  kill "$SMI" 2> /dev/null; wait "$SMI" 2> /dev/null
  PEAK=$(sort -n "$OUT/logs/memory.csv" | tail -1)
  if [ -n "$PEAK" ] && [ -n "$IDLE" ]; then
    PEAK_ARGS=(--peak-memory-bytes $(( (PEAK - IDLE) * 1024 * 1024 )))
  fi
else
  NAME=$DEVICE
  run_stage speed 60 --precision "$PRECISION"
fi

if "$PY" -c 'import torch' 2> /dev/null; then
  run_stage torch 80 --precision "$PRECISION" --torch "$PY" --torch-script scripts/gpu/torch_dit.py
else
  echo "== torch: skipped, $PY cannot import torch" | tee "$OUT/logs/torch.log"
fi
run_stage parity 150
run_stage sample 100

COMMIT=unknown
if [ -f "$(dirname "$BIN")/COMMIT" ]; then
  COMMIT=$(cat "$(dirname "$BIN")/COMMIT")
elif git rev-parse HEAD > /dev/null 2>&1; then
  COMMIT=$(git rev-parse HEAD)
fi
"$BIN" gpu-check --stage report "${COMMON[@]}" --device-name "$NAME" --commit "$COMMIT" \
  "${PEAK_ARGS[@]}" 2> "$OUT/logs/report.log" || { echo "report failed: see $OUT/logs/report.log" >&2; exit 1; }
echo "== done in $(( SECONDS - START )) s: $OUT/report.json, $OUT/README.md"
