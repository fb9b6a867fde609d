#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a lent GPU machine (no network there, so nothing is
# built on it): correctness on CUDA and on Vulkan against the f32 CPU reference, then the benchmark
# suite, then the PyTorch + PEFT reference on the same cases, and the ratio table. About 8 minutes
# on an H100/H200; every step has its own time limit so one slow step cannot eat the others.
#
# Before (on a machine with the crates registry):
#   cargo build --release -p secvec-experiments --features cuda,vulkan
#   mkdir -p gpu-bin && cp target/release/secvec-experiments gpu-bin/ && strip gpu-bin/secvec-experiments
# Then, from the repository root on the GPU machine (the device tool: carry gpu-bin):
#   SECVEC_BIN=gpu-bin/secvec-experiments bash scripts/gpu-check.sh
# Output: $OUT (default results/benchmarks/gpu-<date>/): device.txt, check-*.md, suite-*.md/json,
# reference-torch-*.json, and the compared tables.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${SECVEC_BIN:-target/release/secvec-experiments}
OUT=${OUT:-results/benchmarks/gpu-$(date +%Y%m%d)}
SHAPES=${SHAPES:-smollm2-135m,llama-1b}
mkdir -p "$OUT"
status=0

if [ ! -x "$BIN" ]; then
  echo "no secvec-experiments binary at $BIN (build it with --features cuda,vulkan; see the header)" >&2
  exit 2
fi
step() { echo; echo "== $*"; }

step "device"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; nproc; "$BIN" --version; } | tee "$OUT/device.txt"

# Headless Vulkan on NVIDIA needs the ICD file of the driver (see ../shared/burn-notes.md).
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for f in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$f" ] && export VK_DRIVER_FILES="$f" && break
  done
fi

for backend in cuda vulkan; do
  step "correctness on $backend"
  timeout 150 "$BIN" check --backend "$backend" --out "$OUT" || { echo "check on $backend FAILED (exit $?)"; status=1; }
done

step "benchmark suite (cuda, f32)"
timeout 240 "$BIN" bench-suite --backend cuda --shapes "$SHAPES" --case-timeout 90 --out "$OUT" \
  --peak-tflops "${PEAK_F32_TFLOPS:-67}" || { echo "bench-suite FAILED (exit $?)"; status=1; }

if python3 -c "import torch, transformers, peft" 2>/dev/null; then
  for dtype in f32 bf16; do
    step "PyTorch + PEFT reference (cuda, $dtype)"
    timeout 150 python3 bench/reference_torch.py --device cuda --dtype "$dtype" --shapes "$SHAPES" \
      --case-timeout 60 --out "$OUT/reference-torch-cuda-$dtype.json" || status=1
  done
  step "ratio table (secvec f32 vs torch f32)"
  # Re-renders the secvec table with the reference column from the JSON already measured.
  "$BIN" bench-suite --backend cuda --render "$OUT/suite-cuda.json" \
    --compare "$OUT/reference-torch-cuda-f32.json" --peak-tflops "${PEAK_F32_TFLOPS:-67}" --out "$OUT" || status=1
else
  echo "torch/transformers/peft not importable: the reference is not measured" | tee "$OUT/reference-missing.txt"
  status=1
fi
echo
echo "gpu-check: results in $OUT (exit $status)"
exit $status
