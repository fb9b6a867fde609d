#!/usr/bin/env bash
# secvec (flex) and PyTorch + transformers + PEFT on the same CPU, back to back, on the same
# benchmark cases, then the ratio table. Needs a release build and a Python with torch,
# transformers and peft (PYTHON, default python3).
#
#   cargo build --release -p secvec-experiments
#   PYTHON=/path/to/venv/bin/python bash scripts/cpu-compare.sh
# Output: $OUT (default results/benchmarks/cpu-compare/): suite-flex.{json,md},
# reference-torch-cpu-f32.json, suite-flex-vs-reference-torch-cpu-f32.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SECVEC_BIN:-target/release/secvec-experiments}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-results/benchmarks/cpu-compare}
SHAPES=${SHAPES:-smollm2-135m}
# The suite's cases plus the headline's two training configurations (LoRA on all seven
# projections, without and with frozen security vectors).
CASES=${CASES:-train-lora,train-lora-all,train-lora-sv,train-full,generate}
mkdir -p "$OUT"
"$BIN" bench-suite --backend flex --shapes "$SHAPES" --cases "$CASES" --out "$OUT"
"$PYTHON" bench/reference_torch.py --device cpu --dtype f32 --shapes "$SHAPES" \
  --cases "$CASES" --out "$OUT/reference-torch-cpu-f32.json"
"$BIN" bench-suite --backend flex --render "$OUT/suite-flex.json" \
  --compare "$OUT/reference-torch-cpu-f32.json" --out "$OUT"
