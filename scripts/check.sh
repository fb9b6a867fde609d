#!/usr/bin/env bash
# The quick check for the edit loop (≤ 5 minutes on a warm build): formatting, the same clippy
# pass as CI (its artifacts are reused by .ci/run when both use one CARGO_TARGET_DIR; .ci/run's
# default is ~/.cache/secvec/ci-target), every crate's unit tests and one tiny-model
# end-to-end experiment (align → vectors → both attack arms → evaluation → tables, on the tiny
# Llama fixture). It is a subset of `bash .ci/run`, which stays the gate: run that before landing.
#
#   bash scripts/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
started=$SECONDS
step() {
  local t0=$SECONDS
  echo "== $1"
  shift
  "$@"
  echo "-- $((SECONDS - t0)) s"
}
step "cargo fmt --check" cargo fmt --all --check
step "clippy, GPU features on" cargo clippy --workspace --all-targets --features wgpu,vulkan,cuda -- -D warnings
step "unit tests" cargo test --workspace --lib --bins
step "tiny-model experiment end to end" cargo test -p secvec-experiments --test experiments \
  sweep_writes_runs_tables_and_plots_and_dry_run_lists_state
echo "check passed in $((SECONDS - started)) s"
