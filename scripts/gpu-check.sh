#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a lent GPU machine (no network there, so nothing is
# built on it): correctness on CUDA and on Vulkan against the f32 CPU reference (f32, and bf16/f16
# mixed precision against the backend's own f32), the benchmark suite in bf16 and f32, the PyTorch +
# PEFT reference on the same cases, and the ratio tables. At most BUDGET_S (560 s) in all.
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

# Steps in order of importance (the issue's goal first: LoRA training of the 1B shape in bf16 against
# PyTorch + PEFT); each gets its own limit, cut to what is left of BUDGET_S so the whole script
# ends in time and the later, less important steps are the ones that get skipped.
BUDGET_S=${BUDGET_S:-560}
limit() { local left=$((BUDGET_S - SECONDS)); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
run_step() { # name, limit, command...
  local name=$1 lim; lim=$(limit "$2"); shift 2
  step "$name (limit ${lim}s, ${SECONDS}s used)"
  if [ "$lim" -lt 20 ]; then echo "skipped: out of time" | tee -a "$OUT/skipped.txt"; echo "$name" >> "$OUT/skipped.txt"; status=1; return; fi
  # Through bash -c so that the exported functions below can be steps too.
  timeout "$lim" bash -c '"$@"' step "$@" || { echo "$name FAILED (exit $?)"; status=1; }
}
have_torch() { python3 -c "import torch, transformers, peft" 2>/dev/null; }
suite() { # dtype, peak TFLOP/s
  "$BIN" bench-suite --backend cuda --dtype "$1" --shapes "$SHAPES" --case-timeout 75 --out "$OUT" --peak-tflops "$2"
}
torch_ref() { python3 bench/reference_torch.py --device cuda --dtype "$1" --shapes "$SHAPES" --case-timeout 50 --out "$OUT/reference-torch-cuda-$1.json"; }
ratio() { # dtype, suffix, peak
  "$BIN" bench-suite --backend cuda --render "$OUT/suite-cuda$2.json" --compare "$OUT/reference-torch-cuda-$1.json" --peak-tflops "$3" --out "$OUT"
}
export -f suite torch_ref ratio
export BIN OUT SHAPES
# Dense peaks of an H100 SXM (H200: the same compute): f32 67 TFLOP/s, bf16 989 TFLOP/s.
PEAK_F32=${PEAK_F32_TFLOPS:-67}
PEAK_BF16=${PEAK_BF16_TFLOPS:-989}

run_step "correctness on cuda (f32, bf16, f16)" 110 "$BIN" check --backend cuda --dtypes bf16,f16 --out "$OUT"
run_step "benchmark suite (cuda, bf16)" 170 suite bf16 "$PEAK_BF16"
if have_torch; then
  run_step "PyTorch + PEFT reference (cuda, bf16 autocast)" 110 torch_ref bf16
  run_step "ratio table bf16" 20 ratio bf16 -bf16 "$PEAK_BF16"
else
  echo "torch/transformers/peft not importable: the reference is not measured" | tee "$OUT/reference-missing.txt"
  status=1
fi
run_step "correctness on vulkan (f32, f16, bf16)" 90 "$BIN" check --backend vulkan --dtypes f16,bf16 --out "$OUT"
run_step "benchmark suite (cuda, f32)" 120 suite f32 "$PEAK_F32"
if have_torch; then
  run_step "PyTorch + PEFT reference (cuda, f32)" 80 torch_ref f32
  run_step "ratio table f32" 20 ratio f32 "" "$PEAK_F32"
fi
echo
echo "gpu-check: results in $OUT after ${SECONDS}s (exit $status)"
exit $status
